"""Draw-based methods: ``"amortized"`` (the guide given the context) and ``"prior"``."""

from __future__ import annotations

import torch

from .common import Problem
from .draws import draw_sites, to_posterior

__all__ = ["amortized_draws", "prior_draws"]


def amortized_draws(problem: Problem, num_samples: int) -> dict:
    """``{site: [1, S, T, *event]}``: ``S`` draws of ``q(z_t | context_t)`` from ``model.guide``.

    No optimisation happens; the guide sees each task's context only (target set empty).
    Guides with an inner gradient loop run with gradients enabled; draws are detached.
    """
    with torch.enable_grad():
        values = draw_sites(problem.model.guide, problem.cond, num_samples, problem.sites, problem.model)
    return to_posterior(values, problem.sites, 1)


def prior_draws(problem: Problem, num_samples: int) -> dict:
    """``{site: [1, S, T, *event]}``: draws of the task latents from the meta-learned prior ``p(z)``."""
    with torch.no_grad():
        values = draw_sites(problem.fn, problem.cond, num_samples, problem.sites, problem.model)
    return to_posterior(values, problem.sites, 1)
