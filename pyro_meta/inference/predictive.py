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
from .draws import trace_draws

__all__ = ["PosteriorPredictive", "Predictive", "predictive_trace"]


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
    if site_values:
        num = next(iter(site_values.values())).shape[0]
    elif num is None:
        raise ValueError("predictive_trace: no latent values and no number of draws")
    fn = model.model if fn is None else fn
    with torch.no_grad():
        return trace_draws(fn, batch, num, model, data=site_values, sites=sites)


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
            raise ValueError("class_log_probs: y_target is real-valued (regression); class probabilities need "
                             "class labels")
        T, Nt = self.batch.target_mask.shape
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
            raise ValueError("interval: y_target holds class labels, which have no predictive interval; use "
                             "class_probs [T, Nt, K] (the predictive class probabilities) instead")
        if not 0 < prob < 1:
            raise ValueError(f"prob must be in (0, 1), got {prob}")
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
        if tuple(y.shape) != expected:
            raise ValueError(f"y must have shape {list(expected)} (the predictive's [T, Nt, Dy]), got {tuple(y.shape)}")
        with torch.no_grad():
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

        warnings.warn("pyro_meta.Predictive is renamed PosteriorPredictive; the old name goes in the next release",
                      DeprecationWarning, stacklevel=2)
        super().__init__(*args, **kwargs)
