"""ArviZ export: groups, dims and coords, padding, log-likelihood against a hand computation, LOO, I/O."""

import dataclasses
import warnings

import matplotlib
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import xarray as xr

import pyro_meta
from pyro_meta import MetaModel, observe, task_plate
from pyro_meta.arviz import pointwise_log_likelihood, to_inference_data
from pyro_meta.data import LinearTasks, TaskBatch
from pyro_meta.models import BayesianLinear
from pyro_meta.testing import assert_close

matplotlib.use("Agg")
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # ArviZ 0.2x's refactor banner
    import arviz as az
import matplotlib.pyplot as plt  # noqa: E402

NUM_TASKS = 3


class NonVectorizedLinear(BayesianLinear):
    """BayesianLinear that declares it does not broadcast over draws: the export loops over draws."""

    vectorized = False


class TinyClassifier(MetaModel):
    """Class labels: ``w_t ~ N(0, I_3)``, ``y ~ Categorical(logits = w_t * x)``."""

    def model(self, batch):
        with task_plate(batch):
            w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            observe(batch, lambda x: dist.Categorical(logits=w * x))

    def guide(self, batch):
        with task_plate(batch):
            pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))


@pytest.fixture(scope="module")
def trained():
    """A BayesianLinear with a non-trivial prior and a ragged batch (2..5 context, 3..6 target points per task).

    The prior is set by hand instead of meta-trained (the export does not care, and fitting costs
    seconds); the guide's conjugate encoder is given the same values, so it is the exact posterior.
    """
    pyro.set_rng_seed(0)
    torch.set_num_threads(1)
    model = BayesianLinear()
    with torch.no_grad():
        for mu, log_s in ((model.mu, model.log_s), (model.q_mu, model.q_log_s)):
            mu.copy_(torch.linspace(1.0, -0.5, 4))
            log_s.copy_(torch.linspace(1.0, 0.5, 4).log())
    batch = LinearTasks().sample(NUM_TASKS, (2, 5), (3, 6), generator=torch.Generator().manual_seed(1))
    assert not bool(batch.context_mask.all()) and not bool(batch.target_mask.all()), "the batch must be ragged"
    return model, batch


@pytest.fixture(scope="module")
def nuts_post(trained):
    model, batch = trained
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # short chains: mixing warnings are expected
        return pyro_meta.infer(
            model, batch, method="nuts", num_samples=40, num_warmup=30, num_chains=2, max_tree_depth=4, seed=0
        )


@pytest.fixture(scope="module")
def nuts_idata(nuts_post):
    return to_inference_data(nuts_post)


@pytest.fixture(scope="module")
def amortized_post(trained):
    model, batch = trained
    return pyro_meta.infer(model, batch, method="amortized", num_samples=400, seed=0)


def _hand_log_lik(model, x, y, w):
    """``log N(y | phi(x) w, sigma^2)`` per draw: x [T, N, 1], y [T, N, 1], w [C, S, T, K] -> [C, S, T, N]."""
    with torch.no_grad():
        mean = torch.einsum("tnk,cstk->cstn", model.features(x), w)
        return dist.Normal(mean, model.noise_std).log_prob(y[..., 0])


