"""``MetaModel``: a Pyro model + guide with task-level latent variables.

Plates (one convention across the zoo):

* :func:`task_plate` -- ``pyro.plate("tasks", T, dim=-2)``; a task latent of event size ``D``
  has shape ``[T, 1, D]`` so that it broadcasts over the points dim;
* :func:`point_plate` -- ``pyro.plate("<split>_points", N, dim=-1)`` with the batch's mask;
* observed sites are ``y_context`` and ``y_target`` (:func:`observe` writes both).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import inspect
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoGuide
from pyro.nn import PyroModule
from pyro.nn.module import _make_name
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from .data.batch import SPLITS, TaskBatch

__all__ = [
    "MetaModel",
    "TASK_PLATE",
    "SiteInfo",
    "discover_sites",
    "local_params",
    "observe",
    "point_plate",
    "task_latent_sites",
    "task_plate",
]


def _register_mixture_support() -> None:
    """torch has no bijection for ``MixtureSameFamily``'s support (the components' support, wrapped):
    register it, so that a mixture prior is usable by NUTS/HMC, SVI and AutoGuides (Pyro calls
    ``biject_to(site.support)``) as any other continuous latent."""
    from torch.distributions import biject_to, transform_to
    from torch.distributions.constraints import MixtureSameFamilyConstraint

    for registry in (biject_to, transform_to):
        if MixtureSameFamilyConstraint not in registry._registry:
            registry.register(MixtureSameFamilyConstraint)(lambda c, r=registry: r(c.base_constraint))


_register_mixture_support()

TASK_PLATE = "tasks"
TASK_DIM = -2
POINT_DIM = -1


#: plates built during one call of a MetaModel's model or guide, by batch: Pyro records a plate's
#: subsample site when the plate is *built*, so a second ``pyro.plate("tasks")`` in one trace is an
#: error; within a call ``task_plate(batch)`` returns the same plate object every time (e.g. for the
#: user's guide and an AutoGuide's ``create_plates``)
_PLATES: contextvars.ContextVar[Optional[dict]] = contextvars.ContextVar("pyro_meta_plates", default=None)


def _cached_plate(batch: TaskBatch, key: str, build: Callable[[], pyro.plate]) -> pyro.plate:
    cache = _PLATES.get()
    if cache is None:
        return build()
    hit = cache.get((id(batch), key))
    if hit is not None and hit[0] is batch:
        return hit[1]
    plate = build()
    cache[(id(batch), key)] = (batch, plate)
    return plate


def task_plate(batch: TaskBatch) -> pyro.plate:
    """``pyro.plate("tasks", T, dim=-2)``: task latents inside it have shape ``[T, 1, ...]``.

    When the batch is a minibatch of a fixed task set (``batch.task_index [T]`` into
    ``batch.num_tasks_total`` tasks, as :func:`pyro_meta.fit` makes from a fixed ``TaskBatch``), the
    plate is Pyro's subsampled plate ``pyro.plate("tasks", num_tasks_total, subsample=task_index)``:
    task-level log densities are scaled by ``num_tasks_total / T`` (an unbiased estimate of the whole
    set's) and per-task parameters (e.g. ``AutoNormal``'s) are indexed by the tasks' own indices.
    Within one call of a MetaModel's ``model`` or ``guide`` the same plate object is returned for the
    same batch (Pyro allows one plate of a name per trace; the object can be entered many times).
    """

    def build() -> pyro.plate:
        if batch.task_index is not None:
            return pyro.plate(TASK_PLATE, batch.num_tasks_total, subsample=batch.task_index, dim=TASK_DIM)
        return pyro.plate(TASK_PLATE, batch.num_tasks, dim=TASK_DIM)

    return _cached_plate(batch, TASK_PLATE, build)


@contextlib.contextmanager
def point_plate(batch: TaskBatch, split: str) -> Iterator[torch.Tensor]:
    """``pyro.plate("<split>_points", N, dim=-1)`` plus ``poutine.mask`` with the ``[T, N]`` mask.

    Padded points contribute exactly zero log-density (the mask, never ``obs_mask``, which
    would impute them). An empty split (``N = 0``, e.g. the context-only batches that inference
    conditions on) is harmless: Pyro has no zero-size plate, so the block runs with its sample
    sites hidden (``poutine.block``): they contribute nothing and appear in no trace. Yields the
    points' indices ``[N]`` (empty for an empty split).
    """
    n = batch.num_points(split)
    if n == 0:
        with poutine.block():
            yield torch.arange(0, device=batch.device)
        return
    plate = _cached_plate(batch, split, lambda: pyro.plate(f"{split}_points", n, dim=POINT_DIM))
    with plate as idx, poutine.mask(mask=batch.mask(split)):
        yield idx


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
    silently reads the first's tensors (docs/design.md, section 5). Every pyro_meta entry point runs
    under this scope, so the store only ever holds the one model's own parameters for the
    duration of a call and is restored afterwards: two instances never share or overwrite
    each other's parameters, whatever the global store holds. (Pyro's
    ``module_local_params`` setting is not used: it must be on when a module is *built*.)
    """
    with pyro.get_param_store().scope():
        yield


