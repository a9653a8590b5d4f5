"""Memory budget: computations over many tasks and draws run in chunks sized to a byte budget.

The posterior predictive, importance sampling, guide and prior draws, ``evaluate``'s scores and the
ArviZ export run a model for ``N`` draws of ``T`` tasks at once; a network's activations are then
``[N, T, points, hidden]`` (500 draws of 10,000 tasks of the demo's NeuralProcess: 12.8 GB for one
layer). pyro_meta splits such a computation into chunks of tasks (and, when one task's draws do not
fit, of draws) so that one chunk allocates at most the *memory budget*:

* ``pyro_meta.set_memory_budget(nbytes)`` sets it for the process (``None``: the default,
  :data:`DEFAULT_MEMORY_BUDGET` = 256 MiB); ``with pyro_meta.memory_budget(nbytes): ...`` for a block
  (this thread / context only); :func:`get_memory_budget` reads it.
* The budget bounds the bytes one chunk *allocates* (every tensor an operation creates, counted
  without subtracting frees, so the chunk's actual peak is lower, typically a third of it). It does
  not count the results, which are kept whole: e.g. ``predict()``'s samples ``[C, S, T, Nt, Dy]``.
* The cost of a chunk is measured, not guessed: the computation is run once for 1 and 2 draws of a
  few tasks under a ``TorchDispatchMode`` that adds up the bytes of every new tensor, and the cost
  per task and per draw-task is extrapolated linearly (cached per model and input shapes). These
  probe runs leave the random number generators as they were.

Results: when the whole computation fits the budget it runs as one chunk, exactly as without
chunking. Otherwise the deterministic parts (log densities, predictive means, importance weights of
given proposals) are the same up to float rounding, while random draws (predictive samples,
importance proposals and resampling, guide draws) come from the same distributions but a different
random stream: the same seed and the same budget give the same numbers, a different budget may not.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import weakref
from typing import Any, Callable, Dict, Hashable, Iterator, List, Optional, Tuple

import pyro.util
import torch

from .validation import check_int

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "ChunkPlan",
    "get_memory_budget",
    "measure_allocations",
    "memory_budget",
    "plan_chunks",
    "set_memory_budget",
]

#: the default budget of one chunk's allocations: 256 MiB. Measured on the demo's NeuralProcess (500 draws
#: of 20 tasks, one thread): chunks of 64-256 MiB ran the predictive 1.5-2x faster than one 10 GiB chunk
#: (cache-sized matrices) and 16 MiB / 4 MiB chunks 1.5x / 3x slower (per-chunk overhead)
DEFAULT_MEMORY_BUDGET = 1 << 28

_GLOBAL = {"budget": DEFAULT_MEMORY_BUDGET}
_LOCAL: contextvars.ContextVar[Optional[int]] = contextvars.ContextVar("pyro_meta_memory_budget", default=None)


def _check_budget(nbytes: Any) -> int:
    return check_int("nbytes", nbytes, minimum=1)


def set_memory_budget(nbytes: Optional[int]) -> None:
    """Set the process-wide memory budget of one chunk, in bytes (``None``: back to the 256 MiB default)."""
    _GLOBAL["budget"] = DEFAULT_MEMORY_BUDGET if nbytes is None else _check_budget(nbytes)


def get_memory_budget() -> int:
    """The budget in force: the innermost :func:`memory_budget` block's, else the process-wide one."""
    local = _LOCAL.get()
    return _GLOBAL["budget"] if local is None else local


@contextlib.contextmanager
def memory_budget(nbytes: int) -> Iterator[None]:
    """Use ``nbytes`` as the memory budget inside the block (this thread / context only)."""
    token = _LOCAL.set(_check_budget(nbytes))
    try:
        yield
    finally:
        _LOCAL.reset(token)


