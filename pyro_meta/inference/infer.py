"""``infer(model, batch, method=...)``: one model, every inference method, one argument apart."""

from __future__ import annotations

import time
from typing import Any, Optional, Union

import pyro
import torch

from ..data.batch import TaskBatch
from ..locking import serialized
from ..model import MetaModel, no_task_latent_message
from ..validation import check_int
from . import amortized, batched_mcmc, importance, mcmc, prior, svi  # noqa: F401  (register the built-in methods)
from .common import move_batch, prepare
from .method import InferenceMethod, available_methods, get_method
from .posterior import Posterior

__all__ = ["METHODS", "infer"]

#: the built-in methods (``pyro_meta.available_methods()`` lists every registered one)
METHODS = available_methods()


@serialized
def infer(
    model: MetaModel,
    batch: TaskBatch,
    method: Union[str, InferenceMethod] = "amortized",
    num_samples: int = 500,
    seed: Optional[int] = None,
    globals: str = "point",
    progress: Optional[bool] = None,
    device: Optional[Union[str, torch.device]] = None,
    **options: Any,
) -> Posterior:
    """Posterior over each task's latents ``p(z_t | context_t)``, global parameters fixed.

    Only the context set of ``batch`` is conditioned on; its ``target_x`` is where
    :meth:`Posterior.predict` predicts. ``method`` names a registered
    :class:`~pyro_meta.InferenceMethod` (``pyro_meta.available_methods()``; add one with
    :func:`pyro_meta.register_method`); ``options`` are that method's options:

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
      ``chunk_size=k`` runs the tasks in consecutive groups of ``k``, each a separate MCMC run with its
      own warmup (step size and mass matrix adapted to fewer tasks): a statistical choice, not a memory
      setting. Each gradient then touches ``k`` tasks, but every task's draws are kept and the fixed
      costs dominate at the sizes NUTS is practical for: measured, ``chunk_size=10`` did not lower the
      peak memory and was 2.8x slower (each group repeats the warmup). NUTS/HMC do not follow the
      memory budget.
    * ``"prior"`` -- draws from the meta-learned prior ``p(z)`` (prior predictive checks).

    ``"amortized"``, ``"prior"`` and ``"importance"`` (and the predictive, see
    :meth:`Posterior.predict`) run in chunks of tasks sized to the memory budget
    (:func:`pyro_meta.set_memory_budget`, default 256 MiB; :mod:`pyro_meta.memory`).

    Parameters
    ----------
    globals : "point" | "sample"
        Global latent sites (outside the task plate): ``"point"`` (default) holds them at a point
        estimate from the guide -- they are meta-learned from many tasks (empirical Bayes), and
        sampling them couples every task; ``"sample"`` infers them jointly with the task latents
        (``nuts``/``hmc``: the full hierarchical posterior on this fixed task set); their samples
        are ``[C, S, *shape]``.
    progress : bool, optional
        Progress bars (SVI steps, importance proposals, NUTS/HMC warmup and sampling per chain).
        Default: on when standard error is a terminal, off otherwise (logs, CI). Pyro's MCMC
        hides its NUTS/HMC bars whenever the environment variable ``CI`` is set, even with ``True``.
    device : str or torch.device, optional
        Run on this device: the batch is moved there (``batch.to(device)``); the model is not moved
        (an inference call leaves the model where it is): put it there first with ``model.to(device)``,
        else ``TypeError``. Samples, diagnostics per task and the predictive stay on that device;
        :meth:`Posterior.to_arviz` copies to the CPU itself. Default: where the batch is.

    Returns
    -------
    Posterior
        Its ``samples`` are ``{site: [C, S, T, *event]}``.
    """
    impl = get_method(method)
    num_samples = check_int("num_samples", num_samples)
    opts = impl.validate(options)
    if globals == "sample" and not impl.samples_globals:
        raise ValueError(
            f"globals='sample': method={impl.name!r} holds global latents at a point estimate; methods that sample "
            f"them: {[m for m in available_methods() if get_method(m).samples_globals]}"
        )
    if device is not None:
        batch = move_batch(model, batch, device)
    if seed is not None:
        pyro.set_rng_seed(check_int("seed", seed, minimum=0, maximum=2**32 - 1))
    problem = prepare(model, batch, globals=globals, progress=progress)
    if not problem.sites and impl.needs_task_latents:
        raise ValueError(
            f"method={impl.name!r} infers task latents, but {no_task_latent_message(model)}. A model without "
            "task latents (a conditional model) has nothing to infer: use method='amortized', whose predictive "
            "is the model's own"
        )
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        result = impl.run(problem, num_samples, **opts)
    finally:
        model.train(was_training)
    diagnostics = dict(result.diagnostics)
    diagnostics.update(result.per_task)
    diagnostics["bad_tasks"] = list(result.bad_tasks)
    if problem.fixed_globals:
        diagnostics["globals_note"] = (
            f"global latent sites {sorted(problem.fixed_globals)} held at a point estimate (mean of 64 guide draws in "
            "unconstrained space); infer(..., globals='sample') with nuts/hmc samples them"
        )
    return Posterior(
        model=model,
        batch=batch,
        method=impl.name,
        samples=result.samples,
        sites=problem.latent_sites,
        diagnostics=diagnostics,
        sample_stats=result.sample_stats,
        seconds=time.perf_counter() - t0,
        fn=problem.fn,
        per_task=tuple(result.per_task),
        summary=dict(result.summary),
        fixed_globals=problem.fixed_globals,
        draws_shape=result.draws_shape,
    )
