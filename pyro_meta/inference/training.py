"""The training loop of :func:`pyro_meta.fit`: argument checks, setup, steps, checkpoints and interrupts.

:func:`~pyro_meta.inference.fit.fit` is the public entry point (and its docstring the reference);
this module holds its machinery: the task source, the lazy-parameter priming, and :class:`_Training`.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any, Callable, List, Union

import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoContinuous

from ..checkpoint import _defer_sigint, check_writable, load_checkpoint, save_checkpoint
from ..data.batch import TaskBatch
from ..data.tasks import SizeSpec
from ..distributed import DataParallel
from ..locking import PyroRuntimeSnapshot
from ..model import TASK_PLATE, MetaModel, _jsonable, autoguides, check_model, local_params
from ..validation import check_bool, check_int, check_number, optional
from .common import check_compatible
from .guard import LastGood, first_nonfinite, nonfinite_state
from .objectives import GuideObjective

__all__ = ["OPTIMIZERS"]

OptimizerSpec = Union[str, Callable[..., torch.optim.Optimizer]]

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")


def _check_optimizer(spec: Any) -> OptimizerSpec:
    if isinstance(spec, str):
        if spec.lower() not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)} or a torch.optim class, got {spec!r}")
        return spec
    if (isinstance(spec, type) and not issubclass(spec, torch.optim.Optimizer)) or not callable(spec):
        raise TypeError(f"optimizer must be a name {list(OPTIMIZERS)} or a torch.optim.Optimizer class, got {spec!r}")
    return spec


def _make_optimizer(spec: OptimizerSpec, params, lr: float) -> torch.optim.Optimizer:
    if isinstance(spec, str):
        table = {
            "adam": torch.optim.Adam,
            "adamw": torch.optim.AdamW,
            "sgd": torch.optim.SGD,
            "rmsprop": torch.optim.RMSprop,
        }
        return table[spec.lower()](params, lr=lr)
    opt = spec(params, lr=lr)
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"optimizer(params, lr=...) must return a torch.optim.Optimizer, got {type(opt).__name__}")
    return opt


class _TaskSource:
    """Draws a training batch per step from a task distribution or a fixed ``TaskBatch``.

    A fixed ``TaskBatch`` is a task set: every minibatch carries its tasks' ``task_index`` into
    it, so :func:`~pyro_meta.task_plate` subsamples the tasks plate with those indices (Pyro's
    subsampling: task-level terms scaled by ``T_total / T_batch``, per-task parameters aligned).
    With ``tasks_per_batch`` equal to the set's size every step sees the whole set, in order.
    """

    def __init__(
        self, tasks: Any, tasks_per_batch: int, num_context: SizeSpec, num_target: SizeSpec, generator: torch.Generator
    ):
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
            num_tasks=self.tasks_per_batch,
            num_context=self.num_context,
            num_target=self.num_target,
            generator=self.generator,
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
        if any(
            any(f.name == TASK_PLATE for f in site["cond_indep_stack"])
            for _, site in guide.prototype_trace.iter_stochastic_nodes()
        ):
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


def _check_size_spec(name: str, value: Any) -> Any:
    """``None``, an int >= 0 or an inclusive ``(min, max)`` pair of them (a task distribution may accept more)."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)) and len(value) == 2:
        lo = check_int(name, value[0], minimum=0)
        hi = check_int(name, value[1], minimum=0)
        if hi < lo:
            raise ValueError(f"{name} must be an int or an inclusive (min, max) pair with min <= max, got {value!r}")
        return value
    if isinstance(value, (tuple, list)):
        raise ValueError(f"{name} must be an int or an inclusive (min, max) pair, got {value!r}")
    return check_int(name, value, minimum=0)


