"""Posterior.predict / function_draws refuse tasks other than the inferred ones."""

import pytest
import torch

import pyro_meta
from pyro_meta.data import LinearTasks, TaskBatch
from pyro_meta.models import BayesianLinear


@pytest.fixture(scope="module")
def inferred():
    torch.manual_seed(0)
    model = BayesianLinear()
    batch = LinearTasks().sample(4, (3, 6), 5, generator=torch.Generator().manual_seed(9))
    post = pyro_meta.infer(model, batch, num_samples=20, seed=0)
    return model, batch, post


def test_other_tasks_with_the_same_count_are_refused(inferred):
    """Bug on main: any batch of T tasks was accepted, so draws of tasks A predicted tasks B."""
    _, batch, post = inferred
    other = LinearTasks().sample(4, (3, 6), 5, generator=torch.Generator().manual_seed(10))
    for call in (post.predict, post.function_draws):
        with pytest.raises(ValueError, match=r"batch: tasks \[0, 1, 2, 3\] have other context sets"):
            call(other)


def test_the_tasks_that_differ_are_named(inferred):
    _, batch, post = inferred
    y = batch.context_y.clone()
    y[2, 0, 0] += 1.0
    with pytest.raises(ValueError, match=r"tasks \[2\]"):
        post.predict(batch.replace(context_y=y))
    mask = batch.context_mask.clone()
    t = int(torch.nonzero(mask.sum(-1) > 1)[0])
    mask[t, int(mask[t].nonzero().max())] = False  # one real point fewer
    with pytest.raises(ValueError, match=rf"tasks \[{t}\]"):
        post.predict(batch.replace(context_mask=mask))
    with pytest.raises(TypeError, match="batch"):
        post.predict({"context_x": batch.context_x})


def test_same_tasks_at_new_inputs_are_predicted(inferred):
    model, batch, post = inferred
    grid = torch.linspace(-1, 1, 7)
    dense = batch.with_targets(grid)
    pred = post.predict(dense)
    assert pred.samples.shape == (1, 20, 4, 7, 1)
    f, is_mean = post.function_draws(dense)
    w = post.site_values()["w"]  # [N, T, 1, K]: the inferred draws, applied at the new inputs
    torch.testing.assert_close(f, (model.features(dense.target_x) * w).sum(-1, keepdim=True))
    # padding values do not matter: only the real points identify a task
    x = batch.context_x.clone()
    x[~batch.context_mask] = 123.0
    post.predict(batch.replace(context_x=x))
    # and a rebuilt batch of the same tasks is accepted
    tasks = [(batch.context_x[t][batch.context_mask[t]], batch.context_y[t][batch.context_mask[t]]) for t in range(4)]
    rebuilt = TaskBatch.from_tasks(tasks, [(batch.target_x[t], None) for t in range(4)])
    post.predict(rebuilt)
