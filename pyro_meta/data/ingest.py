"""Data in: per-task arrays and tables -> the padded tensors of a :class:`~pyro_meta.data.TaskBatch`.

The rules (used by ``TaskBatch.from_tasks`` and ``TaskBatch.from_table``):

* inputs may be ``torch.Tensor``, numpy arrays or (nested) lists; lists follow ``torch.as_tensor``
  (Python floats become ``torch.get_default_dtype()``);
* ``x`` is ``[n, Dx]`` or 1-D ``[n]`` (read as ``[n, 1]``), floating point;
* a floating ``y`` is ``[n, Dy]`` or 1-D ``[n]`` (read as ``[n, 1]``); an integer ``y`` (any width,
  numpy or torch) is a 1-D vector of class labels ``[n]`` and becomes long; a bool ``y`` is a
  binary label and becomes long (0/1);
* every floating input (``x`` and ``y`` of every task, context and target) must share one dtype,
  ``Dx`` and ``Dy`` must agree across tasks and sets, and labels may not be mixed with
  real-valued outputs; a violation raises ``TypeError``/``ValueError`` naming the task index and
  the argument. Nothing is cast silently: ``dtype=`` casts every floating input (and integer
  ``x``) explicitly, e.g. ``dtype=torch.float32`` for numpy float64 data and a float32 model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..validation import check_int

__all__ = ["pad_tasks", "table_tasks"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _as_tensor(value: Any, where: str) -> torch.Tensor:
    """A tensor view of a tensor, numpy array or (nested) list; ``TypeError`` naming ``where``."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{where} must hold numbers (float, int or bool), got numpy dtype {arr.dtype}")
        return torch.from_numpy(np.ascontiguousarray(arr))
    if isinstance(value, (list, tuple)):
        try:
            return torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{where} must be a rectangular list of numbers: {e}") from None
    raise TypeError(f"{where} must be a torch.Tensor, numpy array or list, got {type(value).__name__}")


def _device(device: Any) -> torch.device:
    """``torch.device(device)``, or ``ValueError``/``TypeError`` naming the ``device`` argument."""
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a torch.device or a string such as 'cpu' or 'cuda:0', got {device!r}")
    try:
        return torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda:0', got {device!r}: {e}") from None