@dataclasses.dataclass(frozen=True)
class SiteInfo:
    """A latent sample site of the model.

    Task-level sites (inside the tasks plate): a single draw has shape ``[T, 1, *event_shape]``.
    Global sites (outside it): a single draw has shape ``batch_shape + event_shape``, the same in
    :func:`pyro_meta.fit` and every inference method.
    """

    name: str
    event_shape: torch.Size
    support: object
    is_global: bool = False
    #: batch shape of a global site (``()`` for a scalar); unused for task sites
    batch_shape: torch.Size = torch.Size()

    @property
    def event_dim(self) -> int:
        return len(self.event_shape)

    @property
    def shape(self) -> torch.Size:
        """Shape of one draw of a global site (``batch_shape + event_shape``)."""
        return torch.Size(self.batch_shape) + torch.Size(self.event_shape)


def _task_plates(batch: Any, *args: Any, **kwargs: Any) -> list:
    """``create_plates`` for AutoGuides of a MetaModel: the model's own (possibly subsampled) task plate."""
    return [task_plate(batch)] if isinstance(batch, TaskBatch) else []


def _adopt_autoguide(guide: Any) -> None:
    """Give a master AutoGuide the task plate (``create_plates``) unless its user chose plates."""
    if isinstance(guide, AutoGuide) and guide.master is None and guide.create_plates is None:
        guide.create_plates = _task_plates


class _OwnParams(Messenger):
    """A module's ``nn.Parameter`` read under the PyroModule context is the module's own tensor.

    ``PyroModule`` turns every ``nn.Parameter`` it reads into ``pyro.param(name, param)``, and
    Pyro's param store then registers the tensor and sets ``requires_grad=True`` on it: a network
    frozen for MCMC would be unfrozen by its first potential evaluation (and JIT traces break).
    The parameters belong to the model instance, so such ``param`` messages are answered with the
    tensor itself, without the store. ``PyroParam`` attributes (e.g. an AutoGuide's) keep Pyro's
    behaviour (subsampling included).
    """

    def _process_message(self, msg) -> None:
        if msg["type"] == "param" and len(msg["args"]) > 1 and isinstance(msg["args"][1], torch.nn.Parameter):
            msg["value"] = msg["args"][1]
            msg["done"] = True


@contextlib.contextmanager
def _plate_scope() -> Iterator[None]:
    """Open a plate cache for the outermost model/guide call (nested calls share it)."""
    if _PLATES.get() is not None:
        yield
        return
    token = _PLATES.set({})
    try:
        yield
    finally:
        _PLATES.reset(token)


def _jsonable(value: Any) -> Any:
    """``value`` as JSON data (tuples become lists), or ``{"unrecordable": repr(value)}``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _jsonable(v) for k, v in value.items()}
    return {"unrecordable": repr(value)[:200]}


def _recording_init(init: Callable) -> Callable:
    """Wrap a MetaModel subclass's ``__init__`` so that the outermost call records its arguments."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if "_init_args" not in self.__dict__:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            recorded: Dict[str, Any] = {}
            for name, value in list(bound.arguments.items())[1:]:
                kind = signature.parameters[name].kind
                if kind is inspect.Parameter.VAR_KEYWORD:
                    recorded.update(value)
                elif kind is inspect.Parameter.VAR_POSITIONAL:
                    if value:
                        recorded[f"*{name}"] = {"unrecordable": "positional *args"}
                else:
                    recorded[name] = value
            object.__setattr__(self, "_init_args", {k: _jsonable(v) for k, v in recorded.items()})
        init(self, *args, **kwargs)

    __init__._records_args = True
    return __init__