# --------------------------------------------------------------------------- measuring
def measure_allocations(fn: Callable[[], Any]) -> Tuple[Any, int]:
    """``(fn(), bytes)``: the bytes of every tensor storage the torch operations in ``fn`` create.

    Views and in-place results share their input's storage and are not counted; freed tensors are not
    subtracted (an upper bound of the peak). Counts only tensors made through torch operations.
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class _Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {
                t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)
            }
            seen = set()
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    ptr = storage.data_ptr()
                    if ptr not in inputs and ptr not in seen:
                        seen.add(ptr)
                        self.bytes += storage.nbytes()
            return out

    with _Count() as counter:
        result = fn()
    return result, counter.bytes


# --------------------------------------------------------------------------- planning
class ChunkPlan:
    """Chunks of draws and tasks: ``draws`` draws of ``tasks`` tasks per chunk (``N``/``T`` when it all fits)."""

    def __init__(self, num_draws: int, num_tasks: int, draws: int, tasks: int, cost: float) -> None:
        self.num_draws, self.num_tasks = num_draws, num_tasks
        self.draws, self.tasks = max(1, min(draws, num_draws)), max(1, min(tasks, num_tasks))
        #: the estimated bytes allocated by one chunk
        self.cost = cost

    @property
    def single(self) -> bool:
        return self.draws >= self.num_draws and self.tasks >= self.num_tasks

    def task_slices(self) -> List[slice]:
        return [slice(i, min(i + self.tasks, self.num_tasks)) for i in range(0, self.num_tasks, self.tasks)]

    def draw_slices(self) -> List[slice]:
        return [slice(i, min(i + self.draws, self.num_draws)) for i in range(0, self.num_draws, self.draws)]

    def __iter__(self) -> Iterator[Tuple[slice, slice]]:
        """``(draws, tasks)`` slices, tasks outer."""
        for t in self.task_slices():
            for d in self.draw_slices():
                yield d, t

    def __repr__(self) -> str:
        return (
            f"ChunkPlan({self.draws} of {self.num_draws} draws x {self.tasks} of {self.num_tasks} tasks, "
            f"~{self.cost / 2**20:.0f} MiB per chunk)"
        )


#: ``model -> {key: (bytes per task, bytes per draw and task)}``
_COSTS: "weakref.WeakKeyDictionary[Any, Dict[Hashable, Tuple[float, float]]]" = weakref.WeakKeyDictionary()

#: tasks of the probe runs
PROBE_TASKS = 4


def _probe(run: Callable[[int, int], Any], num_tasks: int) -> Tuple[float, float]:
    """Bytes per task and per draw-task, from ``run(1, t)`` and ``run(2, t)`` with the RNG state restored."""
    t = min(num_tasks, PROBE_TASKS)
    state = pyro.util.get_rng_state()
    try:
        one = measure_allocations(lambda: run(1, t))[1]
        two = measure_allocations(lambda: run(2, t))[1]
    finally:
        pyro.util.set_rng_state(state)
    per_draw = max(two - one, 0) / t
    per_task = max(one - per_draw * t, 0) / t
    return per_task, per_draw


def plan_chunks(
    run: Callable[[int, int], Any],
    num_draws: int,
    num_tasks: int,
    key: Optional[Tuple[Any, Hashable]] = None,
    split_tasks: bool = True,
    budget: Optional[int] = None,
    extra_per_draw_task: float = 0.0,
    extra_per_task: float = 0.0,
) -> ChunkPlan:
    """How to split ``N = num_draws`` draws of ``T = num_tasks`` tasks so that a chunk fits the budget.

    ``run(n, t)`` performs the computation for ``n`` draws of the first ``t`` tasks (it is called twice
    on at most :data:`PROBE_TASKS` tasks, under :func:`measure_allocations`); ``key = (model, shapes)``
    caches its cost per model. The estimated cost of ``n`` draws of ``t`` tasks is
    ``t * (per_task + extra_per_task + n * (per_draw_task + extra_per_draw_task))`` bytes (the extras: what
    the caller keeps per task or draw beyond one run, e.g. proposals stored across passes). Tasks are split first (all
    draws of as many tasks as fit); when one task's draws do not fit, or ``split_tasks`` is False (a
    guide that cannot take a subset of the tasks), draws are split too. If the probe itself fails the
    computation runs as one chunk (and raises its own error there).
    """
    budget = get_memory_budget() if budget is None else budget
    if num_draws * num_tasks <= 2 * min(num_tasks, PROBE_TASKS):  # no larger than the probes themselves
        return ChunkPlan(num_draws, num_tasks, num_draws, num_tasks, 0.0)
    costs = None
    if key is not None:
        owner, shapes = key
        try:
            costs = _COSTS.setdefault(owner, {})
        except TypeError:  # not weak-referenceable: no cache
            costs = None
        cached = costs.get(shapes) if costs is not None else None
    else:
        cached = None
    if cached is None:
        try:
            cached = _probe(run, num_tasks)
        except Exception:  # noqa: BLE001 - the full run raises the model's own error
            return ChunkPlan(num_draws, num_tasks, num_draws, num_tasks, math.nan)
        if costs is not None:
            costs[shapes] = cached
    per_task, per_draw = cached
    per_task += extra_per_task
    per_draw += extra_per_draw_task

    def cost(n: int, t: int) -> float:
        return t * (per_task + n * per_draw)

    if cost(num_draws, num_tasks) <= budget:
        return ChunkPlan(num_draws, num_tasks, num_draws, num_tasks, cost(num_draws, num_tasks))
    if split_tasks:
        tasks = int(budget // max(cost(num_draws, 1), 1.0))
        if tasks >= 1:
            return ChunkPlan(num_draws, num_tasks, num_draws, tasks, cost(num_draws, tasks))
        tasks = 1
    else:
        tasks = num_tasks
    draws = int((budget - tasks * per_task) // max(tasks * per_draw, 1.0))
    draws = max(1, min(draws, num_draws))
    return ChunkPlan(num_draws, num_tasks, draws, tasks, cost(draws, tasks))
