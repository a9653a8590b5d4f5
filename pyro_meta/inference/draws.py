"""Running a model or guide over many draws, and the shape bookkeeping between sites and posteriors.

One helper, :func:`trace_draws`, runs a model or guide for ``N`` draws at once -- vectorized
under ``pyro.plate("_draws", N, dim=-3)`` when ``model.vectorized``, otherwise one trace per draw
with the sites stacked -- optionally conditioned on given values per draw. Importance sampling,
the predictive, the ArviZ export, the plots and the MCMC initialisation all go through it.

Shapes (``N`` draws, ``T`` tasks):

* *draw values* ``{site: [N, *natural]}``: a task site's natural shape is ``[T, 1, *event]`` (task
  plate at dim -2, the points singleton at -1); a global site's is ``batch_shape + event_shape``;
* *posterior samples* ``{site: [C, S, T, *event]}`` for task sites and ``[C, S, *natural]`` for
  global ones (chains, draws per chain).
"""

from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ..data.batch import TaskBatch
from ..model import TASK_PLATE, MetaModel, SiteInfo, local_params

__all__ = [
    "DRAW_PLATE",
    "draw_sites",
    "per_task_log_density",
    "to_posterior",
    "to_site_values",
    "trace_draws",
]

DRAW_PLATE = "_draws"


class StackedFns:
    """The per-draw distributions of one site of a non-vectorized run: ``log_prob(y)`` stacked on dim 0."""

    def __init__(self, fns) -> None:
        self.fns = list(fns)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return torch.stack([f.log_prob(value) for f in self.fns])

    @property
    def mean(self) -> torch.Tensor:
        return torch.stack([f.mean for f in self.fns])

    @property
    def probs(self) -> torch.Tensor:
        return torch.stack([f.probs for f in self.fns])

    @property
    def logits(self) -> torch.Tensor:
        return torch.stack([f.logits for f in self.fns])


def _vectorized_value(value: torch.Tensor, info: Optional[SiteInfo], max_plate_nesting: int) -> torch.Tensor:
    """Draw values ``[N, *natural]`` in the shape a site takes under the draws plate at ``dim=-(npl+1)``."""
    if info is None or not info.is_global:
        return value
    pad = max_plate_nesting - len(info.batch_shape)
    return value.reshape((value.shape[0],) + (1,) * max(pad, 0) + tuple(info.shape))


def trace_draws(
    fn: Callable,
    batch: TaskBatch,
    num_draws: int,
    model: MetaModel,
    data: Optional[Mapping[str, torch.Tensor]] = None,
    sites: Optional[Mapping[str, SiteInfo]] = None,
    log_prob: bool = False,
) -> poutine.Trace:
    """Trace ``fn(batch)`` for ``num_draws`` draws; sample sites hold values ``[N, ...]``.

    Parameters
    ----------
    fn : callable
        ``model.model``, ``model.guide`` or a function of the batch (e.g. a conditioned model).
    batch : TaskBatch
    num_draws : int
        ``N``.
    model : MetaModel
        Gives ``vectorized`` and ``max_plate_nesting``.
    data : dict, optional
        Values ``{site: [N, *natural]}`` to condition on, one per draw (``poutine.condition``); ``sites``
        says which are global (their draws-plate shape differs from their natural shape).
    log_prob : bool
        Compute every sample site's ``log_prob`` (masked and scaled, ``[N, ...]``).

    Notes
    -----
    Vectorized models run once under ``pyro.plate("_draws", N, dim=-(max_plate_nesting + 1)``
    (a shape error there raises ``ValueError`` suggesting ``vectorized = False``); other models
    run ``N`` times, draw ``n`` conditioned on ``data[site][n]``, and the returned trace carries
    the stacked values, stacked ``log_prob`` and a :class:`StackedFns` as each site's ``fn``.
    """
    data = dict(data or {})
    sites = sites or {}
    npl = model.max_plate_nesting
    if model.vectorized:
        values = {k: _vectorized_value(v, sites.get(k), npl) for k, v in data.items()}
        target = poutine.condition(fn, data=values) if values else fn
        try:
            with local_params(), pyro.plate(DRAW_PLATE, num_draws, dim=-(npl + 1)):
                trace = poutine.trace(target).get_trace(batch)
                if log_prob:
                    trace.compute_log_prob()
        except (RuntimeError, ValueError) as err:
            if "vectorized = False" in str(err) or num_draws == 1:
                raise
            raise ValueError(
                f"{type(model).__name__} failed when run for {num_draws} draws at once under "
                f"pyro.plate({DRAW_PLATE!r}, dim={-(npl + 1)}): {err}. A model or guide that does not broadcast "
                "over a leading sample dim must set `vectorized = False` on its class"
            ) from err
        return trace
    traces = []
    with local_params():
        for n in range(num_draws):
            target = poutine.condition(fn, data={k: v[n] for k, v in data.items()}) if data else fn
            tr = poutine.trace(target).get_trace(batch)
            if log_prob:
                tr.compute_log_prob()
            traces.append(tr)
    trace = traces[-1]
    for name, site in trace.nodes.items():
        if site["type"] != "sample":
            continue
        site["value"] = torch.stack([t.nodes[name]["value"] for t in traces])
        site["fn"] = StackedFns(t.nodes[name]["fn"] for t in traces)
        if log_prob:
            site["log_prob"] = torch.stack([t.nodes[name]["log_prob"] for t in traces])
    return trace


