"""NeuralProcess: the contract (both objectives, with and without the deterministic path), shapes and losses."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

import pyro_meta
from pyro_meta.data import Sinusoid
from pyro_meta.models import NeuralProcess
from pyro_meta.testing import MetaModelContract, assert_close

NP_STEPS = 800


class TestNeuralProcessContract(MetaModelContract):
    def make_model(self):
        return NeuralProcess(latent_dim=4, hidden=16)


class TestNeuralProcessMixtureGuideContract(MetaModelContract):
    def make_model(self):
        return NeuralProcess(latent_dim=2, hidden=16, guide="mixture", num_components=3)


class TestNeuralProcessFlowGuideContract(MetaModelContract):
    def make_model(self):
        return NeuralProcess(latent_dim=2, hidden=16, guide="flow", flow_layers=2)


def test_non_gaussian_guides_loss_is_the_elbo_estimated_at_the_draws():
    """The mixture/flow loss equals Trace_ELBO's estimate at the same reparameterised draws (KL by Monte Carlo)."""
    import pyro
    from pyro.infer import Trace_ELBO

    for guide in ("mixture", "flow"):
        model = NeuralProcess(latent_dim=2, hidden=8, guide=guide)
        batch = Sinusoid(noise_std=0.1).sample(4, 3, 5, generator=torch.Generator().manual_seed(0))
        pyro.set_rng_seed(3)
        ours = model.loss(batch)
        pyro.set_rng_seed(3)
        with pyro_meta.local_params():
            ref = Trace_ELBO().differentiable_loss(model.model, model.guide, batch) / batch.num_tasks
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="guide must be one of"):
        NeuralProcess(guide="gaussian")


class TestNeuralProcessNPObjectiveContract(MetaModelContract):
    """The NP-paper objective with a deterministic path: the same contract, every method."""

    def make_model(self):
        return NeuralProcess(latent_dim=3, hidden=(16, 8), deterministic_path=True, objective="np")


def _batch(T=3, seed=0, nc=(2, 4), nt=5):
    return Sinusoid(noise_std=0.1).sample(T, nc, nt, generator=torch.Generator().manual_seed(seed))


def test_defaults_construct_and_validate():
    model = NeuralProcess()
    assert model.latent_dim > 0 and model.objective == "elbo" and not model.deterministic_path
    with pytest.raises(ValueError, match="objective"):
        NeuralProcess(objective="maml")
    with pytest.raises(ValueError, match="activation"):
        NeuralProcess(activation="sigmoid")
    assert isinstance(NeuralProcess(activation="relu").decoder[1], torch.nn.ReLU)
    with pytest.raises(ValueError, match="latent_dim"):
        NeuralProcess(latent_dim=0)
    with pytest.raises(ValueError, match="y_dim"):
        NeuralProcess(y_dim=2).model(_batch())


@pytest.mark.parametrize("deterministic_path", [False, True])
def test_model_broadcasts_over_draws_and_runs_context_only(deterministic_path):
    model = NeuralProcess(latent_dim=5, hidden=8, deterministic_path=deterministic_path)
    batch = _batch(T=4)
    with pyro.plate("_draws", 7, dim=-3):
        tr = poutine.trace(model.model).get_trace(batch.without_target_y())
    assert tr.nodes["z"]["value"].shape == (7, 4, 1, 5)
    assert tr.nodes["y_target"]["value"].shape == (7, 4, 5, 1)
    tr = poutine.trace(model.model).get_trace(batch.context_only())
    assert "y_target" not in tr.nodes and tr.nodes["y_context"]["value"].shape == (4, 4, 1)


def test_decoder_scale_is_bounded_below():
    model = NeuralProcess(latent_dim=2, hidden=8, min_std=0.05)
    with torch.no_grad():
        model.decoder[-1].bias.fill_(-1e3)  # softplus -> 0
    p = model.decode(torch.zeros(2, 3, 1), torch.zeros(2, 1, 2))
    assert p.batch_shape == (2, 3) and p.event_shape == (1,)
    assert_close(p.base_dist.scale, torch.full((2, 3, 1), 0.05), atol=1e-6, what="decoder scale floor")


def test_padding_does_not_change_the_guide():
    """q(z | D) depends only on unmasked points: changing padded values changes nothing."""
    model = NeuralProcess(latent_dim=3, hidden=8)
    batch = _batch(T=3, nc=(1, 4))
    assert not bool(batch.context_mask.all()), "the test needs a ragged batch"
    y2 = torch.where(batch.context_mask[..., None], batch.context_y, torch.full_like(batch.context_y, 9.0))
    a = model.encode(batch.context_x, batch.context_y, batch.context_mask)
    b = model.encode(batch.context_x, y2, batch.context_mask)
    assert_close(a.base_dist.loc, b.base_dist.loc, atol=1e-6, what="guide mean under padding")


