"""Global latent sites: PyroSample attributes, scalar globals, and full hierarchical NUTS (globals sampled)."""

import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroSample
from torch import nn

import pyro_meta
from pyro_meta import MetaModel, TaskBatch, observe, task_plate
from pyro_meta.data import Sinusoid
from pyro_meta.testing import MetaModelContract

METHOD_OPTIONS = MetaModelContract.method_options  # the contract's small, fast settings per method


def _batch(T=3, seed=0):
    return Sinusoid(noise_std=0.1).sample(T, (2, 4), 5, generator=torch.Generator().manual_seed(seed))


class WithPyroSample(MetaModel):
    """A global weight ``w ~ N(0, I)`` declared as a ``PyroSample`` attribute and read in ``model``."""

    def __init__(self):
        super().__init__()
        self.w = PyroSample(dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        self.global_guide = AutoNormal(poutine.block(self.model, expose=["w"]))
        self.encoder = nn.Linear(2, 2)

    def model(self, batch):
        w = self.w  # a sample site "w": read twice in one run, it is one draw
        assert w is self.w
        with task_plate(batch):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))  # [T, 1]
            observe(batch, lambda x: dist.Normal(w[..., :1, None] * x + z[..., None], 0.3).to_event(1))

    def guide(self, batch):
        self.global_guide(batch)
        x, y, m = batch.observed()
        h = self.encoder(
            torch.cat(
                [
                    (y[..., 0] * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True),
                    m.sum(-1, keepdim=True).float().rsqrt(),
                ],
                -1,
            )
        )
        with task_plate(batch):
            pyro.sample("z", dist.Normal(h[:, :1], h[:, 1:].exp()))


def test_pyrosample_global_is_a_site_in_fit_and_every_method():
    model = WithPyroSample()
    trace = poutine.trace(model.model).get_trace(_batch())
    assert "w" in trace.nodes and trace.nodes["w"]["value"].shape == (2,)
    assert pyro_meta.model.global_latent_sites(model, _batch()) == ("w",)
    pyro_meta.fit(model, Sinusoid(noise_std=0.1), num_steps=20, tasks_per_batch=8, lr=0.05, progress=False)
    assert float(model.global_guide.locs.w.detach().abs().max()) > 0  # the guide of w was trained
    for method in pyro_meta.available_methods():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # short chains and few proposals warn
            post = pyro_meta.infer(
                model, _batch(), method=method, num_samples=8, seed=0, **METHOD_OPTIONS.get(method, {})
            )
        assert post.fixed_globals["w"].shape == (2,), method
        assert post.samples["z"].shape[1:] == (8, 3), method
        assert bool(torch.isfinite(post.predict().samples).all()), method


class ScalarGlobal(MetaModel):
    """A scalar global ``tau`` used as natural Pyro code uses it: ``Normal(0., tau).expand([2])``."""

    def __init__(self):
        super().__init__()
        self.global_guide = AutoNormal(poutine.block(self.model, expose=["tau"]))
        self.encoder = nn.Linear(2, 4)

    def model(self, batch):
        tau = pyro.sample("tau", dist.LogNormal(0.0, 1.0))
        assert tau.shape == (), tau.shape  # the same shape in fit and in every method
        with task_plate(batch):
            z = pyro.sample("z", dist.Normal(0.0, tau).expand([2]).to_event(1))  # [T, 1, 2]
            observe(batch, lambda x: dist.Normal(z[..., :1] * x + z[..., 1:], 0.3).to_event(1))

    def guide(self, batch):
        self.global_guide(batch)
        x, y, m = batch.observed()
        h = self.encoder(
            torch.cat(
                [
                    (y[..., 0] * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True),
                    m.sum(-1, keepdim=True).float().rsqrt(),
                ],
                -1,
            )
        )
        with task_plate(batch):
            pyro.sample("z", dist.Normal(h[:, None, :2], h[:, None, 2:].exp()).to_event(1))


