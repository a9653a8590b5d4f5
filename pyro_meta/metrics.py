"""Metrics: pure functions of predictions and truth, masked by ``mask [T, N]`` (True = real point).

Shapes use ``S`` predictive draws, ``T`` tasks, ``N`` points, ``D`` output features and ``C``
classes. Sample arguments are ``[..., T, N, D]``: leading sample dims (such as the ``[C, S]`` of
:attr:`pyro_meta.PosteriorPredictive.samples`) are flattened into one. Averages are over real points (and
features); scalar metrics return a Python float.

Regression: :func:`mse`, :func:`log_likelihood`, :func:`crps`, :func:`coverage`, :func:`pit`,
:func:`pit_histogram`. Classification: :func:`accuracy`, :func:`brier_score`,
:func:`expected_calibration_error`.
"""

from __future__ import annotations

from typing import NamedTuple, Tuple

import torch

__all__ = [
    "ReliabilityBins",
    "accuracy",
    "brier_score",
    "coverage",
    "crps",
    "expected_calibration_error",
    "log_likelihood",
    "mse",
    "pit",
    "pit_histogram",
]


# ----------------------------------------------------------------------------------- checks
def _check_mask(mask, T: int, N: int) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor of shape [T, N] = [{T}, {N}], got {_describe(mask)}")
    if tuple(mask.shape) != (T, N):
        raise ValueError(f"mask must have shape [T, N] = [{T}, {N}], got {tuple(mask.shape)}")
    if not bool(mask.any()):
        raise ValueError("mask selects no point: every metric needs at least one real point")
    return mask


def _check_y(name: str, y, dims: int = 3, shape: str = "[T, N, D]") -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or not y.is_floating_point():
        raise TypeError(f"{name} must be a float tensor of shape {shape}, got {_describe(y)}")
    if y.dim() != dims:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(y.shape)}")
    return y


def _check_samples(samples, y: torch.Tensor) -> torch.Tensor:
    if not isinstance(samples, torch.Tensor) or not samples.is_floating_point():
        raise TypeError(f"samples must be a float tensor of shape [S, T, N, D], got {_describe(samples)}")
    if samples.dim() < 4 or tuple(samples.shape[-3:]) != tuple(y.shape):
        raise ValueError(
            f"samples must have shape [S, T, N, D] = [S, {', '.join(map(str, y.shape))}] to match y, "
            f"got {tuple(samples.shape)}"
        )
    return samples.reshape((-1,) + tuple(y.shape))


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of ``values [T, N, ...]`` over real points (and any trailing dims)."""
    m = mask.reshape(mask.shape + (1,) * (values.dim() - 2)).expand_as(values)
    return float(values[m].double().mean())


# ------------------------------------------------------------------------------ regression
def mse(pred_mean: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean squared error ``mean_{real t, n; d} (pred_mean - y)^2``.

    Parameters
    ----------
    pred_mean, y : Tensor ``[T, N, D]``
    mask : bool ``[T, N]``
    """
    y = _check_y("y", y)
    pred_mean = _check_y("pred_mean", pred_mean)
    if pred_mean.shape != y.shape:
        raise ValueError(f"pred_mean must have the shape of y {tuple(y.shape)}, got {tuple(pred_mean.shape)}")
    mask = _check_mask(mask, *y.shape[:2])
    return _masked_mean((pred_mean - y) ** 2, mask)


