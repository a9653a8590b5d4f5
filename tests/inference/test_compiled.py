"""The compiled potential-and-gradient (``make_fx`` + TorchInductor): equal to Pyro's, cached, checked, with a fallback.

Compiling costs seconds (about a minute the first time TorchInductor runs in a fresh environment),
so these tests compile as few graphs as they can: a module-scoped fixture compiles the BayesianLinear
potential once and the other tests reuse it through the cache.
"""

import warnings

import pyro
import pytest
import torch
from pyro.infer.mcmc.util import initialize_model
from pyro.ops.integrator import potential_grad

import pyro_meta
from pyro_meta.data import LinearTasks
from pyro_meta.inference import compiled as compiled_mod
from pyro_meta.inference import mcmc
from pyro_meta.inference.common import prepare
from pyro_meta.model import frozen, local_params
from pyro_meta.models import BayesianLinear

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def linear():
    model = BayesianLinear()
    pyro_meta.fit(model, LinearTasks(), num_steps=300, tasks_per_batch=32, lr=0.05, progress=False, seed=0)
    return model.eval()


def _batch(seed):
    return LinearTasks().sample(6, 5, 5, generator=torch.Generator().manual_seed(seed))


def test_inductor_potential_equals_pyros_and_is_cached_across_batches(linear):
    model = linear
    compiled_mod.clear_cache()
    grads = []
    for seed, hit in ((1, False), (2, True)):  # two batches of the same shapes: one compile
        problem = prepare(model, _batch(seed), progress=False)
        with frozen(model), local_params():
            start = mcmc._initial_params(problem, "guide", 1)[0]
            pot = mcmc.InductorPotential(problem, start)
            assert pot.compiled.cache_hit is hit
            _, pyro_fn, transforms, _ = initialize_model(problem.fn, (problem.cond,), max_plate_nesting=2)
            z = {"w": start["w"] + 0.3 * torch.randn(start["w"].shape, generator=torch.Generator().manual_seed(seed))}
            g_ours, U_ours = potential_grad(pot, dict(z))
            g_pyro, U_pyro = potential_grad(pyro_fn, dict(z))
        assert torch.allclose(U_ours, U_pyro, rtol=1e-5), (U_ours, U_pyro)
        assert torch.allclose(g_ours["w"], g_pyro["w"], rtol=1e-4, atol=1e-4)
        grads.append(g_ours["w"])
    assert not torch.allclose(grads[0], grads[1])  # the second batch's own data, not the first's constants


def test_nuts_inductor_samples_the_closed_form_posterior(linear):
    model = linear
    batch = _batch(3)  # same shapes as the fixture's batches: the compiled graph is reused
    post = pyro_meta.infer(
        model, batch, method="nuts", jit_compile="inductor", num_samples=300, num_warmup=200, num_chains=2, seed=0
    )
    d = post.diagnostics
    assert d["jit"] == "inductor" and d["compile"][0]["cache_hit"] in (True, False) and d["num_grad_evals"] > 500
    mean, cov = model.exact_posterior(batch)
    sd = cov.diagonal(dim1=-2, dim2=-1).sqrt()
    assert ((post.mean("w") - mean).abs() / sd).mean() < 0.12
    assert (post.std("w") / sd - 1).abs().mean() < 0.12
    # HMC takes the same compiled potential (same model, weights and shapes: a cache hit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        hmc = pyro_meta.infer(
            model, batch, method="hmc", jit_compile="inductor", num_samples=20, num_warmup=20, num_chains=1, seed=0
        )
    assert hmc.diagnostics["compile"][0]["cache_hit"] is True


def test_changed_weights_recompile(linear):
    model = linear
    problem = prepare(model, _batch(1), progress=False)
    with frozen(model), local_params():
        start = mcmc._initial_params(problem, "guide", 1)[0]
        before = mcmc.InductorPotential(problem, start)
        with torch.no_grad():
            model.mu.add_(0.5)  # an in-place update (as an optimizer step) bumps the parameter's version
        try:
            after = mcmc.InductorPotential(problem, start)
            _, pyro_fn, _, _ = initialize_model(problem.fn, (problem.cond,), max_plate_nesting=2)
            assert after.compiled.cache_hit is False
            assert torch.allclose(after(start), pyro_fn(start), rtol=1e-5)
            assert float(after.compiled.info()["compile_seconds"]) > 0 and after.compiled is not before.compiled
        finally:
            with torch.no_grad():
                model.mu.sub_(0.5)


def test_reuse_is_checked_against_the_eager_gradient():
    """A cached graph is reused only where it still equals the eager function; data-dependent branches refuse to trace.

    ``scale`` stands for anything a trace bakes in that the cache key cannot see: after it changes,
    the cached graph disagrees with the eager gradient at the new inputs and is recompiled.
    """
    owner = torch.nn.Linear(1, 1)
    scale = [1.0]

    def fn(u, x):
        return scale[0] * (u * x).sum()

    u = torch.ones(3)
    first = compiled_mod.compile_value_and_grad(fn, [u, torch.ones(3)], 1, owner=owner, kind="test")
    again = compiled_mod.compile_value_and_grad(fn, [u, 2 * torch.ones(3)], 1, owner=owner, kind="test")
    scale[0] = 2.0
    other = compiled_mod.compile_value_and_grad(fn, [u, -torch.ones(3)], 1, owner=owner, kind="test")
    assert not first.cache_hit and again.cache_hit and not other.cache_hit
    U, g = other(u, -torch.ones(3))
    assert float(U) == -6.0 and torch.equal(g, torch.full((3,), -2.0))

    def branchy(u, x):  # Python control flow on a tensor's value: make_fx refuses it, CompileError says so
        return (u * x).sum() if bool(x.sum() > 0) else (2 * u * x).sum()

    with pytest.raises(compiled_mod.CompileError, match="could not trace"):
        compiled_mod.compile_value_and_grad(branchy, [u, torch.ones(3)], 1, owner=owner, kind="test")


def test_tracing_failure_falls_back_to_jit_with_a_warning(linear, monkeypatch):
    def fail(*args, **kwargs):
        raise compiled_mod.CompileError("simulated tracing failure")

    monkeypatch.setattr(mcmc, "compile_value_and_grad", fail)
    with pytest.warns(UserWarning, match="jit_compile='inductor' failed.*simulated"):
        post = pyro_meta.infer(
            linear,
            _batch(1),
            method="nuts",
            jit_compile="inductor",
            num_samples=10,
            num_warmup=10,
            num_chains=1,
            seed=0,
        )
    assert post.diagnostics["jit"] is True


def test_batched_hmc_compiled_matches_eager_potential(linear):
    """``batched_hmc(compile=True)``: the same sampler on the compiled per-task potential; seeded runs repeat."""
    batch = _batch(4)
    runs = []
    for _ in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            runs.append(
                pyro_meta.infer(
                    linear,
                    batch,
                    method="batched_hmc",
                    compile=True,
                    num_samples=200,
                    num_warmup=150,
                    num_chains=2,
                    seed=0,
                )
            )
    assert runs[1].diagnostics["compile"]["cache_hit"] is True
    assert torch.equal(runs[0].samples["w"], runs[1].samples["w"])
    mean, cov = linear.exact_posterior(batch)
    sd = cov.diagonal(dim1=-2, dim2=-1).sqrt()
    assert ((runs[0].mean("w") - mean).abs() / sd).mean() < 0.15
    pyro.clear_param_store()