def test_mcmc_groups_dims_and_coords(nuts_post, nuts_idata):
    idata, batch = nuts_idata, nuts_post.batch
    T, Nc, Nt = batch.num_tasks, batch.num_points("context"), batch.num_points("target")
    C, S = 2, 40
    assert set(idata.groups()) == {
        "posterior",
        "posterior_predictive",
        "observed_data",
        "constant_data",
        "log_likelihood",
        "sample_stats",
        "target_log_likelihood",
    }
    w = idata.posterior["w"]
    assert w.dims == ("chain", "draw", "task", "w_dim_0") and w.shape == (C, S, T, 4)
    assert idata.posterior["task"].values.tolist() == list(range(T))
    pp = idata.posterior_predictive["y_target"]
    assert pp.dims == ("chain", "draw", "task", "target_point", "y_dim") and pp.shape == (C, S, T, Nt, 1)
    assert idata.observed_data["y_context"].dims == ("task", "context_point", "y_dim")
    assert idata.observed_data["y_context"].shape == (T, Nc, 1)
    assert idata.observed_data["y_target"].dims == ("task", "target_point", "y_dim")
    assert set(idata.constant_data.data_vars) == {
        "context_x",
        "target_x",
        "context_mask",
        "target_mask",
        "context_obs_task",
        "context_obs_point",
        "target_obs_task",
        "target_obs_point",
    }
    assert idata.constant_data["context_x"].dims == ("task", "context_point", "x_dim")
    assert idata.constant_data["target_mask"].dtype == bool
    assert idata.log_likelihood["y_context"].dims == ("chain", "draw", "context_obs")
    assert idata.target_log_likelihood["y_target"].dims == ("chain", "draw", "target_obs")
    assert list(idata.log_likelihood.data_vars) == ["y_context"]  # only what the posterior conditions on
    for name in ("diverging", "acceptance_rate", "step_size", "lp"):
        assert idata.sample_stats[name].dims == ("chain", "draw") and idata.sample_stats[name].shape == (C, S)
    assert idata.sample_stats["diverging"].dtype == bool
    attrs = idata.posterior.attrs
    assert attrs["method"] == "nuts" and attrs["model"] == "BayesianLinear"
    assert attrs["pyro_meta_version"] == pyro_meta.__version__ and attrs["seconds"] > 0
    # the draws are the posterior's, chain by chain
    np.testing.assert_array_equal(w.values, nuts_post.samples["w"].numpy())


def test_amortized_groups_have_one_chain_and_no_sample_stats(amortized_post):
    idata = amortized_post.to_arviz()
    assert "sample_stats" not in idata.groups()
    assert idata.posterior["w"].dims == ("chain", "draw", "task", "w_dim_0")
    assert idata.posterior["w"].shape == (1, 400, NUM_TASKS, 4)
    assert idata.posterior_predictive["y_target"].shape[:2] == (1, 400)
    assert idata.posterior.attrs["method"] == "amortized"


@pytest.mark.parametrize(
    "method, options",
    [
        ("svi", {"num_steps": 5, "num_particles": 2}),
        ("importance", {"num_proposals": 64}),
        ("prior", {}),
        ("hmc", {"num_warmup": 5, "num_chains": 1, "num_steps": 3}),
    ],
)
def test_every_method_exports(trained, method, options):
    model, batch = trained
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tiny runs: ESS / mixing warnings are expected
        post = pyro_meta.infer(model, batch, method=method, num_samples=10, seed=0, **options)
    idata = to_inference_data(post)
    assert idata.posterior["w"].shape == (1, 10, NUM_TASKS, 4)
    assert ("sample_stats" in idata.groups()) == (method == "hmc")
    assert idata.log_likelihood["y_context"].shape == (1, 10, int(batch.context_mask.sum()))
    assert idata.posterior.attrs["method"] == method


def test_padded_points_never_appear_as_real_values(nuts_post, nuts_idata):
    idata, batch = nuts_idata, nuts_post.batch
    for split, group in (("context", "observed_data"), ("target", "observed_data"), ("target", "posterior_predictive")):
        y = idata[group][f"y_{split}"].values
        mask = batch.mask(split).numpy()
        pad = np.broadcast_to(~mask[..., None], y.shape)
        assert np.isnan(y[pad]).all(), f"{group}.y_{split}: a padded point is not NaN"
        assert np.isfinite(y[~pad]).all(), f"{group}.y_{split}: a real point is NaN"
    real = batch.context_mask.numpy()
    np.testing.assert_array_equal(idata.observed_data["y_context"].values[real], batch.context_y.numpy()[real])
    x = idata.constant_data["context_x"].values
    assert np.isnan(x[~real]).all() and np.isfinite(x[real]).all()
    np.testing.assert_array_equal(idata.constant_data["context_mask"].values, real)
    # the log-likelihood holds the real points only
    assert idata.log_likelihood["y_context"].shape[-1] == int(real.sum())
    assert idata.target_log_likelihood["y_target"].shape[-1] == int(batch.target_mask.sum())
    assert np.isfinite(idata.log_likelihood["y_context"].values).all()


