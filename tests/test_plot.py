"""Plots: figure layout, artists per panel, PNG output, and bad input."""

import dataclasses

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.collections import PathCollection, PolyCollection

import pyro_meta
from pyro_meta.data import LinearTasks, Sinusoid, TaskBatch
from pyro_meta.models import BayesianLinear
from pyro_meta.plot import plot_posterior_pairs, plot_predictive, plot_prior_functions

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def setup():
    """An untrained BayesianLinear (the prior is N(0, I)), a ragged batch and two posteriors."""
    torch.manual_seed(0)
    model = BayesianLinear()
    tasks = LinearTasks()
    batch = tasks.sample(4, (2, 5), (3, 6), generator=torch.Generator().manual_seed(0))
    posts = {
        "amortized": pyro_meta.infer(model, batch, method="amortized", num_samples=60, seed=0),
        "importance": pyro_meta.infer(model, batch, method="importance", num_samples=60, seed=0, num_proposals=500),
    }
    return model, tasks, batch, posts


def test_plot_predictive_layout_and_artists(setup, tmp_path):
    model, tasks, batch, posts = setup
    fig = plot_predictive(posts, tasks=[0, 2], num_functions=4, true_function=tasks, num_grid=50)
    axes = np.array(fig.axes).reshape(2, 2)
    assert len(fig.axes) == 4
    for i, t in enumerate([0, 2]):
        for j, label in enumerate(posts):
            ax = axes[i, j]
            assert ax.get_title() == f"{label}: task {t}"
            # 4 function draws + predictive mean + true function
            assert len(ax.get_lines()) == 6
            assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 2  # 50% and 90% bands
            scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
            assert len(scatters) == 2
            # only the real points are drawn
            target, context = scatters
            assert len(context.get_offsets()) == int(batch.context_mask[t].sum())
            assert len(target.get_offsets()) == int(batch.target_mask[t].sum())
    # the true function is the task's own
    truth = axes[1, 0].get_lines()[-1]
    x = torch.as_tensor(truth.get_xdata(), dtype=torch.float32)
    expected = tasks.function(x[None, :, None].expand(4, -1, 1), batch.info)[2, :, 0]
    np.testing.assert_allclose(truth.get_ydata(), expected.numpy(), atol=1e-5)
    path = tmp_path / "predictive.png"
    fig.savefig(path)
    assert path.stat().st_size > 1000


def test_plot_predictive_defaults_one_posterior_callable_truth(setup):
    model, tasks, batch, posts = setup
    fig = plot_predictive(
        posts["amortized"], num_functions=0, num_grid=30, true_function=lambda x: tasks.function(x, batch.info)
    )
    assert len(fig.axes) == 3  # the first three tasks, one column
    assert all(len(ax.get_lines()) == 2 for ax in fig.axes)  # mean + truth
    fig2 = plot_predictive([posts["amortized"], posts["amortized"]], tasks=1, num_functions=2, num_grid=30)
    assert [ax.get_title() for ax in fig2.axes] == ["amortized: task 1", "amortized (1): task 1"]


def test_function_draws_are_noise_free_means(setup):
    model, tasks, batch, posts = setup
    post = posts["amortized"]
    f, is_mean = post.function_draws(batch, 5)
    assert is_mean and f.shape == (5, 4, batch.num_points("target"), 1)
    w = post.site_values(5)["w"]  # [5, T, 1, K]
    expected = (model.features(batch.target_x) * w).sum(-1, keepdim=True)
    torch.testing.assert_close(f, expected.detach())


def test_plot_prior_functions(setup, tmp_path):
    model = setup[0]
    fig = plot_prior_functions(model, x_range=(-1, 1), num_functions=7, num_grid=40, seed=0)
    (ax,) = fig.axes
    assert len(ax.get_lines()) == 7
    assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 1
    assert ax.get_lines()[0].get_xdata()[0] == pytest.approx(-1.0)
    fig.savefig(tmp_path / "prior.png")
    assert (tmp_path / "prior.png").stat().st_size > 1000
    # into a given axes
    fig2, ax2 = plt.subplots()
    assert plot_prior_functions(model, num_functions=3, num_grid=20, ax=ax2) is fig2
    assert len(ax2.get_lines()) == 3


