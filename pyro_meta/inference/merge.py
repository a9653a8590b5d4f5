"""``merge_posteriors``: posteriors of consecutive task chunks as one :class:`Posterior` over every task.

The merge is what ``infer(..., method="nuts", chunk_size=k)`` does with its chunks inside one run,
applied to separate runs (one per chunk, e.g. on several processes, :func:`~pyro_meta.inference.sharded.infer_sharded`):

* samples ``[C, S, t_k, *event]`` are joined on the task dim;
* per-task diagnostics (:attr:`Posterior.per_task`) are joined, ``bad_tasks`` renumbered;
* per-draw statistics ``[C, S]``: ``diverging`` (bool) is true when it is in some chunk, ``lp`` (the
  joint log density of independent chunks) is summed, the others (acceptance rate, step size) are
  the task-weighted mean over chunks;
* other diagnostics: tensors of one shape get a trailing chunk dim (``divergences [C, K]``,
  ``step_size [C, K]``), values equal in every chunk are kept, the rest become a list per chunk;
  ``chunks`` lists each chunk's ``(first, stop)`` tasks;
* summary columns: ``min_*`` the minimum, ``max_*`` the maximum, integers (``divergences``) summed,
  other numbers the task-weighted mean.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..data.batch import TaskBatch
from ..data.concat import concat_batches
from .posterior import Posterior

__all__ = ["merge_posteriors"]


def _same(values: Sequence[Any]) -> bool:
    if not values:
        return True
    first = values[0]
    for v in values[1:]:
        if isinstance(first, torch.Tensor) or isinstance(v, torch.Tensor):
            if not (
                isinstance(first, torch.Tensor)
                and isinstance(v, torch.Tensor)
                and first.shape == v.shape
                and bool((first.cpu() == v.cpu()).all())
            ):
                return False
        elif type(v) is not type(first) or v != first:
            return False
    return True


def _merge_stat(name: str, values: List[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    if values[0].dtype == torch.bool:
        return torch.stack(values).any(0)
    stacked = torch.stack([v.to(torch.float64) for v in values])
    if name == "lp":
        return stacked.sum(0).to(values[0].dtype)
    w = weights.to(stacked.device).reshape((-1,) + (1,) * (stacked.dim() - 1))
    return (w * stacked).sum(0).to(values[0].dtype)


def _merge_summary(name: str, values: List[Any], weights: torch.Tensor) -> Any:
    if name.startswith("min_"):
        return min(values)
    if name.startswith("max_"):
        return max(values)
    if all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
        return int(sum(values))
    if all(isinstance(v, numbers.Real) for v in values):
        return float(sum(float(w) * float(v) for w, v in zip(weights, values)))
    return values[0] if _same(values) else list(values)


def merge_posteriors(posteriors: Sequence[Posterior], batch: Optional[TaskBatch] = None) -> Posterior:
    """One posterior over the tasks of ``posteriors`` (chunks of consecutive tasks, in order).

    Parameters
    ----------
    posteriors : sequence of Posterior
        One per chunk, from the same model and method, with the same chains ``C`` and draws ``S``
        and the same latent sites (no global latent held at a chunk's own point estimate).
    batch : TaskBatch, optional
        The batch of all the tasks (``sum_k t_k``), e.g. the one the chunks were selected from.
        Default: the chunks' batches joined (:func:`~pyro_meta.data.concat_batches`).

    Returns
    -------
    Posterior
        Samples ``[C, S, sum_k t_k, *event]``; see the module docstring for diagnostics, per-draw
        statistics and summary. ``seconds`` is the sum over chunks.
    """
    posts = list(posteriors)
    if not posts:
        raise ValueError("merge_posteriors: posteriors is empty")
    for k, p in enumerate(posts):
        if not isinstance(p, Posterior):
            raise TypeError(f"posteriors[{k}] must be a Posterior, got {type(p).__name__}")
    first = posts[0]
    for k, p in enumerate(posts[1:], 1):
        if p.method != first.method or set(p.samples) != set(first.samples):
            raise ValueError(
                f"posteriors[{k}] ({p.method}, sites {sorted(p.samples)}) does not match posteriors[0] "
                f"({first.method}, sites {sorted(first.samples)})"
            )
        if (p.num_chains, p.num_samples) != (first.num_chains, first.num_samples):
            raise ValueError(
                f"posteriors[{k}] has {p.num_chains} chains x {p.num_samples} draws, posteriors[0] "
                f"{first.num_chains} x {first.num_samples}"
            )
        if any(info.is_global for info in p.sites.values() if info.name in p.samples):
            raise ValueError("merge_posteriors: sampled global latents couple the tasks; chunks cannot be merged")
        if not _same([p.fixed_globals.get(n) for n in first.fixed_globals]) or set(p.fixed_globals) != set(
            first.fixed_globals
        ):
            raise ValueError("merge_posteriors: the chunks hold global latents at different point estimates")
    sizes = [p.batch.num_tasks for p in posts]
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    total = sum(sizes)
    if batch is None:
        batch = concat_batches([p.batch for p in posts])
    elif batch.num_tasks != total:
        raise ValueError(f"batch has {batch.num_tasks} tasks but the posteriors hold {total}")
    weights = torch.tensor(sizes, dtype=torch.float64) / total

    samples = {name: torch.cat([p.samples[name] for p in posts], 2) for name in first.samples}
    stats = {
        name: _merge_stat(name, [p.sample_stats[name] for p in posts], weights)
        for name in first.sample_stats
        if all(name in p.sample_stats for p in posts)
    }
    diagnostics: Dict[str, Any] = {}
    for name in first.diagnostics:
        values = [p.diagnostics.get(name) for p in posts]
        if name in first.per_task:
            diagnostics[name] = torch.cat([torch.as_tensor(v).to(torch.as_tensor(values[0]).device) for v in values])
        elif name == "bad_tasks":
            diagnostics[name] = [s + t for s, v in zip(starts, values) for t in (v or [])]
        elif _same(values):
            diagnostics[name] = values[0]
        elif all(isinstance(v, torch.Tensor) and v.shape == values[0].shape for v in values):
            diagnostics[name] = torch.stack([v.to(values[0].device) for v in values], -1)
        else:
            diagnostics[name] = values
    diagnostics["chunks"] = [(s, s + n) for s, n in zip(starts, sizes)]
    summary = {
        name: _merge_summary(name, [p.summary[name] for p in posts], weights)
        for name in first.summary
        if all(name in p.summary for p in posts)
    }
    return dataclasses.replace(
        first,
        batch=batch,
        samples=samples,
        sample_stats=stats,
        diagnostics=diagnostics,
        summary=summary,
        seconds=float(sum(p.seconds for p in posts)),
        draws_shape=None if first.samples else first.draws_shape,
    )
