"""infer: argument checks, MCMC options (chunks, inits, chains, JIT), diagnostics and determinism."""

import warnings

import pytest
import torch

import pyro_meta
from pyro_meta.data import LinearTasks
from pyro_meta.models import BayesianLinear


@pytest.fixture(scope="module")
def setup():
    model = BayesianLinear()
    pyro_meta.fit(model, LinearTasks(), num_steps=300, tasks_per_batch=32, lr=0.05, progress=False)
    batch = LinearTasks().sample(4, (3, 6), 5, generator=torch.Generator().manual_seed(9))
    return model, batch


def test_bad_arguments(setup):
    model, batch = setup
    with pytest.raises(ValueError, match="method"):
        pyro_meta.infer(model, batch, method="laplace")
    with pytest.raises(ValueError, match="num_samples"):
        pyro_meta.infer(model, batch, num_samples=0)
    with pytest.raises(TypeError, match="TaskBatch"):
        pyro_meta.infer(model, {"context_x": batch.context_x})
    with pytest.raises(TypeError, match="MetaModel"):
        pyro_meta.infer(torch.nn.Linear(1, 1), batch)
    with pytest.raises(ValueError, match="init"):
        pyro_meta.infer(model, batch, method="nuts", init="random")
    with pytest.raises(ValueError, match="chunk_size"):
        pyro_meta.infer(model, batch, method="nuts", chunk_size=0)
    with pytest.raises(TypeError, match="takes no options"):
        pyro_meta.infer(model, batch, method="amortized", num_steps=3)


def test_predict_checks_its_batch(setup):
    model, batch = setup
    post = pyro_meta.infer(model, batch, num_samples=10)
    with pytest.raises(ValueError, match="tasks"):
        post.predict(batch.select([0, 1]))
    with pytest.raises(ValueError, match="target"):
        post.predict(batch.context_only())
    pred = post.predict()
    with pytest.raises(ValueError, match="shape"):
        pred.log_prob(torch.zeros(4, 5))
    assert pred.samples.shape == (1, 10, 4, 5, 1)
    lo, hi = pred.interval(0.5)
    assert bool((lo <= hi).all())


def test_chunks_and_chains_shape_and_agree(setup):
    model, batch = setup
    mean, cov = model.exact_posterior(batch)
    sd = cov.diagonal(dim1=-2, dim2=-1).sqrt()
    post = pyro_meta.infer(
        model,
        batch,
        method="nuts",
        num_samples=150,
        num_warmup=100,
        num_chains=2,
        chunk_size=3,
        seed=0,
        max_tree_depth=6,
    )
    assert post.samples["w"].shape == (2, 150, 4, 4)
    assert post.diagnostics["num_chunks"] == 2 and post.diagnostics["step_size"].shape == (2, 2)
    assert post.sample_stats["diverging"].shape == (2, 150) and post.sample_stats["lp"].shape == (2, 150)
    assert ((post.mean() - mean).abs() / sd).mean() < 0.15
    assert post.diagnostics["r_hat"].shape == (4,) and float(post.diagnostics["r_hat"].max()) < 1.1


@pytest.mark.parametrize("init", ["guide", "prior", "median"])
def test_inits(setup, init):
    model, batch = setup
    post = pyro_meta.infer(
        model, batch, method="nuts", num_samples=50, num_warmup=50, num_chains=1, init=init, seed=0, max_tree_depth=6
    )
    assert post.diagnostics["init"] == init and bool(torch.isfinite(post.samples["w"]).all())


def test_guide_init_starts_chains_at_the_guide(setup, monkeypatch):
    """Chain 0 starts at the guide's mean, the others at guide draws (dispersed)."""
    from pyro_meta.inference import mcmc

    model, batch = setup
    problem = pyro_meta.inference.common.prepare(model, batch)
    starts = mcmc._initial_params(problem, "guide", 3)
    ref = pyro_meta.infer(model, batch, num_samples=4000, seed=0)
    # chain 0 starts at the mean of 64 guide draws: within 4 standard errors of the guide mean
    assert bool(((starts[0]["w"][:, 0] - ref.mean()).abs() < 4 * ref.std() / 8).all())
    assert not torch.allclose(starts[1]["w"], starts[2]["w"])