@pytest.mark.parametrize("which", ["amortized", "nuts"])
def test_loo_counts_exactly_the_real_context_points(which, amortized_post, nuts_post):
    post = amortized_post if which == "amortized" else nuts_post
    idata = to_inference_data(post, predictive=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pareto k warnings on 2-point tasks
        loo = az.loo(idata, pointwise=True)  # no var_name: the log_likelihood group holds y_context only
    M = int(post.batch.context_mask.sum())
    assert M < post.batch.context_mask.numel()
    assert loo.n_data_points == M and loo.loo_i.size == M
    assert np.isfinite(loo.elpd_loo) and np.isfinite(loo.loo_i.values).all()


def test_log_likelihood_matches_hand_computation(nuts_post, nuts_idata):
    model, batch, idata = nuts_post.model, nuts_post.batch, nuts_idata
    w = nuts_post.samples["w"]
    for split in ("context", "target"):
        ref = _hand_log_lik(model, batch.x(split), batch.y(split), w)  # [C, S, T, N]
        t = torch.as_tensor(idata.constant_data[f"{split}_obs_task"].values)
        n = torch.as_tensor(idata.constant_data[f"{split}_obs_point"].values)
        assert bool(batch.mask(split)[t, n].all()), f"{split}_obs maps to a padded point"
        group = idata.log_likelihood if split == "context" else idata.target_log_likelihood
        got = torch.as_tensor(group[f"y_{split}"].values)
        assert_close(got, ref[:, :, t, n], atol=1e-4, what=f"log p(y_{split} | w)")


def test_non_vectorized_model_gives_the_same_log_likelihood(trained, amortized_post):
    model, batch = trained
    other = NonVectorizedLinear()
    other.load_state_dict(model.state_dict())
    thin = {k: v[:, :6] for k, v in amortized_post.samples.items()}
    post = dataclasses.replace(amortized_post, samples=thin)
    ref = pointwise_log_likelihood(post)
    got = pointwise_log_likelihood(dataclasses.replace(post, model=other))
    for name in ("y_context", "y_target"):
        assert got[name].shape == (1, 6, NUM_TASKS, batch.num_points(name[2:]))
        assert_close(got[name], ref[name], atol=1e-5, what=name)
    idata = to_inference_data(dataclasses.replace(post, model=other))
    assert idata.posterior_predictive["y_target"].shape[:3] == (1, 6, NUM_TASKS)


def test_sample_stats_keep_chain_order(nuts_post, nuts_idata):
    # lp[c, s] is the log joint of chain c's draw s: recompute it from the exported draws
    model, batch = nuts_post.model, nuts_post.batch
    w = torch.as_tensor(nuts_idata.posterior["w"].values)
    with torch.no_grad():
        prior = dist.Normal(model.mu, model.s).log_prob(w).sum((-1, -2))
    lik = (_hand_log_lik(model, batch.context_x, batch.context_y, w) * batch.context_mask).sum((-1, -2))
    assert_close(
        torch.as_tensor(nuts_idata.sample_stats["lp"].values),
        prior + lik,
        atol=1e-3,
        rtol=1e-5,
        what="sample_stats.lp vs log joint of the draws",
    )
    # and with stats that name their chain
    C, S = nuts_post.num_chains, nuts_post.num_samples
    tagged = torch.arange(C)[:, None] * 1000.0 + torch.arange(S)[None, :]
    stats = {
        "lp": tagged,
        "step_size": tagged + 0.5,
        "acceptance_rate": tagged / 1e4,
        "diverging": (torch.arange(C)[:, None] == 1).expand(C, S),
    }
    idata = to_inference_data(
        dataclasses.replace(nuts_post, sample_stats=stats), predictive=False, log_likelihood=False
    )
    for c in range(C):
        np.testing.assert_array_equal(idata.sample_stats["lp"].sel(chain=c).values, tagged[c].numpy())
        assert bool(idata.sample_stats["diverging"].sel(chain=c).all()) == (c == 1)


def test_summary_names_task_and_latent_dims(nuts_idata):
    summary = az.summary(nuts_idata, var_names=["w"], labeller=az.labels.DimCoordLabeller())
    assert len(summary) == NUM_TASKS * 4
    assert "w[task: 2, w_dim_0: 3]" in summary.index
    assert np.isfinite(summary["mean"].values).all()


# ArviZ 0.23's matplotlib backend calls a helper deprecated in matplotlib 3.11: not ours to fix
@pytest.mark.filterwarnings("ignore::matplotlib.MatplotlibDeprecationWarning")
def test_arviz_plots_run(nuts_idata):
    try:
        axes = az.plot_trace(nuts_idata, var_names=["w"], coords={"task": [0]})
        assert np.asarray(axes).size == 2
        axes = az.plot_posterior(nuts_idata, var_names=["w"], coords={"task": [0]})
        assert np.asarray(axes).size == 4
        ax = az.plot_ppc(nuts_idata, var_names=["y_target"], num_pp_samples=10, random_seed=0)
        assert np.asarray(ax).size == 1
    finally:
        plt.close("all")


@pytest.mark.parametrize("engine", ["h5netcdf", "netcdf4"])
def test_netcdf_round_trip(nuts_idata, tmp_path, engine):
    path = tmp_path / f"idata_{engine}.nc"
    nuts_idata.to_netcdf(str(path), engine=engine)
    back = az.from_netcdf(str(path), engine=engine)
    assert set(back.groups()) == set(nuts_idata.groups())
    for group in nuts_idata.groups():
        xr.testing.assert_identical(back[group].load(), nuts_idata[group])
    assert back.constant_data["context_mask"].dtype == bool


def test_num_predictive_samples_thins_each_chain(nuts_post):
    idata = to_inference_data(nuts_post, num_predictive_samples=20, log_likelihood=False)
    assert idata.posterior_predictive["y_target"].shape[:2] == (2, 10)
    assert idata.posterior["w"].shape[:2] == (2, 40)


def test_context_only_batch_has_no_target_groups(trained):
    model, batch = trained
    post = pyro_meta.infer(model, batch.context_only(), method="amortized", num_samples=5, seed=0)
    idata = to_inference_data(post)
    assert "posterior_predictive" not in idata.groups()
    assert list(idata.observed_data.data_vars) == ["y_context"]
    assert list(idata.log_likelihood.data_vars) == ["y_context"]
    assert "target_x" not in idata.constant_data


def test_class_labels_have_no_y_dim():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 1, generator=g)
    y = torch.randint(0, 3, (2, 4), generator=g)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    batch = TaskBatch(
        x, y, torch.randn(2, 3, 1, generator=g), None, mask, torch.tensor([[True] * 3, [True, False, False]])
    )
    post = pyro_meta.infer(TinyClassifier(), batch, method="prior", num_samples=7, seed=0)
    idata = to_inference_data(post)
    assert idata.observed_data["y_context"].dims == ("task", "context_point")
    pp = idata.posterior_predictive["y_target"]
    assert pp.dims == ("chain", "draw", "task", "target_point")
    assert np.isnan(pp.values[:, :, 1, 1:]).all() and np.isfinite(pp.values[:, :, 0]).all()
    assert np.isnan(idata.observed_data["y_context"].values[0, 3])
    # log p(y | w) by hand: log_softmax(w * x)[y]
    w = post.samples["w"]  # [1, 7, 2, 3]
    ref = torch.log_softmax(w[:, :, :, None, :] * x, -1).gather(-1, y[None, None, ..., None].expand(1, 7, 2, 4, 1))[
        ..., 0
    ]
    assert_close(torch.as_tensor(idata.log_likelihood["y_context"].values), ref[:, :, mask], atol=1e-5, what="labels")