def _wrap_in_context(fn: Callable) -> Callable:
    """Like ``pyro.nn.pyro_method``: run ``fn`` inside the module's PyroModule context (once per method)."""
    if getattr(fn, "_pyro_meta_context", False):
        return fn

    @functools.wraps(fn)
    def wrapped(self, *args: Any, **kwargs: Any) -> Any:
        with self._pyro_context, _OwnParams(), _plate_scope():
            return fn(self, *args, **kwargs)

    wrapped._pyro_meta_context = True
    return wrapped


class MetaModel(PyroModule):
    """Base class of meta-learners: a Pyro ``model(batch)`` and ``guide(batch)``.

    Subclasses implement

    * ``model(batch)`` -- task latents ``z_t`` inside :func:`task_plate`, observations
      ``y_context``/``y_target`` inside :func:`point_plate` (or :func:`observe`). With
      ``batch.target_y is None`` it samples ``y_target`` (the predictive). Latent sites outside
      the task plate are *global* latents.
    * ``guide(batch)`` -- the guide ``q(z_t | observed points)``: an *amortized* guide (an encoder
      of ``batch.observed()`` or an inner loop on it) works on new tasks; a guide with per-task
      parameters (e.g. ``AutoNormal`` over the task latents) only on the fixed task set it was
      fitted on. Instead of a method, a guide may be assigned: ``self.guide = AutoNormal(self.model)``
      (AutoGuides get the model's task plate as ``create_plates``, so per-task parameters line up
      with ``batch.task_index``).

    and may override ``loss(batch)`` (default: the negative ELBO per task) for
    meta-objectives that are not an ELBO. Global parameters are the module's own
    ``nn.Parameter``/``PyroParam`` attributes (AutoGuide parameters included, created on the first
    call): every pyro_meta entry point keeps them local to the instance (:func:`local_params`) and
    optimises them with ``torch.optim``. ``model`` and ``guide`` always run inside the module's
    PyroModule context (as :func:`pyro.nn.pyro_method`), so ``PyroSample``/``PyroParam`` attributes
    behave as in Pyro: a ``PyroSample`` read in ``model`` is a sample site.

    Models should broadcast over extra leading sample dims (``z`` of shape ``[S, T, 1, D]``)
    so that draws and predictives are vectorized; set ``vectorized = False`` otherwise.
    """

    #: plates nested inside a draw: tasks (dim -2) and points (dim -1)
    max_plate_nesting: int = 2
    #: the model and guide broadcast over a leading sample dim
    vectorized: bool = True
    #: particles of the default ELBO loss
    num_particles: int = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("model", "guide"):
            fn = cls.__dict__.get(name)
            if callable(fn):
                setattr(cls, name, _wrap_in_context(fn))
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_records_args", False):
            cls.__init__ = _recording_init(init)

    @property
    def init_args(self) -> Dict[str, Any]:
        """The constructor's arguments (defaults filled in), as recorded when the instance was built.

        Checkpoints store them (``meta["model_args"]``) so that :func:`pyro_meta.rebuild_model` can
        rebuild the model from the file alone. Values that are not JSON-able (a module, a function)
        are recorded as ``{"unrecordable": repr}`` and make the model not rebuildable from a file.
        """
        return dict(self.__dict__.get("_init_args", {}))

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, AutoGuide):
            _adopt_autoguide(value)
        if name == "guide" and value is not None and not isinstance(value, torch.Tensor):
            if type(self).guide is not MetaModel.guide:
                raise TypeError(
                    f"{type(self).__name__} defines a guide() method and also assigns self.guide; use one of them"
                )
            if not callable(value):
                raise TypeError(f"self.guide must be a callable guide(batch), got {type(value).__name__}")
            if isinstance(value, torch.nn.Module):
                if isinstance(value, PyroModule):
                    value._pyro_set_supermodule(_make_name(self._pyro_name, name), self._pyro_context)
                self._modules["guide"] = value  # nn.Module.add_module refuses: ``guide`` is a method
            else:
                self.__dict__["_guide_fn"] = value
            return
        super().__setattr__(name, value)

    def model(self, batch: TaskBatch) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement model(batch)")

    def guide(self, batch: TaskBatch) -> Any:
        """The assigned guide (``self.guide = ...``), or ``NotImplementedError`` when there is none."""
        fn = self._modules.get("guide")
        if fn is None:
            fn = self.__dict__.get("_guide_fn")
        if fn is None:
            raise NotImplementedError(f"{type(self).__name__} must implement guide(batch) or assign self.guide")
        with self._pyro_context, _OwnParams(), _plate_scope():
            return fn(batch)

    def loss(self, batch: TaskBatch) -> torch.Tensor:
        """Meta-training loss, per task: ``-ELBO / T_total`` with ``Trace_ELBO`` (differentiable).

        ``T_total`` is ``batch.num_tasks_total``: for a minibatch of a fixed task set the ELBO of the
        subsampled task plate estimates the whole set's ELBO.
        """
        elbo = Trace_ELBO(num_particles=self.num_particles, max_plate_nesting=self.max_plate_nesting)
        return elbo.differentiable_loss(self.model, self.guide, batch) / batch.num_tasks_total

    def forward(self, batch: TaskBatch) -> None:  # pragma: no cover - convenience
        return self.model(batch)

    def task_latent_sites(self, batch: TaskBatch) -> "OrderedDict[str, SiteInfo]":
        """Task-level latent sites found by tracing the model (see :func:`task_latent_sites`)."""
        return task_latent_sites(self, batch)


