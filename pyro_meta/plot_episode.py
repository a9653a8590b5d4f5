"""``plot_episode``: the support and query images of one few-shot classification episode.

Returns a ``matplotlib.figure.Figure`` (made with ``pyplot``; close it with ``plt.close(fig)`` in scripts).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from .data.batch import TaskBatch

__all__ = ["plot_episode"]


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
            names = [n + (f" ({90 * r} deg)" if r else "") for n, r in zip(names, batch.info["rotations"][task].tolist())]

    ncols = min(queries_per_row, max(len(shown), 1))
    nrows = max(math.ceil(len(shown) / ncols), 1)
    per_query = 2 if tp is not None else 1
    fig = plt.figure(figsize=(1.1 * shots + 1.6 + 1.3 * ncols, 1.1 * max(way, nrows * per_query * 0.9) + 0.6),
                     layout="constrained")
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
        axes[c, 0].set_ylabel(f"{c}" + (f": {names[c]}" if names else ""), rotation=0, ha="right", va="center",
                              fontsize=8)
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
