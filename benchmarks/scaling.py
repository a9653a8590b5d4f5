"""1 vs 2 processes on this machine: sharded NUTS over the demo's NeuralProcess and data-parallel meta-training.

Both arms of each part run in the same invocation, each in fresh processes started by
``torch.multiprocessing.spawn`` (gloo, CPU, one torch thread per process, a file rendezvous):

* **sharded NUTS**: the demo's NeuralProcess (``DemoConfig``'s architecture, meta-trained here for
  ``--train-steps`` steps) and ``--tasks`` held-out sinusoid tasks; ``infer_sharded(method="nuts",
  chunk_size=--chunk)`` with the demo's NUTS options (2 chains, tree depth 5, guide init, JIT) and
  ``--warmup``/``--samples`` iterations. The wall time is rank 0's, from a barrier after start-up (the
  model built and loaded) to the gathered Posterior; the draws of both arms must be equal.
* **data-parallel training**: MAML (1-40-40-1) on sinusoids, ``--ddp-steps`` steps with
  ``--per-rank`` tasks per rank; one process trains on ``RankStreams`` (the two ranks' batches
  together), two processes on their own halves. Reported: seconds per step and tasks per second,
  and the relative parameter difference of the two runs (expected below 1e-5).

The machine may be shared: the load average is printed before and after; the ratios are noisy. Two
processes can only be faster when two cores are free for them: the CPU seconds of each rank show how
the work split, whatever the load.

Usage: ``python benchmarks/scaling.py [--tasks 40] [--smoke] [--out FILE.md]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from typing import Any, Dict, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

MAML_HIDDEN = (40, 40)


def _spawn(fn, world_size: int, *args) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh gloo processes (one torch thread each)."""
    handle, init_file = tempfile.mkstemp(prefix="pyro_meta_scaling_")
    os.close(handle)
    os.remove(init_file)
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    try:
        mp.spawn(_entry, args=(fn, world_size, init_file, args), nprocs=world_size, join=True)
    finally:
        if os.path.exists(init_file):
            os.remove(init_file)


def _entry(rank: int, fn, world_size: int, init_file: str, args) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # NUTS mixing warnings of short runs; the script reports what it checks
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
        dist.barrier()  # every rank done before any tears down
    finally:
        dist.destroy_process_group()
    # the work is saved: leave without the interpreter's teardown, where a still-joinable C++ worker thread (JIT
    # NUTS, gloo) can end the process in std::terminate ("terminate called without an active exception", SIGABRT;
    # about 1 run in 8 on a fast 2-core machine)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ------------------------------------------------------------------------------------------ NUTS
def _neural_process(cfg):
    from pyro_meta.models import NeuralProcess

    return NeuralProcess(
        latent_dim=cfg.latent_dim, hidden=cfg.hidden, num_layers=cfg.num_layers, activation=cfg.activation
    )


def _nuts_worker(rank: int, world_size: int, a: Dict[str, Any]) -> None:
    from pyro_meta.data import Sinusoid
    from pyro_meta.inference import infer_sharded

    model = _neural_process(a["cfg"])
    model.load_state_dict(torch.load(a["state"]))
    batch = Sinusoid(noise_std=a["cfg"].noise_std).sample(
        a["tasks"], a["context"], 20, generator=torch.Generator().manual_seed(1)
    )
    dist.barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    post = infer_sharded(model, batch, method="nuts", chunk_size=a["chunk"], seed=0, progress=False, **a["nuts"])
    cpu = [None] * world_size
    dist.all_gather_object(cpu, time.process_time() - c0)  # this rank's CPU seconds: how evenly the work split
    if rank == 0:
        torch.save(
            {
                "z": post.samples["z"],
                "seconds": time.perf_counter() - t0,
                "cpu": cpu,
                "max_r_hat": float(post.diagnostics["r_hat"].max()),
            },
            os.path.join(a["out"], f"nuts_{world_size}.pt"),
        )


def sharded_nuts(args, work: str) -> Dict[str, Any]:
    import pyro_meta
    from pyro_meta.apps.demo import DemoConfig
    from pyro_meta.data import Sinusoid

    cfg = DemoConfig().smoke() if args.smoke else DemoConfig()
    torch.manual_seed(0)
    model = _neural_process(cfg)
    pyro_meta.fit(
        model,
        Sinusoid(noise_std=cfg.noise_std),
        num_steps=args.train_steps,
        tasks_per_batch=16,
        num_context=cfg.train_context,
        num_target=cfg.train_target,
        lr=cfg.lr,
        seed=0,
        progress=False,
    )
    state = os.path.join(work, "np.pt")
    torch.save(model.state_dict(), state)
    nuts = dict(
        num_warmup=args.warmup,
        num_samples=args.samples,
        num_chains=cfg.nuts_chains,
        max_tree_depth=cfg.nuts_max_tree_depth,
        init="guide",
        jit_compile=not args.no_jit,
    )
    a = dict(cfg=cfg, state=state, tasks=args.tasks, context=5, chunk=args.chunk, nuts=nuts, out=work)
    walls = {}
    for world_size in (1, 2):
        t0 = time.perf_counter()
        _spawn(_nuts_worker, world_size, a)
        walls[world_size] = time.perf_counter() - t0
    one, two = (torch.load(os.path.join(work, f"nuts_{w}.pt")) for w in (1, 2))
    return {"one": one, "two": two, "equal": torch.equal(one["z"], two["z"]), "walls": walls, "nuts": nuts}


