"""Joint NUTS over all tasks vs one NUTS run per task: effective samples per second.

One NUTS run over the tasks plate samples the product posterior prod_t p(w_t | context_t);
the alternative is a loop of per-task runs. Both run on the same BayesianLinear (its prior set
to the LinearTasks generating values) and the same 20 tasks, with the same settings, one torch
thread. Per task we take the minimum ESS over coordinates (Pyro's ESS across chains), then
the median over tasks; ESS/s divides it by the wall time to get every task's posterior.

    python benchmarks/nuts_joint_vs_per_task.py [--tasks 20] [--samples 300] [--warmup 300] [--jit]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import pyro_meta
from pyro_meta.data import LinearTasks
from pyro_meta.models import BayesianLinear


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=20)
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--jit", action="store_true", help="jit_compile=True in both arms")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")

    tasks = LinearTasks()
    model = BayesianLinear()
    with torch.no_grad():
        model.mu.copy_(tasks.weight_mean)
        model.log_s.copy_(tasks.weight_scale.log())
    batch = tasks.sample(args.tasks, (3, 10), 10, generator=torch.Generator().manual_seed(0))
    opts = dict(
        method="nuts",
        num_samples=args.samples,
        num_warmup=args.warmup,
        num_chains=args.chains,
        jit_compile=args.jit,
        seed=0,
    )

    t0 = time.perf_counter()
    joint = pyro_meta.infer(model, batch, **opts)
    t_joint = time.perf_counter() - t0
    ess_joint = joint.diagnostics["ess"]

    t0 = time.perf_counter()
    ess_loop = []
    for t in range(args.tasks):
        post = pyro_meta.infer(model, batch.select([t]), **opts)
        ess_loop.append(post.diagnostics["ess"][0])
    t_loop = time.perf_counter() - t0
    ess_loop = torch.stack(ess_loop)

    m_joint, m_loop = float(ess_joint.median()), float(ess_loop.median())
    rate_joint, rate_loop = m_joint / t_joint, m_loop / t_loop
    print(
        f"NUTS over {args.tasks} BayesianLinear tasks (K=4 weights each), {args.chains} chains x "
        f"{args.warmup} warmup + {args.samples} draws, jit={args.jit}, torch threads=1"
    )
    print("ESS per task: min over coordinates, then median over tasks")
    print(f"{'run':<22}{'seconds':>10}{'median min-ESS':>16}{'ESS/s':>10}")
    print(f"{'joint (one run)':<22}{t_joint:>10.1f}{m_joint:>16.0f}{rate_joint:>10.1f}")
    print(f"{'per task (loop)':<22}{t_loop:>10.1f}{m_loop:>16.0f}{rate_loop:>10.1f}")
    ratio = rate_joint / rate_loop
    print(f"ratio: {ratio:.1f}")
    return ratio


if __name__ == "__main__":
    main()
