"""ArviZ export of a :class:`~pyro_meta.Posterior`: the one module that knows ArviZ.

Groups and dims (``C`` chains, ``S`` draws, ``T`` tasks, ``Nc``/``Nt`` padded points,
``Dy`` output features, ``M`` real points):

=====================  =====================================================================
group                  variables (dims)
=====================  =====================================================================
posterior              each task latent ``(chain, draw, task, <site>_dim_0, ...)``; sampled global
                       latents ``(chain, draw, <site>_dim_0, ...)`` (no task dim)
posterior_predictive   ``y_target (chain, draw, task, target_point, y_dim)``; padded points NaN
observed_data          ``y_context (task, context_point, y_dim)``, ``y_target`` when known; padded NaN
constant_data          ``context_x``/``target_x (task, *_point, x_dim)`` (padded NaN), the masks
                       ``context_mask``/``target_mask (task, *_point)`` and the index maps
                       ``context_obs_task``/``context_obs_point (context_obs)`` (same for target)
log_likelihood         ``y_context (chain, draw, context_obs)``: the data the posterior conditions on
target_log_likelihood  ``y_target (chain, draw, target_obs)`` when the targets are known: their
                       log density under each posterior draw (held-out points, not part of the
                       posterior's likelihood, so they are kept out of ``log_likelihood``)
sample_stats           MCMC only: ``diverging``, ``acceptance_rate``, ``step_size``, ``lp`` ``(chain, draw)``
=====================  =====================================================================

Class labels have no ``y_dim`` and are stored as floats (so that padding can be NaN).

**Padded points in the log-likelihood.** ArviZ's ``loo``/``waic`` treat every entry of a
log-likelihood variable as one observation, and a NaN poisons the sum. So the pointwise
log-likelihood keeps only the real points: the real ``(task, point)`` pairs are flattened, task
by task in point order, into one dim ``context_obs`` of size ``M = context_mask.sum()``
(``target_obs`` likewise); ``constant_data.context_obs_task[m]`` and ``context_obs_point[m]``
give the task and the padded point index of observation ``m``. ``az.loo(idata)`` then counts
exactly the ``M`` real context points: a PSIS-LOO over the points the posterior conditioned on.
The target points' densities live in ``target_log_likelihood`` (a group of our own; ArviZ's LOO
would otherwise run over points the posterior never saw): ``log mean_s exp`` of it over the draws
is the predictive log density that :func:`pyro_meta.evaluate` scores.

ArviZ's own ``from_pyro`` is not used (it keeps singleton plate dims, ignores ``poutine.mask``
and drops the log-likelihood of non-vectorized models; ArviZ 1.x removed it): each group is
built here and passed to ``from_dict``.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import pyro
import torch

from .data.batch import TaskBatch
from .inference.posterior import Posterior, evenly_spaced
from .locking import serialized

with warnings.catch_warnings():
    # ArviZ 0.2x announces its 1.x refactor with a FutureWarning on import: not actionable here
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

__all__ = ["merge_inference_data", "pointwise_log_likelihood", "to_inference_data"]


def _arviz_major() -> int:
    return int(str(az.__version__).split(".")[0])


# --------------------------------------------------------------------------- diagnostics
def rhat_ess(samples: torch.Tensor) -> Dict[str, torch.Tensor]:
    """ArviZ's rank-normalised split R-hat and bulk/tail ESS of every coordinate, vectorized.

    ``samples [C, S, *shape]`` (chains, draws). Returns ``{"r_hat", "ess_bulk", "ess_tail"}``, each
    ``[*shape]`` (float64), equal to ``az.rhat(idata)`` / ``az.ess(idata, method="bulk"|"tail")``
    on the same draws (Vehtari et al. 2021; ArviZ's defaults and edge cases: R-hat needs two chains
    and four draws, ESS four draws, NaN otherwise; a constant coordinate has ESS ``C * S``).
    ArviZ evaluates these one coordinate at a time in Python (about 10 ms each here: minutes for
    thousands of tasks); this is the same arithmetic over every coordinate at once (ArviZ's own
    FFT autocovariance included), tested equal to ArviZ's functions in ``tests/test_arviz.py``.
    """
    x = samples.detach().cpu()
    # ArviZ folds and ranks in the draws' own dtype (float32 ties included) and casts to float64 after
    x = (x if x.dtype in (torch.float32, torch.float64) else x.double()).numpy()
    C, S = x.shape[:2]
    shape = x.shape[2:]
    a = np.moveaxis(x.reshape(C, S, -1), -1, 0)  # [K, C, S]
    nan = np.isnan(a).any((1, 2))
    r_hat = np.full(a.shape[0], np.nan)
    ess_bulk = np.full(a.shape[0], np.nan)
    ess_tail = np.full(a.shape[0], np.nan)
    if S >= 4:
        split = _split_chains(a)
        if C >= 2:
            bulk = _rhat(_z_scale(split))
            med = np.median(split.reshape(split.shape[0], -1), axis=1)
            tail = _rhat(_z_scale(np.abs(split - med[:, None, None])))
            r_hat = np.where(tail > bulk, tail, bulk)
        ess_bulk = _ess(_z_scale(split))
        low, high = np.quantile(a.reshape(a.shape[0], -1).astype(float), [0.05, 0.95], axis=1)
        ess_tail = np.minimum(
            _ess(_split_chains((a <= low[:, None, None]).astype(float))),
            _ess(_split_chains((a <= high[:, None, None]).astype(float))),
        )
    out = {}
    for key, v in (("r_hat", r_hat), ("ess_bulk", ess_bulk), ("ess_tail", ess_tail)):
        v = np.where(nan, np.nan, v)
        out[key] = torch.from_numpy(v.reshape(shape))
    return out


def _split_chains(a: np.ndarray) -> np.ndarray:
    """``[K, C, S]`` -> ``[K, 2C, S // 2]``: first halves, then last halves (ArviZ's order)."""
    half = a.shape[2] // 2
    return np.concatenate([a[:, :, :half], a[:, :, a.shape[2] - half :]], axis=1)


def _z_scale(a: np.ndarray) -> np.ndarray:
    """Rank-normalise each coordinate over all its draws: ``Phi^-1((rank - 3/8) / (n + 1/4))``."""
    from scipy import stats

    flat = a.reshape(a.shape[0], -1)
    rank = stats.rankdata(flat, method="average", axis=1)
    return stats.norm.ppf((rank - 3 / 8) / (flat.shape[1] - 2 * 3 / 8 + 1)).reshape(a.shape)


def _rhat(a: np.ndarray) -> np.ndarray:
    """Potential scale reduction of ``[K, M, n]``: ``sqrt((B/W + n - 1) / n)``."""
    a = a.astype(float)
    n = a.shape[2]
    between = n * a.mean(2).var(1, ddof=1)
    within = a.var(2, ddof=1).mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt((between / within + n - 1) / n)


def _ess(a: np.ndarray) -> np.ndarray:
    """Effective sample size of ``[K, M, n]`` per coordinate (Geyer's initial monotone sequence, as ArviZ)."""
    from arviz.stats.stats_utils import autocov

    a = a.astype(float)
    K, M, n = a.shape
    total = M * n
    constant = (a.max((1, 2)) - a.min((1, 2))) < np.finfo(float).resolution
    acov = autocov(a, axis=2)
    mean_var = acov[:, :, 0].mean(1) * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if M > 1:
        var_plus = var_plus + a.mean(2).var(1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = 1.0 - (mean_var[:, None] - acov.mean(1)) / var_plus[:, None]  # [K, n]
    r[:, 0] = 1.0
    npairs = n // 2
    pair = r[:, : 2 * npairs].reshape(K, npairs, 2)
    sums = pair.sum(-1)  # S_k = rho_2k + rho_2k+1
    kmax = max(0, (n - 3) // 2)  # pairs the initial positive sequence may process
    # pairs 1..num are processed: every earlier pair sum positive (num is per coordinate)
    lead = np.cumprod(sums[:, :kmax] > 0, axis=1)
    num = lead.sum(1)
    k = np.arange(npairs)[None, :]
    last_ok = np.take_along_axis(sums, num[:, None], 1)[:, 0] >= 0 if npairs else np.zeros(K, bool)
    kept = (k == 0) | ((k >= 1) & (k < num[:, None])) | ((k == num[:, None]) & (num[:, None] >= 1) & last_ok[:, None])
    rho = np.where(kept[..., None], pair, 0.0)
    # the last processed pair's even term is kept when positive
    even = np.take_along_axis(pair[:, :, 0], num[:, None], 1)[:, 0] if npairs else np.ones(K)
    improve = (num >= 1) & (even > 0)
    rows = np.nonzero(improve)[0]
    rho[rows, num[rows], 0] = even[rows]
    # initial monotone sequence over pairs 0..num-1: pair sums non-increasing
    psum = rho.sum(-1)
    cm = np.minimum.accumulate(np.where(k < num[:, None], psum, np.inf), axis=1)
    prev = np.concatenate([np.full((K, 1), np.inf), cm[:, :-1]], axis=1)
    replace = (k >= 1) & (k < num[:, None]) & (psum > prev)
    rho = np.where(replace[..., None], (prev / 2.0)[..., None], rho)
    head = np.where(k < num[:, None], rho.sum(-1), 0.0).sum(1)
    tail_term = (
        np.take_along_axis(rho[:, :, 0], np.minimum(num, max(npairs - 1, 0))[:, None], 1)[:, 0]
        if npairs
        else np.ones(K)
    )
    tau = -1.0 + 2.0 * head + tail_term
    tau = np.maximum(tau, 1.0 / np.log10(total))
    ess = total / tau
    ess = np.where(np.isnan(r[:, 1]) if n > 1 else False, np.nan, ess)
    return np.where(constant, float(total), ess)


# ------------------------------------------------------------------------- log-likelihood
def _log_lik_draws(
    posterior: Posterior, batch: TaskBatch, values: Mapping[str, torch.Tensor], site: str
) -> Optional[torch.Tensor]:
    """``log p(y_tn | z_n)`` of the observed ``site`` per draw, ``[N, T, n]`` (padded points 0).

    The inferred model (``posterior.fn``: global latents at their point estimate) traced on
    ``batch`` with the latents at ``values`` (draw values ``{site: [N, *natural]}``), through
    :func:`~pyro_meta.inference.draws.trace_draws` (vectorized, or draw by draw).
    """
    from .inference.chunked import fill, trace_chunks

    model = posterior.model
    num = posterior.num_chains * posterior.num_samples
    T, n = batch.num_tasks, batch.num_points(site[2:])
    fn = posterior.fn or model.model
    out = None
    with torch.no_grad():  # in chunks of tasks and draws sized to the memory budget
        plan, chunks = trace_chunks(
            fn, batch, num, model, data=values, sites=posterior.sites, log_prob=True, kind=f"log_lik_{site}"
        )
        for draws, tasks, trace in chunks:
            if site not in trace.nodes and not posterior.has_latents:
                return None  # a conditional model need not score its context (it conditions on it as input)
            if site not in trace.nodes or not trace.nodes[site]["is_observed"]:
                raise ValueError(
                    f"{type(model).__name__}.model has no observed site {site!r} on this batch "
                    "(pyro_meta.observe writes y_context/y_target)"
                )
            lp, scale = trace.nodes[site]["log_prob"], trace.nodes[site]["scale"]
            if not (isinstance(scale, (int, float)) and scale == 1.0):
                lp = lp / scale  # log p(y | z) per point, never scaled (poutine.scale, a tempered likelihood)
            lp = lp.expand(draws.stop - draws.start, tasks.stop - tasks.start, n)
            if plan.single:
                return lp
            out = fill(out, num, T, draws, tasks, lp)
    return out


@serialized
def pointwise_log_likelihood(posterior: Posterior) -> Dict[str, torch.Tensor]:
    """Pointwise log-likelihood of the observed points under each posterior draw.

    ``log p(y_tn | z_t^(c,s))`` for every context point (the model traced on
    ``batch.context_only()``, conditioned on the draws) and, when ``batch.target_y`` is known,
    every target point. Vectorized over draws unless ``model.vectorized`` is False; in chunks of tasks
    and draws sized to the memory budget (:func:`pyro_meta.set_memory_budget`).

    Parameters
    ----------
    posterior : Posterior
        Draws ``{site: [C, S, T, *event]}`` and the batch they condition on.

    Returns
    -------
    dict
        ``{"y_context": [C, S, T, Nc], "y_target": [C, S, T, Nt]}`` (``y_target`` only when
        known). Entries at padded points are 0: select the real points with the batch's masks.
    """
    _check_posterior(posterior)
    batch = posterior.batch.without_task_index()
    C, S = posterior.num_chains, posterior.num_samples
    values = posterior.site_values()
    out = {"y_context": _log_lik_draws(posterior, batch.context_only(), values, "y_context")}
    if batch.target_y is not None and batch.num_points("target") > 0:
        out["y_target"] = _log_lik_draws(posterior, batch, values, "y_target")
    return {k: v.reshape((C, S) + tuple(v.shape[1:])).detach() for k, v in out.items() if v is not None}


# ------------------------------------------------------------------------------ groups
def _check_posterior(posterior: Any) -> Posterior:
    if not isinstance(posterior, Posterior):
        raise TypeError(f"posterior must be a pyro_meta.Posterior, got {type(posterior).__name__}")
    return posterior


def _padded_nan(y: torch.Tensor, mask: torch.Tensor, feature_dim: bool) -> np.ndarray:
    """``y [..., T, N(, D)]`` as float numpy with NaN where ``mask [T, N]`` is False."""
    y = y.detach().cpu()
    y = y if y.is_floating_point() else y.to(torch.float64)
    m = mask.cpu()[..., None] if feature_dim else mask.cpu()
    return y.masked_fill(~m, float("nan")).numpy()


def _y_dims(batch: TaskBatch, point_dim: str) -> List[str]:
    return ["task", point_dim] if batch.is_classification else ["task", point_dim, "y_dim"]


def _groups(
    posterior: Posterior, predictive: bool, log_likelihood: bool, num_predictive_samples: Optional[int]
) -> Dict[str, Tuple[Dict[str, np.ndarray], Dict[str, List[str]]]]:
    """``{group: ({var: array}, {var: dims without chain/draw})}``."""
    batch = posterior.batch
    groups: Dict[str, Tuple[Dict[str, np.ndarray], Dict[str, List[str]]]] = {}

    data, dims = {}, {}
    for name, value in posterior.samples.items():
        data[name] = value.detach().cpu().numpy()
        is_global = posterior.sites[name].is_global
        extra = value.dim() - (2 if is_global else 3)
        dims[name] = ([] if is_global else ["task"]) + [f"{name}_dim_{i}" for i in range(extra)]
    if data:  # a model without latent sites has no posterior group (only its predictive)
        groups["posterior"] = (data, dims)

    has_target = batch.num_points("target") > 0
    if predictive and has_target:
        post = _thinned(posterior, num_predictive_samples)
        pred = post.predict(batch)
        y = _padded_nan(pred.samples, batch.target_mask, not batch.is_classification)
        groups["posterior_predictive"] = ({"y_target": y}, {"y_target": _y_dims(batch, "target_point")})

    obs = {"y_context": _padded_nan(batch.context_y, batch.context_mask, not batch.is_classification)}
    obs_dims = {"y_context": _y_dims(batch, "context_point")}
    if batch.target_y is not None and has_target:
        obs["y_target"] = _padded_nan(batch.target_y, batch.target_mask, not batch.is_classification)
        obs_dims["y_target"] = _y_dims(batch, "target_point")
    groups["observed_data"] = (obs, obs_dims)

    const: Dict[str, np.ndarray] = {}
    const_dims: Dict[str, List[str]] = {}
    for split in ("context", "target"):
        if split == "target" and not has_target:
            continue
        mask = batch.mask(split)
        const[f"{split}_x"] = _padded_nan(batch.x(split), mask, True)
        const_dims[f"{split}_x"] = ["task", f"{split}_point", "x_dim"]
        const[f"{split}_mask"] = mask.cpu().numpy()
        const_dims[f"{split}_mask"] = ["task", f"{split}_point"]
        task_idx, point_idx = torch.nonzero(mask, as_tuple=True)
        const[f"{split}_obs_task"] = task_idx.cpu().numpy()
        const[f"{split}_obs_point"] = point_idx.cpu().numpy()
        const_dims[f"{split}_obs_task"] = const_dims[f"{split}_obs_point"] = [f"{split}_obs"]
    groups["constant_data"] = (const, const_dims)

    if log_likelihood:
        for name, lp in pointwise_log_likelihood(posterior).items():
            split = name[2:]
            mask = batch.mask(split)
            if not bool(mask.any()):
                continue
            group = "log_likelihood" if split == "context" else "target_log_likelihood"
            # [C, S, M]: the real (task, point) pairs in order
            groups[group] = ({name: lp[:, :, mask].cpu().numpy()}, {name: [f"{split}_obs"]})

    if posterior.sample_stats:
        stats = {k: v.detach().cpu().numpy() for k, v in posterior.sample_stats.items()}
        groups["sample_stats"] = (stats, {k: [] for k in stats})
    return groups


def _thinned(posterior: Posterior, num: Optional[int]) -> Posterior:
    """The posterior with ``ceil(num / C)`` evenly spaced draws per chain (chains kept)."""
    if num is None:
        return posterior
    if not isinstance(num, int) or isinstance(num, bool) or num < 1:
        raise ValueError(f"num_predictive_samples must be a positive int or None, got {num!r}")
    C, S = posterior.num_chains, posterior.num_samples
    per_chain = -(-num // C)
    if per_chain >= S:
        return posterior
    idx = evenly_spaced(S, per_chain)
    samples = {k: v[:, idx] for k, v in posterior.samples.items()}
    return dataclasses.replace(posterior, samples=samples)


def _attrs(posterior: Posterior) -> Dict[str, Any]:
    from . import __version__

    return {
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "method": posterior.method,
        "seconds": float(posterior.seconds),
        "model": type(posterior.model).__name__,
        "pyro_meta_version": __version__,
    }


def _coords(batch: TaskBatch) -> Dict[str, np.ndarray]:
    coords = {
        "task": np.arange(batch.num_tasks),
        "context_point": np.arange(batch.num_points("context")),
        "target_point": np.arange(batch.num_points("target")),
        "x_dim": np.arange(batch.x_dim),
        "context_obs": np.arange(int(batch.context_mask.sum())),
        "target_obs": np.arange(int(batch.target_mask.sum())),
    }
    if not batch.is_classification:
        coords["y_dim"] = np.arange(batch.y_dim)
    return coords


@serialized
def to_inference_data(
    posterior: Posterior,
    predictive: bool = True,
    log_likelihood: bool = True,
    num_predictive_samples: Optional[int] = None,
):
    """A :class:`~pyro_meta.Posterior` as ArviZ ``InferenceData`` (ArviZ 1.x: a ``DataTree``).

    See the module docstring for the groups and dims. ``posterior_predictive`` holds draws of
    ``y ~ p(y | x, z)``, ``z ~ p(z | context)`` at ``batch.target_x`` (observation noise
    included); ``log_likelihood`` holds ``log p(y_tn | z_t)`` per draw for the real points only.

    Parameters
    ----------
    posterior : Posterior
        Draws ``{site: [C, S, T, *event]}`` from :func:`pyro_meta.infer` (any method).
    predictive : bool
        Add ``posterior_predictive`` (only when the batch has target points).
    log_likelihood : bool
        Add the pointwise ``log_likelihood`` group (for ``az.loo`` / ``az.waic``).
    num_predictive_samples : int, optional
        Thin the draws used for the predictive to ``ceil(num / C)`` evenly spaced draws per
        chain (the other groups keep every draw). Default: every draw.

    Returns
    -------
    arviz.InferenceData
        (or ``xarray.DataTree`` with ArviZ >= 1). ``attrs``: ``method``, ``seconds``,
        ``model`` (class name), ``pyro_meta_version``.
    """
    _check_posterior(posterior)
    for name, flag in (("predictive", predictive), ("log_likelihood", log_likelihood)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    groups = _groups(posterior, predictive, log_likelihood, num_predictive_samples)
    coords = _coords(posterior.batch)
    attrs = _attrs(posterior)
    # one from_dict call per group: a variable (y_context, y_target) has different dims in
    # different groups, and from_dict takes one dims mapping per variable name
    if _arviz_major() >= 1:
        return _build_datatree(groups, coords, attrs)
    idata = None
    extra = {}
    for group, (data, dims) in groups.items():
        if group not in _STANDARD_GROUPS:  # our own groups: built as datasets, added after
            extra[group] = az.dict_to_dataset(data, coords=coords, dims=dims, attrs=dict(attrs))
            continue
        part = az.from_dict(**{group: data, f"{group}_attrs": dict(attrs)}, coords=coords, dims=dims, attrs=dict(attrs))
        if idata is None:
            idata = part
        else:
            idata.extend(part)
    if extra:
        idata.add_groups(extra)
    return idata


#: the groups ``az.from_dict`` builds (0.2x keyword groups)
_STANDARD_GROUPS = (
    "posterior",
    "posterior_predictive",
    "observed_data",
    "constant_data",
    "log_likelihood",
    "sample_stats",
)


def _build_datatree(groups, coords, attrs):  # pragma: no cover - ArviZ >= 1 needs Python >= 3.12; untested here
    """ArviZ 1.x: ``arviz_base.from_dict({group: {var: array}})`` per group, joined into one ``DataTree``.

    Written against arviz_base's ``from_dict(data, *, coords, dims, attrs={group: attrs})``;
    this environment (Python 3.11, ArviZ 0.2x) cannot run it, so it is not covered by tests.
    """
    import arviz_base
    from xarray import DataTree

    datasets = {}
    for group, (data, dims) in groups.items():
        tree = arviz_base.from_dict({group: data}, coords=coords, dims=dims, attrs={group: attrs})
        datasets[group] = tree[group].to_dataset()
    tree = DataTree.from_dict(datasets)
    tree.attrs = dict(attrs)
    return tree


# ------------------------------------------------------------------------------- merging
def _read_parts(parts: Any) -> List[Any]:
    """InferenceData objects from a folder (its ``*.nc`` files in name order), paths, or the objects themselves."""
    import os

    if isinstance(parts, (str, os.PathLike)):
        folder = os.fspath(parts)
        if not os.path.isdir(folder):
            raise ValueError(f"parts: {folder!r} is not a folder (pass a folder of .nc files or a list of them)")
        parts = [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".nc")]
        if not parts:
            raise ValueError(f"parts: no .nc file in {folder!r}")
    parts = list(parts)
    if not parts:
        raise ValueError("parts is empty")
    out = []
    for p in parts:
        if isinstance(p, (str, os.PathLike)):
            if _arviz_major() >= 1:  # pragma: no cover - ArviZ 1.x needs Python >= 3.12
                import xarray as xr

                p = xr.open_datatree(os.fspath(p))
            else:
                p = az.from_netcdf(os.fspath(p))
        out.append(p)
    return out


def _datasets(idata: Any) -> Dict[str, Any]:
    if hasattr(idata, "groups") and callable(idata.groups):  # ArviZ 0.2x InferenceData
        return {g: idata[g] for g in idata.groups()}
    return {k: v.to_dataset() for k, v in idata.children.items()}  # pragma: no cover - ArviZ 1.x DataTree


def _join_tasks(datasets: List[Any], offsets: List[int], group: str) -> Any:
    """Variables with a ``task`` dim joined on it, those with a ``*_obs`` dim joined on that; ``*_obs_task`` renumbered."""
    import xarray as xr

    out = {}
    for name in datasets[0].data_vars:
        arrays = [ds[name] for ds in datasets]
        dims = arrays[0].dims
        dim = "task" if "task" in dims else next((d for d in dims if d.endswith("_obs")), None)
        if dim is None:
            if not all(a.equals(arrays[0]) for a in arrays[1:]):
                raise ValueError(
                    f"merge_inference_data: {group}.{name} has no task dim and differs between parts "
                    "(sampled global latents couple the tasks and cannot be merged)"
                )
            out[name] = arrays[0]
            continue
        if name.endswith("_obs_task"):
            arrays = [a + off for a, off in zip(arrays, offsets)]
        fill = False if arrays[0].dtype == bool else np.nan
        arrays = [a.drop_vars([c for c in a.coords if dim in a[c].dims]) for a in arrays]
        out[name] = xr.concat(arrays, dim=dim, join="outer", fill_value=fill)
    merged = xr.Dataset(out)
    for d in merged.dims:
        if d == "task" or d.endswith("_obs"):
            merged = merged.assign_coords({d: np.arange(merged.sizes[d])})
    merged.attrs = dict(datasets[0].attrs)
    return merged


def _join_stats(datasets: List[Any], weights: np.ndarray) -> Any:
    """Per-draw statistics of the parts as of one run over every task (as ``merge_posteriors``)."""
    import xarray as xr

    out = {}
    for name in datasets[0].data_vars:
        stacked = xr.concat([ds[name] for ds in datasets], dim="_part")
        if stacked.dtype == bool:
            out[name] = stacked.any("_part")
        elif name == "lp":
            out[name] = stacked.sum("_part")
        else:
            out[name] = (stacked * xr.DataArray(weights, dims="_part")).sum("_part").astype(stacked.dtype)
    merged = xr.Dataset(out)
    merged.attrs = dict(datasets[0].attrs)
    return merged


def merge_inference_data(parts: Any):
    """One InferenceData over every task of ``parts``, each the export of a chunk of consecutive tasks, in order.

    ``parts``: a folder of NetCDF files (``*.nc`` in name order, as
    :func:`pyro_meta.inference.sharded.infer_sharded` writes them with ``out_dir``), a list of paths, or
    ``InferenceData`` objects. Every group is joined on its ``task`` dim (point dims padded with NaN,
    masks with False) or its ``context_obs``/``target_obs`` dim (``*_obs_task`` renumbered to the
    joined tasks); ``sample_stats`` are combined as for one run over every task (``diverging`` any,
    ``lp`` summed, the others the task-weighted mean). ``attrs["seconds"]`` is the sum. Returns
    ``arviz.InferenceData`` (ArviZ 1.x: a ``DataTree``).
    """
    idatas = _read_parts(parts)
    groups = [_datasets(i) for i in idatas]
    names = list(groups[0])
    for k, g in enumerate(groups[1:], 1):
        if set(g) != set(names):
            raise ValueError(f"merge_inference_data: part {k} has groups {sorted(g)}, part 0 {sorted(names)}")
    sizes = [int(g["posterior"].sizes.get("task", 0)) if "posterior" in g else 0 for g in groups]
    if "posterior" not in names or not all(sizes):
        raise ValueError("merge_inference_data: every part needs a posterior group with a task dim")
    offsets = [sum(sizes[:k]) for k in range(len(sizes))]
    weights = np.asarray(sizes, dtype=float) / sum(sizes)
    merged = {}
    for name in names:
        parts_ = [g[name] for g in groups]
        merged[name] = _join_stats(parts_, weights) if name == "sample_stats" else _join_tasks(parts_, offsets, name)
        merged[name].attrs["seconds"] = float(sum(float(p.attrs.get("seconds", 0.0)) for p in parts_))
    if _arviz_major() >= 1:  # pragma: no cover - ArviZ 1.x needs Python >= 3.12
        from xarray import DataTree

        return DataTree.from_dict(merged)
    standard = {k: v for k, v in merged.items() if k in _STANDARD_GROUPS}
    idata = az.InferenceData(**standard)
    extra = {k: v for k, v in merged.items() if k not in _STANDARD_GROUPS}
    if extra:
        idata.add_groups(extra)
    return idata
