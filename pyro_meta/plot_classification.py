"""Figures of few-shot classification: an episode with its predicted probabilities, and reliability diagrams.

* :func:`plot_episode` -- the support images of one episode by class and its query images, with the
  predicted class probabilities as bars;
* :func:`plot_reliability` -- reliability diagrams from :func:`pyro_meta.metrics.expected_calibration_error`'s
  bins (accuracy against confidence per bin, the gap to the diagonal, and how many points each bin holds).

Each returns a ``matplotlib.figure.Figure`` (made with ``pyplot``; close it with ``plt.close(fig)`` in scripts).
``pyro_meta.plot_episode`` (the module this one grew from) re-exports :func:`plot_episode`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from .data.batch import TaskBatch
from .metrics import ReliabilityBins, expected_calibration_error

__all__ = ["plot_episode", "plot_reliability", "reliability_bins"]


def _image_shape(batch: TaskBatch, image_shape: Optional[Sequence[int]]) -> Tuple[int, int]:
    shape = image_shape if image_shape is not None else batch.info.get("image_shape")
    if shape is None:
        raise ValueError("plot_episode needs image_shape=(H, W) (the batch has no info['image_shape'])")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or shape[0] * shape[1] != batch.x_dim:
        raise ValueError(f"image_shape must be (H, W) with H * W = Dx = {batch.x_dim}, got {shape}")
    return shape


def _check_probs(probs: Any, batch: TaskBatch, way: int) -> np.ndarray:
    p = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    expected = (batch.num_tasks, batch.num_points("target"), way)
    if p.ndim != 3 or tuple(p.shape) != expected:
        raise ValueError(f"probs must have shape [T, Nt, N] = {list(expected)}, got {list(p.shape)}")
    if not np.issubdtype(p.dtype, np.floating) or not np.isfinite(p).all() or (p < 0).any() or (p > 1 + 1e-6).any():
        raise ValueError("probs must be finite class probabilities in [0, 1]")
    return p


def _spread(labels: np.ndarray, limit: int) -> np.ndarray:
    """Indices of up to ``limit`` points, taking each class in turn (first of every class, then second, ...)."""
    rank = np.zeros_like(labels)
    for c in np.unique(labels):
        where = labels == c
        rank[where] = np.arange(where.sum())
    return np.lexsort((labels, rank))[:limit]


def plot_episode(
    batch: TaskBatch,
    probs: Any = None,
    task: int = 0,
    class_names: Optional[Sequence[str]] = None,
    image_shape: Optional[Sequence[int]] = None,
    max_queries: int = 15,
    queries_per_row: int = 5,
) -> Figure:
    """Draw episode ``task`` of a classification ``batch``: support images by class, then query images.

    Parameters
    ----------
    batch : TaskBatch
        Long labels ``context_y [T, Nc]``, ``target_y [T, Nt]`` (or None), flattened images ``x [T, N, H*W]``
        (e.g. from :class:`pyro_meta.data.Episodes`).
    probs : Tensor or array ``[T, Nt, N]``, optional
        Predicted class probabilities of the queries; each shown query gets a bar chart over the ``N``
        classes and a title ``true -> predicted (probability)``, green when right, red when wrong.
    task : int
        Which episode.
    class_names : sequence of str, optional
        Names indexed by ``batch.info["classes"]`` (e.g. ``Episodes.class_names``), shown per support row.
    image_shape : (H, W), optional
        Default ``batch.info["image_shape"]``.
    max_queries, queries_per_row : int
        Queries shown (taking the classes in turn) and their layout.
    """
    if not isinstance(batch, TaskBatch):
        raise TypeError(f"batch must be a TaskBatch, got {type(batch).__name__}")
    if not batch.is_classification:
        raise ValueError("plot_episode draws classification episodes (long labels); got a regression batch")
    if isinstance(task, bool) or not isinstance(task, int) or not -batch.num_tasks <= task < batch.num_tasks:
        raise ValueError(f"task must be an int in 0 .. {batch.num_tasks - 1}, got {task!r}")
    for name, v in (("max_queries", max_queries), ("queries_per_row", queries_per_row)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    H, W = _image_shape(batch, image_shape)
    labels = [batch.context_y[task][batch.context_mask[task]]]
    if batch.target_y is not None:
        labels.append(batch.target_y[task][batch.target_mask[task]])
    way = int(batch.info.get("way", int(torch.cat(labels).max()) + 1))
    p = _check_probs(probs, batch, way)[task] if probs is not None else None

    cmask = batch.context_mask[task].cpu().numpy()
    cx = batch.context_x[task].detach().cpu().numpy()[cmask].reshape(-1, H, W)
    cy = batch.context_y[task].cpu().numpy()[cmask]
    tmask = batch.target_mask[task].cpu().numpy()
    tx = batch.target_x[task].detach().cpu().numpy()[tmask].reshape(-1, H, W)
    ty = batch.target_y[task].cpu().numpy()[tmask] if batch.target_y is not None else None
    tp = p[tmask] if p is not None else None
    shown = _spread(ty, max_queries) if ty is not None else np.arange(min(len(tx), max_queries))
    shots = max(int((cy == c).sum()) for c in range(way))
    names = None
    if class_names is not None and "classes" in batch.info:
        names = [str(class_names[int(c)]) for c in batch.info["classes"][task].tolist()]
        if "rotations" in batch.info:
            names = [
                n + (f" ({90 * r} deg)" if r else "") for n, r in zip(names, batch.info["rotations"][task].tolist())
            ]

    ncols = min(queries_per_row, max(len(shown), 1))
    nrows = max(math.ceil(len(shown) / ncols), 1)
    per_query = 2 if tp is not None else 1
    fig = plt.figure(
        figsize=(1.1 * shots + 1.6 + 1.3 * ncols, 1.1 * max(way, nrows * per_query * 0.9) + 0.6), layout="constrained"
    )
    left, right = fig.subfigures(1, 2, width_ratios=[shots + 1.5, 1.2 * ncols])
    left.suptitle("support (context)")
    axes = np.atleast_2d(left.subplots(way, shots, squeeze=False))
    for c in range(way):
        images = cx[cy == c]
        for k in range(shots):
            ax = axes[c, k]
            ax.set_xticks([])
            ax.set_yticks([])
            if k < len(images):
                ax.imshow(images[k], cmap="gray_r", vmin=0.0, vmax=1.0)
            else:
                ax.axis("off")
        axes[c, 0].set_ylabel(
            f"{c}" + (f": {names[c]}" if names else ""), rotation=0, ha="right", va="center", fontsize=8
        )
    right.suptitle("queries (target)" + (": true -> predicted" if tp is not None else ""))
    grid = right.add_gridspec(nrows * per_query, ncols, height_ratios=[1.0, 0.6] * nrows if tp is not None else None)
    for i, q in enumerate(shown):
        r, col = divmod(i, ncols)
        ax = right.add_subplot(grid[r * per_query, col])
        ax.imshow(tx[q], cmap="gray_r", vmin=0.0, vmax=1.0)
        ax.set_xticks([])
        ax.set_yticks([])
        if tp is None:
            ax.set_title(f"y = {ty[q]}" if ty is not None else f"query {q}", fontsize=8)
            continue
        pred = int(tp[q].argmax())
        right_answer = ty is not None and pred == int(ty[q])
        color = "black" if ty is None else ("tab:green" if right_answer else "tab:red")
        head = f"{ty[q]} -> " if ty is not None else "-> "
        ax.set_title(f"{head}{pred} ({tp[q, pred]:.2f})", fontsize=8, color=color)
        bars = right.add_subplot(grid[r * per_query + 1, col])
        colors = ["tab:gray"] * way
        if ty is not None:
            colors[int(ty[q])] = "tab:green"
        bars.bar(np.arange(way), tp[q], color=colors)
        bars.set_ylim(0, 1)
        bars.set_xticks(np.arange(way) if way <= 10 else [])
        bars.tick_params(labelsize=6)
        bars.set_yticks([])
    return fig


# ------------------------------------------------------------------------------ reliability
def reliability_bins(predictive: Any, bins: int = 15) -> Tuple[float, ReliabilityBins]:
    """``(ece, bins)`` of a :class:`~pyro_meta.PosteriorPredictive` on class labels against its batch's ``target_y``.

    :func:`pyro_meta.metrics.expected_calibration_error` of ``predictive.class_probs [T, Nt, K]`` over the
    real target points (``batch.target_mask``).
    """
    from .inference.predictive import PosteriorPredictive

    if not isinstance(predictive, PosteriorPredictive):
        raise TypeError(f"predictive must be a pyro_meta.PosteriorPredictive, got {type(predictive).__name__}")
    batch = predictive.batch
    if batch.target_y is None:
        raise ValueError("reliability_bins needs the batch's target_y (observed labels) to score the predictive")
    return expected_calibration_error(predictive.class_probs, batch.target_y, batch.target_mask, bins=bins)


def _as_bins(value: Any, name: str, bins: int) -> ReliabilityBins:
    if isinstance(value, ReliabilityBins):
        return value
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], ReliabilityBins):
        return value[1]  # the (ece, bins) pair expected_calibration_error returns
    try:
        return reliability_bins(value, bins)[1]
    except TypeError:
        raise TypeError(
            f"{name} must be ReliabilityBins (metrics.expected_calibration_error(...)[1]), the (ece, bins) pair, or "
            f"a PosteriorPredictive on class labels; got {type(value).__name__}"
        ) from None


def _ece_of(b: ReliabilityBins) -> float:
    """``sum_b n_b |acc_b - conf_b| / n`` from the bins (empty bins count 0)."""
    count = b.count.double()
    gap = (b.accuracy.double() - b.confidence.double()).abs().nan_to_num(0.0)
    return float((gap * count).sum() / count.sum().clamp_min(1))


def plot_reliability(
    reliability: Union[ReliabilityBins, Any, Mapping[str, Any]],
    bins: int = 15,
    title: Optional[str] = None,
    panel_size: float = 3.2,
    max_columns: int = 4,
) -> Figure:
    """Reliability diagrams: per confidence bin, the accuracy (bars) against the mean confidence.

    A calibrated predictive has bars on the diagonal; bars below it are over-confident. The red
    hatched part of each bar is the gap ``|accuracy - confidence|`` (its count-weighted mean over bins
    is the ECE, printed in each panel); the lower panel shows the share of points per bin.

    Parameters
    ----------
    reliability : ReliabilityBins, ``(ece, ReliabilityBins)``, PosteriorPredictive, or a dict ``label -> one of them``
        From ``metrics.expected_calibration_error(probs [T, N, K], labels [T, N], mask [T, N], bins)``; a
        :class:`~pyro_meta.PosteriorPredictive` on class labels is binned against its batch's ``target_y``.
        A dict draws one panel per entry (e.g. one per model or inference method).
    bins : int
        Bins used when a predictive is given (bins already computed are drawn as they are).
    title : str, optional
        Figure title.
    panel_size : float
        Width of one panel in inches.
    max_columns : int
        Panels per row (more entries wrap to further rows).
    """
    if isinstance(reliability, Mapping):
        named = {str(k): _as_bins(v, f"reliability[{k!r}]", bins) for k, v in reliability.items()}
    else:
        named = {"": _as_bins(reliability, "reliability", bins)}
    if not named:
        raise ValueError("reliability is empty: pass at least one set of bins")
    n = len(named)
    ncols = min(n, max_columns)
    nrows = math.ceil(n / ncols)
    fig = plt.figure(figsize=(panel_size * ncols, panel_size * 1.35 * nrows), layout="constrained")
    grid = fig.add_gridspec(2 * nrows, ncols, height_ratios=[3, 1] * nrows)
    axes = np.empty((2, n), dtype=object)
    for j in range(n):
        r, c = divmod(j, ncols)
        axes[0, j] = fig.add_subplot(grid[2 * r, c])
        axes[1, j] = fig.add_subplot(grid[2 * r + 1, c], sharex=axes[0, j])
    for j, (label, b) in enumerate(named.items()):
        edges = b.edges.double().numpy()
        width = np.diff(edges)
        centers = edges[:-1] + width / 2
        acc = b.accuracy.double().nan_to_num(0.0).numpy()
        conf = b.confidence.double().numpy()
        count = b.count.double().numpy()
        filled = count > 0
        ax = axes[0, j]
        ax.plot([0, 1], [0, 1], color="black", lw=1, ls="--", label="calibrated")
        ax.bar(centers[filled], acc[filled], width=width[filled], color="tab:blue", edgecolor="white", label="accuracy")
        lo = np.minimum(acc, np.nan_to_num(conf))[filled]
        hi = np.maximum(acc, np.nan_to_num(conf))[filled]
        ax.bar(
            centers[filled],
            hi - lo,
            bottom=lo,
            width=width[filled],
            color="tab:red",
            alpha=0.25,
            hatch="//",
            edgecolor="tab:red",
            label="gap",
        )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title((f"{label}: " if label else "") + f"ECE {_ece_of(b):.3f}", fontsize=10)
        if j % ncols == 0:
            ax.set_ylabel("accuracy")
        if j == 0:
            ax.legend(loc="upper left", fontsize=7)
        share = count / max(count.sum(), 1)
        axes[1, j].bar(centers, share, width=width, color="tab:gray")
        axes[1, j].set_xlabel("confidence (max class probability)")
        if j % ncols == 0:
            axes[1, j].set_ylabel("share of points")
    if title:
        fig.suptitle(title)
    return fig
