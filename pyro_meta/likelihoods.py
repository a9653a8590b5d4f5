"""Observation likelihoods from network outputs, and class probabilities from a label distribution.

Three likelihoods cover the zoo (``T`` tasks, ``N`` points, leading draw dims ``...``):

* ``"normal"`` -- ``y ~ N(f(x), noise^2 I)``: outputs ``[..., T, N, Dy]``, event ``[Dy]``;
* ``"categorical"`` -- ``y ~ Categorical(softmax(f(x)))``: logits ``[..., T, N, K]``, long labels ``[T, N]``;
* ``"bernoulli"`` -- ``y ~ Bernoulli(sigmoid(f(x)))``: one logit ``[..., T, N, 1]``, labels 0/1 ``[T, N]``.

:class:`BernoulliLabels` is Pyro's ``Bernoulli`` for class labels: it scores long (or bool) labels
(torch's ``Bernoulli.log_prob`` raises a dtype error on them) and samples long labels, as
``Categorical`` does. :func:`label_log_probs` turns the distribution of a label site into
per-class log-probabilities ``[..., K]``, which is how :class:`~pyro_meta.PosteriorPredictive`
computes class probabilities.
"""

from __future__ import annotations

from typing import Optional, Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution

__all__ = [
    "LIKELIHOODS",
    "BernoulliLabels",
    "check_likelihood",
    "label_log_probs",
    "likelihood_from_outputs",
    "num_outputs",
]

LIKELIHOODS = ("normal", "categorical", "bernoulli")


class BernoulliLabels(dist.Bernoulli):
    """``Bernoulli(probs | logits)`` over class labels 0/1: scores long, int or bool labels, samples long ones.

    ``log_prob(y) = y log p + (1 - y) log(1 - p)`` with ``y`` cast to the logits' dtype (torch's
    ``Bernoulli.log_prob`` raises "result type Float can't be cast to ... Long" on integer labels).
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if isinstance(value, torch.Tensor) and not value.is_floating_point():
            value = value.to(self.logits.dtype)
        return super().log_prob(value)

    def sample(self, sample_shape: Sequence[int] = ()) -> torch.Tensor:
        return super().sample(torch.Size(sample_shape)).long()

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        return super().enumerate_support(expand).long()


def check_likelihood(likelihood: object) -> str:
    """``likelihood`` if it is one of :data:`LIKELIHOODS`, else ``ValueError``."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    return likelihood


def num_outputs(likelihood: str, y_dim: int = 1, num_classes: Optional[int] = None) -> int:
    """Network outputs per point: ``Dy`` (normal), ``K`` (categorical, ``K >= 2``) or 1 (bernoulli)."""
    check_likelihood(likelihood)
    if likelihood == "normal":
        return y_dim
    if likelihood == "bernoulli":
        return 1
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2 for likelihood='categorical', got {num_classes!r}")
    return num_classes


def likelihood_from_outputs(
    likelihood: str, out: torch.Tensor, noise: Optional[torch.Tensor] = None
) -> dist.Distribution:
    """``p(y | f(x))`` from outputs ``out [..., T, N, O]``: batch shape ``[..., T, N]``.

    ``"normal"``: ``Normal(out, noise).to_event(1)`` (event ``[Dy]``); ``"categorical"``:
    ``Categorical(logits=out)``; ``"bernoulli"``: :class:`BernoulliLabels` with ``logits=out[..., 0]``.
    """
    if likelihood == "normal":
        return dist.Normal(out, noise).to_event(1)
    if likelihood == "categorical":
        return dist.Categorical(logits=out)
    if likelihood == "bernoulli":
        return BernoulliLabels(logits=out[..., 0])
    raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")


def label_log_probs(fn: object) -> torch.Tensor:
    """Per-class log-probabilities ``log p(y = k)``, ``[*batch_shape, K]``, of a distribution over class labels.

    ``Categorical``: its normalised logits; ``Bernoulli`` (and :class:`BernoulliLabels`): ``K = 2``,
    ``[log(1 - p), log p]``; any other distribution with a finite support enumerated as ``0 .. K-1``
    (``enumerate_support``): ``log_prob`` of every label. ``Independent`` with no reinterpreted dims,
    masked and expanded distributions are unwrapped (an expanded one is broadcast back to its batch
    shape); a stack of per-draw distributions (``fns``, a non-vectorized run) is stacked on dim 0.
    ``ValueError`` for a distribution over anything but class labels (e.g. ``Normal``).
    """
    fns = getattr(fn, "fns", None)
    if fns is not None:
        return torch.stack([label_log_probs(f) for f in fns])
    batch_shape = torch.Size(getattr(fn, "batch_shape", ()))
    base = fn
    while True:
        if isinstance(base, dist.Independent) and base.reinterpreted_batch_ndims == 0:
            base = base.base_dist
        elif isinstance(base, (MaskedDistribution, ExpandedDistribution)):
            base = base.base_dist
        else:
            break
    if isinstance(base, torch.distributions.Categorical) and not isinstance(
        base, torch.distributions.OneHotCategorical
    ):
        out = base.logits
    elif isinstance(base, torch.distributions.Bernoulli):
        out = torch.stack([F.logsigmoid(-base.logits), F.logsigmoid(base.logits)], -1)
    elif getattr(base, "has_enumerate_support", False) and tuple(getattr(base, "event_shape", ())) == ():
        support = base.enumerate_support(expand=False)  # [K, 1, ..., 1]
        lp = base.log_prob(support)  # [K, *batch]
        out = lp.movedim(0, -1)
    else:
        raise ValueError(
            f"the label site's distribution {type(fn).__name__} is not a distribution over class labels "
            "(Categorical, Bernoulli, or a finite enumerable support 0..K-1)"
        )
    return out.expand(batch_shape + out.shape[-1:])
