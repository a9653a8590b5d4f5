"""``fit``: meta-training of a ``MetaModel`` over batches of tasks."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, List, Optional, Union

import torch

from ..data.tasks import SizeSpec
from ..locking import serialized
from ..model import MetaModel
from .training import OptimizerSpec, _Training

__all__ = ["FitResult", "fit"]


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
        return (
            f"FitResult(num_steps={self.num_steps}, loss {first} -> {self.final_loss:.4g} (mean of the last 10%), "
            f"seconds={self.seconds:.1f}, interrupted={self.interrupted})"
        )

    @property
    def final_loss(self) -> float:
        """Mean loss over the last 10% of steps (at least one)."""
        if not self.losses:
            return float("nan")
        k = max(1, len(self.losses) // 10)
        return sum(self.losses[-k:]) / k


@serialized
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
        Positive and finite.
    seed : int or None
        Seeds Pyro/torch (``pyro.set_rng_seed``) and the task generator; an int in ``[0, 2**32)``.
    progress : bool
        Show a tqdm progress bar.
    clip_norm : float, optional
        Clip the gradient norm to this positive value.
    lr_decay : float, optional
        In ``(0, 1]``: multiply the learning rate by this factor over the whole run (exponential schedule).
    checkpoint : path, optional
        Write model, optimizer and RNG state there atomically every ``checkpoint_every`` steps (``0``:
        no periodic checkpoint), at the end, on ``KeyboardInterrupt`` and when a step fails. Checked
        writable before training.
        With ``resume=True`` training continues from it when it exists (with the same optimizer: another
        one raises :class:`~pyro_meta.CheckpointError` naming both); the resumed run ends with the
        parameters of an uninterrupted one.
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
        A distributed run that is interrupted writes no final checkpoint (the ranks stopped at different
        points): resume from the last periodic one.

    Every argument is checked before anything runs (``ValueError``/``TypeError`` naming it).

    Raises
    ------
    FloatingPointError
        Naming the step, when the loss, a gradient (a NaN gradient with a finite loss included) or the
        state after an optimizer step is not finite. No optimizer step is taken with a non-finite
        gradient; the model and optimizer keep (or get back) the state of the last finite step, which
        is also written to ``checkpoint`` (a checkpoint never holds a non-finite state).

    Interrupts: a ``KeyboardInterrupt`` (Ctrl-C) at any point returns the :class:`FitResult` with
    ``interrupted=True`` and the state of the last completed step (written to ``checkpoint``, no
    temporary file left). Each step's update, the setup and the first step run with Ctrl-C deferred
    (delivered when they end), so an interrupt never leaves a half-made step or a half-done import.
    """
    return _Training(
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
    ).run()