class _Training:
    """One call of :func:`fit`: its checked arguments, the setup and the loop, with the state they share.

    Consistency rules (what makes interrupts, failures and resumes exact):

    * the *commit* of a step (optimizer step, finite check, scheduler, ``step += 1``) runs with Ctrl-C
      deferred, so the model, the optimizer and ``step`` always describe the same number of steps;
    * ``pending`` holds the RNG states (task generator, torch) at the start of the step in progress,
      which is what a checkpoint written before that step commits must record (the resumed run redraws
      the step's batch); once the step commits, the current states are the right ones;
    * the setup and the first step run with Ctrl-C deferred too: they hold torch's lazy imports
      (``sympy`` under the first loss, ``torch._dynamo`` under the first optimizer), which an interrupt
      would leave half-imported for the rest of the process.
    """

    def __init__(self, *args: Any) -> None:
        self.args = args
        self.step = 0
        self.start_step = 0
        self.losses: List[float] = []
        self.guide_losses: List[float] = []
        self.interrupted = False
        self.pending = None
        self.in_commit = False
        self.opt = None
        self.sync = None
        self.bar = None
        self.model = args[0]

    def configure(
        self,
        model,
        tasks,
        num_steps,
        tasks_per_batch,
        num_context,
        num_target,
        optimizer,
        lr,
        seed,
        progress,
        clip_norm,
        lr_decay,
        checkpoint,
        checkpoint_every,
        resume,
        callback,
        device,
        guide_objective,
        guide_particles,
        checkpoint_meta,
        distributed,
    ) -> None:
        """Check every argument (``ValueError``/``TypeError`` naming it) before anything runs."""
        self.model = check_model(model)
        self.tasks = tasks
        self.num_steps = check_int("num_steps", num_steps, minimum=0)
        self.tasks_per_batch = check_int("tasks_per_batch", tasks_per_batch, minimum=1)
        self.num_context = _check_size_spec("num_context", num_context)
        self.num_target = _check_size_spec("num_target", num_target)
        self.optimizer_spec = _check_optimizer(optimizer)
        self.lr = check_number("lr", lr, minimum=0.0)
        self.seed = None if seed is None else check_int("seed", seed, minimum=0, maximum=2**32 - 1)
        self.progress = check_bool("progress", progress)
        self.clip_norm = optional(check_number, minimum=0.0)("clip_norm", clip_norm)
        self.lr_decay = optional(check_number, minimum=0.0, maximum=1.0)("lr_decay", lr_decay)
        self.checkpoint_every = check_int("checkpoint_every", checkpoint_every, minimum=0)
        self.resume = check_bool("resume", resume)
        if self.resume and checkpoint is None:
            raise ValueError("resume=True needs checkpoint=path (the file to resume from)")
        if callback is not None and not callable(callback):
            raise TypeError(
                f"callback must be callable (step, loss, model) -> bool | None, got {type(callback).__name__}"
            )
        self.callback = callback
        if device is not None:
            try:
                device = torch.device(device)
            except (RuntimeError, TypeError, ValueError) as e:
                raise ValueError(f"device must be a torch device (e.g. 'cpu', 'cuda:0'), got {device!r}: {e}") from None
        self.device = device
        if not isinstance(guide_objective, str):
            raise TypeError(f"guide_objective must be a name such as 'elbo' or 'iwae', got {guide_objective!r}")
        guide_particles = check_int("guide_particles", guide_particles)
        self.guide_obj = None if guide_objective == "elbo" else GuideObjective(guide_objective, guide_particles)
        if checkpoint_meta is not None:
            if not isinstance(checkpoint_meta, dict):
                raise TypeError(f"checkpoint_meta must be a dict, got {type(checkpoint_meta).__name__}")
            clash = sorted(set(checkpoint_meta) & {"model_args", "config"})
            if clash:
                raise ValueError(f"checkpoint_meta may not use the keys fit records itself: {clash}")
        self.checkpoint_meta = checkpoint_meta
        if distributed not in (None, True, False):
            raise TypeError(f"distributed must be None, True or False, got {distributed!r}")
        self.distributed = distributed
        self.checkpoint = checkpoint
        if checkpoint is not None:
            check_writable(checkpoint)  # before any training, not after the last step

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        model = self.model
        if self.seed is not None:
            pyro.set_rng_seed(self.seed)
        self.sync, seed = DataParallel.resolve(self.distributed, self.seed)  # None: this process alone
        self.generator = torch.Generator()
        self.generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item()))
        num_context, num_target = self.num_context, self.num_target
        if num_context is None:
            num_context = getattr(self.tasks, "default_num_context", (3, 10))
        if num_target is None:
            num_target = getattr(self.tasks, "default_num_target", (10, 20))
        self.source = _TaskSource(self.tasks, self.tasks_per_batch, num_context, num_target, self.generator)
        if self.sync is not None:
            self.source = self.sync.task_source(self.source, seed)
        if self.device is not None:
            model.to(self.device)
        first_generator_state = self.generator.get_state()
        first = self._next_batch()
        check_compatible(model, first)
        if _needs_priming(model):
            _prime(model, first)
        _check_autoguide_subsampling(model, self.source)
        if self.sync is not None:
            self.sync.broadcast_module(model)  # every rank starts from rank 0's parameters
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{type(model).__name__} has no trainable parameters to meta-learn")
        self.known = {id(p) for p in params}
        self.opt = _make_optimizer(self.optimizer_spec, params, self.lr)
        self.sched = None
        if self.lr_decay is not None:
            self.sched = torch.optim.lr_scheduler.ExponentialLR(
                self.opt, gamma=self.lr_decay ** (1.0 / max(self.num_steps, 1))
            )
        self.last_good = LastGood(self.opt)
        self.first = (first, first_generator_state)
        if self.checkpoint is not None and self.resume and os.path.exists(self.checkpoint):
            state = load_checkpoint(self.checkpoint, model, self.opt)
            self.losses = [float(v) for v in state.get("losses", [])]
            self.step = self.start_step = int(state.get("step", 0))  # the lr decayed so far is in the optimizer's state
            if "generator" in state:
                self.generator.set_state(state["generator"])
            if "torch_rng" in state:
                torch.set_rng_state(state["torch_rng"])
            if self.sync is not None:
                self.sync.restore(state, self.source)
            self.first = None  # drawn before the RNG state was restored: the resumed run draws its own
        config = {
            "tasks": type(self.tasks).__name__,
            "num_steps": self.num_steps,
            "tasks_per_batch": self.tasks_per_batch,
            "num_context": num_context,
            "num_target": num_target,
            "lr": self.lr,
            "seed": self.seed,
            "clip_norm": self.clip_norm,
            "lr_decay": self.lr_decay,
            "optimizer": self.optimizer_spec
            if isinstance(self.optimizer_spec, str)
            else getattr(self.optimizer_spec, "__name__", "?"),
        }
        self.meta = {"model_args": model.init_args, "config": _jsonable(config)}
        self.meta.update(self.checkpoint_meta or {})
        self.names = {id(p): name for name, p in model.named_parameters()}
        if self.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=self.num_steps, initial=min(self.start_step, self.num_steps), desc=f"fit {type(model).__name__}"
            )
        model.train()

    def _next_batch(self) -> TaskBatch:
        batch = self.source.next()
        return batch.to(self.device) if self.device is not None else batch

    # ------------------------------------------------------------------ one step
    def train_step(self) -> bool:
        """One step; True when the callback asks to stop."""
        model, opt = self.model, self.opt
        if self.first is not None:
            (batch, generator_state), self.first = self.first, None
        else:
            generator_state, batch = self.generator.get_state(), None
        self.pending = (generator_state, torch.get_rng_state())
        if batch is None:
            batch = self._next_batch()
        step = self.step
        opt.zero_grad(set_to_none=True)
        loss = model.loss(batch)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TypeError(f"{type(model).__name__}.loss(batch) must return a scalar tensor, got {loss!r}")
        if self.sync is not None:
            loss = self.sync.mean_loss(loss)  # the ranks' mean: every rank stops together on a non-finite one
        if not bool(torch.isfinite(loss.detach())):
            raise FloatingPointError(
                f"fit: non-finite loss {loss.item()} at step {step}; lower lr or check the model/data "
                f"(the model keeps the parameters of step {step})"
            )
        guide_value = None
        if self.guide_obj is None:
            loss.backward()
        else:
            try:
                self.guide_obj.backward(model, batch, loss)
            except FloatingPointError as err:
                raise FloatingPointError(
                    f"{err} at step {step}; no optimizer step was taken (the model keeps the parameters of step {step})"
                ) from None
            guide_value = self.guide_obj.last
        value = float(loss.detach())
        if step == self.start_step:
            _check_no_bare_params(model)
        _add_new_params(opt, model, self.known)
        if self.sync is not None:  # averaged before the finite checks: every rank takes the same decision
            self.sync.all_reduce_gradients(opt)
        params = [p for g in opt.param_groups for p in g["params"]]
        bad = first_nonfinite((self.names.get(id(p), "a parameter"), p.grad) for p in params)
        if bad is not None:
            opt.zero_grad(set_to_none=True)
            raise FloatingPointError(
                f"fit: non-finite gradient of {bad} at step {step} although the loss {value:.6g} is finite; "
                f"no optimizer step was taken (the model keeps the parameters of step {step})"
            )
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.clip_norm)
        with _defer_sigint():  # the commit: all of it or none of it
            self.in_commit = True
            self.last_good.save()
            opt.step()
            bad = nonfinite_state(opt, self.names)
            if bad is not None:
                self.last_good.restore()
                self.in_commit = False
                raise FloatingPointError(
                    f"fit: the optimizer step at step {step} made {bad} non-finite (finite loss {value:.6g} and "
                    f"gradients); the parameters and optimizer state of step {step} are restored; lower lr or "
                    "set clip_norm"
                )
            if self.sched is not None:
                self.sched.step()
            self.losses.append(value)
            if guide_value is not None:
                self.guide_losses.append(guide_value)
            self.step = step + 1
            self.pending = None
            self.in_commit = False
        if self.bar is not None:
            self.bar.update(1)
            if self.step % 25 == 0:
                self.bar.set_postfix(loss=f"{value:.4g}")
        if self.checkpoint is not None and self.checkpoint_every and self.step % self.checkpoint_every == 0:
            self.write()
        stop = self.callback is not None and bool(self.callback(self.step, value, model))
        return stop if self.sync is None or self.callback is None else self.sync.any(stop)

    # ------------------------------------------------------------------ checkpoints
    def write(self) -> None:
        """Save the state after ``self.step`` completed steps (no-op without a checkpoint path)."""
        if self.checkpoint is None or self.opt is None:
            return
        generator_state, torch_state = self.pending or (self.generator.get_state(), torch.get_rng_state())
        extra = {"step": self.step, "losses": list(self.losses), "generator": generator_state, "torch_rng": torch_state}
        if self.sync is not None:
            extra.update(self.sync.rank_states(self.source))  # a collective: every rank writes at the same steps
            if not self.sync.is_main:
                return
        save_checkpoint(self.checkpoint, self.model, self.opt, extra=extra, meta=self.meta)

    # ------------------------------------------------------------------ the run
    def run(self):
        from .fit import FitResult

        t0 = time.perf_counter()
        ready = False
        runtime = PyroRuntimeSnapshot()
        try:
            with local_params():
                stop = False
                with _defer_sigint():
                    self.configure(*self.args)
                    self.setup()
                    ready = True
                    if self.step < self.num_steps:
                        stop = self.train_step()
                while not stop and self.step < self.num_steps:
                    stop = self.train_step()
        except KeyboardInterrupt:
            runtime.restore()
            if not ready:
                raise
            self.interrupted = True
            warnings.warn(f"fit interrupted at step {self.step}; the model keeps its last parameters", stacklevel=4)
        except Exception as err:
            if ready:
                self._keep_progress(err)
            raise
        finally:
            if self.bar is not None:
                self.bar.close()
            if ready:
                self.model.eval()
        if self.interrupted and self.sync is not None:
            warnings.warn(
                "distributed fit interrupted: no final checkpoint (the ranks stopped at different points); "
                "resume from the last periodic one",
                stacklevel=4,
            )
        else:
            try:
                self.write()
            except KeyboardInterrupt:  # a second Ctrl-C during the last write: the file is in place (deferred)
                self.interrupted = True
        return FitResult(
            losses=self.losses,
            num_steps=self.step,
            seconds=time.perf_counter() - t0,
            interrupted=self.interrupted,
            optimizer=self.opt,
            guide_losses=self.guide_losses,
        )

    def _keep_progress(self, err: Exception) -> None:
        """After a failed step: the last good state stays in memory and is written to the checkpoint."""
        if self.in_commit:  # failed between the optimizer step and its bookkeeping
            self.last_good.restore()
            self.in_commit = False
        if self.sync is not None:  # writing is a collective the other ranks may not reach: no checkpoint here
            return
        try:
            with _defer_sigint():
                self.write()
        except Exception as write_err:  # noqa: BLE001 - the original error is the one to report
            if hasattr(err, "add_note"):
                err.add_note(f"(the checkpoint could not be written either: {write_err})")
