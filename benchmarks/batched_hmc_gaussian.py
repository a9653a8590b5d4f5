"""Batched per-task HMC vs Pyro NUTS (a loop of per-task runs, and one joint run) on per-task Gaussians.

T tasks, each a 2-D Gaussian with its own scale (sd from 0.01 to 10 across tasks, the second
coordinate twice the first) and correlation 0.9 on every third task: the target of
``tests/inference/test_batched_hmc.py``. Every arm runs C chains of W warmup + S draws from the
same starts, on one torch thread. Per task: the smallest bulk ESS over the two coordinates
(``arviz.ess`` over the C chains), then the median over tasks; ESS/s divides it by the wall time
to get every task's posterior (warmup included). All arms run in one process, one after the
other, so the ratios (not the absolute numbers) are what to read on a shared machine.

    python benchmarks/batched_hmc_gaussian.py [--tasks 20] [--chains 4] [--warmup 500] [--samples 500]
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Callable, Dict, List

import numpy as np
import torch
from _common import machine_info, markdown_table
from pyro.infer import MCMC, NUTS

from pyro_meta.inference.batched_hmc import sample_batched_hmc


def gaussians(T: int):
    """``(mu [T, 2], sds [T, 2], prec [T, 2, 2])`` of the per-task Gaussians."""
    sd = torch.logspace(-2, 1, T, dtype=torch.float64)
    sds = torch.stack([sd, 2 * sd], -1)
    rho = torch.where(torch.arange(T) % 3 == 0, 0.9, 0.0).double()
    cov = torch.diag_embed(sds**2)
    cov[:, 0, 1] = cov[:, 1, 0] = rho * sds[:, 0] * sds[:, 1]
    mu = 3 * sds * torch.randn(T, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return mu, sds, torch.linalg.inv(cov)


def quad(d: torch.Tensor, prec: torch.Tensor) -> torch.Tensor:
    """``0.5 d^T P d`` over the last dim: ``d [..., T, 2]``, ``prec [T, 2, 2]`` -> ``[..., T]``."""
    return 0.5 * (d * (prec @ d.unsqueeze(-1)).squeeze(-1)).sum(-1)


def per_task_min_ess(samples: np.ndarray) -> np.ndarray:
    """``samples [C, S, T, E]`` -> bulk ESS per task, minimum over coordinates ``[T]``."""
    import arviz as az

    C, S, T, E = samples.shape
    return np.array([min(float(az.ess(samples[:, :, t, e])) for e in range(E)) for t in range(T)])


def run_nuts(potential: Callable, init: torch.Tensor, warmup: int, samples: int, seed: int, depth: int) -> np.ndarray:
    """Pyro NUTS, chains one after the other (as ``infer`` runs them): ``init [C, ...]`` -> ``[C, S, ...]``."""
    import pyro

    chains = []
    for c in range(init.shape[0]):
        pyro.set_rng_seed(seed + c)
        mcmc = MCMC(
            NUTS(potential_fn=potential, max_tree_depth=depth),
            num_samples=samples,
            warmup_steps=warmup,
            initial_params={"u": init[c]},
            disable_progbar=True,
        )
        mcmc.run()
        chains.append(mcmc.get_samples()["u"])
    return torch.stack(chains).numpy()


def main(argv=None) -> Dict[str, Dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=20)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tree-depth", type=int, default=10, help="Pyro NUTS (default: Pyro's)")
    p.add_argument("--no-loop", action="store_true", help="skip the loop of per-task NUTS runs (the slow arm)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, to check that the script runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.tasks, args.chains, args.warmup, args.samples, args.max_tree_depth = 4, 2, 100, 50, 5
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    T, C, W, S = args.tasks, args.chains, args.warmup, args.samples
    mu, sds, prec = gaussians(T)
    init = torch.randn(C, T, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    arms: Dict[str, Callable[[], np.ndarray]] = {}
    for traj in ("jitter", "chees"):

        def batched(traj=traj):
            r = sample_batched_hmc(lambda u: quad(u - mu, prec), init, S, W, seed=args.seed, trajectory=traj)
            return r.samples.numpy()

        arms[f"batched HMC ({traj})"] = batched

    def joint():  # one NUTS over all tasks' latents: one step size and tree depth for all
        return run_nuts(lambda d: quad(d["u"] - mu, prec).sum(), init, W, S, args.seed, args.max_tree_depth)

    arms["Pyro NUTS, joint over tasks"] = joint

    if not args.no_loop:

        def loop():  # one NUTS run per task
            out = []
            for t in range(T):
                pot = lambda d, t=t: quad(d["u"] - mu[t], prec[t : t + 1]).sum()  # noqa: E731
                out.append(run_nuts(pot, init[:, t : t + 1], W, S, args.seed, args.max_tree_depth))
            return np.concatenate(out, axis=2)

        arms["Pyro NUTS, loop over tasks"] = loop

    results: Dict[str, Dict[str, float]] = {}
    rows: List[List[object]] = []
    for name, fn in arms.items():
        t0 = time.perf_counter()
        x = fn()  # [C, S, T, 2]
        seconds = time.perf_counter() - t0
        ess = per_task_min_ess(x)
        err_mean = float(np.abs((x.mean((0, 1)) - mu.numpy()) / sds.numpy()).max())
        err_sd = float(np.abs(x.std((0, 1)) / sds.numpy() - 1).max())
        med = float(np.median(ess))
        results[name] = dict(
            seconds=seconds,
            median_min_ess=med,
            ess_per_s=med / seconds,
            worst_min_ess=float(ess.min()),
            mean_err=err_mean,
            sd_err=err_sd,
        )
        rows.append(
            [
                name,
                f"{seconds:.1f}",
                f"{med:.0f}",
                f"{ess.min():.0f}",
                f"{med / seconds:.1f}",
                f"{err_mean:.3f}",
                f"{err_sd:.3f}",
            ]
        )
    ref = results["Pyro NUTS, loop over tasks" if not args.no_loop else "Pyro NUTS, joint over tasks"]
    for row, res in zip(rows, results.values()):
        row.append(f"{res['ess_per_s'] / ref['ess_per_s']:.1f}")

    info = machine_info()
    print(
        f"{'SMOKE run: ' if args.smoke else ''}{T} per-task 2-D Gaussians (sd 0.01..20, corr 0.9 on every "
        f"third), {C} chains x ({W} warmup + {S} draws), NUTS max tree depth {args.max_tree_depth}, torch threads 1, "
        f"{info['cpu']} ({info['cores']} cores), torch {info['torch']}, pyro {info['pyro']}, arviz {info['arviz']}. "
        "Timings on a shared machine are noisy; read the ratios."
    )
    header = [
        "arm",
        "seconds",
        "median min-ESS",
        "worst min-ESS",
        "ESS/s",
        "max mean err / sd",
        "max sd rel. err",
        f"ESS/s vs {'loop' if not args.no_loop else 'joint'}",
    ]
    print(markdown_table(header, rows))
    return results


if __name__ == "__main__":
    main()