def test_plot_posterior_pairs(setup, tmp_path):
    posts = setup[3]
    fig = plot_posterior_pairs(posts, task=1, dims=(0, 2), max_points=25)
    (ax,) = fig.axes
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(scatters) == 2 and all(len(s.get_offsets()) == 25 for s in scatters)
    w = posts["amortized"].samples["w"][0, :, 1]  # [S, K]
    idx = torch.linspace(0, w.shape[0] - 1, 25).round().long()
    np.testing.assert_allclose(scatters[0].get_offsets(), w[idx][:, [0, 2]].numpy())
    assert ax.get_xlabel() == "w[0]" and ax.get_ylabel() == "w[2]"
    fig.savefig(tmp_path / "pairs.png")
    assert (tmp_path / "pairs.png").stat().st_size > 1000


def test_bad_input_raises(setup):
    model, tasks, batch, posts = setup
    post = posts["amortized"]
    with pytest.raises(TypeError, match="posteriors"):
        plot_predictive("amortized")
    with pytest.raises(TypeError, match="posteriors"):
        plot_predictive({"a": 3})
    with pytest.raises(ValueError, match="posteriors is empty"):
        plot_predictive([])
    with pytest.raises(ValueError, match="tasks"):
        plot_predictive(post, tasks=[7])
    with pytest.raises(ValueError, match="num_functions"):
        plot_predictive(post, num_functions=-1)
    with pytest.raises(ValueError, match="true_function must return"):
        plot_predictive(post, true_function=lambda x: x[..., 0])
    with pytest.raises(ValueError, match="x_range"):
        plot_predictive(post, x_range=(1, -1))
    with pytest.raises(TypeError, match="model"):
        plot_prior_functions("not a model")
    with pytest.raises(ValueError, match="num_functions"):
        plot_prior_functions(model, num_functions=0)
    with pytest.raises(ValueError, match="task must be"):
        plot_posterior_pairs(post, task=4)
    with pytest.raises(ValueError, match="dims"):
        plot_posterior_pairs(post, dims=(1, 1))
    with pytest.raises(ValueError, match="out of range"):
        plot_posterior_pairs(post, dims=(0, 4))
    with pytest.raises(ValueError, match="site 'z'"):
        plot_posterior_pairs(post, site="z")


def test_plot_predictive_rejects_non_1d_regression(setup):
    post = setup[3]["amortized"]
    x2 = torch.zeros(4, 2, 2)
    wide = TaskBatch(x2, torch.zeros(4, 2, 1), torch.zeros(4, 1, 2))
    with pytest.raises(ValueError, match="1-D regression"):
        plot_predictive(dataclasses.replace(post, batch=wide))
    labels = TaskBatch(torch.zeros(4, 2, 1), torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 1, 1))
    with pytest.raises(ValueError, match="class labels"):
        plot_predictive(dataclasses.replace(post, batch=labels))
    scalar = dataclasses.replace(post, samples={"w": post.samples["w"][..., :1]})
    with pytest.raises(ValueError, match="at least 2"):
        plot_posterior_pairs(scalar)


def test_sinusoid_true_function_from_task_distribution(setup):
    """A task distribution as ``true_function`` reads the batch's own ``info`` (amplitude, phase)."""
    model, _, batch, posts = setup
    sin = Sinusoid()
    info = {"amplitude": torch.tensor([1.0, 2.0, 3.0, 4.0]), "phase": torch.zeros(4)}
    post = dataclasses.replace(posts["amortized"], batch=batch.replace(info=info))
    fig = plot_predictive(post, tasks=3, num_functions=0, true_function=sin, num_grid=20)
    truth = fig.axes[0].get_lines()[-1]
    np.testing.assert_allclose(truth.get_ydata(), 4.0 * np.sin(truth.get_xdata()), atol=1e-5)
