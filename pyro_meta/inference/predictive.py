"""Posterior predictive at a batch's target inputs."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Optional, Tuple

import pyro
import torch
from pyro import poutine

from ..data.batch import TaskBatch
from ..model import MetaModel, local_params

__all__ = ["Predictive", "predictive_trace"]


def predictive_trace(
    model: MetaModel, batch: TaskBatch, site_values: Mapping[str, torch.Tensor], fn: Optional[Callable] = None
) -> poutine.Trace:
    """Trace of ``model.model`` (or ``fn``) on ``batch`` (``target_y=None``) conditioned on latent draws.

    ``site_values`` are ``{site: [N, T, 1, *event]}``; ``fn`` is the model with global latents
    held fixed (``Posterior.fn``). Vectorized models go through
    ``pyro.infer.Predictive(..., parallel=True).get_vectorized_trace``; others run draw by draw.
    """
    num = next(iter(site_values.values())).shape[0]
    fn = model.model if fn is None else fn
    if model.vectorized:
        pred = pyro.infer.Predictive(
            fn, posterior_samples=dict(site_values), return_sites=["y_target"], parallel=True
        )
        with local_params(), torch.no_grad():
            return pred.get_vectorized_trace(batch)
    with local_params(), torch.no_grad():
        traces = [
            poutine.trace(poutine.condition(fn, {k: v[i] for k, v in site_values.items()})).get_trace(batch)
            for i in range(num)
        ]
    trace = traces[-1]
    site = trace.nodes["y_target"]
    site["value"] = torch.stack([t.nodes["y_target"]["value"] for t in traces])
    site["fn"] = _StackedFns([t.nodes["y_target"]["fn"] for t in traces])
    return trace


class _StackedFns:
    """``log_prob`` of a list of per-draw distributions, stacked on dim 0."""

    def __init__(self, fns):
        self.fns = fns

    def log_prob(self, y):
        return torch.stack([f.log_prob(y) for f in self.fns])


@dataclasses.dataclass
class Predictive:
    """Posterior predictive draws of ``y_target``.

    Attributes
    ----------
    samples : Tensor ``[C, S, T, Nt, Dy]`` (class labels: ``[C, S, T, Nt]``)
    batch : TaskBatch the predictive is for (its ``target_x``/``target_mask``)
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

    @property
    def mean(self) -> torch.Tensor:
        """Predictive mean ``[T, Nt, Dy]`` (Monte Carlo)."""
        return self.flat.to(torch.get_default_dtype()).mean(0)

    @property
    def std(self) -> torch.Tensor:
        """Predictive standard deviation ``[T, Nt, Dy]`` (Monte Carlo)."""
        return self.flat.to(torch.get_default_dtype()).std(0)

    def interval(self, prob: float = 0.9) -> Tuple[torch.Tensor, torch.Tensor]:
        """Central ``prob`` interval ``(lower, upper)``, each ``[T, Nt, Dy]``, from quantiles of the draws."""
        if not 0 < prob < 1:
            raise ValueError(f"prob must be in (0, 1), got {prob}")
        q = torch.tensor([(1 - prob) / 2, (1 + prob) / 2], dtype=self.flat.dtype)
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
        return f"Predictive(samples={list(self.samples.shape)})"