def draw_sites(
    fn: Callable,
    batch: TaskBatch,
    num_draws: int,
    sites: Mapping[str, SiteInfo],
    model: MetaModel,
) -> Dict[str, torch.Tensor]:
    """Draw values ``{site: [N, *natural]}`` of ``sites`` in ``N`` draws of ``fn(batch)`` (a guide or model).

    Task sites come out as ``[N, T, 1, *event]``, global sites as ``[N, *shape]``; a site whose
    value does not depend on the draw (a deterministic guide) is expanded.
    """
    trace = trace_draws(fn, batch, num_draws, model)
    out = {}
    T = batch.num_tasks
    for name, info in sites.items():
        if name not in trace.nodes:
            raise ValueError(f"{type(model).__name__}: the traced function has no site {name!r}")
        value = trace.nodes[name]["value"].detach()
        if info.is_global:
            out[name] = value.reshape((-1,) + tuple(info.shape)).expand((num_draws,) + tuple(info.shape))
        else:
            out[name] = value.expand((num_draws, T, 1) + tuple(info.event_shape))
    return out


def to_posterior(
    values: Mapping[str, torch.Tensor], sites: Mapping[str, SiteInfo], num_chains: int
) -> Dict[str, torch.Tensor]:
    """Draw values ``{site: [C*S, *natural]}`` -> samples ``[C, S, T, *event]`` (globals ``[C, S, *shape]``)."""
    out = {}
    for name, info in sites.items():
        v = values[name]
        if not info.is_global:
            v = v.squeeze(-(info.event_dim + 1))  # the points singleton
        out[name] = v.reshape((num_chains, v.shape[0] // num_chains) + tuple(v.shape[1:]))
    return out


def to_site_values(samples: Mapping[str, torch.Tensor], sites: Mapping[str, SiteInfo]) -> Dict[str, torch.Tensor]:
    """Samples ``{site: [C, S, ...]}`` -> draw values ``{site: [C*S, *natural]}`` (what the model consumes)."""
    out = {}
    for name, info in sites.items():
        v = samples[name]
        v = v.reshape((-1,) + tuple(v.shape[2:]))
        out[name] = v if info.is_global else v.unsqueeze(-(info.event_dim + 1))
    return out


def per_task_log_density(trace: poutine.Trace, num_tasks: int, exclude: Optional[set] = None) -> torch.Tensor:
    """``log p`` of every sample site inside the tasks plate, summed per task: ``[N, T]``.

    Masks and scales are applied (the trace's ``log_prob``, computed here if missing); global
    sites are left out.
    """
    total = 0.0
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or (exclude and name in exclude):
            continue
        if TASK_PLATE not in {f.name for f in site["cond_indep_stack"]}:
            continue
        if "log_prob" not in site:
            trace.compute_log_prob(lambda n, s, name=name: n == name)
        lp = site["log_prob"]
        total = total + lp.sum(-1)  # points dim (or the singleton)
    if isinstance(total, float):
        raise ValueError("no sample site inside the tasks plate")
    return total.reshape(-1, num_tasks) if total.dim() != 2 else total
