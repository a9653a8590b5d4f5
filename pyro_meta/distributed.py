"""Data-parallel meta-training over a ``torch.distributed`` process group (launched by ``torchrun``).

:func:`pyro_meta.fit` trains data-parallel when a process group is initialised (or with
``distributed=True``); nothing else changes in the call::

    torchrun --nproc_per_node 2 train.py        # train.py: init_distributed(); fit(model, tasks, ...)

What each of the ``R`` ranks does (rank ``r``):

* **tasks**: it draws its own ``tasks_per_batch`` tasks per step. From a task distribution, with a
  generator seeded by ``rank_seed(seed, r)`` (rank 0: ``seed`` itself, so one process is the
  plain ``fit``); from a fixed ``TaskBatch``, all ranks draw one shared permutation (seeded by
  ``seed``) of ``R * tasks_per_batch`` distinct tasks, sorted, and rank ``r`` takes the ``r``-th
  slice (so ``tasks_per_batch * R`` may not exceed the set). Pyro/torch are seeded by
  ``rank_seed(seed, r)`` too (independent Monte Carlo draws in the loss).
* **gradients**: after ``loss.backward()`` every parameter's gradient is averaged over the ranks
  (one ``all_reduce`` per device and dtype of a flat buffer); the recorded loss is the mean over
  the ranks. Every rank then takes the same optimizer step from the same parameters (broadcast
  from rank 0 at the start), so the parameters stay identical: the result is that of one process
  whose batch is the ranks' batches together (:class:`RankStreams` draws exactly that batch in
  one process), up to floating-point reduction order and the loss's own Monte Carlo noise.
* **checkpoints**: every rank's RNG states are gathered and only rank 0 writes the file; on
  resume every rank reads it (a path every rank can read) and takes back its own states. A run
  resumes with the same number of processes only.

Why an explicit all-reduce and not ``torch.nn.parallel.DistributedDataParallel``: DDP reduces
gradients from autograd hooks that fire when ``backward()`` accumulates into ``.grad`` after a
call of the wrapped module's ``forward``. ``fit`` trains ``model.loss(batch)``, arbitrary Pyro code,
and with ``guide_objective="iwae"|"rws"|"sleep"`` sets the guide's gradients from
``torch.autograd.grad`` (:mod:`pyro_meta.inference.objectives`), which DDP never sees: measured on a
NeuralProcess with two gloo ranks, DDP left those gradients un-reduced (each rank stepped on its
own gradient, 6.2 away from the average) where the explicit all-reduce is exact. The all-reduce is
the same collective DDP runs (sum, then divide by ``R``), without DDP's overlap of communication
and backward, which matters little for meta-learners of this size.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pyro
import torch
import torch.distributed as dist

from .data.batch import TaskBatch
from .data.concat import concat_batches

__all__ = ["DataParallel", "RankStreams", "gather_to_main", "init_distributed", "rank_seed", "world"]


def world() -> Tuple[int, int]:
    """``(rank, world_size)`` of the default process group; ``(0, 1)`` when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s streams: ``seed`` for rank 0, else ``SeedSequence((seed, rank))``'s first word.

    A 32-bit value (``pyro.set_rng_seed`` seeds numpy too).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1)[0])


def init_distributed(backend: Optional[str] = None) -> torch.device:
    """Join the process group ``torchrun`` describes (its ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` ...) if not yet.

    ``backend``: ``"nccl"`` when CUDA is available, else ``"gloo"``. With CUDA, this rank's GPU is
    ``cuda:LOCAL_RANK`` (made the current device). Returns the device this rank should use
    (``cuda:LOCAL_RANK`` or ``cpu``); pass it as ``fit(..., device=)`` / ``infer(..., device=)``.
    """
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise RuntimeError(
                f"init_distributed: {missing} not set; launch with torchrun (e.g. torchrun --nproc_per_node 2 "
                "script.py) or call torch.distributed.init_process_group yourself"
            )
        if cuda and (backend or "nccl") == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
    if cuda and dist.get_backend() == "nccl":
        return torch.device("cuda", local)
    return torch.device("cpu")