def log_likelihood(log_prob_points: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean log predictive density per real point, ``mean_{real t, n} log p(y_tn)``.

    Parameters
    ----------
    log_prob_points : Tensor ``[T, N]``, e.g. :meth:`pyro_meta.PosteriorPredictive.log_prob` or an oracle's ``log_prob``
    mask : bool ``[T, N]``
    """
    lp = _check_y("log_prob_points", log_prob_points, 2, "[T, N]")
    mask = _check_mask(mask, *lp.shape)
    return _masked_mean(lp, mask)


def crps(samples: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, fair: bool = False) -> float:
    """Continuous ranked probability score (lower is better), energy form, mean over real points.

    ``CRPS(F, y) = E|X - y| - 0.5 E|X - X'|`` with ``X, X' ~ F`` independent, estimated from the
    draws: ``fair=False`` scores the empirical distribution of the draws (``E|X - X'|`` over all
    ``S^2`` pairs, as ``properscoring.crps_ensemble``); ``fair=True`` gives an unbiased estimate of
    the CRPS of the distribution the draws come from (``S (S - 1)`` distinct pairs).

    Parameters
    ----------
    samples : Tensor ``[S, T, N, D]`` (leading sample dims are flattened)
    y : Tensor ``[T, N, D]``
    mask : bool ``[T, N]``
    """
    y = _check_y("y", y)
    x = _check_samples(samples, y)
    mask = _check_mask(mask, *y.shape[:2])
    S = x.shape[0]
    if fair and S < 2:
        raise ValueError("crps(fair=True) needs at least 2 samples")
    x = x.double()
    term1 = (x - y.double()).abs().mean(0)
    # sum_{i,j} |x_i - x_j| = 2 sum_i (2 i - S + 1) x_(i) over the sorted draws (i = 0..S-1)
    xs = x.sort(0).values
    w = (2 * torch.arange(S, dtype=xs.dtype, device=xs.device) - S + 1).reshape((S,) + (1,) * (xs.dim() - 1))
    pair_sum = 2 * (w * xs).sum(0)
    term2 = pair_sum / (S * (S - 1) if fair else S * S)
    return _masked_mean(term1 - 0.5 * term2, mask)


def coverage(samples: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, level: float = 0.9) -> float:
    """Fraction of real points inside the central ``level`` predictive interval.

    The interval is ``[q_{(1-level)/2}, q_{(1+level)/2}]`` of the draws (``torch.quantile``, linear
    interpolation); a calibrated predictive gives ``coverage ~ level``.

    Parameters
    ----------
    samples : Tensor ``[S, T, N, D]``
    y : Tensor ``[T, N, D]``
    mask : bool ``[T, N]``
    level : float in (0, 1)
    """
    if not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    y = _check_y("y", y)
    x = _check_samples(samples, y)
    mask = _check_mask(mask, *y.shape[:2])
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=x.dtype, device=x.device)
    lo, hi = torch.quantile(x, q, dim=0)
    inside = ((y >= lo) & (y <= hi)).to(torch.float64)
    return _masked_mean(inside, mask)


def pit(samples: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Probability integral transform ``F(y) = P(X < y) + 0.5 P(X = y)`` of each real point.

    Uniform on ``[0, 1]`` for a calibrated predictive. Returns a 1-D tensor ``[num_real_points * D]``
    (real points in row-major ``(t, n)`` order, features innermost).

    Parameters
    ----------
    samples : Tensor ``[S, T, N, D]``
    y : Tensor ``[T, N, D]``
    mask : bool ``[T, N]``
    """
    y = _check_y("y", y)
    x = _check_samples(samples, y)
    mask = _check_mask(mask, *y.shape[:2])
    below = (x < y).to(torch.float64).mean(0) + 0.5 * (x == y).to(torch.float64).mean(0)
    return below[mask].reshape(-1)


def pit_histogram(pit_values: torch.Tensor, bins: int = 10) -> Tuple[torch.Tensor, torch.Tensor]:
    """Calibration histogram of PIT values: ``(edges [bins + 1], frequency [bins])``.

    ``frequency`` sums to 1; a calibrated predictive gives ``frequency ~ 1 / bins`` in every bin
    (a U shape means overconfident, a hump underconfident). Bins are ``[i/bins, (i+1)/bins)``, the
    last one closed.
    """
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    p = _check_y("pit_values", pit_values, 1, "[M]")
    if p.numel() == 0:
        raise ValueError("pit_values is empty")
    if bool((p < 0).any() | (p > 1).any()):
        raise ValueError("pit_values must lie in [0, 1]")
    idx = (p.double() * bins).floor().long().clamp_max(bins - 1)
    counts = torch.bincount(idx, minlength=bins).double()
    return torch.linspace(0, 1, bins + 1, dtype=torch.float64, device=p.device), counts / counts.sum()


# -------------------------------------------------------------------------- classification
def _check_probs(probs, labels, mask) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    probs = _check_y("probs", probs, 3, "[T, N, C]")
    T, N, C = probs.shape
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"labels must be an integer tensor of shape [T, N] = [{T}, {N}], got {_describe(labels)}")
    if tuple(labels.shape) != (T, N):
        raise ValueError(f"labels must have shape [T, N] = [{T}, {N}] to match probs, got {tuple(labels.shape)}")
    mask = _check_mask(mask, T, N)
    p, lab = probs[mask].double(), labels[mask].long()
    if bool((lab < 0).any() | (lab >= C).any()):
        raise ValueError(f"labels of real points must lie in [0, C) = [0, {C})")
    if bool((p < 0).any()) or not torch.allclose(p.sum(-1), torch.ones_like(p[:, 0]), atol=1e-4):
        raise ValueError("probs of real points must be non-negative and sum to 1 over the last dim [C]")
    return p, lab, mask


