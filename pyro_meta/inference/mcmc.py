"""``method="nuts"`` / ``"hmc"``: Pyro MCMC over the task latents, global parameters fixed.

All tasks of a chunk run as one joint chain over the product posterior
``prod_t p(z_t | context_t)`` (one NUTS over the tasks plate is far cheaper per draw than a
loop of per-task runs, DESIGN section 7); ``chunk_size`` splits the tasks so that the
shared step size is set by fewer tasks. Chains run one after the other, each started from
the amortized guide by default (``init="guide"``): chain 0 at the guide's mean, the others
at independent guide draws (dispersed starts for r_hat).
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
from pyro.infer import HMC, MCMC, NUTS
from pyro.infer.autoguide.initialization import init_to_median
from pyro.ops.stats import effective_sample_size, split_gelman_rubin
from torch.distributions import biject_to

from ..model import frozen, local_params
from .common import Problem
from .draws import draw_sites

__all__ = ["mcmc_posterior", "per_task_convergence"]

INITS = ("guide", "prior", "median")
HMC_TRAJECTORY_LENGTH = 1.3


def _initial_params(problem: Problem, init: str, num_chains: int) -> Optional[List[Dict[str, torch.Tensor]]]:
    """Unconstrained start ``{site: [T, 1, *ushape]}`` per chain (``None`` for ``"median"``)."""
    if init == "median":
        return None
    n = max(64, num_chains)
    if init == "guide":
        with torch.enable_grad():
            draws = draw_sites(problem.model.guide, problem.cond, n, problem.sites, problem.model)
    else:
        with torch.no_grad():
            draws = draw_sites(problem.fn, problem.cond, n, problem.sites, problem.model)
    starts = []
    for c in range(num_chains):
        start = {}
        for name, info in problem.sites.items():
            u = biject_to(info.support).inv(draws[name].detach())
            start[name] = u.mean(0) if (c == 0 and init == "guide") else u[c]
        starts.append(start)
    return starts


class _Recorder:
    """``hook_fn`` collecting per-draw step size, acceptance, divergence and log density."""

    def __init__(self) -> None:
        self.step_size: List[float] = []
        self.accept: List[float] = []
        self.diverging: List[bool] = []
        self.lp: List[float] = []
        self._prev_mean, self._n, self._div = 0.0, 0, 0

    def __call__(self, kernel, params, stage, i) -> None:
        if not stage.startswith("Sample"):
            return
        self._n += 1
        mean = float(kernel._mean_accept_prob)
        self.accept.append(self._n * mean - (self._n - 1) * self._prev_mean)
        self._prev_mean = mean
        self.step_size.append(float(kernel.step_size))
        ndiv = len(kernel._divergences)
        self.diverging.append(ndiv > self._div)
        self._div = ndiv
        pe = kernel._potential_energy_last
        self.lp.append(float(-pe) if pe is not None else float("nan"))


def _run_chain(problem: Problem, kernel_name: str, num_samples: int, num_warmup: int, start, jit_compile: bool, kernel_kwargs) -> Tuple[Dict[str, torch.Tensor], _Recorder, Dict[str, Any]]:
    cls = NUTS if kernel_name == "nuts" else HMC
    kw = dict(max_plate_nesting=problem.model.max_plate_nesting, jit_compile=jit_compile, ignore_jit_warnings=True)
    if start is None:
        kw["init_strategy"] = init_to_median
    if kernel_name == "hmc" and "num_steps" not in kernel_kwargs and "trajectory_length" not in kernel_kwargs:
        # Pyro's default trajectory (2 pi) is one full period of a unit-scale Gaussian coordinate
        # after mass adaptation, so HMC lands back near its start (measured r_hat 1.31 on
        # BayesianLinear); 1.3 is short of a half period and not a rational multiple of pi.
        kw["trajectory_length"] = HMC_TRAJECTORY_LENGTH
    kw.update(kernel_kwargs)
    kernel = cls(problem.fn, **kw)
    rec = _Recorder()
    mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=num_warmup, num_chains=1,
                initial_params=start, disable_progbar=True, hook_fn=rec)
    mcmc.run(problem.cond)
    samples = mcmc.get_samples()
    diag = mcmc.diagnostics()
    info = {
        "divergences": len(diag.get("divergences", {}).get("chain 0", [])),
        "acceptance_rate": float(diag.get("acceptance rate", {}).get("chain 0", float("nan"))),
        "step_size": float(kernel.step_size),
    }
    return samples, rec, info


def per_task_convergence(samples: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per task: the largest split-r_hat and the smallest ESS over every latent coordinate.

    ``samples``: ``{site: [C, S, T, *event]}``. Returns ``(r_hat [T], ess [T])``.
    """
    rhats, esss = [], []
    for v in samples.values():
        C, S, T = v.shape[:3]
        x = v.reshape(C, S, T, -1).double()
        r = split_gelman_rubin(x, chain_dim=0, sample_dim=1)  # [T, E]
        e = effective_sample_size(x, chain_dim=0, sample_dim=1)
        rhats.append(torch.nan_to_num(r, nan=1.0).amax(-1))
        # Pyro's estimator can go negative for antithetic chains (fixed-length HMC): floor at 1
        esss.append(torch.nan_to_num(e, nan=float(C * S)).clamp_min(1.0).amin(-1))
    return torch.stack(rhats).amax(0).float(), torch.stack(esss).amin(0).float()