class _Converter:
    """Converts every task's ``x``/``y`` and checks they agree; remembers what it has seen."""

    def __init__(self, dtype: Optional[torch.dtype], device: Any) -> None:
        if dtype is not None and (not isinstance(dtype, torch.dtype) or dtype not in _FLOATS):
            raise TypeError(f"dtype must be a floating torch.dtype (e.g. torch.float32), got {dtype!r}")
        self.dtype = dtype
        self.move = device is not None
        self.device = _device(device) if device is not None else None
        self.device_at = "device="
        self.float_seen: Optional[Tuple[torch.dtype, str]] = None  # first floating dtype and where
        self.dx: Optional[Tuple[int, str]] = None
        self.y_kind: Optional[Tuple[str, str]] = None  # ("labels" | "Dy=k", where)

    def _place(self, t: torch.Tensor, where: str) -> torch.Tensor:
        if self.move:
            return t.to(self.device)
        if self.device is None:
            self.device, self.device_at = t.device, where
        elif t.device != self.device:
            raise ValueError(
                f"{where} is on {t.device} but {self.device_at} is on {self.device} (numpy arrays and lists are on "
                "cpu); pass device= to move every input there"
            )
        return t

    def _float(self, t: torch.Tensor, where: str) -> torch.Tensor:
        if self.dtype is not None:
            return t.to(self.dtype)
        if self.float_seen is None:
            self.float_seen = (t.dtype, where)
        elif t.dtype != self.float_seen[0]:
            first, at = self.float_seen
            raise TypeError(
                f"{where} is {t.dtype} but {at} is {first}: all floating inputs must share one dtype; "
                f"pass dtype=torch.float32 (or another floating dtype) to cast them explicitly"
            )
        return t

    def x(self, value: Any, where: str) -> torch.Tensor:
        t = _as_tensor(value, where)
        if t.dim() == 1:
            t = t[:, None]
        if t.dim() != 2:
            raise ValueError(f"{where} must have shape [n, Dx] or [n], got {tuple(t.shape)}")
        if t.is_complex() or t.dtype == torch.bool or not (t.is_floating_point() or self.dtype is not None):
            raise TypeError(
                f"{where} must be real floating point [n, Dx], got dtype {t.dtype} "
                "(pass dtype=torch.float32 to cast integer inputs explicitly)"
            )
        t = self._float(self._place(t, where), where)
        if self.dx is None:
            self.dx = (t.shape[1], where)
        elif t.shape[1] != self.dx[0]:
            raise ValueError(f"{where} has Dx = {t.shape[1]} features but {self.dx[1]} has Dx = {self.dx[0]}")
        return t

    def y(self, value: Any, where: str, n: int) -> torch.Tensor:
        t = self._place(_as_tensor(value, where), where)
        if t.is_complex():
            raise TypeError(f"{where} must be real, got dtype {t.dtype}")
        if t.is_floating_point():
            if t.dim() == 1:
                t = t[:, None]
            if t.dim() != 2:
                raise ValueError(f"{where} (real-valued outputs) must have shape [n, Dy] or [n], got {tuple(t.shape)}")
            t = self._float(t, where)
            kind = f"real-valued with Dy = {t.shape[1]}"
        else:
            if t.dim() != 1:
                raise ValueError(
                    f"{where} has integer dtype {t.dtype}, read as class labels, which must be 1-D [n]; got shape "
                    f"{tuple(t.shape)} (flatten the labels, or pass floats for real-valued outputs)"
                )
            t = t.long()  # bool -> 0/1; any integer width -> int64 (lossless)
            if t.numel() and int(t.min()) < 0:
                raise ValueError(f"{where} (class labels) must be non-negative integers, got min {int(t.min())}")
            kind = "class labels (integer)"
        if self.y_kind is None:
            self.y_kind = (kind, where)
        elif kind != self.y_kind[0]:
            raise ValueError(f"{where} is {kind} but {self.y_kind[1]} is {self.y_kind[0]}")
        if t.shape[0] != n:
            raise ValueError(f"{where} has {t.shape[0]} points but its x has {n}")
        return t


def _pad(xs: List[torch.Tensor], ys: Optional[List[torch.Tensor]], pad_value: float, conv: _Converter, Dx: int):
    T = len(xs)
    n = max([int(x.shape[0]) for x in xs] + [0])
    dtype = xs[0].dtype
    device = conv.device if conv.device is not None else torch.device("cpu")
    x_out = torch.full((T, n, Dx), pad_value, dtype=dtype, device=device)
    mask = torch.zeros(T, n, dtype=torch.bool, device=device)
    y_out = None
    if ys is not None:
        y0 = ys[0]
        if y0.is_floating_point():
            y_out = torch.full((T, n, y0.shape[1]), pad_value, dtype=y0.dtype, device=device)
        else:
            y_out = torch.zeros(T, n, dtype=torch.long, device=device)
    for t, x in enumerate(xs):
        k = x.shape[0]
        x_out[t, :k] = x.to(device)
        mask[t, :k] = True
        if ys is not None:
            y_out[t, :k] = ys[t].to(device)
    return x_out, y_out, mask


