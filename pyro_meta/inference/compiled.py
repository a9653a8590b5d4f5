"""A potential and its gradient traced into one flat graph (``make_fx``) and compiled (``torch.compile``), cached.

``jit_compile="inductor"`` (NUTS/HMC) and ``compile=True`` (``batched_hmc``) go through
:func:`compile_value_and_grad`:

1. ``torch.fx.experimental.proxy_tensor.make_fx`` traces ``(U, dU/du) = value_and_grad(u, inputs)``
   -- the whole Pyro model run, the log densities, and ``torch.autograd.grad`` -- into one graph
   of ATen operations, with Pyro's validation off and the network frozen (its weights become
   constants of the graph; the batch's tensors and the fixed globals are graph *inputs*);
2. ``torch.compile(graph, dynamic=False, fullgraph=True)`` (TorchInductor) compiles it to fused
   C++/OpenMP (CPU) or Triton (CUDA) kernels;
3. the first call is checked against the eager ``value_and_grad`` at the same point (relative
   error below 1e-3), and the compiled function is kept in a process-wide cache.

Compiling Pyro's potential with ``torch.compile`` directly was measured 4x *slower* than
``jit_compile=True`` (graph breaks on Pyro's Python); tracing first removes every Python
operation, so nothing of Pyro's bookkeeping is left per call.

**Cache key**: ``(kind, id(owner), owner.training, [(id, version) of every parameter and buffer],
key, [(shape, dtype, device) of every input])`` -- ``owner`` is the model (held by weak reference:
entries of a collected model are dropped), ``kind`` and ``key`` name the potential (joint or
per-task, the sites, the chains). So a later ``infer`` call with the same model, unchanged weights
and a batch of the same shapes (new tasks included: the batch's tensors are inputs) reuses the
compiled graph; training the model further (an in-place update bumps the parameters' versions)
or other shapes recompile. Every reuse is checked again against the eager gradient at the new
start point, and recompiled on a mismatch (anything the trace baked in that the key cannot see, such
as a Python-side setting of the model, changed). A model whose Python branches on a tensor's value
cannot be traced (``make_fx`` refuses: :class:`CompileError`, and the caller falls back). Eight
entries at most (least recently used dropped).

**Cost**: tracing takes 2-5 s and compiling 5-10 s for the models of ``benchmarks/mcmc_speed.py``
once TorchInductor's on-disk cache is warm; the very first compile in a fresh environment took
about 60 s on a loaded 2-core CPU (TorchInductor builds its C++ prelude). Failures (a model that
cannot be traced, no C++ compiler) raise :class:`CompileError`; callers fall back with a warning.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
import weakref
from collections import OrderedDict
from typing import Any, Callable, Hashable, List, Optional, Sequence, Tuple

import pyro
import torch

__all__ = ["CompileError", "CompiledGradient", "compile_value_and_grad", "clear_cache", "value_and_grad"]

#: most compiled potentials kept (least recently used dropped)
CACHE_SIZE = 8
#: the compiled gradient must match the eager one to this relative error (float32 sums reorder)
CHECK_RTOL = 1e-3

_CACHE: "OrderedDict[Tuple, CompiledGradient]" = OrderedDict()


class CompileError(RuntimeError):
    """Tracing or compiling a potential failed, or the compiled one disagrees with the eager one."""


@dataclasses.dataclass
class CompiledGradient:
    """A compiled ``(*inputs) -> (U, *dU/d inputs[:num_wrt])`` and how it was obtained."""

    fn: Callable[..., Tuple[torch.Tensor, ...]]
    num_wrt: int
    trace_seconds: float
    compile_seconds: float
    cache_hit: bool = False
    owner: Any = None  # weakref to the model

    def __call__(self, *inputs: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return self.fn(*(x.detach() for x in inputs))  # detached: no recompiles on requires_grad

    def info(self) -> dict:
        """``backend``, ``cache_hit``, ``trace_seconds``, ``compile_seconds`` (0 on a cache hit)."""
        return {
            "backend": "inductor",
            "cache_hit": self.cache_hit,
            "trace_seconds": 0.0 if self.cache_hit else self.trace_seconds,
            "compile_seconds": 0.0 if self.cache_hit else self.compile_seconds,
        }


def value_and_grad(fn: Callable[..., torch.Tensor], num_wrt: int) -> Callable[..., Tuple[torch.Tensor, ...]]:
    """``(*inputs) -> (U, *dU.sum()/d inputs[:num_wrt])`` in eager mode (also what is traced)."""

    def vg(*inputs: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        wrt = [x.detach().requires_grad_(True) for x in inputs[:num_wrt]]
        with torch.enable_grad():
            U = fn(*wrt, *inputs[num_wrt:])
            grads = torch.autograd.grad(U.sum(), wrt, allow_unused=True)
        return (U.detach(),) + tuple(torch.zeros_like(w) if g is None else g for w, g in zip(wrt, grads))

    return vg


def clear_cache() -> None:
    """Drop every cached compiled potential."""
    _CACHE.clear()


def _key(kind: str, owner: torch.nn.Module, key: Hashable, inputs: Sequence[torch.Tensor], num_wrt: int) -> Tuple:
    state = tuple((id(t), t._version) for t in list(owner.parameters()) + list(owner.buffers()))
    shapes = tuple((tuple(x.shape), x.dtype, str(x.device)) for x in inputs)
    return (kind, id(owner), owner.training, state, key, shapes, num_wrt)


def _agree(got: Sequence[torch.Tensor], ref: Sequence[torch.Tensor]) -> Optional[str]:
    """``None`` when the compiled outputs match the eager ones, else what differs."""
    for i, (a, b) in enumerate(zip(got, ref)):
        if a.shape != b.shape:
            return f"output {i}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
        finite = torch.isfinite(b)
        if not bool(torch.equal(finite, torch.isfinite(a))):
            return f"output {i}: non-finite entries differ"
        if bool(finite.any()):
            err = float((a - b)[finite].abs().max())
            scale = float(b[finite].abs().max()) + 1.0
            if err > CHECK_RTOL * scale:
                return f"output {i}: max abs error {err:.3g} (scale {scale:.3g})"
    return None


def compile_value_and_grad(
    fn: Callable[..., torch.Tensor],
    inputs: Sequence[torch.Tensor],
    num_wrt: int,
    owner: torch.nn.Module,
    kind: str,
    key: Hashable = (),
) -> CompiledGradient:
    """The compiled ``value_and_grad(fn, num_wrt)`` for inputs shaped like ``inputs`` (cached, checked).

    Parameters
    ----------
    fn : ``(*wrt, *rest) -> U`` (any shape; the gradient is of ``U.sum()``), a pure function of its
        inputs given the owner's (frozen) weights.
    inputs : example inputs: the differentiated ones first (``num_wrt`` of them), e.g. a start point.
        The compiled function is checked against the eager one here (they must be finite there).
    owner, kind, key : the cache key (see the module docstring).

    Raises
    ------
    CompileError
        When tracing or compiling fails or the check does not pass.
    """
    inputs = [x.detach() for x in inputs]
    k = _key(kind, owner, key, inputs, num_wrt)
    eager = value_and_grad(fn, num_wrt)
    with pyro.validation_enabled(False):
        ref = eager(*inputs)
    hit = _CACHE.get(k)
    if hit is not None and hit.owner() is owner:
        with pyro.validation_enabled(False):
            if _agree(hit(*inputs), ref) is None:
                _CACHE.move_to_end(k)
                return dataclasses.replace(hit, cache_hit=True)
    for stale in [key_ for key_, entry in _CACHE.items() if entry.owner() is None]:
        del _CACHE[stale]
    from torch.fx.experimental.proxy_tensor import make_fx

    t0 = time.perf_counter()
    try:
        with pyro.validation_enabled(False), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = make_fx(eager, tracing_mode="real")(*inputs)
    except Exception as err:  # tracing failures come in many types
        raise CompileError(f"make_fx could not trace the potential ({type(err).__name__}: {err})") from err
    t1 = time.perf_counter()
    try:
        from torch._inductor.compile_fx import compile_fx

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = compile_fx(graph, inputs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = compiled(*inputs)
    except Exception as err:
        raise CompileError(f"torch.compile failed on the traced potential ({type(err).__name__}: {err})") from err
    t2 = time.perf_counter()
    problem = _agree(out, ref)
    if problem is not None:
        raise CompileError(f"the compiled potential disagrees with the eager one ({problem})")
    entry = CompiledGradient(
        fn=compiled, num_wrt=num_wrt, trace_seconds=t1 - t0, compile_seconds=t2 - t1, owner=weakref.ref(owner)
    )
    _CACHE[k] = entry
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return entry


class _WithGrad(torch.autograd.Function):
    """``U`` whose backward multiplies the precomputed gradients (one compiled call gives both)."""

    @staticmethod
    def forward(ctx, compiled, num_rest, *args):  # args: wrt..., rest...
        out = compiled(*args)
        ctx.grads, ctx.num_rest = out[1:], num_rest
        return out[0]

    @staticmethod
    def backward(ctx, grad_output):
        grads: List[Optional[torch.Tensor]] = [
            grad_output.reshape(grad_output.shape + (1,) * (g.dim() - grad_output.dim())) * g for g in ctx.grads
        ]
        return (None, None, *grads, *([None] * ctx.num_rest))


def with_grad(compiled: CompiledGradient, wrt: Sequence[torch.Tensor], rest: Sequence[torch.Tensor]) -> torch.Tensor:
    """``U`` from one compiled call, differentiable in ``wrt`` (for callers that take ``autograd.grad`` of it).

    The backward pass scales the precomputed gradients of ``U.sum()``: exact for a scalar ``U``, and
    for ``U [C, T]`` whose entries each depend only on their own row ``wrt[0][c, t]`` (independent
    chain-tasks, as :class:`~pyro_meta.inference.potential.TaskPotential`).
    """
    return _WithGrad.apply(compiled, len(rest), *wrt, *rest)
