"""Truncated-normal numerics for the quadrature oracles: stable ``log(Phi(b) - Phi(a))``, moments, draws."""

from __future__ import annotations

import numpy as np
import torch
from torch.special import log_ndtr, ndtr, ndtri

from .base import LOG_2PI as _LOG_2PI

__all__ = ["log_diff_ndtr", "log_diff_ndtr_fast", "truncnorm_moments", "truncnorm_sample"]


def log_diff_ndtr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``log(Phi(b) - Phi(a))`` for ``a <= b``, stable in both tails."""
    flip = a > 0
    a, b = torch.where(flip, -b, a), torch.where(flip, -a, b)
    la, lb = log_ndtr(a), log_ndtr(b)
    return lb + torch.log1p(-torch.exp((la - lb).clamp_max(0.0)).clamp_max(1 - 1e-16))


def log_diff_ndtr_fast(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """As :func:`log_diff_ndtr` via ``ndtr`` (faster); falls back to it where ``ndtr`` underflows."""
    flip = a > 0
    a, b = torch.where(flip, -b, a), torch.where(flip, -a, b)
    out = torch.log(ndtr(b) - ndtr(a))
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        out[bad] = log_diff_ndtr(a[bad], b[bad])
    return out


_GL_NODES, _GL_WEIGHTS = (torch.as_tensor(a, dtype=torch.float64) for a in np.polynomial.legendre.leggauss(12))


def truncnorm_moments(mu, tau, lo, hi):
    """Mean and variance of ``N(mu, tau^2)`` truncated to ``[lo, hi]`` (elementwise).

    Closed form, except where the density is nearly flat over the interval (the closed form then
    cancels catastrophically): there a 12-point Gauss-Legendre rule on ``[lo, hi]`` is exact to
    rounding.
    """
    a, b = (lo - mu) / tau, (hi - mu) / tau
    log_z = log_diff_ndtr(a, b)
    pa = torch.exp(-0.5 * a**2 - 0.5 * _LOG_2PI - log_z)
    pb = torch.exp(-0.5 * b**2 - 0.5 * _LOG_2PI - log_z)
    mean = mu + tau * (pa - pb)
    var = tau**2 * (1 + a * pa - b * pb - (pa - pb) ** 2)
    flat = (b - a) * (torch.maximum(a.abs(), b.abs()) + (b - a)) < 1  # log-density varies by < 1 nat
    if bool(flat.any()):
        c = 0.5 * (lo + hi) + 0.5 * (hi - lo) * _GL_NODES.to(mu.dtype)  # [K]
        logf = -0.5 * ((c - mu[flat][:, None]) / tau[flat][:, None]) ** 2
        w = _GL_WEIGHTS.to(mu.dtype) * torch.exp(logf - logf.max(-1, keepdim=True).values)
        w = w / w.sum(-1, keepdim=True)
        m1 = (w * c).sum(-1)
        mean[flat] = m1
        var[flat] = (w * (c - m1[:, None]) ** 2).sum(-1)
    return mean.clamp(lo, hi), var.clamp(0.0, (hi - lo) ** 2 / 4)


def truncnorm_sample(mu, tau, lo, hi, generator):
    """Inverse-CDF draws from ``N(mu, tau^2)`` truncated to ``[lo, hi]``, computed in the lower tail."""
    a, b = (lo - mu) / tau, (hi - mu) / tau
    flip = a > 0
    a2, b2 = torch.where(flip, -b, a), torch.where(flip, -a, b)
    u = torch.rand(mu.shape, generator=generator, dtype=mu.dtype)
    pa, pb = ndtr(a2), ndtr(b2)
    z = ndtri((pa + u * (pb - pa)).clamp(1e-300, 1.0))
    z = torch.where(flip, -z, z)
    return (mu + tau * z).clamp(lo, hi)
