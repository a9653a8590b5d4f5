"""``DiagNormalMixture``: log_prob against Pyro's MixtureOfDiagNormals, rsample gradients equal to the
derivative of the inverse-Rosenblatt sample path (finite differences), unbiased expected gradients
against a closed form, and finite gradients where Pyro's estimator returns NaN."""

import pyro.distributions as dist
import pytest
import torch

from pyro_meta.guides import DiagNormalMixture, MixtureHead
from pyro_meta.guides.mixture import _rosenblatt


def _params(K=3, D=2, batch=(), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    locs = torch.randn(*batch, K, D, generator=g, dtype=dtype)
    scales = torch.rand(*batch, K, D, generator=g, dtype=dtype) + 0.3
    logits = torch.randn(*batch, K, generator=g, dtype=dtype)
    return locs, scales, logits


def test_log_prob_matches_pyro_mixture_of_diag_normals():
    locs, scales, logits = _params(K=4, D=3, batch=(5, 1))
    z = torch.randn(7, 5, 1, 3, dtype=torch.float64)
    ours = DiagNormalMixture(locs, scales, logits).log_prob(z)
    reference = dist.MixtureOfDiagNormals(locs, scales, logits).log_prob(z)
    assert ours.shape == (7, 5, 1)
    torch.testing.assert_close(ours, reference)


def test_moments_and_samples_agree():
    locs, scales, logits = _params(K=3, D=2, batch=(2,))
    q = DiagNormalMixture(locs, scales, logits)
    z = q.sample((200000,))
    assert z.shape == (200000, 2, 2)
    torch.testing.assert_close(z.mean(0), q.mean, atol=0.02, rtol=0)
    torch.testing.assert_close(z.var(0), q.variance, atol=0.03, rtol=0.02)


def _inverse(u, locs, scales, logits, iters=60):
    """``F^{-1}(u)`` dimension by dimension (bisection on the conditional CDFs), ``u [N, D]``."""
    z = torch.zeros_like(u)
    for i in range(u.shape[-1]):
        lo, hi = torch.full(u.shape[:-1], -12.0, dtype=u.dtype), torch.full(u.shape[:-1], 12.0, dtype=u.dtype)
        for _ in range(iters):
            mid = (lo + hi) / 2
            trial = z.clone()
            trial[..., i] = mid
            above = _rosenblatt(trial, locs, scales, logits)[0][..., i] > u[..., i]
            hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
        z[..., i] = (lo + hi) / 2
    return z


def test_rsample_gradient_is_the_derivative_of_the_transport_path():
    """d z / d theta from autograd equals finite differences of z = F^{-1}(u; theta) at fixed u."""
    base = _params(K=3, D=2)
    params = [p.clone().requires_grad_() for p in base]
    torch.manual_seed(0)
    z = DiagNormalMixture(*params).rsample((3,))  # [3, 2]
    u = _rosenblatt(z, *base)[0].detach()
    torch.testing.assert_close(_inverse(u, *base), z.detach(), atol=1e-9, rtol=0)  # z = F^{-1}(F(z))
    eps = 1e-6
    # every parameter entry nudged up and down at once: a batch of P perturbed mixtures
    shifts = []
    for which, p in enumerate(base):
        for j in range(p.numel()):
            for sign in (1.0, -1.0):
                shifted = [q.clone() for q in base]
                shifted[which].view(-1)[j] += sign * eps
                shifts.append(shifted)
    batched = [torch.stack([s[k] for s in shifts]) for k in range(3)]  # [P, ...]
    for n in range(3):
        moved = _inverse(u[n].expand(len(shifts), 2), *batched)  # [P, 2]
        fd = (moved[0::2] - moved[1::2]) / (2 * eps)  # [entries, 2]
        for i in range(2):  # coordinate 1 depends on coordinate 0: the chain is checked too
            grad = torch.cat([g.flatten() for g in torch.autograd.grad(z[n, i], params, retain_graph=True)])
            torch.testing.assert_close(grad, fd[:, i], atol=1e-6, rtol=1e-5)


def test_expected_gradient_matches_the_closed_form():
    """E[grad f(z)] by rsample equals grad E[f(z)] for f(z) = sum_d z_d^2 + z_0 z_1 (closed-form moments)."""
    base = _params(K=2, D=2, seed=1)
    params = [p.clone().requires_grad_() for p in base]
    torch.manual_seed(1)
    z = DiagNormalMixture(*params).rsample((400000,))
    f = (z**2).sum(-1) + z[:, 0] * z[:, 1]
    mc = torch.autograd.grad(f.mean(), params)
    locs, scales, logits = params
    pi = torch.softmax(logits, -1)
    exact_f = (pi * ((locs**2 + scales**2).sum(-1) + locs[:, 0] * locs[:, 1])).sum()
    exact = torch.autograd.grad(exact_f, params)
    for a, b in zip(mc, exact):
        torch.testing.assert_close(a, b, atol=0.03, rtol=0.02)


def test_gradients_stay_finite_where_pyros_estimator_fails():
    torch.manual_seed(0)
    K, D = 2, 128
    locs = torch.randn(K, D, requires_grad=True)
    scales = torch.ones(K, D, requires_grad=True)
    logits = torch.zeros(K, requires_grad=True)
    DiagNormalMixture(locs, scales, logits).rsample((20,)).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in (locs, scales, logits))


def test_one_dimensional_mixture_and_head():
    """D = 1 (unsupported by Pyro's MixtureOfDiagNormals): rsample gradients equal -dF/dtheta / q."""
    locs, scales, logits = [p.clone().requires_grad_() for p in _params(K=2, D=1)]
    q = DiagNormalMixture(locs, scales, logits)
    z = q.rsample((4,))
    grad = torch.autograd.grad(z.sum(), locs)[0]
    pi = torch.softmax(logits, -1).detach()
    dens = (
        pi * torch.distributions.Normal(locs.detach()[:, 0], scales.detach()[:, 0]).log_prob(z.detach()).exp()
    )  # [4, K]
    expected = (dens / dens.sum(1, keepdim=True)).sum(0)  # dz/dm_k = -dF/dm_k / q(z) = pi_k N_k(z) / q(z)
    torch.testing.assert_close(grad[:, 0], expected)
    assert MixtureHead(2, 1, num_components=2)(torch.randn(3, 2)).rsample().shape == (3, 1, 1)


def test_bad_parameter_shapes_are_refused():
    with pytest.raises(ValueError, match="locs"):
        DiagNormalMixture(torch.zeros(3, 2), torch.ones(3, 2), torch.zeros(2))
