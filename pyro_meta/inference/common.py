"""What every inference method shares: the model conditioned on each task's context, and its sites."""

from __future__ import annotations

import dataclasses
import sys
from collections import OrderedDict
from typing import Callable, Dict, Optional, Union

import torch
from pyro import poutine
from pyro.infer.autoguide import AutoCallable, AutoContinuous, AutoGuide, AutoGuideList
from torch.distributions import biject_to

from ..data.batch import TaskBatch
from ..model import TASK_PLATE, MetaModel, SiteInfo, check_batch, check_model, discover_sites
from ..validation import check_bool, check_one_of
from .chunked import can_split_tasks, draw_sites_chunked
from .draws import draw_sites

__all__ = ["GLOBALS", "Problem", "check_compatible", "model_device", "move_batch", "prepare"]

#: how global latent sites are treated: held at a point estimate, or sampled with the task latents
GLOBALS = ("point", "sample")

#: tasks of the trace that finds the latent sites
SITE_PROBE_TASKS = 16


@dataclasses.dataclass
class Problem:
    """A model conditioned on each task's context set.

    Attributes
    ----------
    model, batch
        The model and the batch as given (its context is conditioned on, its target x predicted).
    cond : TaskBatch
        The context-only batch (``Nt = 0``) without task indices: what the model is run on.
    guide_cond : TaskBatch
        The same with the batch's task indices, if any: what the guide is run on (a per-task guide
        indexes its parameters by them).
    sites : dict ``name -> SiteInfo``
        The task-level latent sites.
    global_sites : dict ``name -> SiteInfo``
        Every global latent site of the model.
    globals : "point" | "sample"
        ``"point"``: global sites are held at ``fixed_globals`` (conditioned in ``fn``);
        ``"sample"``: they are inferred jointly with the task sites.
    fn : callable
        The model to infer: ``model.model`` with the fixed global values conditioned.
    progress : bool
        Whether methods show progress bars.
    """

    model: MetaModel
    batch: TaskBatch
    cond: TaskBatch
    guide_cond: TaskBatch
    sites: "OrderedDict[str, SiteInfo]"
    global_sites: "OrderedDict[str, SiteInfo]"
    globals: str
    fn: Callable
    fixed_globals: Dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    progress: bool = False

    @property
    def num_tasks(self) -> int:
        return self.batch.num_tasks

    @property
    def latent_sites(self) -> "OrderedDict[str, SiteInfo]":
        """The sites a method infers: the task sites, and the global ones when ``globals="sample"``."""
        out = OrderedDict(self.sites)
        if self.globals == "sample":
            out.update(self.global_sites)
        return out

    def select(self, index: torch.Tensor) -> "Problem":
        """The same problem restricted to tasks ``index``."""
        return dataclasses.replace(
            self, batch=self.batch.select(index), cond=self.cond.select(index), guide_cond=self.guide_cond.select(index)
        )

    def guide_draws(self, num: int) -> Dict[str, torch.Tensor]:
        """``num`` draws ``{site: [N, *natural]}`` of :attr:`latent_sites` from the model's guide given the context.

        In chunks sized to the memory budget (:mod:`pyro_meta.memory`); chunks of tasks only when the
        model has no global latent site (a guide's task latents may depend on its global draw).
        """
        split = can_split_tasks(self.model, {**self.sites, **self.global_sites})
        with torch.enable_grad():
            return draw_sites_chunked(
                self.model.guide, self.guide_cond, num, self.latent_sites, self.model, kind="guide", split_tasks=split
            )

    def prior_draws(self, num: int) -> Dict[str, torch.Tensor]:
        """``num`` draws of :attr:`latent_sites` from the model (with the fixed globals conditioned), in chunks."""
        with torch.no_grad():
            return draw_sites_chunked(self.fn, self.cond, num, self.latent_sites, self.model, kind="prior")


def check_compatible(model: MetaModel, batch: TaskBatch) -> None:
    """``TypeError`` when the model's floating parameters and the batch differ in dtype or device.

    Raised up front, naming both, instead of a matmul error deep inside the model.
    """
    ref = next((t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()), None)
    if ref is None:
        return
    x = batch.context_x
    if ref.dtype != x.dtype:
        raise TypeError(
            f"{type(model).__name__}'s parameters are {ref.dtype} but the batch is {x.dtype}: convert one, e.g. "
            f"batch.to({ref.dtype}) or model.to({x.dtype})"
        )
    if ref.device != x.device:
        raise TypeError(
            f"{type(model).__name__}'s parameters are on {ref.device} but the batch is on {x.device}: move one, e.g. "
            f"batch.to({str(ref.device)!r})"
        )


