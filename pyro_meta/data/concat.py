"""``concat_batches``: several :class:`~pyro_meta.data.TaskBatch` es as one, tasks in order."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch.nn.functional import pad

from .batch import TaskBatch

__all__ = ["concat_batches"]


def _pad_points(t: Optional[torch.Tensor], n: int, value: Any = 0) -> Optional[torch.Tensor]:
    """Pad dim 1 (points) of ``[T, N, ...]`` to ``n``."""
    if t is None or t.shape[1] == n:
        return t
    widths = [0, 0] * (t.dim() - 2) + [0, n - t.shape[1]]
    return pad(t, widths, value=value)


def _info(batches: Sequence[TaskBatch]) -> Dict[str, Any]:
    """Per-task entries (tensors with a leading ``T``, lists of length ``T``) joined; shared entries kept."""
    keys = set().union(*(b.info for b in batches))
    out: Dict[str, Any] = {}
    for key in sorted(keys):
        values = [b.info.get(key) for b in batches]
        sizes = [b.num_tasks for b in batches]
        if all(isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == T for v, T in zip(values, sizes)):
            out[key] = torch.cat(values, 0)
        elif all(isinstance(v, (list, tuple)) and len(v) == T for v, T in zip(values, sizes)):
            out[key] = type(values[0])(x for v in values for x in v)
        elif all(_equal(v, values[0]) for v in values[1:]):
            out[key] = values[0]
        else:
            raise ValueError(
                f"concat_batches: info[{key!r}] is neither per task (a leading dim T) in every batch nor "
                "the same in every batch"
            )
    return out


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and bool((a == b).all())
        )
    return a == b


def concat_batches(batches: Sequence[TaskBatch]) -> TaskBatch:
    """The tasks of ``batches`` as one batch ``[sum_k T_k, max_k N_k, D]``, in order.

    Context and target sets are padded to the longest one (padding masked out, value 0); per-task
    ``info`` entries (tensors with a leading ``T``, lists of length ``T``) are joined and entries
    equal in every batch are kept. ``task_index`` is joined when every batch has one from the same
    task set (the indices must then be distinct). The batches must agree in ``Dx``, ``Dy``, label or
    real-valued outputs, dtype and device, and all or none must have ``target_y``; ``ValueError``
    (or ``TypeError``) otherwise.
    """
    batches: List[TaskBatch] = list(batches)
    if not batches:
        raise ValueError("concat_batches: batches is empty")
    for k, b in enumerate(batches):
        if not isinstance(b, TaskBatch):
            raise TypeError(f"batches[{k}] must be a TaskBatch, got {type(b).__name__}")
    first = batches[0]
    for k, b in enumerate(batches[1:], 1):
        same = (
            b.x_dim == first.x_dim
            and b.y_dim == first.y_dim
            and b.is_classification == first.is_classification
            and b.context_x.dtype == first.context_x.dtype
            and b.device == first.device
        )
        if not same:
            raise ValueError(
                f"batches[{k}] (Dx={b.x_dim}, Dy={b.y_dim}, {b.context_x.dtype} on {b.device}) does not match batches[0] "
                f"(Dx={first.x_dim}, Dy={first.y_dim}, {first.context_x.dtype} on {first.device})"
            )
        if (b.target_y is None) != (first.target_y is None):
            raise ValueError("concat_batches: either every batch or none has target_y")
        if (b.task_index is None) != (first.task_index is None) or b.task_set_size != first.task_set_size:
            raise ValueError("concat_batches: either every batch or none has a task_index, from one task set")
    nc = max(b.num_points("context") for b in batches)
    nt = max(b.num_points("target") for b in batches)

    def join(field: str, n: int, value: Any = 0) -> Optional[torch.Tensor]:
        parts = [_pad_points(getattr(b, field), n, value) for b in batches]
        return None if parts[0] is None else torch.cat(parts, 0)

    return TaskBatch(
        context_x=join("context_x", nc),
        context_y=join("context_y", nc),
        target_x=join("target_x", nt),
        target_y=join("target_y", nt),
        context_mask=join("context_mask", nc, False),
        target_mask=join("target_mask", nt, False),
        info=_info(batches),
        allow_empty_context=any(b.allow_empty_context for b in batches),
        task_index=None if first.task_index is None else torch.cat([b.task_index for b in batches]),
        task_set_size=first.task_set_size,
    )
