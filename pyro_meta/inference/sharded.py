"""``infer_sharded``: inference over many tasks split across the processes of a ``torch.distributed`` group.

The tasks are cut into chunks of ``chunk_size`` consecutive tasks; chunk ``k`` (tasks
``[k * chunk_size, (k + 1) * chunk_size)``) is inferred by rank ``k % world_size`` with
``infer(..., seed=chunk_seed(seed, first_task))``: a chunk's draws depend on the seed, its tasks and
the method's options, never on how many processes run (one process running the chunks one after the
other gives the same draws). Each chunk is one ``infer`` call (NUTS: one joint chain over the chunk's
tasks, as ``chunk_size`` does inside ``infer``), so ``chunk_size`` is part of the result: keep it fixed
when the number of processes changes. Rank 0 gathers the chunks into one :class:`Posterior`
(:func:`~pyro_meta.inference.merge.merge_posteriors`); with ``out_dir`` every chunk is also written as a
NetCDF InferenceData file, and :func:`pyro_meta.arviz.merge_inference_data` joins them on the task dim.

Every rank must hold the same ``batch`` (the same seed, or the same file) and the same model.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from ..data.batch import TaskBatch
from ..distributed import gather_to_main, world
from ..model import MetaModel, check_batch, check_model, discover_sites
from ..validation import check_int
from .common import model_device
from .infer import infer
from .merge import merge_posteriors
from .posterior import Posterior

__all__ = ["chunk_seed", "infer_sharded", "shard_file_name", "task_chunks"]


def task_chunks(num_tasks: int, chunk_size: int) -> List[Tuple[int, int]]:
    """``[(first, stop), ...]``: consecutive chunks of ``chunk_size`` tasks (the last may be shorter)."""
    return [(i, min(i + chunk_size, num_tasks)) for i in range(0, num_tasks, chunk_size)]


def chunk_seed(seed: int, first_task: int) -> int:
    """The seed of the chunk starting at task ``first_task``: ``SeedSequence((seed, first_task))``'s first word."""
    return int(np.random.SeedSequence([int(seed), int(first_task)]).generate_state(1)[0])


def shard_file_name(first: int, stop: int) -> str:
    """``tasks_<first>-<stop>.nc``, zero-padded so that names sort in task order."""
    return f"tasks_{first:08d}-{stop:08d}.nc"


def _payload(post: Posterior) -> Dict[str, Any]:
    """What rank 0 needs of a chunk's posterior, on the CPU (the model, batch and fitted modules stay here)."""

    def cpu(v: Any) -> Any:
        return v.detach().cpu() if isinstance(v, torch.Tensor) else v

    return {
        "samples": {k: cpu(v) for k, v in post.samples.items()},
        "diagnostics": {k: cpu(v) for k, v in post.diagnostics.items() if not isinstance(v, torch.nn.Module)},
        "sample_stats": {k: cpu(v) for k, v in post.sample_stats.items()},
        "summary": dict(post.summary),
        "per_task": tuple(post.per_task),
        "seconds": post.seconds,
        "method": post.method,
        "draws_shape": post.draws_shape,
    }


def infer_sharded(
    model: MetaModel,
    batch: TaskBatch,
    method: str = "amortized",
    num_samples: int = 500,
    seed: int = 0,
    chunk_size: int = 8,
    device: Optional[Union[str, torch.device]] = None,
    out_dir: Optional[Union[str, os.PathLike]] = None,
    gather: bool = True,
    progress: Optional[bool] = None,
    **options: Any,
) -> Optional[Posterior]:
    """Infer the tasks of ``batch`` in seeded chunks spread over the ranks; one :class:`Posterior` on rank 0.

    Without a process group (or with one process) every chunk runs here, one after the other: the
    same draws as any number of processes.

    Parameters
    ----------
    model, batch, method, num_samples, device, progress, options
        As in :func:`~pyro_meta.infer` (every method, NUTS included; global latents are not supported:
        they couple the tasks).
    seed : int
        Chunk ``[first, stop)`` runs with ``seed=chunk_seed(seed, first)``.
    chunk_size : int
        Tasks per ``infer`` call (the unit of work and of seeding).
    out_dir : path, optional
        Write each chunk's ``to_arviz()`` there as ``shard_file_name(first, stop)`` (NetCDF).
    gather : bool
        Gather the chunks on rank 0 (default). ``False``: nothing is gathered (with ``out_dir``: the
        files are the result; rank 0's memory holds no other rank's draws) and every rank returns None.

    Returns
    -------
    Posterior or None
        On rank 0 (``gather=True``): samples ``{site: [C, S, T, *event]}`` over every task of ``batch``
        in order, ``diagnostics["chunks"]`` the chunks, ``seconds`` the wall time; None on other ranks.
    """
    check_model(model)
    check_batch(batch)
    chunk_size = check_int("chunk_size", chunk_size)
    seed = check_int("seed", seed, minimum=0)
    if not isinstance(gather, bool):
        raise TypeError(f"gather must be a bool, got {type(gather).__name__}")
    if options.get("globals", "point") != "point":
        raise ValueError("infer_sharded: globals='sample' couples every task; it cannot be sharded")
    options.pop("globals", None)
    sites, global_sites = discover_sites(model, batch)
    if global_sites:
        raise ValueError(
            f"infer_sharded: {type(model).__name__} has global latent sites {sorted(global_sites)}; each chunk would "
            "hold them at its own point estimate. Infer such a model with pyro_meta.infer on one process"
        )
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
    rank, size = world()
    chunks = task_chunks(batch.num_tasks, chunk_size)
    t0 = time.perf_counter()
    mine = []
    for k in range(rank, len(chunks), size):
        first, stop = chunks[k]
        post = infer(
            model,
            batch.select(torch.arange(first, stop)),
            method=method,
            num_samples=num_samples,
            seed=chunk_seed(seed, first),
            device=device,
            progress=progress,
            **options,
        )
        if out_dir is not None:
            post.to_arviz().to_netcdf(os.path.join(out_dir, shard_file_name(first, stop)))
        mine.append((k, _payload(post) if gather else None))
    if not gather:
        return None
    gathered = gather_to_main(mine)
    if gathered is None:
        return None
    by_chunk = dict(item for part in gathered for item in part)
    posts = []
    for k, (first, stop) in enumerate(chunks):
        p = by_chunk[k]
        posts.append(
            Posterior(
                model=model,
                batch=batch.select(torch.arange(first, stop)),
                method=p["method"],
                samples=p["samples"],
                sites=sites,
                diagnostics=p["diagnostics"],
                sample_stats=p["sample_stats"],
                seconds=p["seconds"],
                per_task=p["per_task"],
                summary=p["summary"],
                draws_shape=p["draws_shape"],
            )
        )
    merged = merge_posteriors(posts, batch=batch)
    if device is not None:  # where infer put each chunk (the model's device)
        target = model_device(model, device, "infer_sharded")
        merged = dataclasses.replace(
            merged, batch=batch.to(target), samples={k: v.to(target) for k, v in merged.samples.items()}
        )
    merged.seconds = time.perf_counter() - t0
    merged.diagnostics["world_size"] = size
    return merged
