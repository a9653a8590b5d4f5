"""Vectorized draws of task latents and the shape bookkeeping between sites and posteriors.

A *site value* of a task latent for ``N`` draws has shape ``[N, T, 1, *event]`` (draw plate at
dim ``-3``, tasks at ``-2``, the singleton points dim at ``-1``). A *posterior sample* has shape
``[C, S, T, *event]`` (chains, draws per chain, tasks, event).
"""

from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ..data.batch import TaskBatch
from ..model import MetaModel, SiteInfo, local_params

__all__ = [
    "DRAW_PLATE",
    "draw_sites",
    "to_posterior",
    "to_site_values",
    "trace_with_draws",
    "per_task_log_density",
]

DRAW_PLATE = "_draws"


def trace_with_draws(
    fn: Callable, batch: TaskBatch, num_draws: int, max_plate_nesting: int = 2, vectorized: bool = True
) -> poutine.Trace:
    """Trace ``fn(batch)`` for ``num_draws`` draws at once under ``plate("_draws", dim=-3)``.

    Non-vectorized models are run ``num_draws`` times and their sample sites stacked
    (the returned trace then carries values and ``fn`` of the last run only).
    """
    if vectorized:
        with local_params(), pyro.plate(DRAW_PLATE, num_draws, dim=-(max_plate_nesting + 1)):
            return poutine.trace(fn).get_trace(batch)
    traces = []
    with local_params():
        for _ in range(num_draws):
            traces.append(poutine.trace(fn).get_trace(batch))
    trace = traces[-1]
    for name, site in trace.nodes.items():
        if site["type"] == "sample":
            site["value"] = torch.stack([t.nodes[name]["value"] for t in traces])
    return trace


def draw_sites(
    fn: Callable,
    batch: TaskBatch,
    num_draws: int,
    sites: Mapping[str, SiteInfo],
    model: MetaModel,
) -> Dict[str, torch.Tensor]:
    """Values ``[N, T, 1, *event]`` of ``sites`` in ``N`` draws of ``fn(batch)`` (a guide or model)."""
    trace = trace_with_draws(fn, batch, num_draws, model.max_plate_nesting, model.vectorized)
    out = {}
    T = batch.num_tasks
    for name, info in sites.items():
        if name not in trace.nodes:
            raise ValueError(f"{type(model).__name__}: the traced function has no site {name!r}")
        value = trace.nodes[name]["value"].detach()
        out[name] = value.expand((num_draws, T, 1) + tuple(info.event_shape))
    return out


def to_posterior(values: Mapping[str, torch.Tensor], sites: Mapping[str, SiteInfo], num_chains: int) -> Dict[str, torch.Tensor]:
    """``{name: [C*S, T, 1, *event]}`` -> ``{name: [C, S, T, *event]}``."""
    out = {}
    for name, info in sites.items():
        v = values[name]
        k = info.event_dim
        v = v.squeeze(-(k + 1))  # the points singleton
        out[name] = v.reshape((num_chains, v.shape[0] // num_chains) + tuple(v.shape[1:]))
    return out


def to_site_values(samples: Mapping[str, torch.Tensor], sites: Mapping[str, SiteInfo]) -> Dict[str, torch.Tensor]:
    """``{name: [C, S, T, *event]}`` -> ``{name: [C*S, T, 1, *event]}`` (what the model consumes)."""
    out = {}
    for name, info in sites.items():
        v = samples[name]
        v = v.reshape((-1,) + tuple(v.shape[2:]))
        out[name] = v.unsqueeze(-(info.event_dim + 1))
    return out


def per_task_log_density(trace: poutine.Trace, num_tasks: int, exclude: Optional[set] = None) -> torch.Tensor:
    """``log p`` of every sample site inside the tasks plate, summed per task: ``[N, T]``.

    Masks and scales are applied (``compute_log_prob``); global sites are left out.
    """
    trace.compute_log_prob()
    total = 0.0
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or (exclude and name in exclude):
            continue
        if "tasks" not in {f.name for f in site["cond_indep_stack"]}:
            continue
        lp = site["log_prob"]
        total = total + lp.sum(-1)  # points dim (or the singleton)
    if isinstance(total, float):
        raise ValueError("no sample site inside the tasks plate")
    return total.reshape(-1, num_tasks) if total.dim() != 2 else total
