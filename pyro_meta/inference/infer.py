"""``infer(model, batch, method=...)``: one model, every inference method, one argument apart."""

from __future__ import annotations

import time
from typing import Any, Optional

import pyro

from ..data.batch import TaskBatch
from ..model import MetaModel
from .amortized import amortized_draws, prior_draws
from .common import prepare
from .importance import importance_posterior
from .mcmc import mcmc_posterior
from .posterior import Posterior
from .svi import svi_posterior

__all__ = ["METHODS", "infer"]

METHODS = ("amortized", "svi", "importance", "nuts", "hmc", "prior")


def infer(
    model: MetaModel,
    batch: TaskBatch,
    method: str = "amortized",
    num_samples: int = 500,
    seed: Optional[int] = None,
    **kwargs: Any,
) -> Posterior:
    """Posterior over each task's latents ``p(z_t | context_t)``, global parameters fixed.

    Only the context set of ``batch`` is conditioned on; its ``target_x`` is where
    :meth:`Posterior.predict` predicts.

    Methods (extra keyword arguments go to the method):

    * ``"amortized"`` -- draws of the model's guide given the context; no optimisation.
    * ``"svi"`` -- per-task Gaussian (full covariance up to 64 coordinates) started from the
      amortized guide and refined by SVI on the context: ``num_steps=300``, ``lr=0.02``,
      ``num_particles=8``.
    * ``"importance"`` -- self-normalised importance sampling, proposal the amortized guide
      (moment-matched Gaussian, ``widen=1.5``), ``num_proposals=2000`` resampled to ``S``.
    * ``"nuts"`` / ``"hmc"`` -- Pyro MCMC over the task latents: ``num_warmup=500``,
      ``num_chains=2``, ``init="guide"|"prior"|"median"``, ``chunk_size=None`` (all tasks in
      one joint run), ``jit_compile=False``, and NUTS/HMC kernel options
      (``target_accept_prob``, ``max_tree_depth``, ``step_size``, ``num_steps``...).
    * ``"prior"`` -- draws from the meta-learned prior ``p(z)`` (prior predictive checks).

    Returns a :class:`Posterior` whose ``samples`` are ``{site: [C, S, T, *event]}``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if seed is not None:
        pyro.set_rng_seed(seed)
    problem = prepare(model, batch)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    diagnostics: dict = {}
    stats: dict = {}
    try:
        if method == "amortized":
            _no_kwargs(method, kwargs)
            samples = amortized_draws(problem, num_samples)
        elif method == "prior":
            _no_kwargs(method, kwargs)
            samples = prior_draws(problem, num_samples)
        elif method == "svi":
            samples, diagnostics = svi_posterior(problem, num_samples, **kwargs)
        elif method == "importance":
            samples, diagnostics = importance_posterior(problem, num_samples, **kwargs)
            _warn_low_ess(diagnostics["ess"], min(50.0, diagnostics["num_proposals"] / 10))
        else:
            samples, diagnostics, stats = mcmc_posterior(problem, method, num_samples=num_samples, **kwargs)
    finally:
        model.train(was_training)
    return Posterior(
        model=model, batch=batch, method=method, samples=samples, sites=problem.sites,
        diagnostics=diagnostics, sample_stats=stats, seconds=time.perf_counter() - t0, fn=problem.fn,
    )


def _no_kwargs(method: str, kwargs: dict) -> None:
    if kwargs:
        raise TypeError(f"method={method!r} takes no options, got {sorted(kwargs)}")


def _warn_low_ess(ess, threshold: float) -> None:
    import warnings

    bad = (ess < threshold).nonzero().flatten().tolist()
    if bad:
        warnings.warn(
            f"importance: tasks {bad} have importance ESS below {threshold:.0f} (smallest "
            f"{float(ess.min()):.1f}): the proposal misses the posterior there; use more "
            "num_proposals, a larger widen, or method='nuts'",
            stacklevel=3,
        )