def test_guide_conditions_on_target_only_when_it_is_observed():
    model = NeuralProcess(latent_dim=3, hidden=8)
    batch = _batch(T=2)
    loc = {}
    for name, b in (("train", batch), ("infer", batch.without_target_y()), ("context", batch.context_only())):
        loc[name] = poutine.trace(model.guide).get_trace(b).nodes["z"]["fn"].base_dist.loc
    assert_close(loc["infer"], loc["context"], atol=1e-7, what="guide at inference vs context only")
    assert not torch.allclose(loc["train"], loc["context"]), "the training guide ignored the target set"


@pytest.mark.parametrize("deterministic_path", [False, True])
def test_elbo_loss_is_pyro_mean_field_elbo(deterministic_path):
    """The default loss is Pyro's ``TraceMeanField_ELBO`` of ``model``/``guide`` (analytic KL to N(0, I)) on the same draw."""
    torch.manual_seed(0)
    model = NeuralProcess(latent_dim=3, hidden=8, deterministic_path=deterministic_path)
    batch = _batch(T=3)
    pyro.set_rng_seed(1)
    loss = model.loss(batch)
    pyro.set_rng_seed(1)
    expected = TraceMeanField_ELBO(max_plate_nesting=2).differentiable_loss(model.model, model.guide, batch) / 3
    assert_close(loss, expected, atol=1e-4, what="elbo loss vs TraceMeanField_ELBO")
    # and it is an unbiased estimate of the Trace_ELBO loss (sampled KL): same mean over many draws
    pyro.set_rng_seed(2)
    ours = torch.stack([model.loss(batch).detach() for _ in range(400)])
    sampled = torch.tensor(
        [Trace_ELBO(max_plate_nesting=2).loss(model.model, model.guide, batch) / 3 for _ in range(400)],
        dtype=ours.dtype,
    )
    se = (ours.var() / 400 + sampled.var() / 400).sqrt()
    assert abs(float(ours.mean() - sampled.mean())) < 4 * float(se), (
        float(ours.mean()),
        float(sampled.mean()),
        float(se),
    )
    # the closed-form KL has the smaller variance
    assert float(ours.var()) < float(sampled.var())


def test_elbo_loss_with_particles_averages_the_likelihood():
    """``num_particles = P`` averages the likelihood over P draws; the closed-form KL is unchanged."""
    torch.manual_seed(0)
    model = NeuralProcess(latent_dim=3, hidden=8)
    model.num_particles = 4
    batch = _batch(T=3)
    pyro.set_rng_seed(3)
    loss = model.loss(batch)
    pyro.set_rng_seed(3)
    expected = (
        TraceMeanField_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=2).differentiable_loss(
            model.model, model.guide, batch
        )
        / 3
    )
    assert_close(loss, expected, atol=1e-4, what="4-particle elbo loss")


def test_np_objective_uses_the_conditional_prior():
    """The "np" loss is KL(q(z|C,T) || q(z|C)) - E log p(y_{C+T} | z): zero KL when the target adds nothing."""
    torch.manual_seed(0)
    model = NeuralProcess(latent_dim=3, hidden=8, objective="np")
    batch = _batch(T=3)
    pyro.set_rng_seed(2)
    loss = model.loss(batch)
    x, y, m = batch.observed()
    q_all = model.encode(x, y, m)
    q_c = model.encode(batch.context_x, batch.context_y, batch.context_mask)
    pyro.set_rng_seed(2)
    z = q_all.rsample()[:, None]
    ll = (model.decode(x, z).log_prob(y) * m).sum(-1)
    expected = (torch.distributions.kl_divergence(q_all, q_c) - ll).mean()
    assert_close(loss, expected, atol=1e-5, what="np loss")
    # an elbo model gives a different number on the same batch (different KL term)
    elbo_model = NeuralProcess(latent_dim=3, hidden=8, objective="elbo")
    elbo_model.load_state_dict(model.state_dict())
    pyro.set_rng_seed(2)
    assert abs(float(elbo_model.loss(batch).detach()) - float(loss.detach())) > 1e-3


