"""The NaN guard of :func:`pyro_meta.fit`: finite checks, and the last good training state kept in memory.

``fit`` never lets a non-finite value reach the model, the optimizer or a checkpoint:

* the loss is checked before ``backward``;
* every gradient is checked after ``backward`` and before the optimizer step (a NaN gradient with a
  finite loss, e.g. ``0 * sqrt(negative)``, is caught there, naming the parameter);
* the parameters and the optimizer state are checked after the step; when the step itself made
  them non-finite (finite gradients, an overflowing update), :class:`LastGood` puts back the
  parameters and optimizer state of before the step.

The checks are one fused norm over the tensors (a NaN or inf anywhere makes a norm non-finite; a norm
that overflows falls back to an elementwise check), so they cost about one read of the tensors; the
copy of the last good state is one fused copy. Measured on the demo's NeuralProcess (86k parameters,
16 tasks per step, one thread): about 2 ms of a 30-45 ms step (5-8%; timed on a loaded 2-core machine, noisy).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

import torch

__all__ = ["LastGood", "first_nonfinite", "nonfinite_state", "optimizer_tensors"]


def _norms_finite(tensors: List[torch.Tensor]) -> bool:
    """True when the L2 norm of every tensor is finite: one fused reduction (a NaN/inf makes its norm non-finite)."""
    foreach_norm = getattr(torch, "_foreach_norm", None)
    if foreach_norm is not None:
        try:
            return bool(torch.isfinite(torch.stack(foreach_norm(tensors))).all())
        except (RuntimeError, TypeError):  # pragma: no cover - mixed devices/dtypes on an older torch
            pass
    return all(bool(torch.isfinite(torch.linalg.vector_norm(t))) for t in tensors)


def first_nonfinite(named: Iterable[Tuple[str, Optional[torch.Tensor]]]) -> Optional[str]:
    """The name of the first floating tensor holding NaN or inf (``None`` entries skipped), or ``None``.

    The fast path is one fused norm over all tensors; only when some norm is not finite (a NaN/inf,
    or a norm that overflows from huge finite values) are the tensors checked one by one.
    """
    items = [(n, t) for n, t in named if t is not None and t.is_floating_point() and t.numel()]
    if not items:
        return None
    with torch.no_grad():
        if _norms_finite([t for _, t in items]):
            return None
        for name, t in items:
            if not bool(torch.isfinite(t).all()):
                return name
    return None


def nonfinite_state(optimizer: torch.optim.Optimizer, names: Dict[int, str]) -> Optional[str]:
    """The first parameter or optimizer state tensor (described) holding NaN or inf, or ``None``."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    tensors = params + [
        v
        for slots in optimizer.state.values()
        for v in slots.values()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel()
    ]
    with torch.no_grad():
        if not tensors or _norms_finite(tensors):
            return None
    return first_nonfinite([(names.get(id(p), "a parameter"), p) for p in params] + optimizer_tensors(optimizer, names))


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: Dict[int, str]) -> List[Tuple[str, torch.Tensor]]:
    """``(description, tensor)`` of every floating tensor in the optimizer's per-parameter state."""
    out = []
    for p, slots in optimizer.state.items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                out.append((f"optimizer state {key!r} of {names.get(id(p), 'a parameter')}", value))
    return out


class LastGood:
    """The parameters and optimizer state of the last finite step, to put back after a bad step.

    :meth:`save` copies them into buffers allocated once (one fused copy of the parameters and of the
    optimizer state per step); :meth:`restore` copies them back, and drops the optimizer state of
    parameters that had none at :meth:`save` (their first step).
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self._sources: List[torch.Tensor] = []
        self._buffers: List[torch.Tensor] = []
        self._ids: Tuple[int, ...] = ()
        #: per parameter: ``(param, None)`` without optimizer state, else ``(param, {key: buffer index or value})``
        self._layout: List[Tuple[torch.Tensor, Optional[Dict[str, object]]]] = []

    @torch.no_grad()
    def save(self) -> None:
        layout, sources = [], []
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                sources.append(p)
                slots = self.optimizer.state.get(p)
                if not slots:
                    layout.append((p, None))
                    continue
                entry: Dict[str, object] = {}
                for key, value in slots.items():
                    if isinstance(value, torch.Tensor):
                        entry[key] = _Slot(len(sources))
                        sources.append(value)
                    else:
                        entry[key] = value
                layout.append((p, entry))
        ids = tuple(map(id, sources))
        if ids == self._ids and all(a.shape == b.shape for a, b in zip(sources, self._buffers)):
            _copy(self._buffers, sources)
        else:
            self._buffers = [t.detach().clone() for t in sources]
        self._sources, self._layout, self._ids = sources, layout, ids

    @torch.no_grad()
    def restore(self) -> None:
        params = dict(zip(map(id, self._sources), self._buffers))
        kept = {id(p): entry for p, entry in self._layout}
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if id(p) in params:
                    p.copy_(params[id(p)])
                if kept.get(id(p)) is None:
                    self.optimizer.state.pop(p, None)  # it had no state before the bad step
        for p, entry in self._layout:
            if entry is None:
                continue
            slots = self.optimizer.state[p]
            for key in [k for k in slots if k not in entry]:
                del slots[key]
            for key, value in entry.items():
                if isinstance(value, _Slot):
                    saved = self._buffers[value.index]
                    current = slots.get(key)
                    if (
                        isinstance(current, torch.Tensor)
                        and current.shape == saved.shape
                        and current.dtype == saved.dtype
                    ):
                        current.copy_(saved)
                    else:
                        slots[key] = saved.clone()
                else:
                    slots[key] = value


class _Slot:
    """A tensor entry of the optimizer state: its index among the saved buffers."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


def _copy(dst: List[torch.Tensor], src: List[torch.Tensor]) -> None:
    if hasattr(torch, "_foreach_copy_"):
        torch._foreach_copy_(dst, src)  # one fused call
    else:  # pragma: no cover - older torch
        for d, t in zip(dst, src):
            d.copy_(t)
