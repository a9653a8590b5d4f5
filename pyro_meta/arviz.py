"""ArviZ export of a :class:`~pyro_meta.Posterior`: the one module that knows ArviZ.

Groups and dims (``C`` chains, ``S`` draws, ``T`` tasks, ``Nc``/``Nt`` padded points,
``Dy`` output features, ``M`` real points):

=====================  =====================================================================
group                  variables (dims)
=====================  =====================================================================
posterior              each task latent ``(chain, draw, task, <site>_dim_0, ...)``
posterior_predictive   ``y_target (chain, draw, task, target_point, y_dim)``; padded points NaN
observed_data          ``y_context (task, context_point, y_dim)``, ``y_target`` when known; padded NaN
constant_data          ``context_x``/``target_x (task, *_point, x_dim)`` (padded NaN), the masks
                       ``context_mask``/``target_mask (task, *_point)`` and the index maps
                       ``context_obs_task``/``context_obs_point (context_obs)`` (same for target)
log_likelihood         ``y_context (chain, draw, context_obs)``; ``y_target (chain, draw, target_obs)``
sample_stats           MCMC only: ``diverging``, ``acceptance_rate``, ``step_size``, ``lp`` ``(chain, draw)``
=====================  =====================================================================

Class labels have no ``y_dim`` and are stored as floats (so that padding can be NaN).

**Padded points in the log-likelihood.** ArviZ's ``loo``/``waic`` treat every entry of a
log-likelihood variable as one observation, and a NaN poisons the sum. So the pointwise
log-likelihood keeps only the real points: the real ``(task, point)`` pairs are flattened, task
by task in point order, into one dim ``context_obs`` of size ``M = context_mask.sum()``
(``target_obs`` likewise); ``constant_data.context_obs_task[m]`` and ``context_obs_point[m]``
give the task and the padded point index of observation ``m``. ``az.loo(idata,
var_name="y_context")`` then counts exactly the ``M`` real context points.

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
from pyro import poutine

from .data.batch import TaskBatch
from .inference.posterior import Posterior
from .model import MetaModel, local_params

with warnings.catch_warnings():
    # ArviZ 0.2x announces its 1.x refactor with a FutureWarning on import: not actionable here
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

__all__ = ["pointwise_log_likelihood", "to_inference_data"]

def _arviz_major() -> int:
    return int(str(az.__version__).split(".")[0])


# ------------------------------------------------------------------------- log-likelihood
def _log_lik_draws(model: MetaModel, batch: TaskBatch, values: Mapping[str, torch.Tensor], site: str) -> torch.Tensor:
    """``log p(y_tn | z_n)`` of the observed ``site`` per draw, ``[N, T, n]``: the model traced on ``batch`` with ``z = values``.

    ``values`` are ``{latent: [N, T, 1, *event]}``. One trace under a ``[N]`` draws plate, or
    ``N`` traces when ``model.vectorized`` is False. The density is unmasked (padding included).
    """
    num = next(iter(values.values())).shape[0]
    T, n = batch.num_tasks, batch.num_points(site[2:])
    with local_params(), torch.no_grad():
        if model.vectorized:
            with pyro.plate("_draws", num, dim=-(model.max_plate_nesting + 1)):
                trace = poutine.trace(poutine.condition(model.model, data=dict(values))).get_trace(batch)
            traces = [trace]
        else:
            traces = [
                poutine.trace(poutine.condition(model.model, data={k: v[i] for k, v in values.items()})).get_trace(batch)
                for i in range(num)
            ]
        out = []
        for trace in traces:
            if site not in trace.nodes or not trace.nodes[site]["is_observed"]:
                raise ValueError(
                    f"{type(model).__name__}.model has no observed site {site!r} on this batch "
                    "(pyro_meta.observe writes y_context/y_target)"
                )
            node = trace.nodes[site]
            out.append(node["fn"].log_prob(node["value"]))
    if model.vectorized:
        return out[0].expand(num, T, n)
    return torch.stack([lp.expand(T, n) for lp in out])


def pointwise_log_likelihood(posterior: Posterior) -> Dict[str, torch.Tensor]:
    """Pointwise log-likelihood of the observed points under each posterior draw.

    ``log p(y_tn | z_t^(c,s))`` for every context point (the model traced on
    ``batch.context_only()``, conditioned on the draws) and, when ``batch.target_y`` is known,
    every target point. Vectorized over draws unless ``model.vectorized`` is False.

    Parameters
    ----------
    posterior : Posterior
        Draws ``{site: [C, S, T, *event]}`` and the batch they condition on.

    Returns
    -------
    dict
        ``{"y_context": [C, S, T, Nc], "y_target": [C, S, T, Nt]}`` (``y_target`` only when
        known). Entries at padded points are the model's density at the padding values:
        meaningless, select with the batch's masks.
    """
    _check_posterior(posterior)
    batch = posterior.batch
    C, S = posterior.num_chains, posterior.num_samples
    values = posterior.site_values()
    out = {"y_context": _log_lik_draws(posterior.model, batch.context_only(), values, "y_context")}
    if batch.target_y is not None and batch.num_points("target") > 0:
        out["y_target"] = _log_lik_draws(posterior.model, batch, values, "y_target")
    return {k: v.reshape((C, S) + tuple(v.shape[1:])).detach() for k, v in out.items()}


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
        event = value.dim() - 3
        dims[name] = ["task"] + [f"{name}_dim_{i}" for i in range(event)]
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
        ll, ll_dims = {}, {}
        for name, lp in pointwise_log_likelihood(posterior).items():
            split = name[2:]
            mask = batch.mask(split)
            if not bool(mask.any()):
                continue
            ll[name] = lp[:, :, mask].cpu().numpy()  # [C, S, M]: the real (task, point) pairs in order
            ll_dims[name] = [f"{split}_obs"]
        if ll:
            groups["log_likelihood"] = (ll, ll_dims)

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
    idx = torch.linspace(0, S - 1, per_chain).round().long()
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
    for group, (data, dims) in groups.items():
        part = az.from_dict(**{group: data, f"{group}_attrs": dict(attrs)}, coords=coords, dims=dims, attrs=dict(attrs))
        if idata is None:
            idata = part
        else:
            idata.extend(part)
    return idata


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