def test_same_seed_same_mcmc_draws(setup):
    model, batch = setup
    a = pyro_meta.infer(
        model, batch, method="nuts", num_samples=20, num_warmup=20, num_chains=1, seed=3, max_tree_depth=6
    )
    b = pyro_meta.infer(
        model, batch, method="nuts", num_samples=20, num_warmup=20, num_chains=1, seed=3, max_tree_depth=6
    )
    assert torch.equal(a.samples["w"], b.samples["w"])


def test_jit_compile_runs_and_matches_eager(setup):
    model, batch = setup
    kw = dict(method="nuts", num_samples=30, num_warmup=30, num_chains=1, seed=3, max_tree_depth=6)
    a = pyro_meta.infer(model, batch, **kw)
    b = pyro_meta.infer(model, batch, jit_compile=True, **kw)
    assert b.diagnostics["jit"] is True
    assert torch.allclose(a.samples["w"], b.samples["w"], atol=1e-3)
    assert all(p.requires_grad for p in model.parameters()), "parameters must be restored after MCMC"


def test_jit_falls_back_cleanly(setup):
    """A model that cannot be traced (Python control flow on values) runs eagerly with a warning."""

    class Untraceable(BayesianLinear):
        def model(self, batch):
            if float(batch.context_y.sum()) > -1e9:  # data-dependent Python branch
                super().model(batch)

    model, batch = setup
    m = Untraceable()
    m.load_state_dict(model.state_dict())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        post = pyro_meta.infer(m, batch, method="nuts", num_samples=10, num_warmup=10, num_chains=1, jit_compile=True)
    assert bool(torch.isfinite(post.samples["w"]).all())
    if not post.diagnostics["jit"]:
        assert any("jit_compile=True failed" in str(w.message) for w in caught)


def test_bad_mixing_is_reported_by_task(setup):
    model, batch = setup
    with pytest.warns(UserWarning, match=r"tasks \[.*\] mixed badly"):
        post = pyro_meta.infer(
            model,
            batch,
            method="hmc",
            num_samples=20,
            num_warmup=0,
            num_chains=2,
            init="prior",
            step_size=1e-3,
            num_steps=1,
            adapt_step_size=False,
            seed=0,
        )
    assert post.diagnostics["bad_tasks"]


def test_importance_diagnostics(setup):
    model, batch = setup
    post = pyro_meta.infer(model, batch, method="importance", num_samples=100, num_proposals=500, seed=0)
    ess = post.diagnostics["ess"]
    assert ess.shape == (4,) and bool((ess > 50).all()) and bool((ess <= 500).all())
    # the evidence estimate matches the closed-form marginal likelihood of the context
    mean_w, s, sig = model.mu.detach(), model.s.detach(), model.noise_std
    for t in range(4):
        m = batch.context_mask[t]
        phi = model.features(batch.context_x[t][m])
        cov = phi @ torch.diag(s**2) @ phi.T + sig**2 * torch.eye(phi.shape[0])
        exact = torch.distributions.MultivariateNormal(phi @ mean_w, cov).log_prob(batch.context_y[t][m][:, 0])
        # relative sd of the evidence estimate is about 1/sqrt(ESS): allow 4 of them
        assert abs(float(post.diagnostics["log_evidence"][t] - exact)) < 4 / float(ess[t]) ** 0.5


def test_svi_loss_decreases_and_amortized_matches_its_guide(setup):
    model, batch = setup
    post = pyro_meta.infer(model, batch, method="svi", num_samples=50, num_steps=50, seed=0)
    losses = post.diagnostics["losses"]
    assert len(losses) == 50 and all(torch.isfinite(torch.tensor(losses)))


