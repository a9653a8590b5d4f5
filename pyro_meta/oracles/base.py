"""The :class:`Oracle` protocol that :func:`pyro_meta.evaluate` scores against, and the oracles' input check."""

from __future__ import annotations

import math
from typing import Optional, Protocol, Tuple, runtime_checkable

import torch

from ..data.batch import TaskBatch

__all__ = ["Oracle", "check_oracle"]

LOG_2PI = math.log(2 * math.pi)


@runtime_checkable
class Oracle(Protocol):
    """The Bayes-optimal posterior predictive ``p(y* | x*, context)`` of a task family whose truth is known.

    ``evaluate(..., oracle=...)`` takes any object with these methods (a user's own oracle too); its row is
    the bound no meta-learner should beat beyond sampling noise. Shapes: ``T`` tasks, ``Nt`` targets.
    """

    def predict(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        """Predictive mean and variance at the targets (observation noise included), each ``[T, Nt, Dy]``."""

    def log_prob(self, batch: TaskBatch) -> torch.Tensor:
        """``log p(y*_n | x*_n, context)`` per target point ``[T, Nt]`` (0 on padding)."""

    def sample(self, batch: TaskBatch, num_samples: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Draws of the targets from the predictive ``[S, T, Nt, Dy]``."""


def check_oracle(oracle: object) -> Oracle:
    """``oracle`` if it implements :class:`Oracle`, else ``TypeError`` naming what is missing."""
    missing = [m for m in ("predict", "log_prob", "sample") if not callable(getattr(oracle, m, None))]
    if missing:
        raise TypeError(
            f"oracle must implement pyro_meta.oracles.Oracle (predict, log_prob, sample); "
            f"{type(oracle).__name__} has no {', '.join(missing)}"
        )
    return oracle


def check_regression(batch: TaskBatch, need_y: bool) -> None:
    if not isinstance(batch, TaskBatch):
        raise TypeError(f"batch must be a TaskBatch, got {type(batch).__name__}")
    if batch.is_classification or batch.y_dim != 1:
        raise ValueError(f"batch must be scalar regression (context_y [T, Nc, 1]), got {tuple(batch.context_y.shape)}")
    if need_y and batch.target_y is None:
        raise ValueError("batch.target_y [T, Nt, 1] is required (the batch has target_y=None)")
