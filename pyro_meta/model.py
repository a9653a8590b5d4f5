"""``MetaModel``: a Pyro model + guide with task-level latent variables.

Plates (one convention across the zoo):

* :func:`task_plate` -- ``pyro.plate("tasks", T, dim=-2)``; a task latent of event size ``D``
  has shape ``[T, 1, D]`` so that it broadcasts over the points dim;
* :func:`point_plate` -- ``pyro.plate("<split>_points", N, dim=-1)`` with the batch's mask;
* observed sites are ``y_context`` and ``y_target`` (:func:`observe` writes both).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import OrderedDict
from typing import Callable, Dict, Iterator, Tuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.nn import PyroModule
from pyro.poutine.util import site_is_subsample

from .data.batch import SPLITS, TaskBatch

__all__ = [
    "MetaModel",
    "TASK_PLATE",
    "SiteInfo",
    "local_params",
    "observe",
    "point_plate",
    "task_latent_sites",
    "task_plate",
]

TASK_PLATE = "tasks"
TASK_DIM = -2
POINT_DIM = -1


def task_plate(batch: TaskBatch) -> pyro.plate:
    """``pyro.plate("tasks", T, dim=-2)``: task latents inside it have shape ``[T, 1, ...]``."""
    return pyro.plate(TASK_PLATE, batch.num_tasks, dim=TASK_DIM)


@contextlib.contextmanager
def point_plate(batch: TaskBatch, split: str) -> Iterator[pyro.plate]:
    """``pyro.plate("<split>_points", N, dim=-1)`` plus ``poutine.mask`` with the ``[T, N]`` mask.

    Padded points contribute exactly zero log-density (the mask, never ``obs_mask``, which
    would impute them). Raises ``ValueError`` for an empty split (``N = 0``, e.g. the
    context-only batches that inference conditions on): guard with
    ``batch.num_points(split) > 0`` or use :func:`observe`, which skips empty splits.
    """
    n = batch.num_points(split)
    if n == 0:
        raise ValueError(
            f"point_plate: the {split} set of this batch is empty (N = 0); skip it when "
            f"batch.num_points({split!r}) == 0 (pyro_meta.observe does)"
        )
    with pyro.plate(f"{split}_points", n, dim=POINT_DIM) as plate, poutine.mask(mask=batch.mask(split)):
        yield plate


def observe(
    batch: TaskBatch,
    likelihood: Callable[[torch.Tensor], dist.Distribution],
    splits: Tuple[str, ...] = SPLITS,
) -> Dict[str, torch.Tensor]:
    """Write the observation sites ``y_context``/``y_target`` of a task batch.

    ``likelihood(x)`` maps inputs ``[T, N, Dx]`` to ``p(y | x, task latents)``: a distribution
    with batch shape ``[..., T, N]`` and event shape ``[Dy]`` (regression) or ``[]`` (class
    labels). Sites are observed when the batch has their ``y``; ``y_target`` is *sampled*
    when ``batch.target_y is None``. Empty splits are skipped. Returns the site values.
    """
    values = {}
    for split in splits:
        if batch.num_points(split) == 0:
            continue
        with point_plate(batch, split):
            values[f"y_{split}"] = pyro.sample(f"y_{split}", likelihood(batch.x(split)), obs=batch.y(split))
    return values


@contextlib.contextmanager
def local_params() -> Iterator[None]:
    """Run a block against a fresh, private Pyro param store (``ParamStore.scope``).

    ``PyroModule`` parameters live in their module; under Pyro's global param store two
    instances of one class register the same names (``decoder.weight``) and the second
    silently reads the first's tensors (DESIGN section 7). Every pyro_meta entry point runs
    under this scope, so the store only ever holds the one model's own parameters for the
    duration of a call and is restored afterwards: two instances never share or overwrite
    each other's parameters, whatever the global store holds. (Pyro's
    ``module_local_params`` setting is not used: it must be on when a module is *built*.)
    """
    with pyro.get_param_store().scope():
        yield


@dataclasses.dataclass(frozen=True)
class SiteInfo:
    """A task-level latent site: ``value [T, 1, *event_shape]`` for a single draw."""

    name: str
    event_shape: torch.Size
    support: object

    @property
    def event_dim(self) -> int:
        return len(self.event_shape)


class MetaModel(PyroModule):
    """Base class of meta-learners: a Pyro ``model(batch)`` and ``guide(batch)``.

    Subclasses implement

    * ``model(batch)`` -- task latents ``z_t`` inside :func:`task_plate`, observations
      ``y_context``/``y_target`` inside :func:`point_plate`. With ``batch.target_y is None``
      it samples ``y_target`` (the predictive). It must accept a batch with an empty target set.
    * ``guide(batch)`` -- the amortized guide ``q(z_t | observed points)``; it should condition
      on ``batch.observed()`` (context and, at training time, target).

    and may override ``loss(batch)`` (default: the negative ELBO per task) for
    meta-objectives that are not an ELBO. Global parameters are the module's own
    ``nn.Parameter``/``PyroParam`` attributes: every pyro_meta entry point keeps them local to
    the instance (:func:`local_params`) and optimises them with ``torch.optim``.

    Models should broadcast over extra leading sample dims (``z`` of shape ``[S, T, 1, D]``)
    so that draws and predictives are vectorized; set ``vectorized = False`` otherwise.
    """

    #: plates nested inside a draw: tasks (dim -2) and points (dim -1)
    max_plate_nesting: int = 2
    #: the model and guide broadcast over a leading sample dim
    vectorized: bool = True
    #: particles of the default ELBO loss
    num_particles: int = 1

    def model(self, batch: TaskBatch) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement model(batch)")

    def guide(self, batch: TaskBatch) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement guide(batch)")

    def loss(self, batch: TaskBatch) -> torch.Tensor:
        """Meta-training loss, per task: ``-ELBO / T`` with ``Trace_ELBO`` (differentiable)."""
        elbo = Trace_ELBO(num_particles=self.num_particles, max_plate_nesting=self.max_plate_nesting)
        return elbo.differentiable_loss(self.model, self.guide, batch) / batch.num_tasks

    def forward(self, batch: TaskBatch) -> None:  # pragma: no cover - convenience
        return self.model(batch)

    def task_latent_sites(self, batch: TaskBatch) -> "OrderedDict[str, SiteInfo]":
        """Task-level latent sites found by tracing the model (see :func:`task_latent_sites`)."""
        return task_latent_sites(self, batch)


def _frames(site) -> Dict[str, int]:
    return {f.name: f.dim for f in site["cond_indep_stack"]}


def task_latent_sites(model: MetaModel, batch: TaskBatch) -> "OrderedDict[str, SiteInfo]":
    """Unobserved sample sites inside the ``tasks`` plate and outside every point plate.

    Found by tracing ``model.model`` on ``batch`` with its target set observed (or empty).
    Returns ``{name: SiteInfo}`` in trace order. Raises ``ValueError`` if there is none.
    """
    probe = batch if batch.target_y is not None else batch.context_only()
    with local_params(), torch.no_grad():
        trace = poutine.trace(model.model).get_trace(probe)
    sites: "OrderedDict[str, SiteInfo]" = OrderedDict()
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site["infer"].get("_deterministic"):
            continue
        if site_is_subsample(site):
            continue
        frames = _frames(site)
        if TASK_PLATE not in frames or any(d == POINT_DIM for n, d in frames.items() if n != TASK_PLATE):
            continue
        fn = site["fn"]
        sites[name] = SiteInfo(name, fn.event_shape, fn.support)
    if not sites:
        raise ValueError(
            f"{type(model).__name__}.model has no task-level latent site: expected an unobserved "
            f"pyro.sample inside pyro_meta.task_plate (plate {TASK_PLATE!r}, dim {TASK_DIM})"
        )
    return sites


def global_latent_sites(model: MetaModel, batch: TaskBatch) -> Tuple[str, ...]:
    """Names of unobserved sample sites outside the tasks plate (global latents)."""
    probe = batch if batch.target_y is not None else batch.context_only()
    with local_params(), torch.no_grad():
        trace = poutine.trace(model.model).get_trace(probe)
    return tuple(
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not site["infer"].get("_deterministic")
        and not site_is_subsample(site)
        and TASK_PLATE not in _frames(site)
    )


@contextlib.contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """Hold a module's parameters fixed: ``requires_grad_(False)`` for the block, then restore."""
    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def check_batch(batch: object, name: str = "batch") -> TaskBatch:
    """Raise ``TypeError`` unless ``batch`` is a :class:`TaskBatch`."""
    if not isinstance(batch, TaskBatch):
        raise TypeError(f"{name} must be a pyro_meta.data.TaskBatch, got {type(batch).__name__}")
    return batch


def check_model(model: object) -> MetaModel:
    """Raise ``TypeError`` unless ``model`` is a :class:`MetaModel`."""
    if not isinstance(model, MetaModel):
        raise TypeError(f"model must be a pyro_meta.MetaModel, got {type(model).__name__}")
    return model
