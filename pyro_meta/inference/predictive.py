"""Posterior predictive at a batch's target inputs."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Optional, Tuple

import torch
from pyro import poutine

from ..data.batch import TaskBatch
from ..likelihoods import label_log_probs
from ..model import MetaModel, SiteInfo
from ..validation import check_probability
from .chunked import fill, slice_values, trace_chunks
from .draws import trace_draws

__all__ = ["ChunkedDensity", "PosteriorPredictive", "Predictive", "predictive_samples", "predictive_trace"]


def predictive_trace(
    model: MetaModel,
    batch: TaskBatch,
    site_values: Mapping[str, torch.Tensor],
    fn: Optional[Callable] = None,
    sites: Optional[Mapping[str, SiteInfo]] = None,
    num: Optional[int] = None,
) -> poutine.Trace:
    """Trace of ``model.model`` (or ``fn``) on ``batch`` (``target_y=None``) conditioned on latent draws.

    ``site_values`` are draw values ``{site: [N, *natural]}`` (task sites ``[N, T, 1, *event]``);
    ``fn`` is the model with global latents held fixed (``Posterior.fn``); ``sites`` says which
    values are global. Runs through :func:`~pyro_meta.inference.draws.trace_draws` (vectorized
    under the draws plate, or draw by draw when ``model.vectorized`` is False). ``num``: the number
    of draws when there is no latent value (a model without latent sites).
    """
    num = _num_draws(site_values, num)
    fn = model.model if fn is None else fn
    with torch.no_grad():
        return trace_draws(fn, batch, num, model, data=site_values, sites=sites)


def _num_draws(site_values: Mapping[str, torch.Tensor], num: Optional[int]) -> int:
    if site_values:
        return next(iter(site_values.values())).shape[0]
    if num is None:
        raise ValueError("predictive_trace: no latent values and no number of draws")
    return num


def predictive_samples(
    model: MetaModel,
    batch: TaskBatch,
    site_values: Mapping[str, torch.Tensor],
    fn: Optional[Callable] = None,
    sites: Optional[Mapping[str, SiteInfo]] = None,
    num: Optional[int] = None,
    means: bool = False,
) -> Tuple[torch.Tensor, object]:
    """Draws of ``y_target`` (or, with ``means=True``, the means of its distribution) ``[N, T, Nt, ...]``.

    As :func:`predictive_trace`, in chunks sized to the memory budget (:mod:`pyro_meta.memory`).
    Returns ``(values, density)``: ``density`` is the ``y_target`` distribution of a single chunk, or a
    :class:`ChunkedDensity` that recomputes log densities chunk by chunk; with ``means=True`` it is a
    bool, False when the likelihood has no ``mean`` (the values are then draws of ``y``).
    """
    num = _num_draws(site_values, num)
    fn = model.model if fn is None else fn
    T = batch.num_tasks
    out, is_mean = None, None
    with torch.no_grad():
        plan, chunks = trace_chunks(fn, batch, num, model, data=site_values, sites=sites, kind="predictive")
        for draws, tasks, trace in chunks:
            node = trace.nodes["y_target"]
            value = node["value"]
            if means:
                try:
                    value, is_mean = node["fn"].mean.expand_as(value), True
                except (AttributeError, NotImplementedError):
                    is_mean = False
            if plan.single:
                return value.detach(), (is_mean if means else node["fn"])
            out = fill(out, num, T, draws, tasks, value.detach())
    return out, (is_mean if means else ChunkedDensity(model, batch, site_values, fn, sites, num, plan))


class ChunkedDensity:
    """``log p(y | context)`` of a predictive computed in chunks: the model re-run with ``y_target = y``.

    Holds the draws, not the distributions (whose parameters are as large as the draws of ``y``).
    """

    def __init__(self, model, batch, site_values, fn, sites, num, plan) -> None:
        self.model, self.batch, self.site_values, self.fn = model, batch, site_values, fn
        self.sites, self.num, self.plan = sites, num, plan

    def log_predictive(self, y: torch.Tensor) -> torch.Tensor:
        """``log (1/N) sum_n p(y | z_n)`` per point, ``[T, Nt]`` (logsumexp accumulated over the draw chunks)."""
        out = None
        with torch.no_grad():
            for draws, tasks in self.plan:
                y_t = y[tasks]
                conditioned = poutine.condition(self.fn, data={"y_target": y_t})
                trace = trace_draws(
                    conditioned,
                    self.batch.select(tasks),
                    draws.stop - draws.start,
                    self.model,
                    data=slice_values(self.site_values, self.sites, draws, tasks),
                    sites=self.sites,
                )
                lp = trace.nodes["y_target"]["fn"].log_prob(y_t)
                lp = torch.logsumexp(lp.reshape((-1,) + tuple(lp.shape[-2:])), 0)
                if out is None:
                    out = lp.new_full((y.shape[0],) + tuple(lp.shape[1:]), -math.inf)
                out[tasks] = torch.logaddexp(out[tasks], lp)
        return out - math.log(self.num)

    def class_log_probs(self) -> torch.Tensor:
        """``log (1/N) sum_n p(y = k | z_n)`` per point and class, ``[T, Nt, K]`` (class labels; see
        :func:`pyro_meta.likelihoods.label_log_probs`), logsumexp accumulated over the draw chunks."""
        out = None
        with torch.no_grad():
            for draws, tasks in self.plan:
                trace = trace_draws(
                    self.fn,
                    self.batch.select(tasks),
                    draws.stop - draws.start,
                    self.model,
                    data=slice_values(self.site_values, self.sites, draws, tasks),
                    sites=self.sites,
                )
                lp = label_log_probs(trace.nodes["y_target"]["fn"])  # [..., t, Nt, K]
                lp = torch.logsumexp(lp.reshape((-1,) + tuple(lp.shape[-3:])), 0)
                if out is None:
                    out = lp.new_full((self.batch.num_tasks,) + tuple(lp.shape[1:]), -math.inf)
                out[tasks] = torch.logaddexp(out[tasks], lp)
        return out - math.log(self.num)


@dataclasses.dataclass
class PosteriorPredictive:
    """Posterior predictive draws of ``y_target`` (what :meth:`Posterior.predict` returns).

    Not to be confused with ``pyro.infer.Predictive``, which *computes* predictive draws: this is a
    result container. (It was called ``Predictive`` before 0.2; that name is a deprecated alias.)

    Attributes
    ----------
    samples : Tensor ``[C, S, T, Nt, Dy]`` (class labels: ``[C, S, T, Nt]``)
    batch : TaskBatch the predictive is for (its ``target_x``/``target_mask``)

    Notes
    -----
    For class labels, :attr:`class_probs` (and :attr:`class_log_probs`) give the predictive class
    probabilities ``[T, Nt, K]`` from the distributions of the draws, not from the sampled labels.
    """

    samples: torch.Tensor
    batch: TaskBatch
    _fn: object = dataclasses.field(repr=False, default=None)

    @property
    def num_draws(self) -> int:
        return self.samples.shape[0] * self.samples.shape[1]

    @property
    def flat(self) -> torch.Tensor:
        """Draws ``[C*S, T, Nt, ...]``."""
        return self.samples.reshape((-1,) + tuple(self.samples.shape[2:]))

    def _float_draws(self) -> torch.Tensor:
        flat = self.flat
        return flat if flat.is_floating_point() else flat.to(torch.get_default_dtype())

    @property
    def mean(self) -> torch.Tensor:
        """Predictive mean ``[T, Nt, Dy]`` (Monte Carlo), in the draws' dtype."""
        return self._float_draws().mean(0)

    @property
    def std(self) -> torch.Tensor:
        """Predictive standard deviation ``[T, Nt, Dy]`` (Monte Carlo), in the draws' dtype."""
        return self._float_draws().std(0)

    @property
    def is_classification(self) -> bool:
        """True when ``y_target`` holds class labels (the batch has long labels, or the draws are integers)."""
        return self.batch.is_classification or not self.samples.is_floating_point()

    @property
    def class_log_probs(self) -> torch.Tensor:
        """Log predictive class probabilities ``log p(y = k | context) [T, Nt, K]`` (class labels only).

        ``log (1/N) sum_n p(y = k | z_n)`` over the ``N = C*S`` posterior draws, where ``p(y | z_n)`` is
        the distribution of the ``y_target`` site in draw ``n`` (``Categorical``: its probabilities;
        ``Bernoulli``: ``K = 2``, ``[1 - p, p]``; see :func:`pyro_meta.likelihoods.label_log_probs`), computed
        with ``logsumexp`` so that confident mistakes keep a finite log-probability. Padded target points
        (``batch.target_mask`` False) hold the uniform ``-log K``: they are not predictions.
        """
        if self._fn is None:
            raise ValueError("class_log_probs: this predictive carries no distribution of y_target")
        if not self.is_classification:
            raise ValueError(
                "class_log_probs: y_target is real-valued (regression); class probabilities need class labels"
            )
        T, Nt = self.batch.target_mask.shape
        if isinstance(self._fn, ChunkedDensity):
            out = self._fn.class_log_probs()
        else:
            with torch.no_grad():
                lp = label_log_probs(self._fn)  # [..., T, Nt, K]
            lp = lp.reshape((-1, T, Nt, lp.shape[-1]))
            out = torch.logsumexp(lp, 0) - math.log(lp.shape[0])
        K = out.shape[-1]
        return out.masked_fill(~self.batch.target_mask[..., None], -math.log(K))

    @property
    def class_probs(self) -> torch.Tensor:
        """Posterior predictive class probabilities ``p(y = k | context) [T, Nt, K]`` (class labels only).

        The mean over the draws of each draw's class probabilities, ``(1/N) sum_n p(y = k | z_n)``
        (``exp`` of :attr:`class_log_probs`), not a histogram of the sampled labels; each row sums to 1.
        Padded target points (``batch.target_mask`` False) hold the uniform ``1/K``.
        """
        return self.class_log_probs.exp()

    def interval(self, prob: float = 0.9) -> Tuple[torch.Tensor, torch.Tensor]:
        """Central ``prob`` interval ``(lower, upper)``, each ``[T, Nt, Dy]``, from quantiles of the draws.

        Regression only: class labels have no order to take quantiles of (``ValueError``; use
        :attr:`class_probs`).
        """
        if self.is_classification:
            raise ValueError(
                "interval: y_target holds class labels, which have no predictive interval; use "
                "class_probs [T, Nt, K] (the predictive class probabilities) instead"
            )
        prob = check_probability("prob", prob)
        q = torch.tensor([(1 - prob) / 2, (1 + prob) / 2], dtype=self.flat.dtype, device=self.flat.device)
        lo, hi = torch.quantile(self.flat, q, dim=0)
        return lo, hi

    def log_prob(self, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pointwise log predictive density ``log (1/N) sum_n p(y | z_n)``, ``[T, Nt]``; padded points are 0.

        ``y`` defaults to the batch's ``target_y``.
        """
        if y is None:
            y = self.batch.target_y
        if y is None:
            raise ValueError("log_prob needs y [T, Nt, Dy]: the batch has no target_y")
        expected = tuple(self.samples.shape[2:])
        if not isinstance(y, torch.Tensor):
            raise TypeError(
                f"y must be a tensor of shape {list(expected)} (the predictive's [T, Nt, Dy]), got {type(y).__name__}"
            )
        if tuple(y.shape) != expected:
            raise ValueError(f"y must have shape {list(expected)} (the predictive's [T, Nt, Dy]), got {tuple(y.shape)}")
        if y.is_floating_point() != self.samples.is_floating_point():
            raise TypeError(
                f"y must be {'real-valued (floating)' if self.samples.is_floating_point() else 'class labels (long)'}"
                f" like the predictive's draws, got dtype {y.dtype}"
            )
        if y.is_floating_point() and not bool(torch.isfinite(y[self.batch.target_mask]).all()):
            raise ValueError("y has NaN or inf values at real target points")
        with torch.no_grad():
            if isinstance(self._fn, ChunkedDensity):
                out = self._fn.log_predictive(y)
            else:
                lp = self._fn.log_prob(y)  # [N, T, Nt]
                lp = lp.reshape((-1,) + lp.shape[-2:])
                out = torch.logsumexp(lp, 0) - math.log(lp.shape[0])
        return out.masked_fill(~self.batch.target_mask, 0.0)

    def __repr__(self) -> str:
        return f"PosteriorPredictive(samples={list(self.samples.shape)})"


class _DeprecatedAlias(type):
    def __instancecheck__(cls, obj):
        return isinstance(obj, PosteriorPredictive)


class Predictive(PosteriorPredictive, metaclass=_DeprecatedAlias):
    """Deprecated alias of :class:`PosteriorPredictive` (removed in the next release).

    Renamed because ``pyro.infer.Predictive`` is a callable that computes predictive draws, while
    this is a result container.
    """

    def __init__(self, *args, **kwargs) -> None:
        import warnings

        warnings.warn(
            "pyro_meta.Predictive is renamed PosteriorPredictive; the old name goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        super().__init__(*args, **kwargs)
