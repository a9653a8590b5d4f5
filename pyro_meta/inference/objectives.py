"""Guide objectives that do not collapse modes: IWAE, reweighted wake-sleep (wake phase) and sleep.

The ELBO trains the guide by the reverse ``KL(q || p)``, which is mode-seeking: a Gaussian guide of
a two-mode posterior sits on one mode. These objectives train ``q(z_t | context_t)`` of any
:class:`~pyro_meta.MetaModel` towards the *forward* ``KL(p || q)`` (mass-covering), or tighten the
bound. All work per task on Pyro traces of ``model.model`` and ``model.guide``, with ``K``
particles drawn at once under the library's draws plate (``pyro.plate("_draws", K, dim=-3)``,
:mod:`pyro_meta.inference.draws`; a loop when ``model.vectorized`` is False), and log weights
``log w_kt = log p(y_t, z_kt) - log q(z_kt | y_t)`` per task as in importance sampling
(:func:`~pyro_meta.inference.draws.per_task_log_density`).

* :func:`iwae_loss` -- ``-(1/T) sum_t log (1/K) sum_k w_kt`` (Burda et al. 2016): a bound tighter
  than the ELBO that trains model and guide; needs reparameterised guide sites.
* :func:`rws_wake_loss` -- ``-(1/T) sum_t sum_k wbar_kt log q(z_kt)`` with self-normalised weights
  ``wbar`` and ``z`` held fixed (Bornschein & Bengio 2015; Le et al. 2019): a stochastic estimate of
  the gradient of the forward KL; trains only the guide; needs no reparameterisation.
* :func:`sleep_loss` -- ``-(1/KT) sum log q(z_kt | y_kt)`` on ``(z, y)`` simulated from the model at
  the batch's inputs (the sleep phase; neural posterior estimation): the forward KL averaged over
  the model's own data; trains only the guide; needs only the model.

The model's global parameters keep ``model.loss``; :func:`guide_parameters` and
:func:`model_parameters` tell ``fit`` which parameters each objective should move.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ..data.batch import TaskBatch
from ..model import TASK_PLATE, MetaModel, check_batch, check_model, local_params, task_latent_sites
from ..validation import check_int
from .draws import DRAW_PLATE, per_task_log_density

__all__ = [
    "GUIDE_OBJECTIVES",
    "GuideObjective",
    "guide_parameters",
    "iwae_loss",
    "model_parameters",
    "rws_wake_loss",
    "sleep_loss",
]


def _check(model: object, batch: object, num_particles: object) -> int:
    check_model(model)
    check_batch(batch)
    check_int("num_particles", num_particles)
    return num_particles


def _in_tasks(site) -> bool:
    return TASK_PLATE in {f.name for f in site["cond_indep_stack"]}


def _latent_sites(trace: poutine.Trace) -> Dict[str, dict]:
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    }


def _sizes(model: MetaModel, K: int) -> List[Optional[int]]:
    """Draws per trace: one vectorized trace of ``K`` draws, or ``K`` plain traces (``None``) when not vectorized."""
    return [K] if model.vectorized else [None] * K


def _trace(fn, batch: TaskBatch, model: MetaModel, n: Optional[int]) -> poutine.Trace:
    """``fn(batch)`` traced under the draws plate of size ``n`` (site values ``[n, T, ...]``), or plainly for ``None``."""
    if n is not None:
        with local_params(), pyro.plate(DRAW_PLATE, n, dim=-(model.max_plate_nesting + 1)):
            return poutine.trace(fn).get_trace(batch)
    with local_params():
        return poutine.trace(fn).get_trace(batch)


def _lead(value: torch.Tensor, n: Optional[int]) -> torch.Tensor:
    """A site value with its leading draws dim: ``[n, T, ...]`` (``[1, T, ...]`` for a plain trace)."""
    return value if n is not None else value.unsqueeze(0)


def _log_density(trace: poutine.Trace, T: int, detach_values: bool = False) -> torch.Tensor:
    """Per-task log density ``[n, T]`` of the sites in the tasks plate; optionally at detached values."""
    if detach_values:
        copy = poutine.Trace()
        for name, site in trace.nodes.items():
            if site["type"] == "sample":
                site = {k: v for k, v in site.items() if k not in ("log_prob", "unscaled_log_prob", "log_prob_sum")}
                site["value"] = site["value"].detach()
            copy.add_node(name, **site)
        trace = copy
    return per_task_log_density(trace, T)


def _guide_sites(model: MetaModel, guide_trace: poutine.Trace, model_trace: poutine.Trace) -> List[str]:
    """Names of the task-level guide sites; refuse latents the guide leaves to the prior and auxiliary guide variables.

    ``model_trace`` is the model conditioned on the guide's task-level draws: a latent site left in it
    is a global latent (outside the tasks plate) or a task latent the guide does not sample.
    """
    left = list(_latent_sites(model_trace))
    if left:
        raise ValueError(
            f"{type(model).__name__}.model has latent sites {left} that the guide does not sample inside the tasks "
            "plate (global latents or task latents without a guide site): per-task weights cannot weigh them"
        )
    names = [n for n, s in _latent_sites(guide_trace).items() if _in_tasks(s)]
    extra = [n for n in names if n not in model_trace.nodes]
    if extra:
        raise ValueError(
            f"{type(model).__name__}.guide samples {extra}, which the model does not have: the density q(z) of a "
            "guide with auxiliary variables is a marginal these weights cannot use"
        )
    return names


def _particles(
    model: MetaModel, batch: TaskBatch, K: int, detach: bool
) -> List[Tuple[poutine.Trace, torch.Tensor, List[str]]]:
    """Per trace: ``(guide trace, log p [n, T], guide site names)``.

    ``log p`` is the model's log joint at the guide's draws (``poutine.condition``, which keeps the
    model's plates and masks); with ``detach`` the draws are detached and ``log p`` has no gradient.
    """
    out = []
    for n in _sizes(model, K):
        guide_trace = _trace(model.guide, batch, model, n)
        names = [k for k, s in _latent_sites(guide_trace).items() if _in_tasks(s)]
        values = {k: guide_trace.nodes[k]["value"] for k in names}
        if detach:
            values = {k: v.detach() for k, v in values.items()}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not detach):
            model_trace = _trace(poutine.condition(model.model, data=values), batch, model, n)
            log_p = per_task_log_density(model_trace, batch.num_tasks)
        names = _guide_sites(model, guide_trace, model_trace)
        out.append((guide_trace, log_p, names))
    return out


def iwae_loss(model: MetaModel, batch: TaskBatch, num_particles: int) -> torch.Tensor:
    """The importance-weighted bound per task, negated: ``-(1/T) sum_t [logsumexp_k log w_kt - log K]``.

    ``log w_kt = log p(y_t, z_kt) - log q(z_kt | y_t)`` with ``z_kt ~ q`` (``y_t``: every observed point
    of task ``t``, context and target). ``K = 1`` is the ELBO; the bound rises to ``log p(y_t)`` as
    ``K`` grows (Burda et al. 2016). Differentiable in the model's and the guide's parameters
    (pathwise through ``z``), so every guide site must be reparameterised (``has_rsample``); use
    :func:`rws_wake_loss` otherwise. The guide's gradient gets noisier relative to its size as ``K``
    grows (Rainforth et al. 2018): for the guide, large ``K`` favours :func:`rws_wake_loss`.
    Returns a scalar.
    """
    K = _check(model, batch, num_particles)
    logw = []
    for guide_trace, log_p, names in _particles(model, batch, K, detach=False):
        for name in names:
            fn = guide_trace.nodes[name]["fn"]
            if not getattr(fn, "has_rsample", False):
                raise ValueError(
                    f"iwae_loss: guide site {name!r} ({type(fn).__name__}) is not reparameterised; its gradient "
                    "would be biased without a score-function term: use rws_wake_loss for such guides"
                )
        logw.append(log_p - per_task_log_density(guide_trace, batch.num_tasks))
    logw = torch.cat(logw, 0)  # [K, T]
    return -(logw.logsumexp(0) - math.log(K)).mean()


def rws_wake_loss(model: MetaModel, batch: TaskBatch, num_particles: int) -> torch.Tensor:
    """Wake-phase update of the guide: ``-(1/T) sum_t sum_k wbar_kt log q(z_kt | y_t)``, weights and draws detached.

    ``wbar_kt = softmax_k(log p(y_t, z_kt) - log q(z_kt | y_t))`` self-normalises the weights per task
    (Bornschein & Bengio 2015, "q wake"; Le et al. 2019). Its gradient is the self-normalised
    importance estimate of ``-E_{p(z | y)} grad log q(z | y)``, the gradient of the forward
    ``KL(p(z | y) || q(z | y))``: mass-covering, unlike the ELBO. Only the guide's parameters get a
    gradient (the model enters through the detached weights); no reparameterisation is needed.
    For a flow guide, ``log q`` at the detached draws costs the flow's inverse pass. Returns a scalar.
    """
    K = _check(model, batch, num_particles)
    T = batch.num_tasks
    log_q, logw = [], []
    for guide_trace, log_p, _ in _particles(model, batch, K, detach=True):
        lq = _log_density(guide_trace, T, detach_values=True)  # grads to the guide's parameters only
        log_q.append(lq)
        logw.append(log_p.detach() - lq.detach())
    log_q, logw = torch.cat(log_q, 0), torch.cat(logw, 0)  # [K, T]
    weights = torch.softmax(logw, 0)
    return -(weights * log_q).sum(0).mean()


def _simulate(
    model: MetaModel, batch: TaskBatch, K: int, names: List[str]
) -> Tuple[Dict[str, torch.Tensor], TaskBatch]:
    """``(z, y)`` from the model's prior at the batch's inputs: latents ``[K*T, 1, *event]`` and a ``K*T``-task batch.

    Simulated task ``k*T + t`` has task ``t``'s inputs and masks and the ``k``-th draw.
    """
    T = batch.num_tasks
    with torch.no_grad():
        runs = [(_trace(poutine.uncondition(model.model), batch, model, n), n) for n in _sizes(model, K)]

    def collect(name: str, tail: torch.Size) -> torch.Tensor:
        parts = [_lead(trace.nodes[name]["value"], n) for trace, n in runs]
        return torch.cat([p.expand(p.shape[:1] + (T,) + tuple(tail)) for p in parts], 0).reshape((K * T,) + tuple(tail))

    def repeat(t: torch.Tensor) -> torch.Tensor:
        return t.repeat((K,) + (1,) * (t.dim() - 1))

    first = runs[0][0]
    values = {}
    for name in names:
        if name not in first.nodes:
            raise ValueError(f"sleep_loss: {type(model).__name__}.model has no task latent site {name!r}")
        site = first.nodes[name]
        values[name] = collect(name, site["value"].shape[-(site["fn"].event_dim + 1) :])
    ys = {}
    for split in ("context", "target"):
        y = batch.y(split)
        if y is None:
            continue
        if batch.num_points(split) == 0:
            ys[split] = repeat(y)
            continue
        if f"y_{split}" not in first.nodes:
            raise ValueError(
                f"sleep_loss: {type(model).__name__}.model has no site 'y_{split}' to simulate {split} y from"
            )
        ys[split] = collect(f"y_{split}", y.shape[1:])
    sim_batch = TaskBatch(
        context_x=repeat(batch.context_x),
        context_y=ys["context"],
        target_x=repeat(batch.target_x),
        target_y=ys.get("target"),
        context_mask=repeat(batch.context_mask),
        target_mask=repeat(batch.target_mask),
        allow_empty_context=batch.allow_empty_context,
    )
    return values, sim_batch


def sleep_loss(model: MetaModel, batch: TaskBatch, num_particles: int) -> torch.Tensor:
    """Sleep phase / neural posterior estimation: ``-(1/KT) sum_{k,t} log q(z_kt | y_kt)`` on simulated tasks.

    For each task ``t`` and particle ``k``: ``z_kt ~ p(z)``, then ``y_kt ~ p(y | x_t, z_kt)`` at the
    batch's own inputs (context, and target when ``batch.target_y`` is given), all from the model's
    prior (Pyro's ``uncondition``, no gradient); the guide sees the ``K*T`` simulated tasks exactly as
    it sees real ones (``batch.observed()``). Minimises ``E_{p(y)} KL(p(z | y) || q(z | y))`` up to a
    constant: the guide learns the model's exact posterior where its family contains it. Needs only
    the model (no real ``y`` is read); only the guide's parameters get a gradient.

    A model whose likelihood reads the observed ``batch.context_y`` itself (e.g. a NeuralProcess
    with ``deterministic_path=True``) is simulated with that real ``context_y`` in the likelihood,
    so it is not a proper generative model of the context there. Returns a scalar.
    """
    K = _check(model, batch, num_particles)
    names = list(task_latent_sites(model, batch))
    values, sim_batch = _simulate(model, batch, K, names)
    with local_params():
        trace = poutine.trace(poutine.condition(model.guide, data=values)).get_trace(sim_batch)
    missing = [n for n in names if n not in trace.nodes]
    if missing:
        raise ValueError(f"sleep_loss: {type(model).__name__}.guide has no site {missing} for the model's task latents")
    return -per_task_log_density(trace, sim_batch.num_tasks).mean()


def _used(fn, batch: TaskBatch, model: MetaModel) -> List[torch.nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    with local_params(), torch.enable_grad():
        trace = poutine.trace(fn).get_trace(batch)
        trace.compute_log_prob()
        total = 0.0
        for site in trace.nodes.values():
            if site["type"] != "sample":
                continue
            total = total + site["log_prob_sum"]
            if site["value"].is_floating_point() and site["value"].requires_grad:
                total = total + site["value"].sum()
        if not isinstance(total, torch.Tensor) or not total.requires_grad or not params:
            return []
        grads = torch.autograd.grad(total, params, allow_unused=True)
    return [p for p, g in zip(params, grads) if g is not None]


def guide_parameters(model: MetaModel, batch: TaskBatch) -> List[torch.nn.Parameter]:
    """The parameters ``model.guide(batch)`` uses, in ``model.parameters()`` order.

    Found by autograd over one trace of the guide (its sites' log densities and reparameterised
    values, ``allow_unused=True``): a parameter is the guide's when its graph reaches it, even with
    a zero gradient. Parameters with ``requires_grad=False`` are never listed.

    Shared parameters: a parameter used by both the guide and the model (also in
    :func:`model_parameters`, e.g. an encoder shared by the guide and a deterministic path) is
    listed here. If ``fit`` trains the guide's parameters by a guide objective and the rest by
    ``model.loss`` with separate ``autograd.grad`` calls, such a parameter gets only the guide
    objective's gradient and stops learning its role in the model; to keep both roles, add
    ``model.loss``'s gradient for ``set(guide_parameters) & set(model_parameters)``. Note that
    ``model.loss`` (the ELBO) also has gradients for guide-only parameters: they are meant to be
    dropped when a guide objective replaces it.
    """
    check_model(model)
    check_batch(batch)
    return _used(model.guide, batch, model)


def model_parameters(model: MetaModel, batch: TaskBatch) -> List[torch.nn.Parameter]:
    """The parameters ``model.model`` uses at the guide's draws (``log p(y, z)``), in ``model.parameters()`` order.

    Found as :func:`guide_parameters` finds the guide's, on one trace of the model conditioned on
    one draw of the guide. A parameter in both lists is shared (see :func:`guide_parameters`).
    """
    check_model(model)
    check_batch(batch)
    with local_params(), torch.no_grad():
        guide_trace = poutine.trace(model.guide).get_trace(batch)
    values = {n: s["value"].detach() for n, s in _latent_sites(guide_trace).items()}
    return _used(poutine.condition(model.model, data=values), batch, model)


#: the guide objectives ``fit(guide_objective=...)`` offers (``"elbo"``: the model's own loss trains the guide too)
GUIDE_OBJECTIVES = {"iwae": iwae_loss, "rws": rws_wake_loss, "sleep": sleep_loss}


class GuideObjective:
    """Gradients for :func:`pyro_meta.fit` when the guide has an objective of its own.

    The model's parameters keep ``model.loss``; the guide's parameters (:func:`guide_parameters`)
    get the gradient of the guide objective instead (IWAE, reweighted wake-sleep's wake phase, or
    the sleep phase), with ``num_particles`` particles per task. A parameter used by both the model
    and the guide gets the sum of both gradients. The parameter split is found on the first batch.
    """

    def __init__(self, name: str, num_particles: int = 8) -> None:
        if name not in GUIDE_OBJECTIVES:
            raise ValueError(f"guide_objective must be one of {('elbo',) + tuple(GUIDE_OBJECTIVES)}, got {name!r}")
        self.name, self.fn = name, GUIDE_OBJECTIVES[name]
        self.num_particles = num_particles
        self._split: Optional[Tuple[List[torch.nn.Parameter], List[torch.nn.Parameter]]] = None
        self.last: float = float("nan")

    def _parameters(
        self, model: MetaModel, batch: TaskBatch
    ) -> Tuple[List[torch.nn.Parameter], List[torch.nn.Parameter]]:
        if self._split is None:
            guide = [p for p in guide_parameters(model, batch) if p.requires_grad]
            if not guide:
                raise ValueError(
                    f"guide_objective={self.name!r}: {type(model).__name__}.guide uses no trainable parameter"
                )
            used_by_model = {id(p) for p in model_parameters(model, batch)}
            guide_only = {id(p) for p in guide} - used_by_model
            model_side = [p for p in model.parameters() if p.requires_grad and id(p) not in guide_only]
            self._split = (model_side, guide)
        return self._split

    def backward(self, model: MetaModel, batch: TaskBatch, loss: torch.Tensor) -> None:
        """Set ``.grad`` of every trainable parameter: ``model.loss`` for the model's, the objective for the guide's."""
        model_side, guide = self._parameters(model, batch)
        grads_model = torch.autograd.grad(loss, model_side, allow_unused=True) if model_side else ()
        objective = self.fn(model, batch, self.num_particles)
        if not torch.isfinite(objective):
            raise FloatingPointError(f"fit: the guide objective {self.name!r} is not finite ({float(objective)})")
        grads_guide = torch.autograd.grad(objective, guide, allow_unused=True)
        self.last = float(objective.detach())
        for params, grads in ((model_side, grads_model), (guide, grads_guide)):
            for p, g in zip(params, grads):
                if g is None:
                    continue
                p.grad = g.detach() if p.grad is None else p.grad + g.detach()
