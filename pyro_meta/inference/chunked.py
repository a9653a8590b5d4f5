"""Chunked runs of a model or guide over ``N`` draws of ``T`` tasks, sized to the memory budget.

:func:`trace_chunks` plans the chunks (:func:`pyro_meta.memory.plan_chunks`) and yields one
:func:`~pyro_meta.inference.draws.trace_draws` trace per chunk of draws and tasks, each on the
sub-batch of its tasks with the per-draw values of its draws and tasks; :func:`fill` assembles
per-chunk tensors ``[n, t, ...]`` into one ``[N, T, ...]``; :func:`draw_sites_chunked` is
:func:`~pyro_meta.inference.draws.draw_sites` in chunks. When everything fits the budget there is
one chunk: the very call an unchunked computation makes.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

import torch
from pyro import poutine
from pyro.infer.autoguide import AutoContinuous

from ..data.batch import TaskBatch
from ..memory import ChunkPlan, plan_chunks
from ..model import MetaModel, SiteInfo
from .draws import draw_sites, trace_draws

__all__ = ["can_split_tasks", "draw_sites_chunked", "fill", "slice_values", "trace_chunks"]


def can_split_tasks(model: MetaModel, sites: Optional[Mapping[str, SiteInfo]] = None) -> bool:
    """False when running a subset of the tasks would change the result: an ``AutoContinuous`` guide
    (it packs every task's latents in one vector) or sampled global latent sites among ``sites`` (one
    draw must share its global value across all tasks)."""
    if any(isinstance(m, AutoContinuous) for m in model.modules()):
        return False
    return not any(info.is_global for info in (sites or {}).values())


def slice_values(
    values: Optional[Mapping[str, torch.Tensor]], sites: Optional[Mapping[str, SiteInfo]], draws: slice, tasks: slice
) -> Dict[str, torch.Tensor]:
    """Per-draw values ``{site: [N, *natural]}`` of some draws (task sites: also of some tasks)."""
    out = {}
    for name, v in (values or {}).items():
        info = (sites or {}).get(name)
        v = v[draws]
        out[name] = v if info is not None and info.is_global else v[:, tasks]
    return out


def _signature(kind: str, batch: TaskBatch, values: Optional[Mapping[str, torch.Tensor]], log_prob: bool) -> Tuple:
    """What a chunk's cost per task and draw depends on, besides the model: everything but ``T`` and ``N``."""
    y = batch.target_y
    return (
        kind,
        batch.num_points("context"),
        batch.num_points("target"),
        batch.x_dim,
        tuple(batch.context_y.shape[2:]),
        batch.context_x.dtype,
        y is not None,
        log_prob,
        tuple(sorted((k, tuple(v.shape[2:]), v.dtype) for k, v in (values or {}).items())),
    )


def trace_chunks(
    fn: Callable,
    batch: TaskBatch,
    num_draws: int,
    model: MetaModel,
    data: Optional[Mapping[str, torch.Tensor]] = None,
    sites: Optional[Mapping[str, SiteInfo]] = None,
    log_prob: bool = False,
    kind: str = "model",
    split_tasks: Optional[bool] = None,
    extra_per_draw_task: float = 0.0,
) -> Tuple[ChunkPlan, Iterator[Tuple[slice, slice, poutine.Trace]]]:
    """``(plan, chunks)``: ``trace_draws`` of ``fn`` for ``num_draws`` draws of ``batch``'s tasks, in chunks.

    ``chunks`` yields ``(draws, tasks, trace)`` with the trace of ``fn(batch.select(tasks))`` for those
    draws, conditioned on ``data`` sliced likewise. ``kind`` names the function for the cost cache
    (``"model"``, ``"guide"``, ``"predictive"``...). ``split_tasks`` defaults to :func:`can_split_tasks`.
    """
    T = batch.num_tasks
    split = can_split_tasks(model, sites) if split_tasks is None else split_tasks

    def run(n: int, t: int) -> poutine.Trace:
        return trace_draws(
            fn,
            batch.select(slice(0, t)),
            n,
            model,
            data=slice_values(data, sites, slice(0, n), slice(0, t)),
            sites=sites,
            log_prob=log_prob,
        )

    plan = plan_chunks(
        run,
        num_draws,
        T,
        key=(model, _signature(kind, batch, data, log_prob)),
        split_tasks=split,
        extra_per_draw_task=extra_per_draw_task,
    )

    def chunks() -> Iterator[Tuple[slice, slice, poutine.Trace]]:
        if plan.single:
            yield (
                slice(0, num_draws),
                slice(0, T),
                trace_draws(fn, batch, num_draws, model, data=data, sites=sites, log_prob=log_prob),
            )
            return
        for draws, tasks in plan:
            sub = batch.select(tasks)
            yield (
                draws,
                tasks,
                trace_draws(
                    fn,
                    sub,
                    draws.stop - draws.start,
                    model,
                    data=slice_values(data, sites, draws, tasks),
                    sites=sites,
                    log_prob=log_prob,
                ),
            )

    return plan, chunks()


def fill(
    out: Optional[torch.Tensor], num_draws: int, num_tasks: int, draws: slice, tasks: slice, value: torch.Tensor
) -> torch.Tensor:
    """Write a chunk's ``value [n, t, ...]`` into ``out [N, T, ...]`` (allocated on the first chunk)."""
    if out is None:
        out = value.new_empty((num_draws, num_tasks) + tuple(value.shape[2:]))
    out[draws, tasks] = value
    return out


def draw_sites_chunked(
    fn: Callable,
    batch: TaskBatch,
    num_draws: int,
    sites: Mapping[str, SiteInfo],
    model: MetaModel,
    kind: str,
    split_tasks: Optional[bool] = None,
) -> Dict[str, Any]:
    """:func:`~pyro_meta.inference.draws.draw_sites` in chunks: ``{site: [N, *natural]}``.

    Tasks are split only when :func:`can_split_tasks` allows it (then each chunk's task sites
    ``[n, t, 1, *event]`` are filled in); draws are split otherwise.
    """
    T = batch.num_tasks
    split = can_split_tasks(model, sites) if split_tasks is None else split_tasks

    def run(n: int, t: int):
        return draw_sites(fn, batch.select(slice(0, t)), n, sites, model)

    plan = plan_chunks(run, num_draws, T, key=(model, _signature(kind, batch, None, False)), split_tasks=split)
    if plan.single:
        return draw_sites(fn, batch, num_draws, sites, model)
    out: Dict[str, Any] = {}
    for draws, tasks in plan:
        part = draw_sites(fn, batch.select(tasks), draws.stop - draws.start, sites, model)
        for name, value in part.items():
            if sites[name].is_global:  # only with whole-task chunks (split=False): fill the draws
                if name not in out:
                    out[name] = value.new_empty((num_draws,) + tuple(value.shape[1:]))
                out[name][draws] = value
            else:
                out[name] = fill(out.get(name), num_draws, T, draws, tasks, value)
    return out