def _frames(site) -> Dict[str, int]:
    return {f.name: f.dim for f in site["cond_indep_stack"]}


def _is_latent(site) -> bool:
    return (
        site["type"] == "sample"
        and not site["is_observed"]
        and not site["infer"].get("_deterministic")
        and not site["infer"].get("is_auxiliary")
        and not site_is_subsample(site)
    )


def discover_sites(
    model: MetaModel, batch: TaskBatch
) -> Tuple["OrderedDict[str, SiteInfo]", "OrderedDict[str, SiteInfo]"]:
    """Task-level and global latent sites of ``model.model``, from one trace on ``batch``.

    Task-level: unobserved sample sites inside the ``tasks`` plate and outside every point plate.
    Global: unobserved sample sites outside the ``tasks`` plate. The model is traced on ``batch``
    with its target set observed (or on its context only when ``target_y`` is None), without the
    batch's task indices. Returns ``(task_sites, global_sites)``, each ``{name: SiteInfo}`` in
    trace order.
    """
    probe = batch if batch.target_y is not None else batch.context_only()
    probe = probe.without_task_index()
    with local_params(), torch.no_grad():
        trace = poutine.trace(model.model).get_trace(probe)
    task_sites: "OrderedDict[str, SiteInfo]" = OrderedDict()
    global_sites: "OrderedDict[str, SiteInfo]" = OrderedDict()
    for name, site in trace.nodes.items():
        if not _is_latent(site):
            continue
        frames = _frames(site)
        fn = site["fn"]
        if TASK_PLATE not in frames:
            shape = site["value"].shape
            event = torch.Size(fn.event_shape)
            batch_shape = shape[: len(shape) - len(event)]
            global_sites[name] = SiteInfo(name, event, fn.support, is_global=True, batch_shape=batch_shape)
        elif not any(d == POINT_DIM for n, d in frames.items() if n != TASK_PLATE):
            task_sites[name] = SiteInfo(name, torch.Size(fn.event_shape), fn.support)
    return task_sites, global_sites


def task_latent_sites(model: MetaModel, batch: TaskBatch) -> "OrderedDict[str, SiteInfo]":
    """Unobserved sample sites inside the ``tasks`` plate and outside every point plate.

    Found by tracing ``model.model`` on ``batch`` with its target set observed (or empty).
    Returns ``{name: SiteInfo}`` in trace order. Raises ``ValueError`` if there is none.
    """
    sites, _ = discover_sites(model, batch)
    if not sites:
        raise ValueError(no_task_latent_message(model))
    return sites


def no_task_latent_message(model: MetaModel) -> str:
    return (
        f"{type(model).__name__}.model has no task-level latent site: expected an unobserved "
        f"pyro.sample inside pyro_meta.task_plate (plate {TASK_PLATE!r}, dim {TASK_DIM})"
    )


def global_latent_sites(model: MetaModel, batch: TaskBatch) -> Tuple[str, ...]:
    """Names of unobserved sample sites outside the tasks plate (global latents)."""
    return tuple(discover_sites(model, batch)[1])


def autoguides(model: torch.nn.Module) -> Iterator[AutoGuide]:
    """The master AutoGuides among ``model``'s submodules (parts of an ``AutoGuideList`` are not listed)."""
    for module in model.modules():
        if isinstance(module, AutoGuide) and module.master is None:
            yield module


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
