"""``fit``: meta-training of a ``MetaModel`` over batches of tasks."""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Union

import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoContinuous

from ..checkpoint import check_writable, load_checkpoint, save_checkpoint
from ..data.batch import TaskBatch
from ..data.tasks import SizeSpec
from ..distributed import DataParallel
from ..model import TASK_PLATE, MetaModel, _jsonable, autoguides, check_model, local_params
from ..validation import check_int
from .common import check_compatible
from .objectives import GuideObjective

__all__ = ["FitResult", "fit"]

OptimizerSpec = Union[str, Callable[..., torch.optim.Optimizer]]


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    losses : list of float
        The loss per task at every step (``model.loss(batch)``; the negative ELBO per task
        by default).
    num_steps : int
        Steps run in total (including any resumed from a checkpoint).
    seconds : float
        Wall time of this call.
    interrupted : bool
        True when a ``KeyboardInterrupt`` stopped training early (the model keeps the
        parameters of the last completed step; a checkpoint was written if asked for).
    optimizer : torch.optim.Optimizer
        The optimizer, to continue training by hand.
    """

    losses: List[float] = dataclasses.field(repr=False)
    num_steps: int
    seconds: float
    interrupted: bool = False
    optimizer: Optional[torch.optim.Optimizer] = dataclasses.field(default=None, repr=False)
    #: the guide objective per step when ``fit(guide_objective=...)`` is not the ELBO
    guide_losses: List[float] = dataclasses.field(default_factory=list, repr=False)

    def __repr__(self) -> str:
        first = f"{self.losses[0]:.4g}" if self.losses else "n/a"
        return (f"FitResult(num_steps={self.num_steps}, loss {first} -> {self.final_loss:.4g} (mean of the last 10%), "
                f"seconds={self.seconds:.1f}, interrupted={self.interrupted})")

    @property
    def final_loss(self) -> float:
        """Mean loss over the last 10% of steps (at least one)."""
        if not self.losses:
            return float("nan")
        k = max(1, len(self.losses) // 10)
        return sum(self.losses[-k:]) / k


def _make_optimizer(spec: OptimizerSpec, params, lr: float) -> torch.optim.Optimizer:
    if isinstance(spec, str):
        table = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop}
        if spec.lower() not in table:
            raise ValueError(f"optimizer must be one of {sorted(table)} or a torch.optim class, got {spec!r}")
        return table[spec.lower()](params, lr=lr)
    if callable(spec):
        return spec(params, lr=lr)
    raise TypeError(f"optimizer must be a name or a torch.optim.Optimizer class, got {type(spec).__name__}")


class _TaskSource:
    """Draws a training batch per step from a task distribution or a fixed ``TaskBatch``.

    A fixed ``TaskBatch`` is a task set: every minibatch carries its tasks' ``task_index`` into
    it, so :func:`~pyro_meta.task_plate` subsamples the tasks plate with those indices (Pyro's
    subsampling: task-level terms scaled by ``T_total / T_batch``, per-task parameters aligned).
    With ``tasks_per_batch`` equal to the set's size every step sees the whole set, in order.
    """

    def __init__(self, tasks: Any, tasks_per_batch: int, num_context: SizeSpec, num_target: SizeSpec, generator: torch.Generator):
        self.tasks, self.generator = tasks, generator
        self.tasks_per_batch, self.num_context, self.num_target = tasks_per_batch, num_context, num_target
        if isinstance(tasks, TaskBatch):
            if tasks.target_y is None:
                raise ValueError("tasks: a fixed TaskBatch used for training needs target_y (observed targets)")
            if tasks_per_batch > tasks.num_tasks:
                raise ValueError(
                    f"tasks_per_batch={tasks_per_batch} exceeds the {tasks.num_tasks} tasks of the TaskBatch"
                )
            self.tasks = tasks.with_task_index()
        elif not callable(getattr(tasks, "sample", None)):
            raise TypeError(
                "tasks must be a TaskBatch or a task distribution with "
                f".sample(num_tasks, num_context, num_target, generator=), got {type(tasks).__name__}"
            )

    @property
    def subsamples(self) -> bool:
        """True when minibatches are strict subsets of a fixed task set."""
        return isinstance(self.tasks, TaskBatch) and self.tasks_per_batch < self.tasks.num_tasks

    def next(self) -> TaskBatch:
        if isinstance(self.tasks, TaskBatch):
            if not self.subsamples:
                return self.tasks
            idx = torch.randperm(self.tasks.num_tasks, generator=self.generator)[: self.tasks_per_batch]
            return self.tasks.select(idx.sort().values)
        batch = self.tasks.sample(
            num_tasks=self.tasks_per_batch, num_context=self.num_context, num_target=self.num_target, generator=self.generator
        )
        if not isinstance(batch, TaskBatch):
            raise TypeError(f"tasks.sample(...) must return a TaskBatch, got {type(batch).__name__}")
        return batch


def _needs_priming(model: MetaModel) -> bool:
    """Parameters created on the first call: an AutoGuide not set up yet, or a lazy torch module."""
    if any(g.prototype_trace is None for g in autoguides(model)):
        return True
    return any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in model.parameters())


def _prime(model: MetaModel, batch: TaskBatch) -> None:
    """Run the guide and the model once (no gradient) so that lazily created parameters exist."""
    with local_params(), torch.no_grad():
        guide_trace = poutine.trace(model.guide).get_trace(batch)
        poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(batch)


def _check_autoguide_subsampling(model: MetaModel, source: "_TaskSource") -> None:
    """An AutoContinuous guide over task latents cannot index a subsample of the task set: refuse it."""
    if not source.subsamples:
        return
    for guide in model.modules():
        if not isinstance(guide, AutoContinuous) or guide.prototype_trace is None:
            continue
        if any(any(f.name == TASK_PLATE for f in site["cond_indep_stack"])
               for _, site in guide.prototype_trace.iter_stochastic_nodes()):
            raise ValueError(
                f"{type(guide).__name__} packs every task's latents into one vector and cannot follow a subsample "
                f"of the task set: use tasks_per_batch={source.tasks.num_tasks} (the whole set every step) or "
                "AutoNormal for the task latents"
            )


def _add_new_params(opt: torch.optim.Optimizer, model: MetaModel, known: set) -> None:
    """Add parameters created after the optimizer was built (lazily) to it, so that they are trained."""
    new = [p for p in model.parameters() if p.requires_grad and id(p) not in known]
    if new:
        opt.add_param_group({"params": new})
        known.update(id(p) for p in new)


def _check_no_bare_params(model: MetaModel) -> None:
    """Refuse bare ``pyro.param`` statements: fit optimises the module's own parameters only."""
    own = {id(p) for p in model.parameters()}
    store = pyro.get_param_store()
    stray = [name for name in store.keys() if id(store._params[name]) not in own]
    if stray:
        raise ValueError(
            f"{type(model).__name__} uses bare pyro.param statements {stray}: declare global parameters as "
            "nn.Parameter or PyroParam attributes of the model so that they belong to this instance"
        )


