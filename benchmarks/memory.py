"""Peak memory against the number of tasks: ``predict()`` and importance sampling on the demo's NeuralProcess.

Each (operation, task count) runs in a fresh process; the figure is the process's peak resident set
size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), which includes Python, torch and Pyro (about
0.4 GB here) and the results kept (``predict()`` at 10,000 tasks: its draws ``[1, 500, 10000, 50, 1]``,
1 GB in float32). The model is the demo's ``NeuralProcess(latent_dim=8, hidden=128, num_layers=3)``
(untrained, seeded: memory does not depend on the weights) on noisy sinusoids with 10 context and
50 target points per task, 500 posterior draws; importance sampling with its defaults
(``num_proposals=2000``, ``batch_size=500``).

    python benchmarks/memory.py [--tasks 100 1000 10000] [--ops predict importance] [--budget BYTES]
                                [--limit-gb 12] [--proposals 2000]

``--limit-gb`` caps each child's address space (``RLIMIT_AS``) so that a regression fails with a
``MemoryError`` instead of exhausting a shared machine. Prints a markdown table and the verdict against
the 4 GB target.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
TARGET_GB = 4.0


def child(op: str, num_tasks: int, budget: Optional[int], proposals: int, draws: int) -> Dict[str, float]:
    """Run one operation in this (fresh) process; return its peak RSS and timings."""
    import torch

    import pyro_meta
    from pyro_meta.data import Sinusoid
    from pyro_meta.models import NeuralProcess

    torch.set_num_threads(1)
    if budget is not None:
        pyro_meta.set_memory_budget(budget)
    torch.manual_seed(0)
    model = NeuralProcess(latent_dim=8, hidden=128, num_layers=3)
    batch = Sinusoid(noise_std=0.2).sample(num_tasks, 10, 50, generator=torch.Generator().manual_seed(0))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t0 = time.perf_counter()
    if op == "predict":
        post = pyro_meta.infer(model, batch, method="amortized", num_samples=draws, seed=0)
        t1 = time.perf_counter()
        pred = post.predict()
        shape = list(pred.samples.shape)
    elif op == "importance":
        post = pyro_meta.infer(model, batch, method="importance", num_samples=draws, num_proposals=proposals, seed=0)
        t1 = time.perf_counter()
        shape = list(post.samples["z"].shape)
    else:
        raise ValueError(f"op must be predict or importance, got {op!r}")
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB
    return {"peak_gb": peak, "setup_gb": base, "seconds": seconds, "infer_seconds": t1 - t0, "shape": shape}


def run_child(op: str, num_tasks: int, budget: Optional[int], proposals: int, draws: int, limit_gb: float) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        op,
        str(num_tasks),
        "--proposals",
        str(proposals),
        "--draws",
        str(draws),
        "--limit-gb",
        str(limit_gb),
    ]
    if budget is not None:
        cmd += ["--budget", str(budget)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--ops", nargs="+", default=["predict", "importance"], choices=["predict", "importance"])
    parser.add_argument("--budget", type=int, default=None, help="pyro_meta.set_memory_budget(BYTES) (default 256 MiB)")
    parser.add_argument("--proposals", type=int, default=2000)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--limit-gb", type=float, default=12.0)
    parser.add_argument("--child", nargs=2, metavar=("OP", "TASKS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        limit = int(args.limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        print(json.dumps(child(args.child[0], int(args.child[1]), args.budget, args.proposals, args.draws)))
        return []
    rows = []
    print(f"| operation | tasks | peak RSS (GB) | after setup (GB) | seconds | under {TARGET_GB:g} GB |")
    print("|---|---:|---:|---:|---:|---|")
    for op in args.ops:
        for t in args.tasks:
            r = run_child(op, t, args.budget, args.proposals, args.draws, args.limit_gb)
            r.update(op=op, tasks=t)
            rows.append(r)
            if "error" in r:
                print(f"| {op} | {t} | failed: {r['error']} | | | NO |", flush=True)
            else:
                ok = "yes" if r["peak_gb"] < TARGET_GB else "NO"
                print(
                    f"| {op} | {t} | {r['peak_gb']:.2f} | {r['setup_gb']:.2f} | {r['seconds']:.1f} | {ok} |", flush=True
                )
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main()
