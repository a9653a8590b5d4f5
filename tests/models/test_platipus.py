"""PLATIPUS: the contract; gradient-shifted means, the guide and the loss against per-task references."""

import pyro
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from pyro_meta import infer
from pyro_meta.data import Sinusoid
from pyro_meta.models import PLATIPUS
from pyro_meta.testing import MetaModelContract, assert_close


class TestPLATIPUSContract(MetaModelContract):
    def make_model(self):
        return PLATIPUS(hidden=(8,), inner_steps=2)


def _task_grad(model, x, y, p):
    """grad_p of one task's MSE (a single task, no batching)."""
    p = p.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(((model.net(x[None], p[None])[0] - y) ** 2).mean(), p)
    return g


def test_shifted_means_match_per_task_gradients(generator):
    model = PLATIPUS(hidden=(6,), shift_lr=0.3)
    batch = Sinusoid(noise_std=0.1).sample(3, (2, 5), (3, 4), generator=generator)
    m_q, m_p = model._posterior_prior(batch)
    x, y, mask = batch.observed()
    for t in range(3):
        mc, mo = batch.context_mask[t], mask[t]
        g_p = _task_grad(model, batch.context_x[t][mc], batch.context_y[t][mc], model.theta)
        g_q = _task_grad(model, x[t][mo], y[t][mo], model.theta)
        assert_close(m_p[t].detach(), model.theta.detach() - 0.3 * g_p, atol=1e-6, what=f"prior mean task {t}")
        assert_close(m_q[t].detach(), model.theta.detach() - 0.3 * g_q, atol=1e-6, what=f"posterior mean task {t}")


def test_guide_is_a_gradient_step_from_the_shifted_prior_draw(generator):
    model = PLATIPUS(hidden=(6,), inner_lr=0.2, inner_steps=1)
    batch = Sinusoid().sample(2, 4, 3, generator=generator)
    model.eval()
    tr = pyro.poutine.trace(model.guide).get_trace(batch)
    theta_t = tr.nodes["theta_task"]["value"].squeeze(-2).detach()
    phi = tr.nodes["phi"]["value"].squeeze(-2).detach()
    for t in range(2):
        g = _task_grad(model, batch.context_x[t], batch.context_y[t], theta_t[t])
        assert_close(phi[t], theta_t[t] - 0.2 * g, atol=1e-6, what=f"phi task {t}")
    fn = tr.nodes["theta_task"]["fn"].base_dist
    m_p = model.shifted_mean(batch.context_x, batch.context_y, batch.context_mask, model.log_gamma_p)
    assert_close(fn.loc.squeeze(-2).detach(), m_p.detach(), atol=1e-6, what="p(theta | ctx) mean")
    assert_close(fn.scale.detach(), model.sigma.detach().expand(2, 1, -1), atol=0, what="p(theta | ctx) scale")
    # draws differ across the draw plate: the predictive has spread
    post = infer(model, batch, method="amortized", num_samples=6, seed=0)
    assert float(post.samples["phi"].std(1).mean()) > 0


def test_loss_terms_match_independent_computation(generator):
    """num_samples draws of q; loss = mean_t (MSE_tgt + w KL(q || p)); checked with a seeded reference."""
    model = PLATIPUS(hidden=(6,), kl_weight=0.5, inner_steps=1, learn_noise=False)
    batch = Sinusoid(noise_std=0.1).sample(3, 4, 5, generator=generator)
    torch.manual_seed(7)
    loss = model.loss(batch)
    torch.manual_seed(7)
    m_q, m_p = model._posterior_prior(batch)
    theta_t = m_q + model.log_q_scale.exp() * torch.randn((1,) + tuple(m_q.shape))
    ref = 0.0
    for t in range(3):
        g = _task_grad(model, batch.context_x[t], batch.context_y[t], theta_t[0, t])
        phi = theta_t[0, t] - model.log_inner_lr.exp() * g
        mse = ((model.net(batch.target_x[t][None], phi[None])[0] - batch.target_y[t]) ** 2).mean()
        kl = kl_divergence(Normal(m_q[t], model.log_q_scale.exp()), Normal(m_p[t], model.sigma)).sum()
        ref = ref + (mse + 0.5 * kl) / 3
    assert_close(loss.detach(), ref.detach(), atol=1e-4, rtol=1e-5, what="loss")


def test_meta_gradient_reaches_the_learned_parameters(generator):
    model = PLATIPUS(hidden=(6,), inner_steps=1)
    loss = model.loss(Sinusoid(noise_std=0.1).sample(3, 4, 4, generator=generator))
    named = dict(model.named_parameters())
    grads = dict(zip(named, torch.autograd.grad(loss, list(named.values()))))
    for name in ("theta", "log_sigma", "log_q_scale", "log_gamma_p", "log_gamma_q", "log_noise"):
        assert float(grads[name].abs().max()) > 0, name


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="kl_weight"):
        PLATIPUS(kl_weight=-0.1)
    with pytest.raises(ValueError, match="posterior_scale"):
        PLATIPUS(posterior_scale=0)
    with pytest.raises(ValueError, match="shift_lr"):
        PLATIPUS(shift_lr=-1)