def accuracy(probs: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of real points whose most probable class is the label, ``mean 1[argmax_c p_c = y]``.

    Parameters
    ----------
    probs : Tensor ``[T, N, C]`` (class probabilities)
    labels : long ``[T, N]``
    mask : bool ``[T, N]``
    """
    p, lab, _ = _check_probs(probs, labels, mask)
    return float((p.argmax(-1) == lab).double().mean())


def brier_score(probs: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> float:
    """Multi-class Brier score ``mean_points sum_c (p_c - 1[y = c])^2`` (in ``[0, 2]``, lower is better).

    Parameters
    ----------
    probs : Tensor ``[T, N, C]``
    labels : long ``[T, N]``
    mask : bool ``[T, N]``
    """
    p, lab, _ = _check_probs(probs, labels, mask)
    onehot = torch.nn.functional.one_hot(lab, p.shape[-1]).double()
    return float((p - onehot).pow(2).sum(-1).mean())


class ReliabilityBins(NamedTuple):
    """Reliability diagram: per confidence bin ``[bins]`` the mean confidence, accuracy and count.

    ``confidence`` and ``accuracy`` are NaN in empty bins; ``edges`` is ``[bins + 1]``.
    """

    edges: torch.Tensor
    confidence: torch.Tensor
    accuracy: torch.Tensor
    count: torch.Tensor


def expected_calibration_error(
    probs: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, bins: int = 10
) -> Tuple[float, ReliabilityBins]:
    """Expected calibration error ``sum_b (n_b / n) |acc_b - conf_b|`` and the reliability bins.

    The confidence of a point is its largest class probability; bins are equal-width on
    ``[0, 1]``, bin ``b`` holding confidences in ``(b/bins, (b+1)/bins]`` (the first also holds 0).

    Parameters
    ----------
    probs : Tensor ``[T, N, C]``
    labels : long ``[T, N]``
    mask : bool ``[T, N]``
    bins : int

    Returns
    -------
    ece : float
    reliability : ReliabilityBins
    """
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    p, lab, _ = _check_probs(probs, labels, mask)
    conf, pred = p.max(-1)
    correct = (pred == lab).double()
    idx = (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)
    count = torch.bincount(idx, minlength=bins).double()
    conf_sum = torch.bincount(idx, weights=conf, minlength=bins)
    acc_sum = torch.bincount(idx, weights=correct, minlength=bins)
    nonempty = count > 0
    nan = torch.full_like(count, float("nan"))
    mean_conf = torch.where(nonempty, conf_sum / count.clamp_min(1), nan)
    mean_acc = torch.where(nonempty, acc_sum / count.clamp_min(1), nan)
    ece = float((acc_sum - conf_sum).abs().sum() / count.sum())
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64, device=p.device)
    return ece, ReliabilityBins(edges, mean_conf, mean_acc, count.long())
