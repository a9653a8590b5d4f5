"""``run_workers``: run ``fn(rank, world_size, *args)`` in ``world_size`` gloo processes on this machine."""

import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, fn, world_size: int, init_file: str, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
    except BaseException:
        dist.destroy_process_group()
        raise
    # every rank done before the group goes, then leave without the interpreter's teardown: there a still-joinable
    # C++ worker thread (gloo) can abort the process with SIGABRT ("terminate called without an active
    # exception"), seen about once in a CI run; workers report through files, not return values
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_workers(fn, world_size: int, *args) -> None:
    """Spawn the processes (a file rendezvous: no port to clash), wait, and re-raise a worker's failure."""
    handle, init_file = tempfile.mkstemp(prefix="pyro_meta_rdzv_")
    os.close(handle)
    os.remove(init_file)  # the file store creates it
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        mp.spawn(_entry, args=(fn, world_size, init_file, args), nprocs=world_size, join=True)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if os.path.exists(init_file):
            os.remove(init_file)
