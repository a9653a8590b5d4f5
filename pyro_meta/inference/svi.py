"""``method="svi"``: per-task Gaussian guides refined by SVI on each task's context (semi-amortized)."""

from __future__ import annotations

from functools import partial
from typing import Callable, Dict, List

import torch
from pyro.infer import Trace_ELBO
from torch.distributions import biject_to

from ..model import frozen, local_params
from ..validation import check_int, check_number, check_one_of
from .common import Problem
from .draws import draw_sites, per_task_log_density, to_posterior, trace_draws
from .gaussian import TaskGaussian
from .method import InferenceMethod, InferenceResult, Option, register_method

__all__ = ["SVI", "fit_task_gaussian"]


def fit_task_gaussian(problem: Problem, num_init_draws: int = 256, max_full_rank: int = 64) -> TaskGaussian:
    """Moment-match a per-task Gaussian (unconstrained space) to draws of the amortized guide."""
    draws = {k: v for k, v in problem.guide_draws(num_init_draws).items() if k in problem.sites}
    return TaskGaussian.from_draws(problem.sites, draws, max_full_rank=max_full_rank)


class SVI(InferenceMethod):
    """Semi-amortized SVI: a per-task guide started from the amortized guide, refined on each task's context.

    Maximises ``sum_t ELBO_t = E_q[log p(context_t, z_t) - log q_t(z_t)]`` with the model's global
    parameters fixed; Adam with ``lr`` decayed exponentially to ``lr * final_lr_ratio``. Two starts:

    * ``start="gaussian"`` (default): ``q_t = N(loc_t, L_t L_t^T)`` in unconstrained space,
      moment-matched to the guide's draws (full covariance up to ``max_full_rank`` coordinates,
      diagonal above), every parameter refined;
    * ``start="guide"``: ``q_t`` is the amortized guide itself pushed through a per-task affine map
      ``v = shift_t + exp(log_scale_t) * u`` of its unconstrained draws ``u`` (started at the identity),
      so a mixture or flow guide keeps its shape (several modes) while each task's location and
      scale are refined: ``ELBO_t = E_u[log p(context_t, T(v)) + log|J_T(v)|] + sum log_scale_t + const``.
      Needs a guide that samples each task latent from a density (not a point mass).

    Samples ``{site: [1, S, T, *event]}``; diagnostics ``losses`` (the negative ELBO summed over tasks
    per step, up to the start's constant) and the fitted ``guide`` (gaussian start).
    """

    name = "svi"
    options = {
        "num_steps": Option(300, partial(check_int, minimum=0)),
        "lr": Option(0.02, partial(check_number, minimum=0.0)),
        "num_particles": Option(8, check_int),
        "final_lr_ratio": Option(0.05, partial(check_number, minimum=0.0, maximum=1.0)),
        "num_init_draws": Option(256, partial(check_int, minimum=2)),
        "max_full_rank": Option(64, partial(check_int, minimum=0)),
        "start": Option("gaussian", partial(check_one_of, choices=("gaussian", "guide"))),
    }

    def run(
        self,
        problem: Problem,
        num_samples: int,
        num_steps: int,
        lr: float,
        num_particles: int,
        final_lr_ratio: float,
        num_init_draws: int,
        max_full_rank: int,
        start: str,
    ) -> InferenceResult:
        if start == "guide":
            return _refine_guide(problem, num_samples, num_steps, lr, num_particles, final_lr_ratio)
        model = problem.model
        q = fit_task_gaussian(problem, num_init_draws, max_full_rank).to(problem.cond.device)
        losses = []
        if num_steps > 0:
            elbo = Trace_ELBO(
                num_particles=num_particles,
                vectorize_particles=model.vectorized and num_particles > 1,
                max_plate_nesting=model.max_plate_nesting,
            )
            with frozen(model), local_params():
                losses = _adam(
                    list(q.parameters()),
                    lambda: elbo.differentiable_loss(problem.fn, q.guide, problem.cond),
                    num_steps,
                    lr,
                    final_lr_ratio,
                    problem.progress,
                )
        with torch.no_grad():
            values = draw_sites(q.guide, problem.cond, num_samples, problem.sites, model)
        return InferenceResult(
            samples=to_posterior(values, problem.sites, 1), diagnostics={"losses": losses, "guide": q}
        )


def _refine_guide(
    problem: Problem, num_samples: int, num_steps: int, lr: float, num_particles: int, final_lr_ratio: float
) -> InferenceResult:
    """``start="guide"``: a per-task affine map of the amortized guide's unconstrained draws, refined by SVI."""
    from .guide_density import guide_has_density, guide_samples

    if not guide_has_density(problem):
        raise ValueError(
            f"svi start='guide': {type(problem.model).__name__}'s guide does not sample its task latents from a "
            "density (a point mass, or AutoGuide auxiliary sites): use start='gaussian'"
        )
    model, T = problem.model, problem.num_tasks
    maps = {name: biject_to(info.support) for name, info in problem.sites.items()}

    def draws(n: int) -> Dict[str, torch.Tensor]:
        values, _ = guide_samples(problem, n)
        return {k: maps[k].inv(v) for k, v in values.items()}  # [n, T, 1, *ushape]

    proto = draws(1)
    shift = {k: torch.zeros_like(v[0], requires_grad=True) for k, v in proto.items()}
    log_scale = {k: torch.zeros_like(v[0], requires_grad=True) for k, v in proto.items()}

    def push(u: Dict[str, torch.Tensor]):
        v = {k: shift[k] + log_scale[k].exp() * u[k] for k in u}
        z = {k: maps[k](v[k]) for k in v}
        ladj = sum(maps[k].log_abs_det_jacobian(v[k], z[k]).reshape(v[k].shape[0], T, -1).sum(-1) for k in v)
        return z, ladj

    def loss() -> torch.Tensor:
        z, ladj = push(draws(num_particles))
        trace = trace_draws(problem.fn, problem.cond, num_particles, model, data=z, sites=problem.sites, log_prob=True)
        elbo = (per_task_log_density(trace, T) + ladj).mean(0).sum()
        return -(elbo + sum(v.sum() for v in log_scale.values()))

    losses = []
    if num_steps > 0:
        with frozen(model):
            losses = _adam(
                list(shift.values()) + list(log_scale.values()), loss, num_steps, lr, final_lr_ratio, problem.progress
            )
    with torch.no_grad():
        z, _ = push(draws(num_samples))
    return InferenceResult(
        samples=to_posterior({k: v.detach() for k, v in z.items()}, problem.sites, 1),
        diagnostics={"losses": losses, "start": "guide"},
    )


def _adam(
    params: List[torch.Tensor],
    loss_fn: Callable[[], torch.Tensor],
    num_steps: int,
    lr: float,
    final_lr_ratio: float,
    progress: bool,
) -> List[float]:
    """``num_steps`` Adam steps on ``loss_fn()``, the step size decayed geometrically to ``lr * final_lr_ratio``."""
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=final_lr_ratio ** (1.0 / num_steps))
    losses = []
    bar = _bar(progress, num_steps, "svi")
    for _ in range(num_steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return losses


def _bar(progress: bool, total: int, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc)


register_method(SVI())
