"""``sample_batched_hmc``: per-(chain, task) HMC in lockstep, checked against closed-form targets."""

import math

import arviz as az
import numpy as np
import pyro
import pytest
import torch

from pyro_meta.inference.batched_hmc import sample_batched_hmc, warmup_windows


def _gaussians(T=20, dtype=torch.float64):
    """Per-task 2-D Gaussians: sds from 0.01 to 10 (second coordinate x2), correlation 0.9 on every third task."""
    sd = torch.logspace(-2, 1, T, dtype=dtype)
    sds = torch.stack([sd, 2 * sd], -1)  # [T, 2]
    rho = torch.where(torch.arange(T) % 3 == 0, 0.9, 0.0).to(dtype)
    cov = torch.diag_embed(sds**2)
    cov[:, 0, 1] = cov[:, 1, 0] = rho * sds[:, 0] * sds[:, 1]
    prec = torch.linalg.inv(cov)
    mu = 3 * sds * torch.randn(T, 2, generator=torch.Generator().manual_seed(0), dtype=dtype)

    def potential(u):  # u [C, T, 2] -> [C, T]
        d = u - mu
        return 0.5 * (d * (prec @ d.unsqueeze(-1)).squeeze(-1)).sum(-1)

    return potential, mu, sds, rho


def _init(C, T, E, dtype=torch.float64, seed=1):
    return torch.randn(C, T, E, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.slow
def test_multiscale_gaussians_per_task_adaptation():
    """sd 0.01..20 across tasks: moments within 0.1 sd / 10%; the adapted scales follow each task.

    A single step size would have to be below the leapfrog stability limit of the narrowest task
    (2 sd = 0.02) and then need > 3000 steps per trajectory of the widest (sd 20); the per-task
    effective step sizes ``eps sqrt(m)`` span the same three orders of magnitude as the sds.
    """
    potential, mu, sds, rho = _gaussians()
    r = sample_batched_hmc(potential, _init(4, 20, 2), 800, 400, seed=0)
    x = r.samples  # [C, S, T, 2]
    assert x.shape == (4, 800, 20, 2)
    mean, sd = x.mean((0, 1)), x.std((0, 1))
    assert ((mean - mu) / sds).abs().max() < 0.1
    assert (sd / sds - 1).abs().max() < 0.1
    flat = x.permute(2, 3, 0, 1).reshape(20, 2, -1)
    corr = torch.stack([torch.corrcoef(f)[0, 1] for f in flat])
    # a product x1 x2 mixes slower than x1 (draw autocorrelation E[cos^2 t] ~ 1/2): ESS ~ 1000, sd 0.03
    assert (corr - rho).abs().max() < 0.1
    # the metric estimates each task's variances (from one chain's last window of 100 draws:
    # measured ratios 0.46..1.57 over 4 seeds, against variances spanning 6 orders of magnitude)
    ratio = r.inverse_mass / sds**2
    assert ratio.min() > 1 / 3 and ratio.max() < 3.0
    eff = r.step_size * r.inverse_mass[..., 0].sqrt()  # step in the first coordinate's units
    assert eff[:, -1].min() / eff[:, 0].max() > 100
    assert int(r.divergences.sum()) == 0
    assert 0.7 < float(r.mean_accept.mean()) < 0.99


def test_banana_moments_and_hard_banana_flagged():
    """Banana ``x1 ~ N(0, a^2)``, ``x2 | x1 ~ N(b x1^2, 1)``: E x2 = b a^2, Var x2 = 1 + 2 b^2 a^4 (closed form).

    The first four are mild (tail curvature over bulk curvature, about 54 b^2 a^4 at x1 = 3a, is 2-9);
    the last (a=2, b=0.25; ratio 54) curves so much in its tails that one step size cannot follow it:
    there the sampler must report divergences (measured over 5 seeds: 22-54, ESS of x2 210-710 of
    2400 draws). At b=0.5, a=1 (ratio 14) one seed in three left a chain stuck in a tail (ESS 97).
    """
    a = torch.tensor([1.0, 2.0, 0.1, 0.5, 2.0], dtype=torch.float64)
    b = torch.tensor([0.3, 0.1, 20.0, 1.0, 0.25], dtype=torch.float64)

    def potential(u):
        return 0.5 * (u[..., 0] / a) ** 2 + 0.5 * (u[..., 1] - b * u[..., 0] ** 2) ** 2

    r = sample_batched_hmc(potential, _init(4, 5, 2), 600, 300, seed=0)
    x = r.samples[:, :, :4]
    true_mean = torch.stack([torch.zeros(4, dtype=torch.float64), b[:4] * a[:4] ** 2], -1)
    true_sd = torch.stack([a[:4], (1 + 2 * b[:4] ** 2 * a[:4] ** 4).sqrt()], -1)
    assert ((x.mean((0, 1)) - true_mean) / true_sd).abs().max() < 0.15
    assert (x.std((0, 1)) / true_sd - 1).abs().max() < 0.15
    assert int(r.divergences[:, 4].sum()) > 10


def test_bimodal_tasks_flagged_by_rhat():
    """Mixtures ``N(-m, 0.5^2) + N(m, 0.5^2)``: chains started at alternate modes never meet when m >= 3.

    Rank-normalised split R-hat (arviz) must flag those tasks and pass the unimodal ones (m <= 0.3).
    With every chain started in one mode no R-hat could tell; dispersed starts are what make it work.
    """
    m = torch.tensor([0.0, 0.3, 3.0, 5.0], dtype=torch.float64)

    def potential(u):
        z = u[..., 0]
        return -torch.logaddexp(-0.5 * ((z - m) / 0.5) ** 2, -0.5 * ((z + m) / 0.5) ** 2) + 0.5 * u[..., 1] ** 2

    C = 4
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    init = 0.1 * _init(C, 4, 2)
    init[..., 0] += sign[:, None] * m
    r = sample_batched_hmc(potential, init, 300, 200, seed=0)
    rhat = np.array([float(az.rhat(r.samples[:, :, t, 0].numpy())) for t in range(4)])
    assert (rhat[:2] < 1.05).all(), rhat
    assert (rhat[2:] > 1.05).all(), rhat
    # and each chain of a bimodal task stayed in the mode it started in
    assert torch.equal(torch.sign(r.samples[:, :, 2:, 0].mean(1)), sign[:, None].expand(C, 2))


def test_divergences_on_forbidden_half_space():
    """``N(0, 1)`` truncated to ``u < 1`` by a potential returning inf (task 0) or NaN (task 1) above:
    proposals there are divergent and rejected; the draws match the truncated normal's closed-form
    mean ``-phi(1)/Phi(1)`` and variance ``1 - phi(1)/Phi(1) - (phi(1)/Phi(1))^2``."""
    fill = torch.tensor([math.inf, math.nan], dtype=torch.float64)

    def potential(u):
        z = u[..., 0]
        return torch.where(z < 1.0, 0.5 * z**2, fill)

    # a smaller step cannot avoid the wall, so dual averaging may shrink it: max_leapfrog bounds the cost
    r = sample_batched_hmc(potential, -_init(4, 2, 1).abs(), 800, 200, seed=0, max_leapfrog=16)
    x = r.samples[..., 0]
    assert bool((x < 1.0).all()) and bool(torch.isfinite(x).all())
    assert bool((r.divergences.sum(0) > 100).all()) and torch.equal(r.divergences, r.diverging.sum(1))
    assert float(r.accept_prob[r.diverging].abs().max()) == 0.0
    normal = torch.distributions.Normal(0.0, 1.0)
    ratio = normal.log_prob(torch.tensor(1.0)).exp() / normal.cdf(torch.tensor(1.0))
    mean, var = -ratio, 1 - ratio - ratio**2
    assert (x.mean((0, 1)) - mean).abs().max() < 0.1
    assert (x.var((0, 1)) / var - 1).abs().max() < 0.15


@pytest.mark.parametrize("trajectory", ["jitter", "chees"])
def test_seeded_determinism_shapes_and_dtypes(trajectory):
    potential, *_ = _gaussians(T=3, dtype=torch.float32)
    init = _init(2, 3, 2, dtype=torch.float32)
    kw = dict(num_samples=20, num_warmup=30, trajectory=trajectory)
    r1 = sample_batched_hmc(potential, init, seed=5, **kw)
    r2 = sample_batched_hmc(potential, init, generator=torch.Generator().manual_seed(5), **kw)
    r3 = sample_batched_hmc(potential, init, seed=6, **kw)
    assert torch.equal(r1.samples, r2.samples) and torch.equal(r1.accept_prob, r2.accept_prob)
    assert not torch.equal(r1.samples, r3.samples)
    pyro.set_rng_seed(3)
    r4 = sample_batched_hmc(potential, init, **kw)
    pyro.set_rng_seed(3)
    assert torch.equal(r4.samples, sample_batched_hmc(potential, init, **kw).samples)
    C, S, T, E = 2, 20, 3, 2
    assert r1.samples.shape == (C, S, T, E) and r1.samples.dtype == torch.float32
    for name in ("potential_energy", "accept_prob", "diverging", "num_steps"):
        assert getattr(r1, name).shape == (C, S, T), name
    for name in ("step_size", "divergences", "warmup_divergences", "mean_accept"):
        assert getattr(r1, name).shape == (C, T), name
    assert r1.inverse_mass.shape == (C, T, E) and r1.trajectory_length.shape == (T,)
    assert r1.lockstep_steps.shape == (S,) and r1.step_size.dtype == torch.float32
    assert torch.allclose(r1.potential_energy, potential(r1.samples.transpose(0, 1)).transpose(0, 1))
    # lockstep: each draw costs the longest trajectory of any chain-task, no more
    assert torch.equal(r1.lockstep_steps, r1.num_steps.amax((0, 2)))
    assert r1.num_grad_evals >= int(r1.lockstep_steps.sum()) + 30


def test_value_and_grad_replaces_autograd():
    """A given ``(U, dU/du)`` (here the closed-form Gaussian gradient) drives the same chain as autograd."""
    T = 4
    potential, mu, sds, rho = _gaussians(T=T)
    cov = torch.diag_embed(sds**2)
    cov[:, 0, 1] = cov[:, 1, 0] = rho * sds[:, 0] * sds[:, 1]
    prec = torch.linalg.inv(cov)
    calls = []

    def value_and_grad(u):
        calls.append(1)
        g = (prec @ (u - mu).unsqueeze(-1)).squeeze(-1)
        return 0.5 * ((u - mu) * g).sum(-1), g

    kw = dict(num_samples=30, num_warmup=40, seed=2)
    ref = sample_batched_hmc(potential, _init(2, T, 2), **kw)
    got = sample_batched_hmc(None, _init(2, T, 2), value_and_grad=value_and_grad, **kw)
    assert len(calls) == got.num_grad_evals == ref.num_grad_evals
    assert torch.allclose(got.samples, ref.samples, atol=1e-8)
    with pytest.raises(ValueError, match=r"value_and_grad must return \(U \[C, T\]"):
        sample_batched_hmc(None, _init(2, T, 2), value_and_grad=lambda u: (u.sum(-1), u.sum(-1)), **kw)
    with pytest.raises(TypeError, match="value_and_grad must be callable"):
        sample_batched_hmc(potential, _init(2, T, 2), value_and_grad="no", **kw)


def test_float64_kept_and_no_warmup_runs():
    potential, *_ = _gaussians(T=2)
    r = sample_batched_hmc(potential, _init(1, 2, 2), 5, 0, seed=0, step_size=0.01, adapt_mass=False)
    assert r.samples.dtype == torch.float64 and torch.all(r.step_size == 0.01)
    assert torch.all(r.inverse_mass == 1.0) and int(r.warmup_divergences.sum()) == 0


def test_chees_length_matches_closed_form_optimum():
    """ChEES on isotropic Gaussians (any scale, after mass adaptation: unit scale).

    For exact dynamics in d dims ChEES(t) = d sin^2 t, so with t = h L, h ~ U(0, 1), the criterion
    is d (1/2 - sin(2L) / (4L)), maximised at tan(2L) = 2L, L = 2.247. Every task must land near it
    and the draws must have the right moments.
    """
    T, C = 6, 4
    scale = torch.logspace(-1, 1, T, dtype=torch.float64)

    def potential(u):
        return 0.5 * ((u / scale[:, None]) ** 2).sum(-1)

    r = sample_batched_hmc(potential, _init(C, T, 3), 500, 500, seed=0, trajectory="chees", trajectory_length=1.0)
    assert ((r.trajectory_length - 2.247).abs() < 0.7).all(), r.trajectory_length  # 5 seeds: 1.96..2.81
    x = r.samples
    assert (x.mean((0, 1)) / scale[:, None]).abs().max() < 0.1
    assert (x.std((0, 1)) / scale[:, None] - 1).abs().max() < 0.1


def test_warmup_windows_match_stan():
    # Stan's documented schedule for 1000 warmup iterations: 75 fast, slow 25/50/100/200/500, 50 fast
    first, ends = warmup_windows(1000)
    assert first == 75 and ends == [99, 149, 249, 449, 949]
    assert warmup_windows(500) == (75, [99, 149, 249, 449])
    assert warmup_windows(100) == (15, [89])  # 15% / 75% / 10%
    assert warmup_windows(19) == (19, [])


def _pot(u):
    return 0.5 * (u**2).sum(-1)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(init=torch.zeros(2, 3)), ValueError, r"init must have shape \[C, T, E\]"),
        (dict(init=torch.zeros(2, 3, 1, dtype=torch.long)), TypeError, "floating-point"),
        (dict(init=[[[0.0]]]), TypeError, "floating-point"),
        (dict(init=torch.full((2, 3, 1), math.nan)), ValueError, "init must be finite"),
        (dict(init=torch.zeros(0, 3, 1)), ValueError, "init must have shape"),
        (dict(num_samples=0), ValueError, "num_samples"),
        (dict(num_warmup=-1), ValueError, "num_warmup"),
        (dict(target_accept=1.0), ValueError, "target_accept"),
        (dict(trajectory="nuts"), ValueError, "trajectory must be one of"),
        (dict(init=torch.zeros(1, 3, 1), trajectory="chees"), ValueError, "C >= 2"),
        (dict(step_size=-1.0), ValueError, "step_size must be positive"),
        (dict(inverse_mass=torch.ones(4)), ValueError, r"inverse_mass must broadcast to \[2, 3, 1\]"),
        (dict(potential_fn=lambda u: 0.5 * (u**2).sum()), ValueError, r"shape \[C, T\] = \[2, 3\]"),
        (dict(potential_fn=lambda u: u.detach().sum(-1)), ValueError, "autograd"),
        (
            dict(potential_fn=lambda u: torch.where(u[..., 0] > -1, math.inf, 0.0) + u.sum(-1)),
            ValueError,
            "not finite at init",
        ),
        (dict(potential_fn="not callable"), TypeError, "potential_fn must be callable"),
    ],
)
def test_bad_input(kwargs, err, match):
    args = dict(potential_fn=_pot, init=torch.zeros(2, 3, 1), num_samples=5, num_warmup=5)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        sample_batched_hmc(**args)
