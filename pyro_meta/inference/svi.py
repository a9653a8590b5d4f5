"""``method="svi"``: per-task Gaussian guides refined by SVI on each task's context (semi-amortized)."""

from __future__ import annotations

from functools import partial

import torch
from pyro.infer import Trace_ELBO

from ..model import frozen, local_params
from ..validation import check_int, check_number
from .common import Problem
from .draws import draw_sites, to_posterior
from .gaussian import TaskGaussian
from .method import InferenceMethod, InferenceResult, Option, register_method

__all__ = ["SVI", "fit_task_gaussian"]


def fit_task_gaussian(problem: Problem, num_init_draws: int = 256, max_full_rank: int = 64) -> TaskGaussian:
    """Moment-match a per-task Gaussian (unconstrained space) to draws of the amortized guide."""
    draws = {k: v for k, v in problem.guide_draws(num_init_draws).items() if k in problem.sites}
    return TaskGaussian.from_draws(problem.sites, draws, max_full_rank=max_full_rank)


class SVI(InferenceMethod):
    """Refine ``q_t(z) = N(loc_t, L_t L_t^T)`` (per task, started at the amortized guide) by SVI.

    Maximises ``sum_t ELBO_t = E_q[log p(context_t, z_t) - log q_t(z_t)]`` with the model's
    global parameters fixed; Adam with ``lr`` decayed exponentially to ``lr * final_lr_ratio``.
    Sites with at most ``max_full_rank`` unconstrained coordinates get a full covariance,
    larger ones a diagonal. Samples ``{site: [1, S, T, *event]}``; diagnostics ``losses`` (the
    negative ELBO summed over tasks per step) and the fitted ``guide``.
    """

    name = "svi"
    options = {
        "num_steps": Option(300, partial(check_int, minimum=0)),
        "lr": Option(0.02, partial(check_number, minimum=0.0)),
        "num_particles": Option(8, check_int),
        "final_lr_ratio": Option(0.05, partial(check_number, minimum=0.0, maximum=1.0)),
        "num_init_draws": Option(256, partial(check_int, minimum=2)),
        "max_full_rank": Option(64, partial(check_int, minimum=0)),
    }

    def run(self, problem: Problem, num_samples: int, num_steps: int, lr: float, num_particles: int,
            final_lr_ratio: float, num_init_draws: int, max_full_rank: int) -> InferenceResult:
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
            bar = _bar(problem.progress, num_steps, "svi")
            with frozen(model), local_params():
                for _ in range(num_steps):
                    opt.zero_grad(set_to_none=True)
                    loss = elbo.differentiable_loss(problem.fn, q.guide, problem.cond)
                    loss.backward()
                    opt.step()
                    sched.step()
                    losses.append(float(loss.detach()))
                    if bar is not None:
                        bar.update(1)
            if bar is not None:
                bar.close()
        with torch.no_grad():
            values = draw_sites(q.guide, problem.cond, num_samples, problem.sites, model)
        return InferenceResult(samples=to_posterior(values, problem.sites, 1), diagnostics={"losses": losses, "guide": q})


def _bar(progress: bool, total: int, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc)


register_method(SVI())
