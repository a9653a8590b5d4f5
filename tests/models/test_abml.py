"""ABML: the contract; the inner SVI step and the target ELBO against independent computations."""

import math

import pyro
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from pyro_meta.data import Sinusoid
from pyro_meta.models import ABML
from pyro_meta.models._gradient_based import kl_diag_normal
from pyro_meta.testing import MetaModelContract, assert_close


class TestABMLContract(MetaModelContract):
    def make_model(self):
        return ABML(hidden=(8,), inner_steps=2)


def test_kl_matches_torch_distributions(generator):
    m1, m2 = torch.randn(3, 5, generator=generator), torch.randn(5, generator=generator)
    s1, s2 = torch.randn(3, 5, generator=generator) * 0.3, torch.randn(5, generator=generator) * 0.3
    ref = kl_divergence(Normal(m1, s1.exp()), Normal(m2, s2.exp())).sum(-1)
    assert_close(kl_diag_normal(m1, s1, m2, s2), ref, atol=1e-5, what="KL")


def test_first_inner_step_matches_a_per_task_reference(generator):
    """Explicit step on E[MSE / 2] (log s and mu), then the exact prox step of the w-weighted KL mean term on mu."""
    model = ABML(
        hidden=(6,), prior_scale=0.05, noise_std=0.4, inner_lr=0.05, inner_lr_scale=0.3, inner_steps=1, kl_weight=0.5
    )
    batch = Sinusoid().sample(3, (2, 5), 4, generator=generator)
    torch.manual_seed(3)
    mu, log_s = model.adapt(batch.context_x, batch.context_y, batch.context_mask)
    torch.manual_seed(3)
    eps = torch.randn(1, 3, model.num_params)[0]
    sigma, theta = 0.05, model.theta.detach()
    for t in range(3):
        m = batch.context_mask[t]
        n = int(m.sum())
        phi = (theta + sigma * eps[t]).requires_grad_(True)
        pred = model.net(batch.context_x[t][m][None], phi[None])[0]
        (g,) = torch.autograd.grad(0.5 * ((pred - batch.context_y[t][m]) ** 2).mean(), phi)
        a = 0.5 * 0.05 * 0.4**2 / (n * sigma**2)
        assert_close(mu[t].detach(), (theta - 0.05 * g + a * theta) / (1 + a), atol=1e-5, what=f"mu_1 task {t}")
        # d/d log s of E-term = g * eps * s; the KL scale term has zero gradient at log s = log sigma
        expected = torch.full_like(theta, math.log(sigma)) - 0.3 * g * eps[t] * sigma
        assert_close(log_s[t].detach(), expected, atol=1e-5, what=f"log s_1 task {t}")


def test_loss_is_the_target_nll_per_point_without_adaptation(generator):
    """K = 0 and sigma -> 0: q = p = delta(theta), KL = 0, loss = -log N(y_tgt | f_theta, noise^2) / n_t."""
    model = ABML(hidden=(6,), prior_scale=1e-6, inner_steps=0, noise_std=0.3)
    batch = Sinusoid(noise_std=0.1).sample(4, 3, (2, 6), generator=generator)
    loss = model.loss(batch)
    ref = []
    for t in range(4):
        m = batch.target_mask[t]
        pred = model.net(batch.target_x[t][m][None], model.theta[None])[0]
        ref.append(-Normal(pred, 0.3).log_prob(batch.target_y[t][m]).mean())
    assert_close(loss.detach(), torch.stack(ref).mean().detach(), atol=1e-4, what="loss")


def test_guide_draws_are_the_adapted_gaussian(generator):
    model = ABML(hidden=(6,), inner_steps=3, prior_scale=0.05)
    batch = Sinusoid().sample(2, 5, 4, generator=generator)
    model.eval()
    pyro.set_rng_seed(1)
    tr = pyro.poutine.trace(model.guide).get_trace(batch)
    fn = tr.nodes["phi"]["fn"]
    pyro.set_rng_seed(1)
    mu, log_s = model.adapt(batch.context_x, batch.context_y, batch.context_mask)
    assert_close(fn.base_dist.loc.detach(), mu.detach().unsqueeze(-2), atol=1e-6, what="q mean")
    assert_close(fn.base_dist.scale.detach(), log_s.exp().detach().unsqueeze(-2), atol=1e-6, what="q scale")
    assert not torch.equal(mu, model.theta.expand_as(mu)), "the inner steps moved nothing"


def test_meta_gradient_reaches_every_parameter(generator):
    model = ABML(hidden=(6,), inner_steps=2, learn_inner_lr=True, kl_weight=1.0)
    loss = model.loss(Sinusoid(noise_std=0.1).sample(3, 4, 4, generator=generator))
    names = [n for n, _ in model.named_parameters()]
    grads = torch.autograd.grad(loss, list(model.parameters()))
    for name, g in zip(names, grads):
        assert bool(torch.isfinite(g).all()) and float(g.abs().max()) > 0, name
    assert set(names) == {"theta", "log_sigma", "log_noise", "log_inner_lr", "log_inner_lr_scale"}


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="kl_weight"):
        ABML(kl_weight=-1.0)
    with pytest.raises(ValueError, match="num_samples"):
        ABML(num_samples=0)
    with pytest.raises(ValueError, match="inner_lr_scale"):
        ABML(inner_lr_scale=0.0)
