"""Matplotlib figures: predictive bands per task and method, prior functions, posterior pairs.

Every function returns a ``matplotlib.figure.Figure`` (made with ``pyplot``, so notebooks show
it; close it with ``plt.close(fig)`` in scripts). Regression plots are for 1-D inputs and
1-D outputs (``Dx = Dy = 1``); anything else raises ``ValueError``.

What is drawn as *functions*: for a posterior draw ``z_s`` the thin lines are the mean of the
model's likelihood at dense inputs, ``E[y | x, z_s]`` (the noise-free function for a Gaussian
likelihood); where the likelihood has no ``mean`` they are draws of ``y`` instead (noise
included). Bands and the predictive mean come from :meth:`Posterior.predict`, i.e. they
include the observation noise.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from .data.batch import TaskBatch
from .inference import Posterior, infer
from .inference.posterior import evenly_spaced
from .model import MetaModel, check_model
from .validation import check_int

__all__ = ["plot_posterior_pairs", "plot_predictive", "plot_prior_functions", "plot_sbc"]

Posteriors = Union[Posterior, Sequence[Posterior], Mapping[str, Posterior]]


# ---------------------------------------------------------------------------- helpers
def _named(posteriors: Posteriors, name: str = "posteriors") -> Dict[str, Posterior]:
    """``{label: Posterior}`` from one posterior, a list (labelled by method) or a dict."""
    if isinstance(posteriors, Posterior):
        posteriors = [posteriors]
    if isinstance(posteriors, Mapping):
        named = {str(k): v for k, v in posteriors.items()}
    elif isinstance(posteriors, (list, tuple)):
        named = {}
        for i, p in enumerate(posteriors):
            label = getattr(p, "method", str(i))
            named[label if label not in named else f"{label} ({i})"] = p
    else:
        raise TypeError(
            f"{name} must be a Posterior, a list of them or a dict {{label: Posterior}}, got {type(posteriors).__name__}"
        )
    if not named:
        raise ValueError(f"{name} is empty: pass at least one Posterior")
    for label, p in named.items():
        if not isinstance(p, Posterior):
            raise TypeError(f"{name}[{label!r}] must be a pyro_meta.Posterior, got {type(p).__name__}")
    return named


def _check_1d_regression(batch: TaskBatch, what: str) -> None:
    if batch.is_classification or batch.x_dim != 1 or batch.y_dim != 1:
        kind = "class labels" if batch.is_classification else f"Dx = {batch.x_dim}, Dy = {batch.y_dim}"
        raise ValueError(f"{what}: plots are for 1-D regression (Dx = Dy = 1), got {kind}")


def _true_values(true_function: Any, batch: TaskBatch, x: torch.Tensor) -> Optional[torch.Tensor]:
    """``f(x) [T, G, 1]`` from a callable ``x -> f(x)`` or a task distribution (``.function(x, batch.info)``)."""
    if true_function is None:
        return None
    with torch.no_grad():
        if hasattr(true_function, "function") and callable(true_function.function):
            y = true_function.function(x, batch.info)
        elif callable(true_function):
            y = true_function(x)
        else:
            raise TypeError(
                "true_function must be a callable x [T, N, 1] -> [T, N, 1] or a task distribution with "
                f".function(x, params), got {type(true_function).__name__}"
            )
    y = torch.as_tensor(y)
    if tuple(y.shape) != tuple(x.shape):
        raise ValueError(f"true_function must return [T, N, 1] = {list(x.shape)}, got {list(y.shape)}")
    return y


def _x_limits(batches: List[TaskBatch], tasks: List[int], margin: float = 0.1) -> Tuple[float, float]:
    xs = []
    for b in batches:
        for split in ("context", "target"):
            m = b.mask(split)[tasks]
            xs.append(b.x(split)[tasks][m].flatten())
    x = torch.cat(xs)
    lo, hi = float(x.min()), float(x.max())
    pad = margin * (hi - lo) if hi > lo else 1.0
    return lo - pad, hi + pad


def _task_list(tasks: Any, T: int, default: int = 3) -> List[int]:
    if tasks is None:
        return list(range(min(T, default)))
    if isinstance(tasks, numbers.Integral) and not isinstance(tasks, bool):
        tasks = [tasks]
    if not isinstance(tasks, (list, tuple, range)) or not tasks:
        raise ValueError(f"tasks must be None, an int or a non-empty list of task indices, got {tasks!r}")
    out = []
    for t in tasks:
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or not 0 <= t < T:
            raise ValueError(f"tasks: {t!r} is not a task index in [0, {T})")
        out.append(int(t))
    return out


def _check_range(x_range: Any) -> Tuple[float, float]:
    try:
        lo, hi = (float(v) for v in x_range)
    except (TypeError, ValueError):
        raise ValueError(f"x_range must be a pair (low, high), got {x_range!r}") from None
    if not (torch.isfinite(torch.tensor([lo, hi])).all() and lo < hi):
        raise ValueError(f"x_range must be finite with low < high, got {x_range!r}")
    return lo, hi


# ------------------------------------------------------------------------------ plots
def plot_predictive(
    posteriors: Posteriors,
    tasks: Optional[Union[int, Sequence[int]]] = None,
    num_functions: int = 5,
    true_function: Optional[Union[Callable[[torch.Tensor], torch.Tensor], Any]] = None,
    num_grid: int = 200,
    num_band_samples: int = 2000,
    x_range: Optional[Tuple[float, float]] = None,
    figsize: Optional[Tuple[float, float]] = None,
) -> Figure:
    """Posterior predictive per task (rows) and method (columns), e.g. amortized beside NUTS.

    Each panel shows the real context points (dark), the real target points when known
    (light), the true function when given, the predictive mean with its 50% and 90% central
    bands at a dense grid, and ``num_functions`` thin lines ``E[y | x, z_s]`` for posterior
    draws ``z_s`` (see the module docstring). Padded points are never drawn.

    Parameters
    ----------
    posteriors : Posterior, list of Posterior or dict ``{label: Posterior}``
        One column each (a list is labelled by ``method``). 1-D regression batches only.
    tasks : int or list of int, optional
        Task indices, one row each. Default: the first three tasks.
    num_functions : int
        Function draws per panel (0 for none).
    true_function : callable or task distribution, optional
        ``f(x [T, G, 1]) -> [T, G, 1]`` over all tasks of the batch, or an object with
        ``.function(x, params)`` (e.g. :class:`~pyro_meta.data.Sinusoid`) called with ``batch.info``.
    num_grid : int
        Points of the dense input grid ``G``.
    num_band_samples : int
        Predictive draws behind the bands: the posterior draws are reused cyclically (each
        gives fresh noise) or thinned evenly, so that the Monte Carlo quantiles are smooth.
    x_range : (float, float), optional
        Grid range. Default: the real points' range plus 10% each side.

    Returns
    -------
    matplotlib.figure.Figure
        ``len(tasks) x len(posteriors)`` axes.
    """
    named = _named(posteriors)
    num_grid = check_int("num_grid", num_grid)
    if isinstance(num_functions, bool) or not isinstance(num_functions, numbers.Integral) or num_functions < 0:
        raise ValueError(f"num_functions must be a non-negative int, got {num_functions!r}")
    num_band_samples = check_int("num_band_samples", num_band_samples)
    T = min(p.batch.num_tasks for p in named.values())
    for label, p in named.items():
        _check_1d_regression(p.batch, f"posteriors[{label!r}]")
    rows = _task_list(tasks, T)
    lo, hi = _check_range(x_range) if x_range is not None else _x_limits([p.batch for p in named.values()], rows)
    grid = torch.linspace(lo, hi, num_grid)
    x = grid.numpy()
    cols = len(named)
    fig, axes = plt.subplots(
        len(rows), cols, squeeze=False, sharex=True, sharey="row", figsize=figsize or (4.0 * cols, 2.8 * len(rows))
    )
    for j, (label, post) in enumerate(named.items()):
        full = post.batch
        post = post.select(rows)  # predict the plotted tasks only (a dense grid over every task is slow)
        batch = post.batch
        dense = batch.with_targets(grid)
        pred = post.with_num_draws(num_band_samples).predict(dense)
        f_all, is_mean = post.function_draws(dense)  # [C*S, T, G, 1]
        # the predictive mean: exact given the draws when the likelihood has a mean (smooth), else Monte Carlo
        mean = (f_all.mean(0) if is_mean else pred.mean)[..., 0].cpu().numpy()
        lo90, hi90 = (v[..., 0].cpu().numpy() for v in pred.interval(0.9))
        lo50, hi50 = (v[..., 0].cpu().numpy() for v in pred.interval(0.5))
        fns = (
            f_all[evenly_spaced(f_all.shape[0], num_functions), ..., 0].cpu().numpy() if num_functions else None
        )  # [N, T, G]
        # the true function is defined over every task of the batch (a user's callable sees [T, G, 1])
        truth = _true_values(true_function, full, grid.expand(full.num_tasks, num_grid)[..., None])
        truth = None if truth is None else truth[rows][..., 0].cpu().numpy()
        cx, cy, cm = (
            batch.context_x[..., 0].cpu().numpy(),
            batch.context_y[..., 0].cpu().numpy(),
            batch.context_mask.cpu().numpy(),
        )
        color = f"C{j % 10}"
        for i, (t, task) in enumerate(zip(range(len(rows)), rows)):
            ax = axes[i, j]
            ax.fill_between(x, lo90[t], hi90[t], color=color, alpha=0.15, lw=0, label="90% interval")
            ax.fill_between(x, lo50[t], hi50[t], color=color, alpha=0.3, lw=0, label="50% interval")
            if fns is not None:
                for n in range(fns.shape[0]):
                    ax.plot(x, fns[n, t], color=color, lw=0.7, alpha=0.6, label="function draws" if n == 0 else None)
            ax.plot(x, mean[t], color=color, lw=2, label="predictive mean")
            if truth is not None:
                ax.plot(x, truth[t], color="k", ls="--", lw=1.2, label="true function")
            if batch.target_y is not None and batch.num_points("target") > 0:
                m = batch.target_mask[t].cpu().numpy()
                tx, ty = batch.target_x[t, m, 0].cpu().numpy(), batch.target_y[t, m, 0].cpu().numpy()
                ax.scatter(tx, ty, s=12, color="0.6", zorder=3, label="target")
            ax.scatter(cx[t, cm[t]], cy[t, cm[t]], s=22, color="k", zorder=4, label="context")
            ax.set_title(f"{label}: task {task}", fontsize=10)
            if i == len(rows) - 1:
                ax.set_xlabel("x")
            if j == 0:
                ax.set_ylabel("y")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=7, frameon=False)
    return fig


def plot_prior_functions(
    model: MetaModel,
    x_range: Tuple[float, float] = (-5.0, 5.0),
    num_functions: int = 20,
    num_grid: int = 200,
    num_band_samples: int = 2000,
    seed: Optional[int] = None,
    ax: Optional[plt.Axes] = None,
) -> Figure:
    """Functions ``E[y | x, z]`` for ``z ~ p(z)``, the meta-learned prior, with its 90% predictive band.

    Draws come from ``infer(model, batch, method="prior")`` on a one-task batch whose single
    context point is masked out (``allow_empty_context=True``): the prior ignores the context.
    1-D inputs and outputs only.

    Parameters
    ----------
    model : MetaModel
    x_range : (float, float)
        Input range of the grid.
    num_functions : int
        Prior draws (one line each).
    num_grid : int
        Grid points.
    num_band_samples : int
        Prior predictive draws behind the band.
    seed : int, optional
        Seed for the prior draws.
    ax : matplotlib Axes, optional
        Draw into this axes (default: a new figure).

    Returns
    -------
    matplotlib.figure.Figure
    """
    check_model(model)
    lo, hi = _check_range(x_range)
    num_functions = check_int("num_functions", num_functions)
    num_grid = check_int("num_grid", num_grid)
    num_band_samples = check_int("num_band_samples", num_band_samples)
    ref = next((p for p in model.parameters() if p.is_floating_point()), torch.zeros(()))  # the model's device/dtype
    grid = torch.linspace(lo, hi, num_grid)
    zeros = ref.new_zeros(1, 1, 1)
    batch = TaskBatch(
        zeros,
        zeros.clone(),
        grid.to(ref)[None, :, None],
        None,
        context_mask=torch.zeros(1, 1, dtype=torch.bool, device=ref.device),
        allow_empty_context=True,
    )
    post = infer(model, batch, method="prior", num_samples=max(num_functions, num_band_samples), seed=seed)
    fns = post.function_draws(batch, num_functions)[0][:, 0, :, 0].cpu().numpy()  # [N, G]
    lo90, hi90 = (v[0, :, 0].cpu().numpy() for v in post.predict().interval(0.9))
    x = grid.numpy()
    new = ax is None
    if new:
        fig, ax = plt.subplots(figsize=(5.0, 3.2))
    else:
        fig = ax.figure
    ax.fill_between(x, lo90, hi90, color="C0", alpha=0.15, lw=0, label="90% prior predictive")
    for n in range(fns.shape[0]):
        ax.plot(x, fns[n], color="C0", lw=0.8, alpha=0.7, label="prior functions" if n == 0 else None)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(f"{type(model).__name__}: meta-learned prior", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    if new:
        fig.tight_layout()
    return fig


def plot_posterior_pairs(
    posteriors: Posteriors,
    task: int = 0,
    site: Optional[str] = None,
    dims: Tuple[int, int] = (0, 1),
    max_points: int = 1000,
    ax: Optional[plt.Axes] = None,
) -> Figure:
    """Scatter of two coordinates of one task's latent, one colour per posterior (multimodality at a glance).

    Parameters
    ----------
    posteriors : Posterior, list of Posterior or dict ``{label: Posterior}``
        Overlaid in colours ``C0, C1, ...``.
    task : int
        Task index ``t``.
    site : str, optional
        Latent site (default: the first site of the first posterior). Its event is flattened:
        ``samples[site][:, :, t]`` ``[C, S, *event]`` -> ``[C*S, E]``, ``E >= 2``.
    dims : (int, int)
        Two distinct coordinates of the flattened event.
    max_points : int
        Draws shown per posterior (thinned evenly).
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    named = _named(posteriors)
    max_points = check_int("max_points", max_points)
    first = next(iter(named.values()))
    site = next(iter(first.samples)) if site is None else site
    if (
        not isinstance(dims, (tuple, list))
        or len(dims) != 2
        or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) for d in dims)
        or dims[0] == dims[1]
    ):
        raise ValueError(f"dims must be two distinct ints, got {dims!r}")
    points = {}
    for label, post in named.items():
        if site not in post.samples:
            raise ValueError(f"site {site!r} is not in posteriors[{label!r}] (sites: {sorted(post.samples)})")
        s = post.samples[site]
        T = s.shape[2]
        if isinstance(task, bool) or not isinstance(task, numbers.Integral) or not 0 <= task < T:
            raise ValueError(f"task must be an index in [0, {T}), got {task!r}")
        v = s[:, :, task].reshape(s.shape[0] * s.shape[1], -1)
        E = v.shape[1]
        if E < 2:
            raise ValueError(f"site {site!r} has {E} coordinate(s) per task; a pair plot needs at least 2")
        if not all(-E <= d < E for d in dims):
            raise ValueError(f"dims {tuple(dims)} out of range for site {site!r} with {E} coordinates")
        if v.shape[0] > max_points:
            v = v[evenly_spaced(v.shape[0], max_points)]
        points[label] = v[:, list(dims)].detach().cpu().numpy()
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.0, 4.0))
    else:
        fig = ax.figure
    for j, (label, v) in enumerate(points.items()):
        ax.scatter(v[:, 0], v[:, 1], s=6, alpha=0.4, color=f"C{j % 10}", label=label, edgecolors="none")
    ax.set_xlabel(f"{site}[{dims[0]}]")
    ax.set_ylabel(f"{site}[{dims[1]}]")
    ax.set_title(f"task {task}", fontsize=10)
    ax.legend(fontsize=7, loc="best", markerscale=2)
    return fig