def test_model_parameters_untouched_by_inference(setup):
    model, batch = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for method in ("svi", "importance", "nuts"):
        pyro_meta.infer(
            model,
            batch,
            method=method,
            num_samples=10,
            **({"num_warmup": 10, "max_tree_depth": 5} if method == "nuts" else {}),
        )
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_global_latents_are_held_at_the_guide_point_estimate(setup):
    """A global latent outside the tasks plate is conditioned on the guide's value, in infer and predict."""
    import pyro
    import pyro.distributions as dist

    from pyro_meta import observe, task_plate

    class GlobalNoise(BayesianLinear):
        def model(self, batch):
            sigma = pyro.sample("sigma", dist.LogNormal(0.0, 0.1))  # prior around 1.0
            with task_plate(batch):
                w = pyro.sample("w", dist.Normal(self.mu, self.s).to_event(1))
                observe(batch, lambda x: dist.Normal(self._mean(x, w), sigma).to_event(1))

        def guide(self, batch):
            pyro.sample("sigma", dist.Delta(torch.tensor(0.3)))  # the point estimate: 0.3
            super().guide(batch)

    model, batch = setup
    m = GlobalNoise()
    m.load_state_dict(model.state_dict())
    post = pyro_meta.infer(m, batch, method="importance", num_samples=2000, seed=0)
    assert set(post.samples) == {"w"}
    _, sd = model.exact_predictive(batch)  # the same model with sigma = 0.3
    assert ((post.predict().std / sd) - 1).abs().mean() < 0.1


def test_select_keeps_the_chosen_tasks_draws_and_diagnostics(setup):
    """``Posterior.select`` equals inferring only those tasks' rows: draws, per-task diagnostics, predictive."""
    model, batch = setup
    post = pyro_meta.infer(model, batch, method="nuts", num_samples=100, num_warmup=100, num_chains=2, seed=0)
    sub = post.select([3, 1])
    assert sub.batch.num_tasks == 2
    for k, v in post.samples.items():
        assert torch.equal(sub.samples[k], v[:, :, [3, 1]])
    assert torch.equal(sub.diagnostics["r_hat"], post.diagnostics["r_hat"][[3, 1]])
    assert torch.equal(sub.diagnostics["ess"], post.diagnostics["ess"][[3, 1]])
    assert torch.equal(sub.diagnostics["divergences"], post.diagnostics["divergences"])  # per chain: kept
    assert torch.equal(sub.batch.context_x, batch.context_x[[3, 1]])
    assert torch.equal(sub.mean(), post.mean()[[3, 1]])
    # the predictive of the selected tasks: the same draws pushed through the model, at their target x
    assert sub.predict().samples.shape == (2, 100, 2) + tuple(batch.target_x.shape[1:2]) + (1,)
    assert post.select(2).batch.num_tasks == 1
    with pytest.raises(ValueError, match="selects no task"):
        post.select([])


def test_the_pyro_kernel_internals_the_recorder_reads_are_guarded():
    """The per-draw recorder reads private HMC attributes: present in this Pyro, a clear error when not."""
    from pyro.infer import NUTS

    from pyro_meta.inference.mcmc import KERNEL_INTERNALS, check_kernel_internals

    kernel = NUTS(lambda: None)
    check_kernel_internals(kernel)  # the installed pyro-ppl has them
    assert all(hasattr(kernel, name) for name in KERNEL_INTERNALS)

    class Renamed:
        step_size = 0.1

    with pytest.raises(RuntimeError, match="pyro-ppl .* has no"):
        check_kernel_internals(Renamed())


def test_svi_from_the_guide_refines_a_per_task_affine_map(setup):
    """``start="guide"``: the guide's shape kept, per-task location/scale refined; exact here (conjugate guide)."""
    import copy

    model, batch = setup
    mean, cov = model.exact_posterior(batch)
    sd = cov.diagonal(dim1=-2, dim2=-1).sqrt()
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.q_mu.add_(1.0)  # a biased amortized guide: SVI must move each task's location back
    off = pyro_meta.infer(model, batch, num_samples=2000, seed=0)
    assert float(((off.mean() - mean).abs() / sd).max()) > 0.5
    post = pyro_meta.infer(model, batch, method="svi", start="guide", num_samples=2000, num_steps=300, seed=0)
    assert post.diagnostics["start"] == "guide" and len(post.diagnostics["losses"]) == 300
    assert float(((post.mean() - mean).abs() / sd).max()) < 0.15
    assert float((post.std() / sd - 1).abs().max()) < 0.15
