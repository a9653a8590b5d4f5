"""The amortized guide as a density: its draws with their log density, and its log density at other points.

Importance sampling uses the guide itself as (part of) its proposal and semi-amortized SVI starts
from it, so a richer guide (a mixture, a flow: :mod:`pyro_meta.guides`) improves both. That needs
``log q(z_t | context_t)`` per task, at the guide's own draws and at points drawn elsewhere.
A guide qualifies when each task latent is sampled directly from a distribution with a density
(no auxiliary sites, as AutoGuides have; no point mass, as MAML's adaptation is).
"""

from __future__ import annotations

from typing import Dict, Tuple

import pyro.distributions as dist
import torch

from .common import Problem
from .draws import per_task_log_density, trace_draws

__all__ = ["guide_has_density", "guide_log_density", "guide_samples"]


def guide_has_density(problem: Problem) -> bool:
    """True when every task latent of the guide is a sample site with a proper density (no Delta, no auxiliaries)."""
    with torch.enable_grad():
        trace = trace_draws(problem.model.guide, problem.guide_cond, 2, problem.model)
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["infer"].get("_subsample") or name.startswith("_"):
            continue
        if site["infer"].get("is_auxiliary"):
            return False
    for name in problem.sites:
        if name not in trace.nodes:
            return False
        fn = trace.nodes[name]["fn"]
        while isinstance(fn, (dist.Independent, dist.MaskedDistribution, dist.ExpandedDistribution)):
            fn = fn.base_dist
        if isinstance(fn, dist.Delta):
            return False
    return True


def guide_samples(problem: Problem, num: int) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """``num`` guide draws ``{site: [N, T, 1, *event]}`` and their log density per task ``[N, T]`` (detached)."""
    model = problem.model
    with torch.enable_grad():
        trace = trace_draws(model.guide, problem.guide_cond, num, model, log_prob=True)
    T = problem.num_tasks
    values = {
        k: trace.nodes[k]["value"].detach().expand((num, T, 1) + tuple(info.event_shape))
        for k, info in problem.sites.items()
    }
    return values, _task_log_q(trace, problem)


def guide_log_density(problem: Problem, values: Dict[str, torch.Tensor]) -> torch.Tensor:
    """``log q(z_t | context_t)`` of the guide at given task latents ``{site: [N, T, 1, *event]}``: ``[N, T]``."""
    model = problem.model
    num = next(iter(values.values())).shape[0]
    with torch.enable_grad():
        trace = trace_draws(
            model.guide, problem.guide_cond, num, model, data=values, sites=problem.sites, log_prob=True
        )
    return _task_log_q(trace, problem)


def _task_log_q(trace, problem: Problem) -> torch.Tensor:
    names = set(problem.sites)
    exclude = {n for n, s in trace.nodes.items() if s["type"] == "sample" and n not in names}
    return per_task_log_density(trace, problem.num_tasks, exclude=exclude).detach()
