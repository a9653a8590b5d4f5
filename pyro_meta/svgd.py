"""Differentiable Stein variational gradient descent (Liu & Wang 2016), batched over tasks.

``pyro.infer.SVGD`` runs under ``no_grad`` with one global particle parameter: fine for test-time
particles, useless for a meta-objective that differentiates through the particle updates
(BMAML's chaser loss). Here particles are a plain tensor ``[..., M, P]`` (leading dims: tasks,
draws) and every update can stay in the autograd graph (``create_graph=True``).

One update moves every particle along ``phi(x_i) = 1/M sum_j [k(x_j, x_i) grad log p(x_j) +
grad_{x_j} k(x_j, x_i)]`` with the RBF kernel ``k(x, y) = exp(-||x - y||^2 / h)`` and, by
default, the median heuristic ``h = med_{i<j} ||x_i - x_j||^2 / log(M + 1)`` (Liu & Wang's code).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple, Union

import torch

from .validation import check_int

__all__ = ["median_bandwidth", "rbf_kernel", "svgd", "svgd_direction", "svgd_step"]

Bandwidth = Union[str, float, torch.Tensor]


def _check_particles(particles: torch.Tensor) -> None:
    if not isinstance(particles, torch.Tensor):
        raise TypeError(f"particles must be a tensor [..., M, P], got {type(particles).__name__}")
    if particles.dim() < 2:
        raise ValueError(f"particles must have shape [..., M, P], got {tuple(particles.shape)}")


def _sq_dists(x: torch.Tensor) -> torch.Tensor:
    """``||x_i - x_j||^2``: ``[..., M, P] -> [..., M, M]``."""
    sq = (x * x).sum(-1)
    d2 = sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2.0 * x @ x.transpose(-1, -2)
    return d2.clamp_min(0.0)


def median_bandwidth(sq_dists: torch.Tensor) -> torch.Tensor:
    """Median heuristic ``h = med_{i<j} d2_ij / log(M + 1)`` per leading index: ``[..., M, M] -> [..., 1, 1]``.

    Detached (the bandwidth is a tuning choice, not a path for meta-gradients); 1 when ``M = 1``.
    """
    M = sq_dists.shape[-1]
    if M < 2:
        return sq_dists.new_ones(sq_dists.shape[:-2] + (1, 1))
    i, j = torch.triu_indices(M, M, offset=1, device=sq_dists.device)
    med = sq_dists.detach()[..., i, j].median(-1).values
    h = med / math.log(M + 1)
    return h.clamp_min(1e-8)[..., None, None]


def rbf_kernel(particles: torch.Tensor, bandwidth: Bandwidth = "median") -> Tuple[torch.Tensor, torch.Tensor]:
    """RBF Gram matrix ``K_ij = exp(-||x_i - x_j||^2 / h)`` ``[..., M, M]`` and ``h`` ``[..., 1, 1]``.

    ``bandwidth``: ``"median"`` (see :func:`median_bandwidth`) or a positive number/tensor
    broadcasting against ``[..., 1, 1]``.
    """
    _check_particles(particles)
    d2 = _sq_dists(particles)
    if isinstance(bandwidth, str):
        if bandwidth != "median":
            raise ValueError(f"bandwidth must be 'median' or a positive number, got {bandwidth!r}")
        h = median_bandwidth(d2)
    else:
        h = torch.as_tensor(bandwidth, dtype=particles.dtype, device=particles.device)
        if not bool((h > 0).all()):
            raise ValueError(f"bandwidth must be positive, got {bandwidth!r}")
        if h.dim() == 0:
            h = h.reshape(1, 1)
    return torch.exp(-d2 / h), h


def svgd_direction(particles: torch.Tensor, score: torch.Tensor, bandwidth: Bandwidth = "median") -> torch.Tensor:
    """Stein direction ``phi(x_i) = 1/M sum_j [k_ji score_j + 2/h (x_i - x_j) k_ji]``: ``[..., M, P]``.

    ``score`` is ``grad log p`` at the particles, ``[..., M, P]``.
    """
    _check_particles(particles)
    if score.shape != particles.shape:
        raise ValueError(f"score must have the particles' shape {tuple(particles.shape)}, got {tuple(score.shape)}")
    K, h = rbf_kernel(particles, bandwidth)
    M = particles.shape[-2]
    drive = K @ score  # K symmetric: sum_j k_ij score_j
    repulse = (2.0 / h) * (particles * K.sum(-1, keepdim=True) - K @ particles)
    return (drive + repulse) / M


def _score(
    log_prob: Callable[[torch.Tensor], torch.Tensor], particles: torch.Tensor, create_graph: bool
) -> torch.Tensor:
    with torch.enable_grad():
        x = particles if particles.requires_grad else particles.detach().requires_grad_(True)
        lp = log_prob(x)
        if lp.shape != x.shape[:-1]:
            raise ValueError(
                f"log_prob must map particles {tuple(x.shape)} to {tuple(x.shape[:-1])}, got {tuple(lp.shape)}"
            )
        (g,) = torch.autograd.grad(lp.sum(), x, create_graph=create_graph)
    return g


def svgd_step(
    particles: torch.Tensor,
    log_prob: Callable[[torch.Tensor], torch.Tensor],
    step_size: Union[float, torch.Tensor],
    bandwidth: Bandwidth = "median",
    create_graph: Optional[bool] = None,
) -> torch.Tensor:
    """One SVGD update ``x_i <- x_i + step_size * phi(x_i)`` of particles ``[..., M, P]``.

    Parameters
    ----------
    particles : Tensor ``[..., M, P]``
        ``M`` particles per leading index (e.g. per task); leading indices never interact.
    log_prob : callable
        ``log_prob(particles [..., M, P]) -> [..., M]``, the unnormalised target log density.
    step_size : float or Tensor
        May be a meta-learned tensor (scalar or broadcasting against ``[..., M, P]``).
    bandwidth : "median" or positive float
    create_graph : bool, optional
        Keep the update differentiable w.r.t. the particles' history and the target's
        parameters (second order). When False the Stein direction is a constant and the result
        depends on the particles and ``step_size`` only linearly (first order). Default: True
        when the particles or ``step_size`` require grad.
    """
    _check_particles(particles)
    if create_graph is None:
        create_graph = particles.requires_grad or (isinstance(step_size, torch.Tensor) and step_size.requires_grad)
    score = _score(log_prob, particles, bool(create_graph))
    if create_graph:
        return particles + step_size * svgd_direction(particles, score, bandwidth)
    # first order: the direction is a constant; the result still depends on the particles (identity path)
    return particles + step_size * svgd_direction(particles.detach(), score.detach(), bandwidth)


def svgd(
    particles: torch.Tensor,
    log_prob: Callable[[torch.Tensor], torch.Tensor],
    num_steps: int,
    step_size: Union[float, torch.Tensor],
    bandwidth: Bandwidth = "median",
    create_graph: Optional[bool] = None,
) -> torch.Tensor:
    """``num_steps`` updates of :func:`svgd_step`; returns the particles ``[..., M, P]``."""
    check_int("num_steps", num_steps, minimum=0)
    for _ in range(num_steps):
        particles = svgd_step(particles, log_prob, step_size, bandwidth, create_graph)
    return particles