def plot_sbc(result: Any, max_coordinates: int = 8, figsize: Optional[Tuple[float, float]] = None) -> Figure:
    """Rank histograms of a :class:`pyro_meta.diagnostics.SBCResult`, one panel per latent coordinate.

    Each panel shows the counts per bin, the expected count (uniform ranks) and its central 99%
    binomial band; the title carries the coordinate's chi-square p-value. A U shape means an
    overconfident posterior, a hump an underconfident one, a slope a biased one.
    """
    from scipy import stats

    max_coordinates = check_int("max_coordinates", max_coordinates)
    panels = []
    for site, ranks in result.ranks.items():
        flat, p = ranks.reshape(ranks.shape[0], -1), result.pvalues[site].reshape(-1)
        for j in range(flat.shape[1]):
            panels.append((f"{site}[{j}]" if flat.shape[1] > 1 else site, flat[:, j], float(p[j])))
    panels = panels[:max_coordinates]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=figsize or (3.0 * cols, 2.4 * rows), squeeze=False)
    R, B = next(iter(result.ranks.values())).shape[0], result.num_bins
    per_bin = (result.num_rank_draws + 1) // B
    lo, hi = stats.binom.ppf([0.005, 0.995], R, 1.0 / B)
    for ax, (label, r, p) in zip(axes.flat, panels):
        counts = torch.bincount(r // per_bin, minlength=B).numpy()
        ax.axhspan(lo, hi, color="0.85", lw=0)
        ax.bar(range(B), counts, width=0.9, color="C0")
        ax.axhline(R / B, color="k", lw=0.8)
        ax.set_title(f"{label}: p = {p:.2g}", fontsize=9)
        ax.set_xticks([])
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"SBC ranks, method={result.method} ({R} replicates, {result.num_rank_draws} draws)", fontsize=10)
    fig.tight_layout()
    return fig
