"""``method="importance"``: self-normalised importance sampling per task.

Proposal (``proposal="auto"``): a defensive mixture (Hesterberg 1995) of the amortized guide itself,
weight ``1 - defensive``, and a Gaussian moment-matched to its draws in unconstrained space, its scale
widened, weight ``defensive``: the guide's shape (a mixture or a flow guide's several modes) is kept
and the widened Gaussian bounds the weights where the guide is too narrow. Guides without a density
of their own (a point mass, AutoGuides' auxiliary sites) use the widened Gaussian alone
(``proposal="gaussian"``). Weights ``w_n,t = p(context_t, z_n,t) / q(z_n,t)`` are normalised per
task; then ``S`` draws are resampled per task. Pyro's ``Importance`` class weighs whole traces (one weight
per draw over all tasks), which degenerates with many tasks; per-task weights need the
per-task log joint, so the weighting is written here on top of Pyro traces.
"""

from __future__ import annotations

import math
import warnings
from functools import partial
from typing import Dict, Optional, Tuple

import torch

from ..memory import plan_chunks
from ..validation import check_int, check_number, check_one_of, optional
from .chunked import can_split_tasks
from .common import Problem
from .draws import draw_sites, per_task_log_density, to_posterior, trace_draws
from .gaussian import unconstrained_shape
from .guide_density import guide_has_density, guide_log_density, guide_samples
from .method import InferenceMethod, InferenceResult, Option, register_method
from .svi import _bar, fit_task_gaussian

__all__ = ["Importance"]

#: proposals: the guide in a defensive mixture with a widened Gaussian, or the widened Gaussian alone
PROPOSALS = ("auto", "guide", "gaussian")


class Importance(InferenceMethod):
    """Importance-resampled draws ``{site: [1, S, T, *event]}`` with per-task diagnostics.

    Options: ``num_proposals`` (``N`` per task), ``widen`` (proposal scale factor),
    ``num_init_draws`` (guide draws the proposal is fitted to), ``batch_size`` (proposals per
    vectorized pass; fewer when the memory budget asks for it), ``min_ess`` (warn, naming the tasks,
    when a task's importance ESS is below it; default ``min(50, num_samples)``: fewer effective draws
    than that means the resampled draws are mostly copies).

    Tasks are weighed independently, so they run in chunks sized to the memory budget
    (:func:`pyro_meta.set_memory_budget`): per chunk the proposal is fitted, its proposals drawn and
    weighed in passes, and ``S`` draws resampled; only the resampled draws are kept. One chunk (all the
    tasks, ``batch_size`` proposals per pass) when it fits: then the numbers are those of an unchunked
    run; otherwise the same seed and budget give the same numbers (see :mod:`pyro_meta.memory`).

    Per task: ``ess [T]`` (``1 / sum_n w_n^2``) and ``log_evidence [T]`` (``log mean_n w_n``, an
    estimate of ``log p(context_t)``).
    """

    name = "importance"
    options = {
        "num_proposals": Option(2000, check_int),
        "widen": Option(1.5, partial(check_number, minimum=0.0)),
        "num_init_draws": Option(256, partial(check_int, minimum=2)),
        "batch_size": Option(500, check_int),
        "min_ess": Option(None, optional(check_number, minimum=0.0)),
        "proposal": Option("auto", partial(check_one_of, choices=PROPOSALS)),
        "defensive": Option(0.2, partial(check_number, minimum=0.0, maximum=1.0)),
    }

    def run(
        self,
        problem: Problem,
        num_samples: int,
        num_proposals: int,
        widen: float,
        num_init_draws: int,
        batch_size: int,
        min_ess: Optional[float],
        proposal: str,
        defensive: float,
    ) -> InferenceResult:
        T = problem.num_tasks
        if proposal == "auto":
            proposal = "guide" if guide_has_density(problem) else "gaussian"
        tasks_per_chunk, pass_size = _plan(problem, num_proposals, num_init_draws, batch_size)
        parts = []
        for start in range(0, T, tasks_per_chunk):
            sub = (
                problem
                if tasks_per_chunk >= T
                else problem.select(torch.arange(start, min(start + tasks_per_chunk, T)))
            )
            parts.append(
                _importance(sub, num_samples, num_proposals, widen, num_init_draws, pass_size, proposal, defensive)
            )
        values = {k: torch.cat([p[0][k] for p in parts], 1) for k in problem.sites}
        ess = torch.cat([p[1] for p in parts])
        log_evidence = torch.cat([p[2] for p in parts])
        threshold = min(50.0, float(num_samples)) if min_ess is None else min_ess
        bad = torch.nonzero(ess < threshold).flatten().tolist()
        if bad:
            warnings.warn(
                f"importance: tasks {bad} have importance ESS below {threshold:.0f} (smallest {float(ess.min()):.1f}) "
                f"from {num_proposals} proposals: the resampled draws are mostly copies and the proposal misses the "
                "posterior there; use more num_proposals, a larger widen, or method='nuts'",
                stacklevel=4,
            )
        return InferenceResult(
            samples=to_posterior(values, problem.sites, 1),
            per_task={"ess": ess, "log_evidence": log_evidence},
            diagnostics={
                "num_proposals": num_proposals,
                "widen": widen,
                "proposal": proposal,
                "task_chunks": len(parts),
                "proposals_per_pass": pass_size,
            },
            summary={"min_ess": float(ess.min())},
            bad_tasks=bad,
        )


