"""``LineOrSine``: each task is a sinusoid or a line (PLATIPUS, Finn, Xu & Levine 2018).

With one to three context points a line and a sinusoid often explain the data equally well, so
the Bayes-optimal predictive (:class:`pyro_meta.oracles.LineOrSineOracle`) is multimodal.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch

from .tasks import TaskDistribution, _uniform

__all__ = ["LineOrSine"]


def _check_range(name: str, value, positive: bool = False) -> Tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a (low, high) pair of floats, got {value!r}") from None
    if not lo <= hi or (positive and lo < 0):
        raise ValueError(f"{name} must satisfy {'0 <= ' if positive else ''}low <= high, got {value!r}")
    return lo, hi


class LineOrSine(TaskDistribution):
    """Line-or-sine regression, the PLATIPUS ambiguity benchmark (Finn, Xu & Levine 2018).

    Each task is, with probability ``sine_prob``, a sinusoid ``y = A sin(x - phase)`` with
    ``A ~ U[0.1, 5]``, ``phase ~ U[0, pi]`` (the MAML sinusoid protocol), otherwise a line
    ``y = slope * x + intercept`` with ``slope, intercept ~ U[-3, 3]``; ``x ~ U[-5, 5]`` and
    ``y`` gets Gaussian noise of standard deviation ``noise_std``.

    Parameters
    ----------
    noise_std : float
        Observation noise standard deviation, default 0.1 (this library's choice: small enough
        that a few points often cannot tell a line from a sinusoid, nonzero so that likelihoods
        and the oracle are defined). Must be >= 0.
    sine_prob : float
        Prior probability that a task is a sinusoid, default 0.5.
    amplitude_range, phase_range, slope_range, intercept_range, x_range : (low, high)
        Uniform ranges of the protocol.

    ``batch.info`` holds ``is_sine`` (bool ``[T]``), ``amplitude``, ``phase``, ``slope`` and
    ``intercept`` (each ``[T]``; the parameters the task does not use are 0).
    """

    def __init__(
        self,
        noise_std: float = 0.1,
        sine_prob: float = 0.5,
        amplitude_range: Tuple[float, float] = (0.1, 5.0),
        phase_range: Tuple[float, float] = (0.0, math.pi),
        slope_range: Tuple[float, float] = (-3.0, 3.0),
        intercept_range: Tuple[float, float] = (-3.0, 3.0),
        x_range: Tuple[float, float] = (-5.0, 5.0),
    ) -> None:
        if not isinstance(noise_std, (int, float)) or isinstance(noise_std, bool) or noise_std < 0:
            raise ValueError(f"noise_std must be a float >= 0, got {noise_std!r}")
        if not isinstance(sine_prob, (int, float)) or not 0.0 <= sine_prob <= 1.0:
            raise ValueError(f"sine_prob must be a probability in [0, 1], got {sine_prob!r}")
        self.noise_std = float(noise_std)
        self.sine_prob = float(sine_prob)
        self.amplitude_range = _check_range("amplitude_range", amplitude_range, positive=True)
        self.phase_range = _check_range("phase_range", phase_range)
        self.slope_range = _check_range("slope_range", slope_range)
        self.intercept_range = _check_range("intercept_range", intercept_range)
        self.x_range = _check_range("x_range", x_range)

    def sample_params(self, num_tasks, generator):
        is_sine = torch.rand(num_tasks, generator=generator) < self.sine_prob
        amplitude = _uniform(*self.amplitude_range, (num_tasks,), generator)
        phase = _uniform(*self.phase_range, (num_tasks,), generator)
        slope = _uniform(*self.slope_range, (num_tasks,), generator)
        intercept = _uniform(*self.intercept_range, (num_tasks,), generator)
        zero = torch.zeros(num_tasks)
        return {
            "is_sine": is_sine,
            "amplitude": torch.where(is_sine, amplitude, zero),
            "phase": torch.where(is_sine, phase, zero),
            "slope": torch.where(is_sine, zero, slope),
            "intercept": torch.where(is_sine, zero, intercept),
        }

    def function(self, x, params):
        """``f_t(x)`` ``[T, N, 1]`` from ``x [T, N, 1]``: the sinusoid or the line of each task."""

        def p(name):
            return params[name].to(x.dtype)[:, None, None]

        sine = p("amplitude") * torch.sin(x - p("phase"))
        line = p("slope") * x + p("intercept")
        return torch.where(params["is_sine"][:, None, None], sine, line)

    def __repr__(self) -> str:
        return f"LineOrSine(noise_std={self.noise_std}, sine_prob={self.sine_prob})"