def pad_tasks(
    context: Sequence[Tuple[Any, Any]],
    target: Optional[Sequence[Tuple[Any, Any]]],
    pad_value: float,
    dtype: Optional[torch.dtype] = None,
    device: Any = None,
) -> Dict[str, Optional[torch.Tensor]]:
    """Convert, check and pad per-task ``(x, y)`` pairs (see the module docstring for the rules).

    Returns the fields ``context_x [T, Nc, Dx]``, ``context_y [T, Nc, Dy]`` / long ``[T, Nc]``,
    ``target_x [T, Nt, Dx]``, ``target_y`` (or ``None``), ``context_mask``, ``target_mask``.
    """
    if isinstance(context, (torch.Tensor, np.ndarray)) or not isinstance(context, Sequence):
        raise TypeError(f"context must be a list of (x, y) pairs, one per task, got {type(context).__name__}")
    if len(context) == 0:
        raise ValueError("context must hold at least one task")
    if target is not None:
        if isinstance(target, (torch.Tensor, np.ndarray)) or not isinstance(target, Sequence):
            raise TypeError(f"target must be a list of (x, y) pairs, one per task, got {type(target).__name__}")
        if len(target) != len(context):
            raise ValueError(f"target has {len(target)} tasks but context has {len(context)}")
    if isinstance(pad_value, bool) or not isinstance(pad_value, (int, float)) or not math.isfinite(pad_value):
        kind = ValueError if isinstance(pad_value, (int, float)) else TypeError
        raise kind(f"pad_value must be a finite number (padding must never produce NaN gradients), got {pad_value!r}")
    conv = _Converter(dtype, device)

    def pairs(name: str, seq):
        out = []
        for t, pair in enumerate(seq):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"{name}[{t}] must be an (x, y) pair, got {type(pair).__name__}")
            out.append(pair)
        return out

    cxs, cys = [], []
    for t, (x, y) in enumerate(pairs("context", context)):
        if y is None:
            raise ValueError(f"context[{t}] y is None: every context point needs an observed y")
        cxs.append(conv.x(x, f"context[{t}] x (task {t})"))
        cys.append(conv.y(y, f"context[{t}] y (task {t})", cxs[-1].shape[0]))
    txs, tys = [], []
    if target is not None:
        tpairs = pairs("target", target)
        missing = [y is None for _, y in tpairs]
        if any(missing) and not all(missing):
            raise ValueError(
                f"target: either every task's y is None (to predict) or none is; tasks "
                f"{[t for t, m in enumerate(missing) if m]} have y None"
            )
        for t, (x, y) in enumerate(tpairs):
            txs.append(conv.x(x, f"target[{t}] x (task {t})"))
            if y is not None:
                tys.append(conv.y(y, f"target[{t}] y (task {t})", txs[-1].shape[0]))
    Dx = conv.dx[0]
    cx, cy, cm = _pad(cxs, cys, pad_value, conv, Dx)
    if target is None:
        tx, ty, tm = cx.new_zeros(cx.shape[0], 0, Dx), cy[:, :0], None
    else:
        tx, ty, tm = _pad(txs, tys or None, pad_value, conv, Dx)
    return dict(context_x=cx, context_y=cy, target_x=tx, target_y=ty, context_mask=cm, target_mask=tm)


# ----------------------------------------------------------------------------- tables
def _columns(table: Any) -> Dict[str, np.ndarray]:
    """Column name -> 1-D numpy array, for a pandas DataFrame or a dict of equal-length 1-D arrays."""
    if isinstance(table, Mapping):
        cols = {}
        for name, col in table.items():
            arr = col.detach().cpu().numpy() if isinstance(col, torch.Tensor) else np.asarray(col)
            if arr.ndim != 1:
                raise ValueError(f"table column {name!r} must be 1-D, got shape {arr.shape}")
            cols[name] = arr
    elif hasattr(table, "columns") and hasattr(table, "to_numpy"):  # a pandas DataFrame (pandas stays optional)
        cols = {name: table[name].to_numpy() for name in table.columns}
    else:
        raise TypeError(f"table must be a pandas DataFrame or a dict of 1-D arrays, got {type(table).__name__}")
    lengths = {name: len(a) for name, a in cols.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"table columns must have equal lengths, got {lengths}")
    return cols


