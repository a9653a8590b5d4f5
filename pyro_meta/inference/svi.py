"""``method="svi"``: per-task Gaussian guides refined by SVI on each task's context (semi-amortized)."""

from __future__ import annotations

from typing import Dict, Tuple

import torch
from pyro.infer import Trace_ELBO

from ..model import frozen, local_params
from .common import Problem
from .draws import draw_sites, to_posterior
from .gaussian import TaskGaussian

__all__ = ["fit_task_gaussian", "svi_posterior"]


def fit_task_gaussian(problem: Problem, num_init_draws: int = 256, max_full_rank: int = 64) -> TaskGaussian:
    """Moment-match a per-task Gaussian (unconstrained space) to draws of the amortized guide."""
    with torch.enable_grad():
        draws = draw_sites(problem.model.guide, problem.cond, num_init_draws, problem.sites, problem.model)
    return TaskGaussian.from_draws(problem.sites, draws, max_full_rank=max_full_rank)


def svi_posterior(
    problem: Problem,
    num_samples: int,
    num_steps: int = 300,
    lr: float = 0.02,
    num_particles: int = 8,
    final_lr_ratio: float = 0.05,
    num_init_draws: int = 256,
    max_full_rank: int = 64,
) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """Refine ``q_t(z) = N(loc_t, L_t L_t^T)`` (per task, started at the amortized guide) by SVI.

    Maximises ``sum_t ELBO_t = E_q[log p(context_t, z_t) - log q_t(z_t)]`` with the model's
    global parameters fixed; Adam with ``lr`` decayed exponentially to ``lr * final_lr_ratio``.
    Sites with at most ``max_full_rank`` unconstrained coordinates get a full covariance,
    larger ones a diagonal. Returns samples ``{site: [1, S, T, *event]}`` and diagnostics
    (``losses``: the negative ELBO summed over tasks per step).
    """
    model = problem.model
    q = fit_task_gaussian(problem, num_init_draws, max_full_rank).to(problem.cond.device)
    losses = []
    if num_steps > 0:
        elbo = Trace_ELBO(
            num_particles=num_particles,
            vectorize_particles=model.vectorized and num_particles > 1,
            max_plate_nesting=model.max_plate_nesting,
        )
        opt = torch.optim.Adam(q.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=final_lr_ratio ** (1.0 / num_steps))
        with frozen(model), local_params():
            for _ in range(num_steps):
                opt.zero_grad(set_to_none=True)
                loss = elbo.differentiable_loss(problem.fn, q.guide, problem.cond)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
    with torch.no_grad():
        values = draw_sites(q.guide, problem.cond, num_samples, problem.sites, model)
    return to_posterior(values, problem.sites, 1), {"losses": losses, "guide": q}