def check_guide_tasks(model: MetaModel, batch: TaskBatch) -> None:
    """Refuse a guide with per-task parameters on tasks it was not fitted on.

    An AutoGuide over the task latents (e.g. ``AutoNormal(self.model)``) holds one set of
    parameters per task of the fixed task set it was fitted on: it is not amortized. It can be
    run on that set (the same batch, or a ``select`` of it that keeps ``task_index``); on other
    tasks its parameters would be misaligned, so this raises ``ValueError``.
    """
    for guide in model.modules():
        if not isinstance(guide, AutoGuide) or isinstance(guide, (AutoGuideList, AutoCallable)):
            continue
        if guide.prototype_trace is None:
            continue
        for name, site in guide.prototype_trace.iter_stochastic_nodes():
            frame = next((f for f in site["cond_indep_stack"] if f.name == TASK_PLATE), None)
            if frame is None:
                continue
            fitted = frame.full_size or frame.size
            total = batch.num_tasks_total
            if total != fitted:
                raise ValueError(
                    f"{type(model).__name__}'s guide {type(guide).__name__} has per-task parameters for the {fitted} tasks "
                    f"it was fitted on (site {name!r}): it is not amortized and cannot infer these {batch.num_tasks} "
                    f"tasks (of a set of {total}). Run it on the fitted TaskBatch (or a .select of it), or give the "
                    "model an amortized guide (an encoder of batch.observed(), or an inner loop) for new tasks"
                )
            subset = batch.task_index is not None and not torch.equal(batch.task_index.cpu(), torch.arange(fitted))
            if subset and isinstance(guide, AutoContinuous):
                raise ValueError(
                    f"{type(guide).__name__} packs all tasks' latents in one vector and cannot be indexed by task: "
                    f"infer it on the whole fitted TaskBatch of {fitted} tasks, in order (or use AutoNormal)"
                )
            break


def _point_estimates(model: MetaModel, guide_cond: TaskBatch, sites: Dict[str, SiteInfo]) -> Dict[str, torch.Tensor]:
    """Mean of 64 guide draws of each global site in unconstrained space, mapped back: ``{name: [*shape]}``."""
    try:
        with torch.enable_grad():
            draws = draw_sites(model.guide, guide_cond, 64, sites, model)
    except ValueError as err:
        if "has no site" not in str(err):
            raise
        raise ValueError(
            f"{type(model).__name__}: the guide does not sample every global latent site {sorted(sites)}, so they "
            "cannot be held at a point estimate; add them to the guide (e.g. an AutoNormal over the globals)"
        ) from err
    fixed = {}
    for name, info in sites.items():
        t = biject_to(info.support)
        fixed[name] = t(t.inv(draws[name].detach()).mean(0))
    return fixed


def prepare(model: MetaModel, batch: TaskBatch, globals: str = "point", progress: Optional[bool] = None) -> Problem:
    """Check the arguments, find the latent sites (one trace) and hold global latents fixed unless sampled.

    ``globals="point"``: each global latent site is conditioned on the mean of 64 guide draws in
    unconstrained space (empirical Bayes: globals are meta-learned from many tasks);
    ``globals="sample"``: they stay free, for a method that samples them with the task latents.
    ``progress=None`` shows progress bars when standard error is a terminal.
    """
    check_model(model)
    check_batch(batch)
    check_one_of("globals", globals, GLOBALS)
    progress = sys.stderr.isatty() if progress is None else check_bool("progress", progress)
    check_compatible(model, batch)
    check_guide_tasks(model, batch)
    guide_cond = batch.context_only()
    cond = guide_cond.without_task_index()
    # the sites' names, shapes and supports do not depend on the number of tasks: a few tasks tell them
    # (a trace of all the tasks would cost a full pass of the model, [T, N, hidden] activations)
    sites, global_sites = discover_sites(
        model, batch if batch.num_tasks <= SITE_PROBE_TASKS else batch.select(slice(0, SITE_PROBE_TASKS))
    )
    fn = model.model
    fixed: Dict[str, torch.Tensor] = {}
    if global_sites and globals == "point":
        fixed = _point_estimates(model, guide_cond, global_sites)
        fn = poutine.condition(model.model, data=fixed)
    return Problem(
        model=model,
        batch=batch,
        cond=cond,
        guide_cond=guide_cond,
        sites=sites,
        global_sites=global_sites,
        globals=globals,
        fn=fn,
        fixed_globals=fixed,
        progress=progress,
    )


def model_device(model: MetaModel, device: Union[str, torch.device], caller: str = "infer") -> torch.device:
    """The model's device, checked to be ``device`` (``TypeError`` naming both; ``ValueError`` for a bad name).

    Inference never moves the model (a call that infers leaves the model where it is); ``fit`` does.
    A model without floating parameters or buffers runs anywhere: ``device`` itself is returned.
    """
    check_model(model)
    try:
        wanted = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from err
    ref = next((t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()), None)
    if ref is None:
        return wanted
    if not _same_device(ref.device, wanted):
        raise TypeError(
            f"{caller}(device={str(wanted)!r}) moves the batch, not the model, and {type(model).__name__}'s parameters "
            f"are on {ref.device}: call model.to({str(wanted)!r}) first"
        )
    return ref.device


def move_batch(
    model: MetaModel, batch: TaskBatch, device: Union[str, torch.device], caller: str = "infer"
) -> TaskBatch:
    """``batch.to(device)`` after :func:`model_device` checked that the model is there."""
    if not isinstance(batch, TaskBatch):
        raise TypeError(f"batch must be a pyro_meta.TaskBatch, got {type(batch).__name__}")
    return batch.to(model_device(model, device, caller))


def _same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two device names are one device (``cuda`` is ``cuda:<current device>``)."""
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return a.index is None or b.index is None or a.index == b.index
    current = torch.cuda.current_device()
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)