class RankStreams:
    """The task batches ``world_size`` ranks of ``fit(tasks, seed=seed)`` draw together, drawn in one process.

    A task distribution: ``sample(num_tasks=R * B, ...)`` draws ``B`` tasks from each rank's
    generator (seeded by :func:`rank_seed`) and joins them in rank order (:func:`concat_batches`),
    so ``fit(model, RankStreams(tasks, R, seed), tasks_per_batch=R * B, seed=seed)`` in one
    process sees at every step the batch that ``R`` data-parallel ranks see together (the
    ``generator`` ``fit`` passes is not used). Attributes of ``tasks`` are forwarded.
    """

    def __init__(self, tasks: Any, world_size: int, seed: int) -> None:
        if not callable(getattr(tasks, "sample", None)):
            raise TypeError(f"tasks must be a task distribution with .sample(...), got {type(tasks).__name__}")
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive int, got {world_size!r}")
        self.tasks, self.world_size = tasks, world_size
        self.generators = [torch.Generator().manual_seed(rank_seed(seed, r)) for r in range(world_size)]

    def __getattr__(self, name: str) -> Any:
        if name == "tasks":
            raise AttributeError(name)
        return getattr(self.tasks, name)

    def sample(self, num_tasks: int, num_context: Any, num_target: Any, generator: Any = None) -> TaskBatch:
        if num_tasks % self.world_size:
            raise ValueError(f"num_tasks={num_tasks} must be a multiple of world_size={self.world_size}")
        per = num_tasks // self.world_size
        return concat_batches([self.tasks.sample(per, num_context, num_target, generator=g) for g in self.generators])


class _RankSource:
    """One rank's share of ``fit``'s task source (see the module docstring)."""

    def __init__(self, source: Any, rank: int, size: int, seed: int) -> None:
        self.source, self.rank, self.size = source, rank, size
        self.fixed = isinstance(source.tasks, TaskBatch)
        B = source.tasks_per_batch
        if self.fixed and B * size > source.tasks.num_tasks:
            raise ValueError(
                f"tasks_per_batch={B} per rank x {size} ranks exceeds the {source.tasks.num_tasks} tasks of the TaskBatch"
            )
        # a fixed set: one permutation shared by every rank (fit's generator); a distribution: the rank's own stream
        if not self.fixed:
            source.generator = torch.Generator().manual_seed(rank_seed(seed, rank))
        self.generator = source.generator

    @property
    def tasks(self) -> Any:
        return self.source.tasks

    @property
    def subsamples(self) -> bool:
        return self.source.subsamples or (self.fixed and self.size > 1)

    def next(self) -> TaskBatch:
        if not self.fixed:
            return self.source.next()
        B, T = self.source.tasks_per_batch, self.source.tasks.num_tasks
        idx = torch.randperm(T, generator=self.generator)[: B * self.size].sort().values
        return self.source.tasks.select(idx[self.rank * B : (self.rank + 1) * B])


