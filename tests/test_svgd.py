"""Differentiable SVGD: known targets (a correlated Gaussian, a two-component mixture), a loop reference, gradients."""

import math

import pytest
import torch

from pyro_meta.svgd import median_bandwidth, rbf_kernel, svgd, svgd_direction, svgd_step
from pyro_meta.testing import assert_close


def _gaussian_log_prob(mean: torch.Tensor, cov: torch.Tensor):
    prec = torch.linalg.inv(cov)

    def log_prob(x):
        d = x - mean.unsqueeze(-2)
        return -0.5 * torch.einsum("...mi,...ij,...mj->...m", d, prec, d)

    return log_prob


def test_direction_matches_loop_reference(generator):
    """phi(x_i) = 1/M sum_j [k(x_j, x_i) s_j + grad_{x_j} k(x_j, x_i)], written out with loops and autograd."""
    x = torch.randn(2, 5, 3, generator=generator, dtype=torch.double)
    s = torch.randn(2, 5, 3, generator=generator, dtype=torch.double)
    out = svgd_direction(x, s, bandwidth=0.7)
    for b in range(2):
        for i in range(5):
            acc = torch.zeros(3, dtype=torch.double)
            for j in range(5):
                xj = x[b, j].clone().requires_grad_(True)
                k = torch.exp(-((xj - x[b, i]) ** 2).sum() / 0.7)
                (gk,) = torch.autograd.grad(k, xj)
                acc += k.detach() * s[b, j] + gk
            assert_close(out[b, i], acc / 5, atol=1e-10, what=f"phi batch {b} particle {i}")


def test_median_bandwidth_and_single_particle(generator):
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    K, h = rbf_kernel(x)
    # squared distances 25, 1, 18 -> median 18, h = 18 / log 4
    assert_close(h.reshape(()), torch.tensor(18 / math.log(4)), atol=1e-5, what="h")
    assert_close(K.diagonal(), torch.ones(3), atol=1e-6, what="k(x, x)")
    assert median_bandwidth(torch.zeros(1, 1)).shape == (1, 1)
    # one particle: SVGD is gradient ascent on log p
    p = torch.randn(4, 1, 2, generator=generator)
    s = torch.randn(4, 1, 2, generator=generator)
    assert_close(svgd_direction(p, s), s, atol=1e-6, what="M = 1")


def test_recovers_correlated_gaussian(generator):
    mean = torch.tensor([1.0, -2.0])
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.5]])
    x0 = torch.randn(200, 2, generator=generator)
    x = svgd(x0, _gaussian_log_prob(mean, cov), num_steps=1000, step_size=0.1)
    assert_close(x.mean(0), mean, atol=0.05, what="particle mean")
    emp = torch.cov(x.T)
    assert_close(emp, cov, atol=0.08, rtol=0.1, what="particle covariance")


def test_recovers_both_modes_of_a_mixture(generator):
    """0.3 N((-2, -2), 0.5 I) + 0.7 N((2, 2), 0.5 I): both modes populated in proportion."""
    locs = torch.tensor([[-2.0, -2.0], [2.0, 2.0]])
    logw = torch.tensor([0.3, 0.7]).log()

    def log_prob(x):
        d2 = ((x.unsqueeze(-2) - locs) ** 2).sum(-1)  # [..., M, 2]
        return torch.logsumexp(logw - d2 / (2 * 0.5), -1)

    x0 = 0.5 * torch.randn(300, 2, generator=generator)
    x = svgd(x0, log_prob, num_steps=800, step_size=0.05)
    near = ((x.unsqueeze(-2) - locs) ** 2).sum(-1).argmin(-1)
    frac = torch.stack([(near == k).float().mean() for k in range(2)])
    assert_close(frac, torch.tensor([0.3, 0.7]), atol=0.1, what="mode weights")
    for k in range(2):
        assert_close(x[near == k].mean(0), locs[k], atol=0.25, what=f"mode {k} centre")


def test_batched_tasks_do_not_interact(generator):
    means = torch.tensor([[0.0, 0.0], [2.0, -2.0]])
    cov = torch.eye(2).expand(2, 2, 2) * torch.tensor([0.25, 2.0])[:, None, None]
    x0 = torch.randn(2, 60, 2, generator=generator)
    x = svgd(x0, _gaussian_log_prob(means, cov), num_steps=800, step_size=0.2)
    assert_close(x.mean(1), means, atol=0.1, what="per-task means")
    assert_close(x.var(1), torch.tensor([[0.25, 0.25], [2.0, 2.0]]), rtol=0.25, what="per-task variances")
    alone = svgd(x0[1], _gaussian_log_prob(means[1], cov[1]), num_steps=800, step_size=0.2)
    assert_close(x[1], alone, atol=1e-4, what="task 1 alone vs batched")


def test_gradient_through_steps_matches_finite_differences(generator):
    """d/d mu of the particles' mean after K differentiable steps (target N(mu, I))."""
    x0 = torch.randn(8, 2, generator=generator, dtype=torch.double)

    def final_mean(mu, create_graph):
        lp = _gaussian_log_prob(mu, torch.eye(2, dtype=torch.double))
        return svgd(x0, lp, num_steps=5, step_size=0.3, bandwidth=1.5, create_graph=create_graph).mean(0)

    mu = torch.tensor([0.4, -0.3], dtype=torch.double, requires_grad=True)
    (g,) = torch.autograd.grad(final_mean(mu, True)[0], mu)
    eps = 1e-6
    fd = torch.stack(
        [
            (final_mean(mu.detach() + eps * e, False)[0] - final_mean(mu.detach() - eps * e, False)[0]) / (2 * eps)
            for e in torch.eye(2, dtype=torch.double)
        ]
    )
    assert_close(g, fd, atol=1e-7, what="d mean / d mu")
    # step size as a meta-learned tensor stays in the graph too
    lr = torch.tensor(0.3, dtype=torch.double, requires_grad=True)
    out = svgd_step(x0, _gaussian_log_prob(mu.detach(), torch.eye(2, dtype=torch.double)), lr, bandwidth=1.5)
    assert out.requires_grad and torch.autograd.grad(out.sum(), lr)[0].isfinite()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="particles"):
        svgd_direction(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="score"):
        svgd_direction(torch.zeros(3, 2), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="bandwidth"):
        rbf_kernel(torch.zeros(3, 2), bandwidth="mean")
    with pytest.raises(ValueError, match="bandwidth"):
        rbf_kernel(torch.zeros(3, 2), bandwidth=-1.0)
    with pytest.raises(ValueError, match="log_prob"):
        svgd_step(torch.zeros(3, 2), lambda x: x.sum(), 0.1)
    with pytest.raises(ValueError, match="num_steps"):
        svgd(torch.zeros(3, 2), lambda x: x.sum(-1), -2, 0.1)