def mcmc_posterior(
    problem: Problem,
    kernel: str = "nuts",
    num_samples: int = 500,
    num_warmup: int = 500,
    num_chains: int = 2,
    init: str = "guide",
    chunk_size: Optional[int] = None,
    jit_compile: bool = False,
    rhat_threshold: float = 1.05,
    ess_threshold: Optional[float] = None,
    **kernel_kwargs: Any,
) -> Tuple[Dict[str, torch.Tensor], Dict, Dict[str, torch.Tensor]]:
    """MCMC over ``p(z_t | context_t)`` for all tasks (or chunks of ``chunk_size`` tasks).

    Returns ``samples {site: [C, S, T, *event]}``, ``diagnostics`` (``divergences [C]``,
    ``acceptance_rate [C]``, ``step_size [C]``, ``r_hat [T]``, ``ess [T]``, ``bad_tasks``,
    ``jit``) and ``sample_stats {diverging, acceptance_rate, step_size, lp: [C, S]}``.
    ``jit_compile=True`` tries Pyro's JIT with the network frozen and falls back to the
    eager potential (with a warning) if tracing fails. Warns naming the tasks whose
    r_hat exceeds ``rhat_threshold`` or whose ESS is below ``ess_threshold``
    (default ``min(100, C*S/4)``).
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if kernel not in ("nuts", "hmc"):
        raise ValueError(f"kernel must be 'nuts' or 'hmc', got {kernel!r}")
    for name, value in (("num_samples", num_samples), ("num_chains", num_chains)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(num_warmup, int) or num_warmup < 0:
        raise ValueError(f"num_warmup must be a non-negative int, got {num_warmup!r}")
    T = problem.num_tasks
    size = T if chunk_size is None else int(chunk_size)
    if size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    chunks = [torch.arange(i, min(i + size, T)) for i in range(0, T, size)]

    per_chain: List[List[Dict[str, torch.Tensor]]] = [[] for _ in range(num_chains)]
    stats = {k: torch.zeros(num_chains, num_samples) for k in ("acceptance_rate", "step_size", "lp")}
    stats["diverging"] = torch.zeros(num_chains, num_samples, dtype=torch.bool)
    divergences = torch.zeros(num_chains, dtype=torch.long)
    acceptance = torch.zeros(num_chains)
    step_sizes = torch.zeros(num_chains, len(chunks))
    used_jit = jit_compile
    t0 = time.perf_counter()
    for k, idx in enumerate(chunks):
        sub = problem if len(chunks) == 1 else problem.select(idx)
        starts = _initial_params(sub, init, num_chains)
        for c in range(num_chains):
            start = None if starts is None else starts[c]
            with frozen(problem.model), local_params():
                try:
                    samples, rec, info = _run_chain(sub, kernel, num_samples, num_warmup, start, used_jit, kernel_kwargs)
                except Exception as err:  # JIT tracing failures surface as many error types
                    if not used_jit:
                        raise
                    warnings.warn(f"jit_compile=True failed ({type(err).__name__}: {err}); running without JIT", stacklevel=2)
                    used_jit = False
                    samples, rec, info = _run_chain(sub, kernel, num_samples, num_warmup, start, False, kernel_kwargs)
            per_chain[c].append({n: v.detach() for n, v in samples.items() if n in problem.sites})
            w = len(idx) / T
            stats["acceptance_rate"][c] += w * torch.tensor(rec.accept)
            stats["step_size"][c] += w * torch.tensor(rec.step_size)
            stats["lp"][c] += torch.tensor(rec.lp)
            stats["diverging"][c] |= torch.tensor(rec.diverging, dtype=torch.bool)
            divergences[c] += info["divergences"]
            acceptance[c] += w * info["acceptance_rate"]
            step_sizes[c, k] = info["step_size"]
    out = {}
    for name, info in problem.sites.items():
        # each chunk gives [S, t, 1, *event]; join tasks, squeeze the points singleton
        chains = [torch.cat([ch[name] for ch in per_chain[c]], 1).squeeze(-(info.event_dim + 1)) for c in range(num_chains)]
        out[name] = torch.stack(chains)
    r_hat, ess = per_task_convergence(out)
    threshold = ess_threshold if ess_threshold is not None else min(100.0, num_chains * num_samples / 4)
    bad = torch.nonzero((r_hat > rhat_threshold) | (ess < threshold)).flatten().tolist()
    if bad:
        warnings.warn(
            f"{kernel.upper()}: tasks {bad} mixed badly (r_hat > {rhat_threshold} or ESS < {threshold:.0f}); "
            f"worst r_hat {float(r_hat.max()):.3f}, smallest ESS {float(ess.min()):.0f}. "
            "Run more warmup/samples or chains, or smaller chunks.",
            stacklevel=3,
        )
    diagnostics = {
        "divergences": divergences,
        "acceptance_rate": acceptance,
        "step_size": step_sizes.squeeze(-1) if len(chunks) == 1 else step_sizes,
        "r_hat": r_hat,
        "ess": ess,
        "bad_tasks": bad,
        "num_warmup": num_warmup,
        "num_chunks": len(chunks),
        "init": init,
        "jit": used_jit,
        "sampling_seconds": time.perf_counter() - t0,
    }
    return out, diagnostics, stats