def _column(cols: Dict[str, np.ndarray], name: Any, arg: str) -> np.ndarray:
    if name not in cols:
        raise ValueError(f"{arg}: no column {name!r} in the table (columns: {sorted(map(str, cols))})")
    return cols[name]


def _numeric(arr: np.ndarray, name: Any, arg: str) -> np.ndarray:
    if arr.dtype.kind == "O":  # pandas nullable / object columns
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{arg}: column {name!r} must be numeric, got object values") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{arg}: column {name!r} must be numeric, got dtype {arr.dtype}")
    return arr


def _split_flags(cols, split, num_context, context_fraction, groups, task_ids, generator) -> np.ndarray:
    """Bool ``[rows]``: True for context rows."""
    given = [
        k
        for k, v in (("split", split), ("num_context", num_context), ("context_fraction", context_fraction))
        if v is not None
    ]
    if len(given) != 1:
        raise ValueError(
            "give exactly one context/target rule: split=<column> (bool: True = context, or str "
            f"'context'/'target'), num_context=k or context_fraction=f; got {given or 'none'}"
        )
    if split is not None:
        col = _column(cols, split, "split")
        if col.dtype.kind == "b":
            return col.astype(bool)
        values = col.astype(str) if col.dtype.kind in "OUS" else None
        if values is None:
            raise TypeError(
                f"split: column {split!r} must be bool (True = context) or str ('context'/'target'), "
                f"got dtype {col.dtype}"
            )
        bad = sorted(set(values.tolist()) - {"context", "target"})
        if bad:
            raise ValueError(f"split: column {split!r} may only hold 'context' or 'target', got {bad[:5]}")
        return values == "context"
    if num_context is not None and (
        isinstance(num_context, bool) or not isinstance(num_context, int) or num_context < 0
    ):
        raise ValueError(f"num_context must be a non-negative int, got {num_context!r}")
    if context_fraction is not None and not (
        isinstance(context_fraction, (int, float))
        and not isinstance(context_fraction, bool)
        and 0 < context_fraction <= 1
    ):
        raise ValueError(f"context_fraction must be a number in (0, 1], got {context_fraction!r}")
    flags = np.zeros(sum(len(g) for g in groups), dtype=bool)
    for rows, tid in zip(groups, task_ids):
        n = len(rows)
        if num_context is not None:
            k = num_context
            if n < k:
                raise ValueError(f"num_context={k}: task {tid!r} has only {n} rows")
        else:
            k = max(1, min(n, round(context_fraction * n)))
        chosen = torch.randperm(n, generator=generator)[:k].numpy()
        flags[rows[chosen]] = True
    return flags