class DataParallel:
    """The data-parallel side of :func:`pyro_meta.fit` on the default process group (one instance per run).

    Create it with :meth:`resolve`; ``fit`` calls the rest. ``rank``/``size`` are this process's rank
    and the number of processes.
    """

    def __init__(self) -> None:
        self.rank, self.size = world()
        self._params: Optional[List[torch.nn.Parameter]] = None

    @classmethod
    def resolve(
        cls, distributed: Optional[bool], seed: Optional[int]
    ) -> Tuple[Optional["DataParallel"], Optional[int]]:
        """``(DataParallel or None, seed)`` for ``fit(distributed=, seed=)``.

        ``None``: data-parallel when a process group is initialised; ``True``: required (``ValueError``
        without a process group); ``False``: one process (each rank trains on its own). Data-parallel
        ranks agree on rank 0's seed (drawn at random when ``seed`` is None) and seed Pyro/torch with
        :func:`rank_seed`.
        """
        if distributed not in (None, True, False):
            raise TypeError(f"distributed must be None, True or False, got {distributed!r}")
        initialised = dist.is_available() and dist.is_initialized()
        if distributed is True and not initialised:
            raise ValueError(
                "fit(distributed=True) needs an initialised torch.distributed process group: launch with torchrun and "
                "call pyro_meta.distributed.init_distributed() (or torch.distributed.init_process_group) first"
            )
        if not initialised or distributed is False:
            return None, seed
        self = cls()
        box = [seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())]
        dist.broadcast_object_list(box, src=0)
        seed = int(box[0])
        pyro.set_rng_seed(rank_seed(seed, self.rank))
        return self, seed

    @property
    def is_main(self) -> bool:
        """Rank 0: the rank that writes checkpoints and reports."""
        return self.rank == 0

    def task_source(self, source: Any, seed: int) -> _RankSource:
        return _RankSource(source, self.rank, self.size, seed)

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (the common start)."""
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)

    def mean_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss with the value of its mean over the ranks (the combined batch's loss), the local gradient."""
        total = loss.detach().reshape(1).clone()
        dist.all_reduce(total)
        return loss + (total[0] / self.size - loss.detach())

    def all_reduce_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Average every optimised parameter's ``.grad`` over the ranks.

        A parameter without a gradient on some ranks counts as zero there; one without a gradient on
        every rank keeps ``grad=None`` (as in one process). The parameters must be the same on every
        rank, in the same order (one model class): ``ValueError`` when the set changed after the start.
        """
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if self._params is None:
            self._params = params
        elif len(params) != len(self._params) or any(a is not b for a, b in zip(params, self._params)):
            raise ValueError(
                "distributed fit: parameters were created after training started (a lazily created "
                "parameter); create them before training, e.g. by running the model once"
            )
        buckets: Dict[Tuple[torch.device, torch.dtype], List[torch.nn.Parameter]] = defaultdict(list)
        for p in params:
            if p.grad is not None and p.grad.is_sparse:
                raise ValueError("distributed fit: sparse gradients are not supported")
            buckets[(p.device, p.dtype)].append(p)
        for (device, dtype), ps in buckets.items():
            flags = torch.tensor([float(p.grad is not None) for p in ps], dtype=dtype, device=device)
            flat = torch.cat(
                [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in ps] + [flags]
            )
            dist.all_reduce(flat)
            flat /= self.size
            offset, seen = 0, flat[-len(ps) :]
            for p, any_grad in zip(ps, seen.tolist()):
                n = p.numel()
                p.grad = flat[offset : offset + n].view_as(p).clone() if any_grad > 0 else None
                offset += n

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on some rank (e.g. a callback asking to stop)."""
        t = torch.tensor([float(bool(flag))])
        dist.all_reduce(t, group=_cpu_group())
        return bool(t.item() > 0)

    def rank_states(self, source: _RankSource) -> Dict[str, Any]:
        """Every rank's RNG states (a collective: every rank calls it), for rank 0's checkpoint."""
        mine = {"generator": source.generator.get_state(), "torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            mine["cuda_rng"] = torch.cuda.get_rng_state()
        states: List[Any] = [None] * self.size
        dist.all_gather_object(states, mine, group=_cpu_group())
        return {"world_size": self.size, "rank_states": states}

    def restore(self, state: Dict[str, Any], source: _RankSource) -> None:
        """Take back this rank's RNG states from a checkpoint written by a run of the same size."""
        size = state.get("world_size")
        if size != self.size or "rank_states" not in state:
            what = f"a run of {size} processes" if size else "a single-process run"
            raise ValueError(
                f"resume: the checkpoint was written by {what}; resume it with that many processes "
                f"(this run has {self.size})"
            )
        mine = state["rank_states"][self.rank]
        source.generator.set_state(mine["generator"])
        torch.set_rng_state(mine["torch_rng"])
        if "cuda_rng" in mine and torch.cuda.is_available():
            torch.cuda.set_rng_state(mine["cuda_rng"])

    def barrier(self) -> None:
        dist.barrier(group=_cpu_group())


_GLOO: Dict[Any, Any] = {}


def _cpu_group() -> Any:
    """A gloo group over every rank for CPU-side collectives (the default group when it is gloo already)."""
    if dist.get_backend() == "gloo":
        return None
    key = id(dist.group.WORLD)
    if key not in _GLOO:
        _GLOO[key] = dist.new_group(backend="gloo")
    return _GLOO[key]


def gather_to_main(obj: Any) -> Optional[List[Any]]:
    """Every rank's ``obj`` (picklable, CPU) in rank order on rank 0; ``None`` on the others."""
    rank, size = world()
    if size == 1:
        return [obj]
    out: Optional[List[Any]] = [None] * size if rank == 0 else None
    dist.gather_object(obj, out, dst=0, group=_cpu_group())
    return out
