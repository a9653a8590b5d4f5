"""Simulation-based calibration (SBC) of any inference method on a MetaModel (Talts et al. 2018).

For each replicate task: draw its latents ``z*`` from the model's prior (global latents at the
point estimate ``infer`` would use), simulate its context ``y ~ p(y | x, z*)`` at inputs from a task
distribution, infer ``p(z | y)`` with the method under test, and record the rank of ``z*`` among
``L`` posterior draws, per latent coordinate. If the method returns the exact posterior, every
rank is uniform on ``{0, ..., L}``: a chi-square test over ``B`` bins per coordinate checks it, with a
Bonferroni correction over the coordinates. Over- or under-dispersed posteriors give U- or
hump-shaped rank histograms (:func:`pyro_meta.plot.plot_sbc`).

MCMC draws are autocorrelated, which also bends the histogram; the draws are thinned evenly to
``num_rank_draws`` (keep it below the chains' ESS).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Union

import torch
from pyro import poutine

from .data.batch import TaskBatch
from .inference import infer
from .inference.common import prepare
from .inference.method import InferenceMethod
from .inference.posterior import evenly_spaced
from .model import MetaModel, check_model, local_params
from .validation import check_int, check_probability

__all__ = ["SBCResult", "sbc"]


@dataclasses.dataclass
class SBCResult:
    """Ranks and uniformity tests of an SBC run.

    Attributes
    ----------
    ranks : dict ``site -> long Tensor [R, *event]``
        Rank of the true value among ``num_rank_draws`` posterior draws, in ``[0, num_rank_draws]``.
    pvalues : dict ``site -> Tensor [*event]``
        Chi-square uniformity p-value per coordinate (``num_bins`` equal bins of the ranks).
    num_rank_draws, num_bins : int
    method : str
    """

    ranks: Dict[str, torch.Tensor]
    pvalues: Dict[str, torch.Tensor]
    num_rank_draws: int
    num_bins: int
    method: str

    @property
    def num_coordinates(self) -> int:
        return sum(p.numel() for p in self.pvalues.values())

    @property
    def min_pvalue(self) -> float:
        return min(float(p.min()) for p in self.pvalues.values())

    def passed(self, alpha: float = 0.01) -> bool:
        """No coordinate with ``p < alpha / num_coordinates`` (Bonferroni)."""
        check_probability("alpha", alpha)
        return self.min_pvalue >= alpha / self.num_coordinates

    def __repr__(self) -> str:
        return (
            f"SBCResult(method={self.method!r}, replicates={next(iter(self.ranks.values())).shape[0]}, "
            f"coordinates={self.num_coordinates}, min p={self.min_pvalue:.3g}, passed={self.passed()})"
        )


def _simulate(model: MetaModel, batch: TaskBatch) -> "tuple[Dict[str, torch.Tensor], TaskBatch]":
    """Task latents ``{site: [T, *event]}`` from the prior and a context-only batch with simulated ``y``."""
    problem = prepare(model, batch)
    cond = batch.context_only()
    fn = poutine.condition(poutine.uncondition(model.model), data=problem.fixed_globals)
    with local_params(), torch.no_grad():
        trace = poutine.trace(fn).get_trace(cond)
    if "y_context" not in trace.nodes:
        raise ValueError(f"sbc: {type(model).__name__}.model has no y_context site to simulate the context from")
    truth = {name: trace.nodes[name]["value"].squeeze(-(info.event_dim + 1)) for name, info in problem.sites.items()}
    return truth, cond.replace(context_y=trace.nodes["y_context"]["value"].detach())


def sbc(
    model: MetaModel,
    tasks: Any,
    method: Union[str, InferenceMethod] = "nuts",
    num_replicates: int = 100,
    num_context: int = 5,
    num_rank_draws: int = 99,
    num_bins: int = 10,
    num_samples: Optional[int] = None,
    batch_size: int = 100,
    seed: int = 0,
    method_options: Optional[Mapping[str, Any]] = None,
) -> SBCResult:
    """Simulation-based calibration of ``method`` on ``model`` (see the module docstring).

    Parameters
    ----------
    model : MetaModel
        A trained model; its global parameters are held fixed.
    tasks : task distribution
        Supplies the inputs: ``tasks.sample(batch, num_context, 1, generator)`` (its ``y`` are replaced
        by draws from the model).
    method : str or InferenceMethod
        Any registered method (or an instance).
    num_replicates : int
        Simulated tasks ``R`` (inferred ``batch_size`` at a time: tasks are independent given the globals).
    num_context : int
        Context points per simulated task.
    num_rank_draws : int
        ``L``: posterior draws each rank is computed among (thinned evenly from the method's draws).
    num_bins : int
        Bins of the chi-square test (``L + 1`` must be divisible by it for equal bins).
    num_samples : int, optional
        Draws per chain asked of the method (default ``L + 1``).
    seed : int
        Seeds the simulation and every inference.
    method_options : dict, optional
        Keyword options of ``infer`` for the method.

    Returns
    -------
    SBCResult
    """
    from scipy import stats

    check_model(model)
    num_replicates = check_int("num_replicates", num_replicates)
    num_rank_draws = check_int("num_rank_draws", num_rank_draws)
    num_bins = check_int("num_bins", num_bins, minimum=2)
    batch_size = check_int("batch_size", batch_size)
    if (num_rank_draws + 1) % num_bins:
        raise ValueError(f"num_bins={num_bins} must divide num_rank_draws + 1 = {num_rank_draws + 1} (equal bins)")
    num_samples = num_rank_draws + 1 if num_samples is None else check_int("num_samples", num_samples)
    generator = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
    ranks: Dict[str, list] = {}
    done, name = 0, None
    while done < num_replicates:
        n = min(batch_size, num_replicates - done)
        batch = tasks.sample(n, num_context, 1, generator=generator)
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (), generator=generator)))
        truth, sim = _simulate(model, batch)
        post = infer(
            model, sim, method=method, num_samples=num_samples, seed=int(seed) + done, **dict(method_options or {})
        )
        name = post.method
        for site, z in truth.items():
            draws = post.samples[site].flatten(0, 1)  # [C*S, T, *event]
            if draws.shape[0] < num_rank_draws:
                raise ValueError(f"sbc: {name} gave {draws.shape[0]} draws, fewer than num_rank_draws={num_rank_draws}")
            draws = draws[evenly_spaced(draws.shape[0], num_rank_draws)]
            ranks.setdefault(site, []).append((draws < z.to(draws.dtype)).sum(0))  # [T, *event]
        done += n
    out = {k: torch.cat(v, 0) for k, v in ranks.items()}
    pvalues = {}
    per_bin = (num_rank_draws + 1) // num_bins
    for site, r in out.items():
        counts = torch.stack([(r // per_bin == b).sum(0) for b in range(num_bins)], 0).double()  # [B, *event]
        expected = num_replicates / num_bins
        chi2 = ((counts - expected) ** 2 / expected).sum(0)
        pvalues[site] = torch.as_tensor(stats.chi2.sf(chi2.numpy(), num_bins - 1))
    return SBCResult(ranks=out, pvalues=pvalues, num_rank_draws=num_rank_draws, num_bins=num_bins, method=name)