def _plan(problem: Problem, num_proposals: int, num_init_draws: int, batch_size: int) -> Tuple[int, int]:
    """``(tasks per chunk, proposals per pass)`` within the memory budget (:mod:`pyro_meta.memory`).

    A pass traces the model for ``proposals per pass`` draws of a chunk's tasks; the chunk's
    ``num_proposals`` proposals and weights are kept until its resampling; the proposal is fitted to
    ``num_init_draws`` guide draws of the chunk's tasks at once.
    """
    model, T = problem.model, problem.num_tasks
    split = can_split_tasks(model)
    event = sum(int(torch.Size(unconstrained_shape(info)).numel()) for info in problem.sites.values())
    itemsize = problem.cond.context_x.element_size()
    stored = num_proposals * (event + 4) * itemsize  # proposals, log q, log w, softmax weights per task

    def run_pass(n: int, t: int):
        sub = problem.select(torch.arange(t))
        z = draw_sites(model.guide, sub.guide_cond, n, problem.sites, model)
        return trace_draws(problem.fn, sub.cond, n, model, data=z, sites=problem.sites, log_prob=True)

    def run_guide(n: int, t: int):
        return problem.select(torch.arange(t)).guide_draws(n)

    key = (
        problem.cond.num_points("context"),
        problem.cond.x_dim,
        tuple(problem.cond.context_y.shape[2:]),
        problem.cond.context_x.dtype,
    )
    passes = plan_chunks(
        run_pass,
        min(batch_size, num_proposals),
        T,
        key=(model, ("importance",) + key),
        split_tasks=split,
        extra_per_task=stored,
    )
    guide = plan_chunks(run_guide, num_init_draws, T, key=(model, ("guide",) + key), split_tasks=split)
    return min(passes.tasks, guide.tasks), passes.draws


def _importance(
    problem: Problem,
    num_samples: int,
    num_proposals: int,
    widen: float,
    num_init_draws: int,
    batch_size: int,
    proposal: str,
    defensive: float,
) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Importance resampling for the problem's tasks: ``(draw values [S, T, 1, *event], ess [T], log_evidence [T])``."""
    model = problem.model
    T = problem.num_tasks
    q = fit_task_gaussian(problem, num_init_draws).to(problem.cond.device)
    proposals, logw = {k: [] for k in problem.sites}, []
    bar = _bar(problem.progress, num_proposals, "importance")
    with torch.no_grad():
        done = 0
        while done < num_proposals:
            n = min(batch_size, num_proposals - done)
            z, logq = _propose(problem, q, n, widen, proposal, defensive)
            trace = trace_draws(problem.fn, problem.cond, n, model, data=z, sites=problem.sites, log_prob=True)
            logw.append(per_task_log_density(trace, T) - logq)
            del trace
            for k in problem.sites:
                proposals[k].append(z[k])
            done += n
            if bar is not None:
                bar.update(n)
        if bar is not None:
            bar.close()
        logw = torch.cat(logw, 0)  # [N, T]
        logw = torch.where(torch.isfinite(logw), logw, torch.full_like(logw, -math.inf))
        z = {k: torch.cat(v, 0) for k, v in proposals.items()}
        w = torch.softmax(logw, 0)
        ess = 1.0 / (w**2).sum(0)
        log_evidence = torch.logsumexp(logw, 0) - math.log(logw.shape[0])
        idx = torch.multinomial(w.T, num_samples, replacement=True)  # [T, S]
        values = {}
        for k, v in z.items():
            vt = v.transpose(0, 1)  # [T, N, 1, *event]
            g = idx.reshape(idx.shape + (1,) * (vt.dim() - 2)).expand((T, num_samples) + tuple(vt.shape[2:]))
            values[k] = torch.gather(vt, 1, g).transpose(0, 1)
    return values, ess, log_evidence


def _propose(problem: Problem, q, n: int, widen: float, proposal: str, defensive: float):
    """``n`` proposals ``{site: [n, T, 1, *event]}`` and their log density under the proposal ``[n, T]``.

    The defensive mixture is sampled stratified: ``round(defensive * n)`` draws from the widened
    Gaussian, the rest from the guide; every draw is weighted by the mixture's density (the guide
    scores its own draws from their trace, and the Gaussian's draws by a conditioned trace).
    """
    gauss = partial(q.guide, widen=widen)
    n_wide = n if proposal == "gaussian" or defensive == 1 else int(round(defensive * n))
    if n_wide == n:
        z = draw_sites(gauss, problem.cond, n, problem.sites, problem.model)
        return z, q.log_prob(z, widen)
    z, log_guide = guide_samples(problem, n - n_wide)
    if n_wide:
        zw = draw_sites(gauss, problem.cond, n_wide, problem.sites, problem.model)
        log_guide = torch.cat([log_guide, guide_log_density(problem, zw)], 0)
        z = {k: torch.cat([z[k], zw[k]], 0) for k in z}
    if defensive == 0:
        return z, log_guide
    return z, torch.logaddexp(math.log1p(-defensive) + log_guide, math.log(defensive) + q.log_prob(z, widen))


register_method(Importance())
