"""``TaskBatch``: a padded, masked batch of few-shot tasks.

Shapes use ``T`` tasks, ``Nc``/``Nt`` context/target points and ``Dx``/``Dy`` features.
Ragged tasks are padded to the longest set; the boolean masks say which points are real.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

__all__ = ["TaskBatch", "SPLITS"]

SPLITS = ("context", "target")


def _check_tensor(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _check_float(name: str, value: torch.Tensor, expected: str) -> None:
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor of shape {expected}, got dtype {value.dtype}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contains NaN or inf values; expected finite values of shape {expected}")


@dataclasses.dataclass(frozen=True)
class TaskBatch:
    """A batch of ``T`` few-shot tasks, each with a context (support) and a target (query) set.

    Parameters
    ----------
    context_x : Tensor ``[T, Nc, Dx]``
        Context inputs (padded with finite values where ``context_mask`` is False).
    context_y : Tensor ``[T, Nc, Dy]`` (regression) or long ``[T, Nc]`` (class labels)
        Context outputs.
    target_x : Tensor ``[T, Nt, Dx]``
        Target inputs. ``Nt`` may be 0 (a context-only batch, used to condition inference).
    target_y : Tensor ``[T, Nt, Dy]`` / long ``[T, Nt]`` or ``None``
        Target outputs; ``None`` means "to predict": models then *sample* ``y_target``.
    context_mask, target_mask : bool ``[T, Nc]`` / ``[T, Nt]``, optional
        True for real points, False for padding. Default: all True.
    info : dict, optional
        Per-task ground truth (e.g. ``amplitude [T]``), for plots and oracles.
    allow_empty_context : bool
        Allow tasks with no real context point (prior predictive, zero-shot). Default False.
    task_index : long Tensor ``[T]``, optional
        When the batch is a subset of a fixed set of ``task_set_size`` tasks (a minibatch of
        :func:`pyro_meta.fit`), each task's index in that set: :func:`pyro_meta.task_plate` then
        subsamples the tasks plate with these indices (per-task parameters line up).
    task_set_size : int, optional
        The size of that fixed task set (required with ``task_index``).

    Every field is validated on construction; a violation raises ``ValueError`` (or
    ``TypeError`` for a wrong type/dtype) naming the field and the expected shape.
    """

    context_x: torch.Tensor
    context_y: torch.Tensor
    target_x: torch.Tensor
    target_y: Optional[torch.Tensor] = None
    context_mask: Optional[torch.Tensor] = None
    target_mask: Optional[torch.Tensor] = None
    info: Dict[str, Any] = dataclasses.field(default_factory=dict)
    allow_empty_context: bool = False
    task_index: Optional[torch.Tensor] = None
    task_set_size: Optional[int] = None

    def __post_init__(self) -> None:
        cx = _check_tensor("context_x", self.context_x)
        if cx.dim() != 3:
            raise ValueError(f"context_x must have shape [T, Nc, Dx], got {tuple(cx.shape)}")
        _check_float("context_x", cx, "[T, Nc, Dx]")
        T, Nc, Dx = cx.shape
        if T == 0:
            raise ValueError("context_x must hold at least one task (T >= 1), got T = 0")
        tx = _check_tensor("target_x", self.target_x)
        if tx.dim() != 3 or tx.shape[0] != T or tx.shape[2] != Dx:
            raise ValueError(
                f"target_x must have shape [T, Nt, Dx] = [{T}, Nt, {Dx}] to match context_x, got {tuple(tx.shape)}"
            )
        _check_float("target_x", tx, "[T, Nt, Dx]")
        Nt = tx.shape[1]

        cy = _check_tensor("context_y", self.context_y)
        self._check_y("context_y", cy, T, Nc)
        if self.target_y is not None:
            ty = _check_tensor("target_y", self.target_y)
            self._check_y("target_y", ty, T, Nt)
            if ty.is_floating_point() != cy.is_floating_point() or (
                ty.is_floating_point() and ty.shape[-1] != cy.shape[-1]
            ):
                raise ValueError(
                    f"target_y must match context_y in kind and Dy: context_y {tuple(cy.shape)} {cy.dtype}, "
                    f"target_y {tuple(ty.shape)} {ty.dtype}"
                )

        for name, n in (("context_mask", Nc), ("target_mask", Nt)):
            mask = getattr(self, name)
            if mask is None:
                object.__setattr__(self, name, torch.ones(T, n, dtype=torch.bool, device=cx.device))
                continue
            _check_tensor(name, mask)
            if mask.dtype != torch.bool:
                raise TypeError(f"{name} must be a bool tensor of shape [T, N] = [{T}, {n}], got dtype {mask.dtype}")
            if tuple(mask.shape) != (T, n):
                raise ValueError(f"{name} must have shape [T, N] = [{T}, {n}], got {tuple(mask.shape)}")
        if not self.allow_empty_context and Nc > 0 and not bool(self.context_mask.any(-1).all()):
            empty = torch.nonzero(~self.context_mask.any(-1)).flatten().tolist()
            raise ValueError(
                f"context_mask: tasks {empty} have no context point; every task needs at least one "
                "(pass allow_empty_context=True for zero-shot or prior predictive batches)"
            )
        if not self.allow_empty_context and Nc == 0:
            raise ValueError("context_x has Nc = 0 points; pass allow_empty_context=True for zero-shot batches")
        if not isinstance(self.info, dict):
            raise TypeError(f"info must be a dict of per-task values, got {type(self.info).__name__}")
        self._check_task_index(T)

    def _check_task_index(self, T: int) -> None:
        idx, size = self.task_index, self.task_set_size
        if idx is None and size is None:
            return
        if idx is None or size is None:
            raise ValueError("task_index [T] and task_set_size must be given together (or neither)")
        if isinstance(size, bool) or not isinstance(size, int) or size < T:
            raise ValueError(f"task_set_size must be an int >= T = {T}, got {size!r}")
        _check_tensor("task_index", idx)
        if idx.dtype != torch.long or tuple(idx.shape) != (T,):
            raise ValueError(f"task_index must be a long tensor of shape [T] = [{T}], got {idx.dtype} {tuple(idx.shape)}")
        if T and (int(idx.min()) < 0 or int(idx.max()) >= size or idx.unique().numel() != T):
            raise ValueError(f"task_index must hold {T} distinct indices in [0, task_set_size = {size})")

    @staticmethod
    def _check_y(name: str, y: torch.Tensor, T: int, n: int) -> None:
        if y.is_floating_point():
            if y.dim() != 3 or tuple(y.shape[:2]) != (T, n):
                raise ValueError(f"{name} must have shape [T, N, Dy] = [{T}, {n}, Dy], got {tuple(y.shape)}")
            _check_float(name, y, "[T, N, Dy]")
        elif y.dtype in (torch.int64, torch.int32):
            if tuple(y.shape) != (T, n):
                raise ValueError(f"{name} (class labels) must have shape [T, N] = [{T}, {n}], got {tuple(y.shape)}")
            if n and int(y.min()) < 0:
                raise ValueError(f"{name} (class labels) must be non-negative integers")
        else:
            raise TypeError(f"{name} must be float [T, N, Dy] or long [T, N] class labels, got dtype {y.dtype}")

    # ----------------------------------------------------------------- sizes
    @property
    def num_tasks(self) -> int:
        """``T``."""
        return self.context_x.shape[0]

    @property
    def num_tasks_total(self) -> int:
        """Size of the task set the batch was drawn from: ``task_set_size``, else ``T``."""
        return self.task_set_size if self.task_index is not None else self.num_tasks

    def with_task_index(self) -> "TaskBatch":
        """This batch as a whole fixed task set: ``task_index = arange(T)`` (kept if already set)."""
        if self.task_index is not None:
            return self
        T = self.num_tasks
        return self.replace(task_index=torch.arange(T, device=self.device), task_set_size=T)

    def without_task_index(self) -> "TaskBatch":
        """The same tasks as a batch of their own (no ``task_index``)."""
        if self.task_index is None:
            return self
        return self.replace(task_index=None, task_set_size=None)

    @property
    def x_dim(self) -> int:
        """``Dx``."""
        return self.context_x.shape[-1]

    @property
    def y_dim(self) -> int:
        """``Dy`` (1 for class labels)."""
        return self.context_y.shape[-1] if self.context_y.is_floating_point() else 1

    @property
    def is_classification(self) -> bool:
        return not self.context_y.is_floating_point()

    def num_points(self, split: str) -> int:
        """Padded number of points of ``split`` (``Nc`` or ``Nt``)."""
        return self.x(split).shape[1]

    def x(self, split: str) -> torch.Tensor:
        """Inputs of ``split`` ("context" or "target"), ``[T, N, Dx]``."""
        return getattr(self, f"{_split(split)}_x")

    def y(self, split: str) -> Optional[torch.Tensor]:
        """Outputs of ``split``, ``[T, N, Dy]`` (or ``None`` for an unobserved target)."""
        return getattr(self, f"{_split(split)}_y")

    def mask(self, split: str) -> torch.Tensor:
        """Bool mask of ``split``, ``[T, N]``."""
        return getattr(self, f"{_split(split)}_mask")

    @property
    def device(self) -> torch.device:
        return self.context_x.device

    # ----------------------------------------------------------- derivation
    def replace(self, **changes: Any) -> "TaskBatch":
        """A copy with some fields replaced (validated again)."""
        return dataclasses.replace(self, **changes)

    def without_target_y(self) -> "TaskBatch":
        """The same batch with ``target_y=None``: a model run on it samples ``y_target``."""
        return self.replace(target_y=None)

    def context_only(self) -> "TaskBatch":
        """The batch with an empty target set (``Nt = 0``): what inference conditions on."""
        T, Dx = self.num_tasks, self.x_dim
        return self.replace(
            target_x=self.context_x.new_zeros(T, 0, Dx), target_y=self.context_y[:, :0], target_mask=None
        )

    def observed(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All observed points: context, plus target when ``target_y`` is known.

        Returns ``(x [T, N, Dx], y [T, N, Dy] or [T, N], mask [T, N])``. Amortized guides
        condition on this, so at training time they see every observed point and at
        inference time (``target_y=None``) only the context.
        """
        if self.target_y is None or self.num_points("target") == 0:
            return self.context_x, self.context_y, self.context_mask
        return (
            torch.cat([self.context_x, self.target_x], 1),
            torch.cat([self.context_y, self.target_y], 1),
            torch.cat([self.context_mask, self.target_mask], 1),
        )

    def select(self, index: Any) -> "TaskBatch":
        """The sub-batch of tasks ``index`` (an int list, slice or bool/long tensor)."""
        if isinstance(index, int):
            index = [index]
        if isinstance(index, (list, tuple)):
            index = torch.as_tensor(index, dtype=torch.long)
        if isinstance(index, torch.Tensor):
            if index.dtype != torch.bool and index.numel() and not (
                    -self.num_tasks <= int(index.min()) and int(index.max()) < self.num_tasks):
                raise IndexError(f"select: task index out of range for a batch of {self.num_tasks} tasks "
                                 f"(valid: -{self.num_tasks} to {self.num_tasks - 1}), got {index.tolist()}")
            index = index.to(self.context_x.device)
        info = {k: _select_info(v, index, self.num_tasks) for k, v in self.info.items()}
        return TaskBatch(
            context_x=self.context_x[index],
            context_y=self.context_y[index],
            target_x=self.target_x[index],
            target_y=None if self.target_y is None else self.target_y[index],
            context_mask=self.context_mask[index],
            target_mask=self.target_mask[index],
            info=info,
            allow_empty_context=self.allow_empty_context,
            task_index=None if self.task_index is None else self.task_index[index],
            task_set_size=self.task_set_size,
        )

    def to(self, *args: Any, **kwargs: Any) -> "TaskBatch":
        """Move every tensor (``torch.Tensor.to`` arguments); masks and labels keep their dtype."""

        def move(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            if t is None:
                return None
            if t.is_floating_point():
                return t.to(*args, **kwargs)
            device = kwargs.get("device") or next(
                (a for a in args if isinstance(a, (str, torch.device))), t.device
            )
            return t.to(device)

        info = {k: move(v) if isinstance(v, torch.Tensor) else v for k, v in self.info.items()}
        return TaskBatch(
            move(self.context_x), move(self.context_y), move(self.target_x), move(self.target_y),
            move(self.context_mask), move(self.target_mask), info, self.allow_empty_context,
            move(self.task_index), self.task_set_size,
        )

    def __len__(self) -> int:
        return self.num_tasks

    def __repr__(self) -> str:
        ty = "None" if self.target_y is None else f"{list(self.target_y.shape)}"
        return (
            f"TaskBatch(T={self.num_tasks}, context_x={list(self.context_x.shape)}, "
            f"context_y={list(self.context_y.shape)}, target_x={list(self.target_x.shape)}, "
            f"target_y={ty}, info={sorted(self.info)})"
        )

    # --------------------------------------------------------- construction
    @classmethod
    def from_tasks(
        cls,
        context: Sequence[Tuple[torch.Tensor, torch.Tensor]],
        target: Optional[Sequence[Tuple[torch.Tensor, Optional[torch.Tensor]]]] = None,
        info: Optional[Dict[str, Any]] = None,
        pad_value: float = 0.0,
        allow_empty_context: bool = False,
    ) -> "TaskBatch":
        """Pad ragged per-task sets into a batch.

        ``context`` is a list of ``(x [n_t, Dx], y [n_t, Dy] or long [n_t])`` per task;
        ``target`` likewise (its ``y`` may be ``None`` for every task). Padded entries
        get ``pad_value`` (finite, so padded points never produce NaN gradients).
        """
        if len(context) == 0:
            raise ValueError("context must hold at least one task")
        if target is not None and len(target) != len(context):
            raise ValueError(f"target has {len(target)} tasks but context has {len(context)}")
        cx, cy, cm = _pad([c[0] for c in context], [c[1] for c in context], pad_value, "context")
        if target is None:
            tx = cx.new_zeros(cx.shape[0], 0, cx.shape[-1])
            ty, tm = cy[:, :0], None
        else:
            ys = [t[1] for t in target]
            if all(y is None for y in ys):
                tx, _, tm = _pad([t[0] for t in target], None, pad_value, "target")
                ty = None
            elif any(y is None for y in ys):
                raise ValueError("target: either every task's y is None or none is")
            else:
                tx, ty, tm = _pad([t[0] for t in target], ys, pad_value, "target")
        return cls(cx, cy, tx, ty, cm, tm, dict(info or {}), allow_empty_context)


def _split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be 'context' or 'target', got {split!r}")
    return split


def _select_info(value: Any, index: Any, T: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == T:
        return value[index]
    return value


def _pad(xs, ys, pad_value, split):
    T = len(xs)
    n = max(int(x.shape[0]) for x in xs)
    Dx = xs[0].shape[-1]
    x_out = torch.full((T, n, Dx), pad_value, dtype=xs[0].dtype)
    mask = torch.zeros(T, n, dtype=torch.bool)
    y_out = None
    if ys is not None:
        y0 = ys[0]
        shape = (T, n) if not y0.is_floating_point() else (T, n, y0.shape[-1])
        fill = 0 if not y0.is_floating_point() else pad_value
        y_out = torch.full(shape, fill, dtype=y0.dtype)
    for t, x in enumerate(xs):
        if x.dim() != 2 or x.shape[-1] != Dx:
            raise ValueError(f"{split} x of task {t} must have shape [n, Dx={Dx}], got {tuple(x.shape)}")
        k = x.shape[0]
        x_out[t, :k] = x
        mask[t, :k] = True
        if ys is not None:
            y = ys[t]
            if y.shape[0] != k:
                raise ValueError(f"{split} y of task {t} has {y.shape[0]} points but x has {k}")
            y_out[t, :k] = y
    return x_out, y_out, mask