# ----------------------------------------------------------------------------- two exact methods agree
@pytest.fixture(scope="module")
def trained_np():
    """A small NeuralProcess meta-trained on noisy sinusoids, and 4 held-out tasks with 4 context points."""
    torch.set_num_threads(1)  # module fixtures run before conftest's per-test setting
    tasks = Sinusoid(noise_std=0.2)
    pyro.set_rng_seed(0)
    model = NeuralProcess(latent_dim=2, hidden=32, num_layers=2)
    pyro_meta.fit(
        model,
        tasks,
        num_steps=NP_STEPS,
        tasks_per_batch=16,
        num_context=(1, 10),
        num_target=(10, 20),
        lr=3e-3,
        lr_decay=0.2,
        progress=False,
        seed=0,
    )
    batch = tasks.sample(4, 4, 15, generator=torch.Generator().manual_seed(11))
    return model, batch


def _predictive_summary(post):
    """Predictive mean, 5% and 95% quantiles, and the density at those quantiles, each ``[T, Nt]``.

    The density comes from the draws' own quantiles: ``f(q_p) ~ 2h / (q_{p+h} - q_{p-h})``, ``h = 0.02``.
    """
    flat = post.predict().flat[..., 0]  # [N, T, Nt]
    h = 0.02
    q = torch.quantile(flat, torch.tensor([0.05 - h, 0.05, 0.05 + h, 0.95 - h, 0.95, 0.95 + h]), dim=0)
    density_lo, density_hi = 2 * h / (q[2] - q[0]), 2 * h / (q[5] - q[3])
    return flat.mean(0), flat.std(0), (q[1], density_lo), (q[4], density_hi)


@pytest.mark.slow
def test_nuts_and_importance_agree_on_the_posterior_predictive(trained_np):
    """NUTS (guide-initialised) and importance sampling with many proposals target the same exact posterior.

    Monte Carlo standard errors per target point, with ``n`` each method's effective sample size
    (NUTS: the per-task minimum over coordinates; importance: the weights' ESS) and ``sd`` the
    predictive standard deviation: mean ``sd / sqrt(n)``, 5% / 95% quantiles ``sqrt(p (1 - p) / n) / density``
    (the density estimated from the draws). Both must agree within 5 combined standard errors at every
    point (measured: worst 2.6-3.4, mean 0.7-1.1 over 60 points, two seeds), and the prior predictive
    must *not* (measured: 21 standard errors), so the check can fail.
    """
    model, batch = trained_np
    nuts = pyro_meta.infer(
        model, batch, method="nuts", num_samples=400, num_warmup=300, num_chains=2, jit_compile=True, seed=0
    )
    imp = pyro_meta.infer(model, batch, method="importance", num_samples=4000, num_proposals=20000, widen=2.0, seed=0)
    assert not nuts.diagnostics["bad_tasks"], (
        f"NUTS mixed badly: r_hat {nuts.diagnostics['r_hat']}, ess {nuts.diagnostics['ess']}"
    )
    ess_is = imp.diagnostics["ess"]
    assert float(ess_is.min()) > 300, f"importance ESS too small for the comparison: {ess_is}"
    n_nuts = nuts.diagnostics["ess"][:, None]
    n_is = ess_is.clamp(max=4000)[:, None]
    m1, sd1, *quantiles1 = _predictive_summary(nuts)
    m2, sd2, *quantiles2 = _predictive_summary(imp)
    checks = [("mean", m1, m2, (sd1**2 / n_nuts + sd2**2 / n_is).sqrt())]
    for name, (q1, f1), (q2, f2) in zip(("5% quantile", "95% quantile"), quantiles1, quantiles2):
        var = 0.05 * 0.95 * (1 / (f1**2 * n_nuts) + 1 / (f2**2 * n_is))  # sqrt(p (1 - p) / n) / density
        checks.append((name, q1, q2, var.sqrt()))
    for name, a, b, se in checks:
        z = (a - b).abs() / se
        print(f"{name}: worst {float(z.max()):.2f}, mean {float(z.mean()):.2f} standard errors")
        assert float(z.max()) < 5.0, f"NUTS vs importance predictive {name}: worst {float(z.max()):.2f} standard errors"
    prior = pyro_meta.infer(model, batch, method="prior", num_samples=4000, seed=0)
    m0, sd0, *_ = _predictive_summary(prior)
    z0 = (m0 - m2).abs() / (sd0**2 / 4000 + sd2**2 / n_is).sqrt()
    print(f"prior predictive mean vs importance: worst {float(z0.max()):.1f} standard errors")
    assert float(z0.max()) > 5.0, "the prior predictive passes the same check: the tolerance is too loose"