def test_scalar_global_latent_runs_through_every_method():
    model = ScalarGlobal()
    pyro_meta.fit(model, Sinusoid(noise_std=0.1), num_steps=10, tasks_per_batch=8, lr=0.05, progress=False)
    batch = _batch()
    for method in pyro_meta.available_methods():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            post = pyro_meta.infer(model, batch, method=method, num_samples=8, seed=0, **METHOD_OPTIONS.get(method, {}))
        assert post.fixed_globals["tau"].shape == (), method
        assert post.samples["z"].shape[1:] == (8, 3, 2), method
        idata = post.to_arviz()
        assert "tau" not in idata.posterior and idata.posterior["z"].dims[2] == "task"


class EightSchools(MetaModel):
    """Rubin's eight schools, non-centred: ``mu ~ N(0, 5)``, ``tau ~ HalfCauchy(5)``, ``theta_j = mu + tau eta_j``.

    Each school is a task with one context point: ``x`` is its standard error ``sigma_j``, ``y`` its effect.
    """

    def __init__(self):
        super().__init__()
        self.guide = AutoNormal(self.model)

    def model(self, batch):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with task_plate(batch):
            eta = pyro.sample("eta", dist.Normal(0.0, 1.0))  # [T, 1] (draws: [S, T, 1])
            theta = mu + tau * eta
            observe(batch, lambda sigma: dist.Normal(theta[..., None], sigma).to_event(1))


def eight_schools():
    y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    sigma = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
    return TaskBatch(sigma[:, None, None], y[:, None, None], sigma.new_zeros(8, 0, 1), y.new_zeros(8, 0, 1))


def _mean_sd_mcse(draws: np.ndarray):
    """Mean, sd and their Monte Carlo standard errors (ArviZ) of ``[C, S, ...]`` draws."""
    import arviz as az

    ds = az.convert_to_dataset({"x": draws})
    return (
        draws.mean((0, 1)),
        draws.std((0, 1)),
        az.mcse(ds, method="mean")["x"].values,
        az.mcse(ds, method="sd")["x"].values,
    )


@pytest.mark.slow
def test_full_hierarchical_nuts_agrees_with_plain_pyro_nuts():
    """``infer(method="nuts", globals="sample")`` against ``pyro.infer.NUTS`` on the same model and data."""
    batch = eight_schools()
    model = EightSchools()
    pyro_meta.fit(model, batch, num_steps=300, tasks_per_batch=8, lr=0.05, progress=False)
    post = pyro_meta.infer(
        model,
        batch,
        method="nuts",
        globals="sample",
        num_samples=600,
        num_warmup=300,
        num_chains=2,
        seed=0,
        jit_compile=True,
    )
    assert post.diagnostics["jit"]
    assert post.samples["mu"].shape == (2, 600) and post.samples["tau"].shape == (2, 600)
    assert post.samples["eta"].shape == (2, 600, 8)
    idata = post.to_arviz()
    assert idata.posterior["mu"].dims == ("chain", "draw") and idata.posterior["eta"].dims == ("chain", "draw", "task")
    pyro.set_rng_seed(1)
    runs = []
    for _ in range(2):  # two chains, as ours
        kernel = NUTS(model.model, jit_compile=True, ignore_jit_warnings=True)
        mcmc = MCMC(kernel, num_samples=600, warmup_steps=300, disable_progbar=True)
        mcmc.run(batch.context_only())
        runs.append(mcmc.get_samples())
    for name in ("mu", "tau", "eta"):
        ours = post.samples[name].numpy()
        ref = torch.stack([r[name] for r in runs]).reshape(ours.shape).numpy()
        m1, s1, em1, es1 = _mean_sd_mcse(ours)
        m2, s2, em2, es2 = _mean_sd_mcse(ref)
        assert np.all(np.abs(m1 - m2) < 4 * np.hypot(em1, em2)), (name, m1, m2, em1, em2)
        assert np.all(np.abs(s1 - s2) < 4 * np.hypot(es1, es2)), (name, s1, s2, es1, es2)
    # and the posterior is not the guide's: NUTS moved the globals (tau's posterior is wide and skewed)
    assert post.diagnostics["globals"]["tau"]["ess_bulk"] > 100


def test_globals_sample_is_refused_by_methods_that_hold_them_fixed():
    with pytest.raises(ValueError, match="globals='sample'"):
        pyro_meta.infer(EightSchools(), eight_schools(), method="amortized", globals="sample")
    with pytest.raises(ValueError, match="globals must be one of"):
        pyro_meta.infer(EightSchools(), eight_schools(), method="nuts", globals="all")