def table_tasks(
    table: Any,
    task: Any,
    x: Any,
    y: Any,
    split: Any = None,
    num_context: Optional[int] = None,
    context_fraction: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
    dtype: Optional[torch.dtype] = None,
    allow_empty_context: bool = False,
):
    """Group a table's rows by task id and split them: ``(context pairs, target pairs, task ids)``.

    See ``TaskBatch.from_table`` for the arguments. Target ``y`` is ``None`` for every task when
    every target row's ``y`` is NaN (points to predict).
    """
    cols = _columns(table)
    ids = _column(cols, task, "task")
    if ids.dtype.kind == "f" and np.isnan(ids).any():
        raise ValueError(f"task: column {task!r} has missing (NaN) task ids")
    try:
        uniq, inverse = np.unique(ids, return_inverse=True)
    except TypeError as e:
        raise TypeError(f"task: the ids in column {task!r} cannot be sorted (mixed types?): {e}") from None
    if len(uniq) == 0:
        raise ValueError("table has no rows")
    groups = [np.flatnonzero(inverse == i) for i in range(len(uniq))]
    task_ids = [u.item() if hasattr(u, "item") else u for u in uniq]

    x_names = list(x) if isinstance(x, (list, tuple)) else [x]
    if not x_names:
        raise ValueError("x must name at least one column")
    x_cols = [_numeric(_column(cols, c, "x"), c, "x") for c in x_names]
    kinds = {c.dtype for c in x_cols}
    if len(kinds) > 1:
        raise TypeError(
            f"x: columns {x_names} have different dtypes {[str(c.dtype) for c in x_cols]}; "
            "cast them to one dtype (or pass dtype=torch.float32)"
        )
    if dtype is None and x_cols[0].dtype.kind != "f":
        raise TypeError(
            f"x: columns {x_names} are {x_cols[0].dtype}; x must be floating (pass dtype=torch.float32 "
            "to cast them explicitly)"
        )
    x_all = np.stack(x_cols, axis=-1)
    for c, name in zip(x_cols, x_names):
        if c.dtype.kind == "f" and not np.isfinite(c).all():
            raise ValueError(f"x: column {name!r} has NaN or inf values")

    y_names = list(y) if isinstance(y, (list, tuple)) else [y]
    if not y_names:
        raise ValueError("y must name at least one column")
    y_cols = [_numeric(_column(cols, c, "y"), c, "y") for c in y_names]
    if isinstance(y, (list, tuple)):
        if any(c.dtype.kind != "f" for c in y_cols) or len({c.dtype for c in y_cols}) > 1:
            raise TypeError(
                f"y: a list of columns {y_names} is read as real-valued [n, Dy] and must be floating "
                f"columns of one dtype, got {[str(c.dtype) for c in y_cols]} (class labels: one column)"
            )
        y_all = np.stack(y_cols, axis=-1)
    else:
        y_all = y_cols[0]
    if dtype is None and y_all.dtype.kind == "f" and y_all.dtype != x_all.dtype:
        raise TypeError(
            f"y: column(s) {y_names} are {y_all.dtype} but the x columns are {x_all.dtype}; pass "
            "dtype=torch.float32 (or another floating dtype) to cast both explicitly"
        )

    if generator is not None and seed is not None:
        raise ValueError("pass generator or seed, not both")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if seed is not None:
        seed = check_int("seed", seed, minimum=0, maximum=2**64 - 1)
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
    is_context = _split_flags(cols, split, num_context, context_fraction, groups, task_ids, generator)

    y_missing = (
        np.isnan(y_all).reshape(len(y_all), -1).any(-1) if y_all.dtype.kind == "f" else np.zeros(len(y_all), dtype=bool)
    )
    if (y_missing & is_context).any():
        bad = sorted({task_ids[inverse[r]] for r in np.flatnonzero(y_missing & is_context)})[:5]
        raise ValueError(f"y: context rows of tasks {bad} have missing (NaN) y; context points must be observed")
    target_rows = ~is_context
    predict = bool(target_rows.any()) and bool(y_missing[target_rows].all())
    if not predict and (y_missing & target_rows).any():
        bad = sorted({task_ids[inverse[r]] for r in np.flatnonzero(y_missing & target_rows)})[:5]
        raise ValueError(
            f"y: target rows of tasks {bad} have missing (NaN) y while others are observed; "
            "either every target y is NaN (to predict) or none is"
        )
    no_context = [tid for rows, tid in zip(groups, task_ids) if not is_context[rows].any()]
    if no_context and not allow_empty_context:
        rule = "split" if split is not None else "num_context" if num_context is not None else "context_fraction"
        raise ValueError(
            f"{rule}: tasks {no_context[:5]} get no context row; every task needs one (pass "
            "allow_empty_context=True for zero-shot batches)"
        )
    context, target = [], []
    for rows in groups:
        c, t = rows[is_context[rows]], rows[~is_context[rows]]
        context.append((x_all[c], y_all[c]))
        target.append((x_all[t], None if predict else y_all[t]))
    return context, target, task_ids