def test_bad_input_raises(amortized_post):
    with pytest.raises(TypeError, match="posterior"):
        to_inference_data({"w": torch.zeros(1, 2, 3, 4)})
    with pytest.raises(ValueError, match="num_predictive_samples"):
        to_inference_data(amortized_post, num_predictive_samples=0)
    with pytest.raises(TypeError, match="predictive"):
        to_inference_data(amortized_post, predictive="yes")
    with pytest.raises(TypeError, match="posterior"):
        pointwise_log_likelihood(None)


def test_per_task_r_hat_and_ess_equal_arviz_on_the_exported_idata(nuts_post, nuts_idata):
    """The printed per-task diagnostics are ArviZ's (rank-normalised R-hat, bulk and tail ESS), unclamped."""
    d = nuts_post.diagnostics
    for key, stat in (
        ("r_hat", az.rhat(nuts_idata)),
        ("ess_bulk", az.ess(nuts_idata, method="bulk")),
        ("ess_tail", az.ess(nuts_idata, method="tail")),
    ):
        ref = stat["w"].values  # [task, w_dim_0]
        worst = ref.max(-1) if key == "r_hat" else ref.min(-1)
        np.testing.assert_allclose(d[key].numpy(), worst, rtol=1e-9, err_msg=key)
    assert d["ess"] is d["ess_bulk"]