# ------------------------------------------------------------------------------------------- DDP
def _maml():
    from pyro_meta.models import MAML

    torch.manual_seed(0)
    return MAML(hidden=MAML_HIDDEN, inner_steps=1)


def _ddp_worker(rank: int, world_size: int, a: Dict[str, Any]) -> None:
    import pyro_meta
    from pyro_meta.data import Sinusoid
    from pyro_meta.distributed import RankStreams

    model = _maml()
    tasks, per = Sinusoid(noise_std=0.1), a["per_rank"]
    if world_size == 1:  # one process, the two ranks' batches together
        tasks, per = RankStreams(tasks, 2, seed=3), 2 * per
    dist.barrier()
    res = pyro_meta.fit(
        model,
        tasks,
        num_steps=a["steps"],
        tasks_per_batch=per,
        num_context=5,
        num_target=10,
        lr=1e-2,
        seed=3,
        progress=False,
    )
    if rank == 0:
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        torch.save({"params": flat, "seconds": res.seconds}, os.path.join(a["out"], f"ddp_{world_size}.pt"))


def ddp_training(args, work: str) -> Dict[str, Any]:
    a = dict(per_rank=args.per_rank, steps=args.ddp_steps, out=work)
    for world_size in (1, 2):
        _spawn(_ddp_worker, world_size, a)
    one, two = (torch.load(os.path.join(work, f"ddp_{w}.pt")) for w in (1, 2))
    rel = float((one["params"] - two["params"]).norm() / one["params"].norm())
    return {"one": one, "two": two, "rel": rel}


# ------------------------------------------------------------------------------------------ main
def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "n/a"


def report(args, nuts: Dict[str, Any], ddp: Dict[str, Any], load_before: str, load_after: str) -> str:
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import markdown_table

    t1, t2 = nuts["one"]["seconds"], nuts["two"]["seconds"]
    d1, d2 = ddp["one"]["seconds"], ddp["two"]["seconds"]
    tasks_per_step = 2 * args.per_rank
    lines = [
        "SMOKE RUN (numbers meaningless)\n" if args.smoke else "",
        f"{os.cpu_count()} cores, load average before {load_before}, after {load_after} (1/5/15 min); "
        "one torch thread per process.\n",
        f"Sharded NUTS: {args.tasks} tasks of the demo's NeuralProcess ({args.train_steps} training steps), "
        f"chunks of {args.chunk} tasks, {nuts['nuts']['num_chains']} chains x ({args.warmup} warmup + "
        f"{args.samples} draws), tree depth {nuts['nuts']['max_tree_depth']}"
        f"{'' if args.no_jit else ', JIT'}.\n",
        markdown_table(
            ["processes", "NUTS wall s", "tasks / s", "start-up + wall s", "CPU s per rank", "max R-hat"],
            [
                [
                    w,
                    f"{r['seconds']:.1f}",
                    f"{args.tasks / r['seconds']:.3f}",
                    f"{nuts['walls'][w]:.1f}",
                    " + ".join(f"{c:.1f}" for c in r["cpu"]),
                    f"{r['max_r_hat']:.3f}",
                ]
                for w, r in ((1, nuts["one"]), (2, nuts["two"]))
            ],
        ),
        f"\nequal draws (1 vs 2 processes): {'yes' if nuts['equal'] else 'NO'}; "
        f"wall-time ratio 2/1: {t2 / t1:.3f} (target <= 0.65)\n",
        f"\nData-parallel MAML training: {args.ddp_steps} steps, {tasks_per_step} tasks per step "
        f"({args.per_rank} per rank with 2 processes).\n",
        markdown_table(
            ["processes", "s / step", "tasks / s"],
            [
                [
                    w,
                    f"{r['seconds'] / args.ddp_steps * 1e3:.2f} ms",
                    f"{tasks_per_step * args.ddp_steps / r['seconds']:.0f}",
                ]
                for w, r in ((1, ddp["one"]), (2, ddp["two"]))
            ],
        ),
        f"\nparameters 1 vs 2 processes: relative difference {ddp['rel']:.2e} (<= 1e-5: "
        f"{'yes' if ddp['rel'] <= 1e-5 else 'NO'}); wall-time ratio 2/1: {d2 / d1:.3f}\n",
    ]
    return "".join(lines)


def main(argv: List[str] = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=40)
    p.add_argument("--chunk", type=int, default=4, help="tasks per NUTS run (the unit of work and seeding)")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--ddp-steps", type=int, default=200)
    p.add_argument("--per-rank", type=int, default=16)
    p.add_argument("--no-jit", action="store_true", help="NUTS without jit_compile (the demo's NUTS uses it)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks that everything runs")
    p.add_argument("--out", help="also write the report (markdown) there")
    args = p.parse_args(argv)
    if args.smoke:
        args.tasks, args.chunk, args.warmup, args.samples = 4, 2, 5, 5
        args.train_steps, args.ddp_steps, args.per_rank, args.no_jit = 5, 5, 2, True
    torch.set_num_threads(1)
    before = _load()
    with tempfile.TemporaryDirectory() as work:
        nuts = sharded_nuts(args, work)
        ddp = ddp_training(args, work)
    text = report(args, nuts, ddp, before, _load())
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return text


if __name__ == "__main__":
    main()