def fit(
    model: MetaModel,
    tasks: Any,
    num_steps: int = 1000,
    tasks_per_batch: int = 16,
    num_context: Optional[SizeSpec] = None,
    num_target: Optional[SizeSpec] = None,
    optimizer: OptimizerSpec = "adam",
    lr: float = 1e-3,
    seed: Optional[int] = 0,
    progress: bool = True,
    clip_norm: Optional[float] = None,
    lr_decay: Optional[float] = None,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    checkpoint_every: int = 500,
    resume: bool = False,
    callback: Optional[Callable[[int, float, MetaModel], Optional[bool]]] = None,
    device: Optional[Union[str, torch.device]] = None,
    guide_objective: str = "elbo",
    guide_particles: int = 8,
    checkpoint_meta: Optional[Dict[str, Any]] = None,
    distributed: Optional[bool] = None,
) -> FitResult:
    """Meta-train ``model``: minimise ``model.loss(batch)`` over a fresh batch of tasks per step.

    ``loss`` is the negative ELBO per task by default (``Trace_ELBO`` of ``model.model`` and
    ``model.guide``); meta-objectives that are not an ELBO override ``MetaModel.loss``.
    All of the model's parameters (global and guide) are optimised with ``torch.optim``,
    kept local to the instance (never in Pyro's global param store).

    Parameters
    ----------
    model : MetaModel
    tasks : task distribution or TaskBatch
        Anything with ``.sample(num_tasks, num_context, num_target, generator=)`` returning a
        ``TaskBatch`` (a fresh batch per step), or a fixed ``TaskBatch`` of real tasks from
        which ``tasks_per_batch`` tasks are drawn without replacement at every step.
    num_steps, tasks_per_batch : int
    num_context, num_target : int or (min, max), optional
        Set sizes per task (inclusive ranges are drawn per task; ragged sets are masked). Default:
        the task distribution's ``default_num_context`` / ``default_num_target`` if it declares them
        (e.g. few-shot episodes: their shots and queries per class), else ``(3, 10)`` / ``(10, 20)``.
    optimizer : "adam" | "adamw" | "sgd" | "rmsprop" | torch.optim class
    lr : float
    seed : int or None
        Seeds Pyro/torch (``pyro.set_rng_seed``) and the task generator.
    progress : bool
        Show a tqdm progress bar.
    clip_norm : float, optional
        Clip the gradient norm.
    lr_decay : float, optional
        Multiply the learning rate by this factor over the whole run (exponential schedule).
    checkpoint : path, optional
        Write model, optimizer and RNG state there atomically every ``checkpoint_every`` steps,
        at the end, and on ``KeyboardInterrupt``. With ``resume=True`` training continues
        from it when it exists.
    callback : callable ``(step, loss, model) -> bool | None``
        Called after each step; returning True stops training.
    device : torch device, optional
        Train there: the model is moved (``model.to(device)``, in place) and every batch with it.
    guide_objective : "elbo" | "iwae" | "rws" | "sleep"
        How the guide's parameters are trained. ``"elbo"`` (default): by ``model.loss`` like every
        parameter. Otherwise the model's parameters keep ``model.loss`` and the guide's get their own
        objective (:mod:`pyro_meta.inference.objectives`): the importance-weighted bound (``"iwae"``),
        reweighted wake-sleep's wake phase (``"rws"``) or the simulation-based forward KL (``"sleep"``),
        which do not collapse modes the way the ELBO's reverse KL does.
    guide_particles : int
        Particles per task of the guide objective (``K``).
    checkpoint_meta : dict, optional
        More JSON-able metadata for the checkpoint header, next to the ``model_args`` and
        ``config`` that ``fit`` records (e.g. the command line's whole configuration file).
    distributed : bool, optional
        Data-parallel training over the ``torch.distributed`` process group (:mod:`pyro_meta.distributed`):
        each rank draws its own ``tasks_per_batch`` tasks per step, gradients are averaged over the ranks,
        only rank 0 writes the checkpoint. Default ``None``: data-parallel when a process group is
        initialised (``torchrun``); ``True`` requires one; ``False`` trains this process on its own.
    """
    check_model(model)
    if not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be a non-negative int, got {num_steps!r}")
    if not isinstance(tasks_per_batch, int) or tasks_per_batch < 1:
        raise ValueError(f"tasks_per_batch must be a positive int, got {tasks_per_batch!r}")
    if seed is not None:
        pyro.set_rng_seed(seed)
    sync, seed = DataParallel.resolve(distributed, seed)  # None: this process alone
    generator = torch.Generator()
    generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item()))
    if num_context is None:
        num_context = getattr(tasks, "default_num_context", (3, 10))
    if num_target is None:
        num_target = getattr(tasks, "default_num_target", (10, 20))
    source = _TaskSource(tasks, tasks_per_batch, num_context, num_target, generator)
    if sync is not None:
        source = sync.task_source(source, seed)
    if checkpoint is not None:
        check_writable(checkpoint)  # before any training, not after the last step

    guide_obj = None
    if guide_objective != "elbo":
        guide_obj = GuideObjective(guide_objective, check_int("guide_particles", guide_particles))
    first = source.next()
    if device is not None:
        model.to(device)
        first = first.to(device)
    check_compatible(model, first)
    if _needs_priming(model):
        _prime(model, first)
    _check_autoguide_subsampling(model, source)
    if sync is not None:
        sync.broadcast_module(model)  # every rank starts from rank 0's parameters
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters to meta-learn")
    known = {id(p) for p in params}
    opt = _make_optimizer(optimizer, params, lr)
    sched = None
    if lr_decay is not None:
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=lr_decay ** (1.0 / max(num_steps, 1)))

    losses: List[float] = []
    guide_losses: List[float] = []
    start_step = 0
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        state = load_checkpoint(checkpoint, model, opt)
        losses = [float(v) for v in state.get("losses", [])]
        start_step = int(state.get("step", 0))
        if "generator" in state:
            generator.set_state(state["generator"])
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        if sync is not None:
            sync.restore(state, source)
        first = None  # drawn before the RNG state was restored: the resumed run draws its own

    config = {
        "tasks": type(tasks).__name__, "num_steps": num_steps, "tasks_per_batch": tasks_per_batch,
        "num_context": num_context, "num_target": num_target, "lr": lr, "seed": seed, "clip_norm": clip_norm,
        "lr_decay": lr_decay, "optimizer": optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", "?"),
    }
    meta = {"model_args": model.init_args, "config": _jsonable(config)}
    if checkpoint_meta is not None:
        if not isinstance(checkpoint_meta, dict):
            raise TypeError(f"checkpoint_meta must be a dict, got {type(checkpoint_meta).__name__}")
        clash = sorted(set(checkpoint_meta) & set(meta))
        if clash:
            raise ValueError(f"checkpoint_meta may not use the keys fit records itself: {clash}")
        meta.update(checkpoint_meta)

    def write(step: int) -> None:
        if checkpoint is not None:
            extra = {"step": step, "losses": list(losses), "generator": generator.get_state(),
                     "torch_rng": torch.get_rng_state()}
            if sync is not None:
                extra.update(sync.rank_states(source))  # a collective: every rank writes at the same steps
                if not sync.is_main:
                    return
            save_checkpoint(checkpoint, model, opt, extra=extra, meta=meta)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, initial=min(start_step, num_steps), desc=f"fit {type(model).__name__}")
    t0 = time.perf_counter()
    interrupted = False
    step = start_step
    model.train()
    try:
        with local_params():
            while step < num_steps:
                if first is not None:
                    batch, first = first, None
                else:
                    batch = source.next()
                    if device is not None:
                        batch = batch.to(device)
                opt.zero_grad(set_to_none=True)
                loss = model.loss(batch)
                if sync is not None:
                    loss = sync.mean_loss(loss)  # the ranks' mean: every rank stops together on a non-finite one
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"fit: non-finite loss {loss.item()} at step {step}; lower lr or check the model/data"
                    )
                if guide_obj is None:
                    loss.backward()
                else:
                    guide_obj.backward(model, batch, loss)
                    guide_losses.append(guide_obj.last)
                if step == start_step:
                    _check_no_bare_params(model)
                _add_new_params(opt, model, known)
                if sync is not None:
                    sync.all_reduce_gradients(opt)
                if clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip_norm)
                opt.step()
                if sched is not None:
                    sched.step()
                value = float(loss.detach())
                losses.append(value)
                step += 1
                if bar is not None:
                    bar.update(1)
                    if step % 25 == 0:
                        bar.set_postfix(loss=f"{value:.4g}")
                if checkpoint is not None and checkpoint_every and step % checkpoint_every == 0:
                    write(step)
                stop = callback is not None and bool(callback(step, value, model))
                if stop if sync is None or callback is None else sync.any(stop):
                    break
    except KeyboardInterrupt:
        interrupted = True
        warnings.warn(f"fit interrupted at step {step}; the model keeps its last parameters", stacklevel=2)
    finally:
        if bar is not None:
            bar.close()
        model.eval()
    if interrupted and sync is not None:
        warnings.warn("distributed fit interrupted: no final checkpoint (the ranks stopped at different points); "
                      "resume from the last periodic one", stacklevel=2)
    else:
        write(step)
    return FitResult(losses=losses, num_steps=step, seconds=time.perf_counter() - t0, interrupted=interrupted, optimizer=opt,
                     guide_losses=guide_losses)