@pytest.mark.parametrize("case", ["normal", "one_chain", "odd_draws", "constant", "sticky", "bimodal", "ar1", "few"])
def test_vectorized_rhat_ess_equal_arviz_coordinate_by_coordinate(case):
    """pyro_meta.arviz.rhat_ess is ArviZ's arithmetic over all coordinates at once: equal on every edge case."""
    from pyro_meta.arviz import rhat_ess

    g = np.random.default_rng(0)
    C, S = {"one_chain": (1, 50), "odd_draws": (3, 37), "few": (2, 5)}.get(case, (4, 60))
    x = g.normal(size=(C, S, 3, 2))
    if case == "constant":
        x[:, :, 0, 0] = 1.5
    if case == "sticky":  # repeated values: ties in the ranks
        x = np.round(x, 1)
    if case == "bimodal":  # chains stuck in different modes
        x[: C // 2] += 6.0
    if case == "ar1":  # strongly autocorrelated chains: the Geyer sequence matters
        for t in range(1, S):
            x[:, t] = 0.95 * x[:, t - 1] + 0.3 * x[:, t]
    got = rhat_ess(torch.as_tensor(x))
    ds = az.convert_to_dataset({"x": x})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ warns about one chain
        refs = {
            "r_hat": az.rhat(ds)["x"].values,
            "ess_bulk": az.ess(ds, method="bulk")["x"].values,
            "ess_tail": az.ess(ds, method="tail")["x"].values,
        }
    for key, ref in refs.items():
        np.testing.assert_allclose(got[key].numpy(), ref, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=key)


def test_loo_works_without_var_name_and_targets_have_their_own_group(nuts_idata):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loo = az.loo(nuts_idata)  # one log-likelihood variable: the context the posterior conditions on
    assert np.isfinite(loo.elpd_loo)
    assert "y_target" not in nuts_idata.log_likelihood
    assert nuts_idata.target_log_likelihood["y_target"].dims == ("chain", "draw", "target_obs")


class WeightedTinyClassifier(TinyClassifier):
    """A user's model that weights its likelihood (``poutine.scale``, as in a tempered or power posterior)."""

    def model(self, batch):
        with task_plate(batch):
            w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            with pyro.poutine.scale(scale=3.0):
                observe(batch, lambda x: dist.Categorical(logits=w * x))


def test_pointwise_log_likelihood_is_never_scaled():
    """LOO/WAIC need ``log p(y_n | w)`` per point: a user's ``poutine.scale`` on the likelihood is divided out."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 1, generator=g)
    y = torch.randint(0, 3, (2, 4), generator=g)
    batch = TaskBatch(x, y, torch.randn(2, 3, 1, generator=g), torch.randint(0, 3, (2, 3), generator=g))
    post = pyro_meta.infer(WeightedTinyClassifier(), batch, method="prior", num_samples=5, seed=0)
    got = pointwise_log_likelihood(post)["y_context"]  # [1, 5, 2, 4]
    w = post.samples["w"]
    ref = torch.log_softmax(w[:, :, :, None, :] * x, -1).gather(-1, y[None, None, ..., None].expand(1, 5, 2, 4, 1))
    assert_close(got, ref[..., 0], atol=1e-5, what="unscaled log p(y | w)")
