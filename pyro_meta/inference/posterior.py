"""``Posterior``: draws of the task latents with named sample dims ``[C, S, T, ...]``."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch

from ..data.batch import TaskBatch, _task_index
from ..locking import serialized
from ..model import MetaModel, SiteInfo
from ..validation import check_int, optional
from .draws import to_site_values
from .predictive import PosteriorPredictive, predictive_samples

__all__ = ["Posterior"]


@dataclasses.dataclass
class Posterior:
    """Posterior over each task's latents given its context set.

    Attributes
    ----------
    method : str
        The registered name of the inference method (``"amortized"``, ``"nuts"``, ...).
    samples : dict ``site -> Tensor``
        Task sites ``[C, S, T, *event]`` (``C`` chains, 1 unless MCMC; ``S`` draws per chain; ``T``
        tasks); global sites ``[C, S, *shape]`` when they were sampled (``globals="sample"``).
    diagnostics : dict
        Method-specific: per-task entries ``[T]`` (MCMC ``r_hat``, ``ess_bulk``/``ess``, ``ess_tail``;
        importance ``ess``, ``log_evidence``; their names in :attr:`per_task`), ``bad_tasks``, and
        chain-level ones (``divergences [C]``, ``acceptance_rate [C]``, ``step_size``...).
    sample_stats : dict ``name -> Tensor [C, S]``
        Per-draw MCMC statistics (``diverging``, ``acceptance_rate``, ``step_size``, ``lp``).
    summary : dict
        The method's headline numbers, as :func:`pyro_meta.evaluate` reports them.
    fixed_globals : dict ``site -> Tensor``
        Global latent sites held at a point estimate (``globals="point"``), ``[*shape]``.
    batch : TaskBatch
        The batch conditioned on (its context) and predicted (its target x).
    seconds : float
        Wall time of the inference.
    """

    model: MetaModel
    batch: TaskBatch
    method: str
    samples: Dict[str, torch.Tensor]
    sites: Mapping[str, SiteInfo]
    diagnostics: Dict[str, Any] = dataclasses.field(default_factory=dict)
    sample_stats: Dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    #: the model as inferred (global latent sites held at their point estimate); None: ``model.model``
    fn: Optional[Callable] = dataclasses.field(default=None, repr=False)
    #: names of the diagnostics with one entry per task
    per_task: Tuple[str, ...] = ()
    summary: Dict[str, Any] = dataclasses.field(default_factory=dict)
    fixed_globals: Dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    #: ``(C, S)`` for a model with no latent site (a conditional model): its predictive draws
    draws_shape: Optional[Tuple[int, int]] = None

    @property
    def num_chains(self) -> int:
        return next(iter(self.samples.values())).shape[0] if self.samples else self.draws_shape[0]

    @property
    def num_samples(self) -> int:
        """Draws per chain ``S``."""
        return next(iter(self.samples.values())).shape[1] if self.samples else self.draws_shape[1]

    @property
    def has_latents(self) -> bool:
        """False for a model without a task latent (a conditional model): ``samples`` is empty."""
        return bool(self.samples)

    def _site(self, site: Optional[str]) -> torch.Tensor:
        if not self.samples:
            raise ValueError(
                f"{type(self.model).__name__} has no latent site: this posterior holds no samples "
                "(its predictive is the model's, see predict())"
            )
        return self.samples[site or next(iter(self.samples))]

    def mean(self, site: Optional[str] = None) -> torch.Tensor:
        """Posterior mean of a site, ``[T, *event]`` (default: the first site)."""
        s = self._site(site)
        return s.reshape((-1,) + s.shape[2:]).mean(0)

    def std(self, site: Optional[str] = None) -> torch.Tensor:
        """Posterior standard deviation of a site, ``[T, *event]``."""
        s = self._site(site)
        return s.reshape((-1,) + s.shape[2:]).std(0)

    @property
    def task_sites(self) -> Dict[str, SiteInfo]:
        """The task-level latent sites (``[C, S, T, *event]`` samples)."""
        return {k: v for k, v in self.sites.items() if not v.is_global}

    def site_values(self, num_samples: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """Draws in the model's shape ``{site: [N, *natural]}`` (task sites ``[N, T, 1, *event]``),
        thinned evenly to ``num_samples``."""
        num_samples = optional(check_int, minimum=1)("num_samples", num_samples)
        values = to_site_values(self.samples, self.sites)
        n = self.num_chains * self.num_samples
        if num_samples is not None and num_samples < n:
            idx = evenly_spaced(n, num_samples)
            values = {k: v[idx] for k, v in values.items()}
        return values

    def _same_tasks(self, batch: Optional[TaskBatch]) -> TaskBatch:
        """``batch`` (default: the inferred one) after checking that it holds the inferred tasks.

        The draws are of each inferred task's latents: predicting other tasks with them would be silently
        wrong. Two batches hold the same tasks when their context sets agree (masks equal, and inputs and
        outputs equal at the real points); their target sets may differ.
        """
        if batch is None:
            return self.batch
        if not isinstance(batch, TaskBatch):
            raise TypeError(
                f"batch must be a pyro_meta.TaskBatch of the inferred tasks or None, got {type(batch).__name__}"
            )
        ref = self.batch
        if batch.num_tasks != ref.num_tasks:
            raise ValueError(f"batch has {batch.num_tasks} tasks but the posterior was inferred for {ref.num_tasks}")
        differ = _differing_tasks(ref, batch)
        if differ:
            shown = differ[:10] + (["..."] if len(differ) > 10 else [])
            raise ValueError(
                f"batch: tasks {shown} have other context sets than the tasks the posterior was inferred on; the "
                "draws belong to the inferred tasks. Predict them at new inputs with post.batch.with_targets(x), "
                "or infer the other tasks first"
            )
        return batch

    @serialized
    def predict(self, batch: Optional[TaskBatch] = None, num_samples: Optional[int] = None) -> PosteriorPredictive:
        """Posterior predictive of ``y_target`` at ``batch.target_x`` (default: the inferred batch).

        ``batch`` must hold the same tasks: the same context sets (``ValueError`` otherwise, naming the
        tasks that differ); its target set is free (its ``target_y`` is ignored: draws are sampled).
        ``num_samples`` thins the posterior draws evenly. Returns :class:`PosteriorPredictive` with
        ``samples [C, S, T, Nt, Dy]``. Runs in chunks of tasks (and draws) sized to the memory budget
        (:func:`pyro_meta.set_memory_budget`; see :mod:`pyro_meta.memory` for what chunking changes).
        """
        batch = self._same_tasks(batch)
        if batch.num_points("target") == 0:
            raise ValueError("batch has no target points to predict (target_x is [T, 0, Dx])")
        values = self.site_values(num_samples)
        total = self.num_chains * self.num_samples
        n = total if num_samples is None else min(num_samples, total)
        y, density = predictive_samples(
            self.model, batch.without_target_y().without_task_index(), values, fn=self.fn, sites=self.sites, num=n
        )
        C = self.num_chains if num_samples is None or num_samples >= self.num_chains * self.num_samples else 1
        y = y.reshape((C, n // C) + tuple(y.shape[1:]))
        return PosteriorPredictive(samples=y, batch=batch, _fn=density)

    @serialized
    def function_draws(
        self, batch: Optional[TaskBatch] = None, num_functions: Optional[int] = None
    ) -> Tuple[torch.Tensor, bool]:
        """``E[y | x, z_s]`` at ``batch.target_x`` for ``num_functions`` evenly spaced draws (None: all).

        ``y_target ~ p(y | x, z_s)`` is traced with the draws held fixed (vectorized, or draw by draw
        when ``model.vectorized`` is False) and the mean of its distribution is taken.

        Returns ``(f [N, T, Nt, Dy], is_mean)``: ``N = num_functions`` or ``C * S``; ``is_mean`` is False
        when the likelihood has no ``mean`` (then ``f`` are draws of ``y``, noise included).
        """
        batch = self._same_tasks(batch)
        num_functions = optional(check_int, minimum=1)("num_functions", num_functions)
        values = self.site_values(num_functions)
        total = self.num_chains * self.num_samples
        n = total if num_functions is None else min(num_functions, total)
        return predictive_samples(
            self.model,
            batch.without_target_y().without_task_index(),
            values,
            fn=self.fn,
            sites=self.sites,
            num=n,
            means=True,
        )

    def with_num_draws(self, num: int) -> "Posterior":
        """This posterior with exactly ``num`` draws as one chain: its draws thinned evenly, or reused cyclically."""
        num = check_int("num", num, minimum=1)
        n = self.num_chains * self.num_samples
        idx = torch.arange(num) % n if num > n else evenly_spaced(n, num)
        samples = {k: v.reshape((-1,) + tuple(v.shape[2:]))[idx][None] for k, v in self.samples.items()}
        return dataclasses.replace(self, samples=samples, draws_shape=(1, num))

    def select(self, index: Any) -> "Posterior":
        """The posterior of the tasks ``index`` only (an int, int list, slice or bool/long tensor).

        ``samples [C, S, T, ...] -> [C, S, T', ...]`` (sampled global sites are kept whole), the batch
        by :meth:`TaskBatch.select`, and every per-task diagnostic (:attr:`per_task`, ``bad_tasks``
        renumbered) likewise; chain-level statistics and the rest are kept as they are.
        """
        T = self.batch.num_tasks
        idx = _task_index(index, T)
        rows = torch.arange(T)[idx.cpu() if isinstance(idx, torch.Tensor) else idx]
        if rows.numel() == 0:
            raise ValueError(f"index selects no task of the {T} (got {index!r})")
        batch = self.batch.select(rows)
        samples = {k: v if self.sites[k].is_global else v[:, :, rows] for k, v in self.samples.items()}
        diagnostics: Dict[str, Any] = {}
        for k, v in self.diagnostics.items():
            if k in self.per_task:
                diagnostics[k] = v[rows]
            elif k == "bad_tasks" and isinstance(v, (list, tuple)):
                kept = rows.tolist()
                diagnostics[k] = [kept.index(t) for t in v if t in kept]
            else:
                diagnostics[k] = v
        return dataclasses.replace(self, batch=batch, samples=samples, diagnostics=diagnostics)

    @serialized
    def to_arviz(self, **kwargs: Any):
        """This posterior as ``arviz.InferenceData`` (see :mod:`pyro_meta.arviz`)."""
        from .. import arviz as _az

        return _az.to_inference_data(self, **kwargs)

    def __repr__(self) -> str:
        shapes = {k: list(v.shape) for k, v in self.samples.items()}
        return f"Posterior(method={self.method!r}, samples={shapes}, seconds={self.seconds:.2f})"


def evenly_spaced(n: int, k: int) -> torch.Tensor:
    """``min(k, n)`` evenly spaced indices into ``n`` items (the first and the last included)."""
    return torch.linspace(0, n - 1, min(k, n)).round().long()


def _differing_tasks(ref: TaskBatch, batch: TaskBatch) -> list:
    """Indices of the tasks whose context sets differ between two batches of ``T`` tasks."""
    T = ref.num_tasks
    if (
        ref.context_x.shape != batch.context_x.shape
        or ref.context_y.shape != batch.context_y.shape
        or ref.context_y.dtype != batch.context_y.dtype
        or ref.context_x.dtype != batch.context_x.dtype
        or ref.device != batch.device
    ):
        return list(range(T))
    mask = ref.context_mask
    same = (mask == batch.context_mask).all(-1)
    real = mask & batch.context_mask
    x_ok = ((ref.context_x == batch.context_x).all(-1) | ~real).all(-1)
    eq_y = ref.context_y == batch.context_y
    y_ok = ((eq_y.all(-1) if eq_y.dim() == 3 else eq_y) | ~real).all(-1)
    return torch.nonzero(~(same & x_ok & y_ok)).flatten().tolist()
