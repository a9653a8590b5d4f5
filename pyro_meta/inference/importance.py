"""``method="importance"``: self-normalised importance sampling per task.

Proposal: a Gaussian moment-matched to the amortized guide's draws (unconstrained space),
its scale widened; weights ``w_n,t = p(context_t, z_n,t) / q(z_n,t)`` normalised per task; then
``S`` draws resampled per task. Pyro's ``Importance`` class weighs whole traces (one weight
per draw over all tasks), which degenerates with many tasks; per-task weights need the
per-task log joint, so the weighting is written here on top of Pyro traces.
"""

from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
from pyro import poutine

from .common import Problem
from .draws import draw_sites, per_task_log_density, to_posterior, trace_with_draws
from .svi import fit_task_gaussian

__all__ = ["importance_posterior"]


def importance_posterior(
    problem: Problem,
    num_samples: int,
    num_proposals: int = 2000,
    widen: float = 1.5,
    num_init_draws: int = 256,
    batch_size: int = 500,
) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """Importance-resampled draws ``{site: [1, S, T, *event]}`` and diagnostics.

    Diagnostics: ``ess [T]`` (``1 / sum_n w_n^2`` per task), ``log_evidence [T]`` (the
    estimate ``log mean_n w_n`` of ``log p(context_t)``), ``num_proposals``.
    """
    model = problem.model
    T = problem.num_tasks
    q = fit_task_gaussian(problem, num_init_draws).to(problem.cond.device)
    proposals, logw = {k: [] for k in problem.sites}, []
    with torch.no_grad():
        done = 0
        while done < num_proposals:
            n = min(batch_size, num_proposals - done)
            z = draw_sites(lambda b: q.guide(b, widen), problem.cond, n, problem.sites, model)
            logq = q.log_prob(z, widen)
            trace = trace_with_draws(poutine.condition(problem.fn, data=z), problem.cond, n, model.max_plate_nesting, model.vectorized)
            logp = per_task_log_density(trace, T)
            logw.append(logp - logq)
            for k in problem.sites:
                proposals[k].append(z[k])
            done += n
        logw = torch.cat(logw, 0)  # [N, T]
        logw = torch.where(torch.isfinite(logw), logw, torch.full_like(logw, -math.inf))
        z = {k: torch.cat(v, 0) for k, v in proposals.items()}
        w = torch.softmax(logw, 0)
        ess = 1.0 / (w**2).sum(0)
        log_evidence = torch.logsumexp(logw, 0) - math.log(logw.shape[0])
        idx = torch.multinomial(w.T, num_samples, replacement=True)  # [T, S]
        values = {}
        for k, v in z.items():
            # v: [N, T, 1, *event] -> gather per task
            vt = v.transpose(0, 1)  # [T, N, 1, *event]
            g = idx.reshape(idx.shape + (1,) * (vt.dim() - 2)).expand((T, num_samples) + tuple(vt.shape[2:]))
            values[k] = torch.gather(vt, 1, g).transpose(0, 1)
    diagnostics = {"ess": ess, "log_evidence": log_evidence, "num_proposals": num_proposals, "widen": widen}
    return to_posterior(values, problem.sites, 1), diagnostics
