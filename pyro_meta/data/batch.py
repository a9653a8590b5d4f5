"""``TaskBatch``: a padded, masked batch of few-shot tasks.

Shapes use ``T`` tasks, ``Nc``/``Nt`` context/target points and ``Dx``/``Dy`` features.
Ragged tasks are padded to the longest set; the boolean masks say which points are real.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

from .ingest import pad_tasks, table_tasks

__all__ = ["TaskBatch", "SPLITS"]

SPLITS = ("context", "target")


def _check_tensor(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _check_float(name: str, value: torch.Tensor, expected: str) -> None:
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor of shape {expected}, got dtype {value.dtype}")
    # a finite sum means every element is finite (one reduction, ~20x cheaper on image batches);
    # a non-finite sum (NaN/inf present, or an overflow) falls back to the elementwise check
    if not bool(torch.isfinite(value.sum())) and not bool(torch.isfinite(value).all()):
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
            raise ValueError(
                f"task_index must be a long tensor of shape [T] = [{T}], got {idx.dtype} {tuple(idx.shape)}"
            )
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

    def with_targets(self, x: torch.Tensor) -> "TaskBatch":
        """The same context with targets at ``x`` and no ``target_y`` (to predict there).

        ``x`` is ``[G]`` or ``[G, Dx]`` (the same points for every task: a plotting grid) or
        ``[T, G, Dx]``.
        """
        T = self.num_tasks
        x = torch.as_tensor(x).to(self.context_x)
        if x.dim() == 1:
            x = x[:, None]
        if x.dim() == 2:
            x = x[None].expand(T, -1, -1)
        if x.dim() != 3 or x.shape[0] != T or x.shape[2] != self.x_dim:
            raise ValueError(
                f"x must be [G], [G, Dx={self.x_dim}] or [T={T}, G, Dx={self.x_dim}], got {tuple(x.shape)}"
            )
        return self.replace(target_x=x.contiguous(), target_y=None, target_mask=None)

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
        """The sub-batch of tasks ``index`` (an int, int list, slice, or a 1-D long or bool ``[T]`` tensor).

        Raises ``IndexError`` for a task index out of range and ``TypeError``/``ValueError`` for anything
        that is not a task index (floats, strings, a bool mask of the wrong length, 2-D tensors).
        """
        index = _task_index(index, self.num_tasks)
        if isinstance(index, torch.Tensor):
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
            device = kwargs.get("device") or next((a for a in args if isinstance(a, (str, torch.device))), t.device)
            return t.to(device)

        info = {k: move(v) if isinstance(v, torch.Tensor) else v for k, v in self.info.items()}
        return TaskBatch(
            move(self.context_x),
            move(self.context_y),
            move(self.target_x),
            move(self.target_y),
            move(self.context_mask),
            move(self.target_mask),
            info,
            self.allow_empty_context,
            move(self.task_index),
            self.task_set_size,
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
        context: Sequence[Tuple[Any, Any]],
        target: Optional[Sequence[Tuple[Any, Any]]] = None,
        info: Optional[Dict[str, Any]] = None,
        pad_value: float = 0.0,
        allow_empty_context: bool = False,
        dtype: Optional[torch.dtype] = None,
        device: Optional[Union[str, torch.device]] = None,
    ) -> "TaskBatch":
        """Pad ragged per-task sets into a batch.

        Parameters
        ----------
        context : list of ``(x, y)``, one per task
            ``x`` is ``[n_t, Dx]`` or ``[n_t]`` (read as ``[n_t, 1]``); a floating ``y`` is
            ``[n_t, Dy]`` or ``[n_t]`` (read as ``[n_t, 1]``); an integer ``y`` is a vector of class
            labels ``[n_t]`` (stored as long); a bool ``y`` is a binary label (stored as long 0/1).
            Each may be a ``torch.Tensor``, a numpy array or a list.
        target : list of ``(x, y)``, optional
            Likewise; ``y`` may be ``None`` for every task (to predict). Default: no target set.
        info : dict, optional
            Per-task values (tensors or lists with a leading dim ``T`` follow :meth:`select`).
        pad_value : float
            Value of padded entries (finite, so padded points never produce NaN gradients).
        dtype : floating torch.dtype, optional
            Cast every floating input (and integer ``x``) to it. Default ``None``: keep the inputs'
            dtype, which must then be one dtype across every task, ``x`` and ``y`` (numpy float64
            stays float64; pass ``dtype=torch.float32`` for a float32 model).
        device : torch device, optional
            Put the batch there. Default ``None``: the inputs' device (they must agree; numpy and
            lists are on cpu).

        Raises ``TypeError``/``ValueError`` naming the task and the argument (``context[2] y``)
        for wrong shapes, mixed ``Dx``/``Dy``, labels mixed with real-valued outputs, mixed
        floating dtypes (never cast silently) or mixed devices.
        """
        fields = pad_tasks(context, target, pad_value, dtype=dtype, device=device)
        return cls(**fields, info=dict(info or {}), allow_empty_context=allow_empty_context)

    @classmethod
    def from_table(
        cls,
        table: Any,
        task: Any = "task_id",
        x: Any = "x",
        y: Any = "y",
        split: Any = None,
        num_context: Optional[int] = None,
        context_fraction: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
        pad_value: float = 0.0,
        allow_empty_context: bool = False,
        dtype: Optional[torch.dtype] = None,
        device: Optional[Union[str, torch.device]] = None,
    ) -> "TaskBatch":
        """A batch from a long table with one row per point: a pandas DataFrame or a dict of 1-D arrays.

        Rows are grouped by the task-id column ``task``; tasks come in sorted order of their ids,
        kept in ``info["task_id"]`` (a list ``[T]``). Within a task, rows keep their table order.

        Parameters
        ----------
        table : pandas.DataFrame or dict of equal-length 1-D arrays (numpy, torch or lists)
        task : column name of the task ids (sortable: numbers or strings)
        x : column name or list of names -> ``x [n, Dx]`` (floating columns of one dtype)
        y : column name -> ``[n, 1]`` (floating) or class labels ``[n]`` (integer or bool);
            or a list of floating column names -> ``[n, Dy]``
        split, num_context, context_fraction : the context/target rule (give exactly one)
            ``split`` names a column: bool (True = context) or str (``"context"``/``"target"``);
            ``num_context=k``: a seeded random ``k`` rows of each task are context, the rest targets
            (a task with fewer than ``k`` rows raises ``ValueError``);
            ``context_fraction=f``: ``round(f * n_t)`` (ties to even; at least 1) random rows per task.
        generator, seed : the random split's ``torch.Generator``, or a seed for one (default seed 0:
            the same table gives the same split). One ``torch.randperm(n_t)`` per task, in task order.
        pad_value, allow_empty_context, dtype, device : as in :meth:`from_tasks`.

        Target rows whose ``y`` is NaN in *every* target row make ``target_y=None`` (points to
        predict); NaN in some target rows only, or in a context row, raises ``ValueError``.
        """
        context, target, ids = table_tasks(
            table,
            task,
            x,
            y,
            split=split,
            num_context=num_context,
            context_fraction=context_fraction,
            generator=generator,
            seed=seed,
            dtype=dtype,
            allow_empty_context=allow_empty_context,
        )
        fields = pad_tasks(context, target, pad_value, dtype=dtype, device=device)
        return cls(**fields, info={"task_id": ids}, allow_empty_context=allow_empty_context)

    def split(self, num_context: int, generator: Optional[torch.Generator] = None) -> "TaskBatch":
        """Re-split each task's observed points: ``num_context`` random context points, the rest targets.

        Context and target points of a task are pooled (``n_t`` real points) and a
        ``torch.randperm(n_t, generator=generator)`` per task, in task order, picks the context;
        both sets keep the pooled order (context first, then target). ``info`` is kept. Needs
        ``target_y`` (an unobserved target cannot become context). A batch whose targets repeat
        its context points (the NP protocol) would repeat them after pooling: re-split a batch
        with disjoint sets. ``generator=None`` uses torch's global RNG (``pyro.set_rng_seed``).

        Raises ``ValueError`` naming the task when it has fewer than ``num_context`` points.
        """
        if isinstance(num_context, bool) or not isinstance(num_context, int) or num_context < 0:
            raise ValueError(f"num_context must be a non-negative int, got {num_context!r}")
        if self.target_y is None:
            raise ValueError("split: target_y is None (points to predict); only observed points can be re-split")
        x, y, mask = self.observed()
        context, target = [], []
        for t in range(self.num_tasks):
            real = torch.nonzero(mask[t]).flatten()
            n = real.numel()
            if n < num_context:
                raise ValueError(f"split: task {t} has {n} observed points, fewer than num_context={num_context}")
            perm = torch.randperm(n, generator=generator).to(real.device)
            chosen = torch.zeros(n, dtype=torch.bool, device=real.device)
            chosen[perm[:num_context]] = True
            c, r = real[chosen], real[~chosen]
            context.append((x[t, c], y[t, c]))
            target.append((x[t, r], y[t, r]))
        fields = pad_tasks(context, target, pad_value=0.0)
        return type(self)(**fields, info=dict(self.info), allow_empty_context=self.allow_empty_context)


def _task_index(index: Any, T: int) -> Any:
    """``index`` as a slice or a 1-D long/bool tensor of tasks, checked (see :meth:`TaskBatch.select`)."""
    if isinstance(index, slice):
        return index
    if isinstance(index, bool) or isinstance(index, str):
        raise TypeError(f"index must be an int, int list, slice or a long/bool tensor of tasks, got {index!r}")
    if isinstance(index, int):
        index = [index]
    if isinstance(index, (list, tuple)):
        if any(isinstance(i, bool) or not isinstance(i, int) for i in index):
            raise TypeError(f"index: a list of task indices must hold ints, got {list(index)[:10]!r}")
        index = torch.as_tensor(list(index), dtype=torch.long)
    elif not isinstance(index, torch.Tensor) and hasattr(index, "__array__"):
        index = torch.as_tensor(index)
    if not isinstance(index, torch.Tensor):
        raise TypeError(
            f"index must be an int, int list, slice or a long/bool tensor of tasks, got {type(index).__name__}"
        )
    if index.dtype == torch.bool:
        if tuple(index.shape) != (T,):
            raise ValueError(f"index: a bool mask of tasks must have shape [T] = [{T}], got {tuple(index.shape)}")
        return index
    if index.is_floating_point() or index.is_complex() or index.dim() > 1:
        raise TypeError(
            f"index must be an int, int list, slice or a 1-D long/bool tensor of tasks, got a {index.dtype} "
            f"tensor of shape {tuple(index.shape)}"
        )
    index = index.long().reshape(-1)
    if index.numel() and not (-T <= int(index.min()) and int(index.max()) < T):
        raise IndexError(
            f"select: task index out of range for a batch of {T} tasks (valid: -{T} to {T - 1}), got "
            f"{index.tolist()[:10]}"
        )
    return index


def _split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be 'context' or 'target', got {split!r}")
    return split


def _select_info(value: Any, index: Any, T: int) -> Any:
    """Index per-task info: tensors with a leading dim ``T`` and lists/tuples of length ``T``."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == T:
        return value[index]
    if isinstance(value, (list, tuple)) and len(value) == T:
        picked = torch.arange(T)[index.cpu() if isinstance(index, torch.Tensor) else index]
        return type(value)(value[i] for i in picked.reshape(-1).tolist())
    return value
