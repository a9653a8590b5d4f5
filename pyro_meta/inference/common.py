"""What every inference method shares: the conditioned model and its task-level sites."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Callable, Dict

import torch
from pyro import poutine
from torch.distributions import biject_to

from ..data.batch import TaskBatch
from ..model import MetaModel, SiteInfo, check_batch, check_model, global_latent_sites, task_latent_sites
from .draws import trace_with_draws

__all__ = ["Problem", "prepare"]


@dataclasses.dataclass
class Problem:
    """A model conditioned on each task's context set, with global latents held fixed.

    ``cond`` is the context-only batch (``Nt = 0``); ``fn(batch)`` is the model to infer.
    """

    model: MetaModel
    batch: TaskBatch
    cond: TaskBatch
    sites: "OrderedDict[str, SiteInfo]"
    fn: Callable

    @property
    def num_tasks(self) -> int:
        return self.batch.num_tasks

    def select(self, index: torch.Tensor) -> "Problem":
        """The same problem restricted to tasks ``index``."""
        return dataclasses.replace(self, batch=self.batch.select(index), cond=self.cond.select(index))


def prepare(model: MetaModel, batch: TaskBatch) -> Problem:
    """Check arguments, find the task latents and hold any global latent sites fixed.

    Global latent sites (outside the tasks plate) are conditioned on the mean of 64 guide
    draws in unconstrained space (a point estimate, DESIGN section 2).
    """
    check_model(model)
    check_batch(batch)
    cond = batch.context_only()
    sites = task_latent_sites(model, batch)
    fn = model.model
    names = global_latent_sites(model, batch)
    if names:
        trace = trace_with_draws(model.guide, cond, 64, model.max_plate_nesting, model.vectorized)
        fixed: Dict[str, torch.Tensor] = {}
        for name in names:
            if name not in trace.nodes:
                raise ValueError(
                    f"{type(model).__name__}: global latent site {name!r} is not sampled by the guide, "
                    "so it cannot be held at a point estimate"
                )
            site = trace.nodes[name]
            t = biject_to(site["fn"].support)
            fixed[name] = t(t.inv(site["value"].detach()).mean(0))
        fn = poutine.condition(model.model, data=fixed)
    return Problem(model=model, batch=batch, cond=cond, sites=sites, fn=fn)
