"""Potential energies of a :class:`~pyro_meta.inference.common.Problem` in unconstrained coordinates.

Two forms, both built generically from the Pyro model (no model-specific code):

* :class:`TaskPotential` -- every task separately: ``u [C, T, E] -> U [C, T]``, one row of ``E``
  unconstrained coordinates per chain and task (the task sites' ``biject_to(support)`` inverses,
  flattened and concatenated). The model runs once, vectorized under ``pyro.plate("_draws", C)``
  with chain ``c``'s values as draw ``c``; ``U = -(sum of the task's log densities + log|J|)``,
  the per-task sum of :func:`~pyro_meta.inference.draws.per_task_log_density`. Tasks are
  conditionally independent given the (fixed) globals, so ``dU.sum()/du`` is every chain-task's
  own gradient: the target of :func:`~pyro_meta.inference.batched_hmc.sample_batched_hmc`.
* :func:`joint_potential` -- Pyro's potential over a dict of unconstrained site values
  (``-log p(context, z) - log|J|``, every site of the model summed, as
  ``pyro.infer.mcmc.util.initialize_model`` builds it for models without enumerated sites).

Both take the batch's tensors and the fixed global values as explicit arguments (``inputs``)
rather than closing over them, so that a traced graph of them (:mod:`.compiled`) serves any
batch of the same shapes.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Callable, Dict, List, Mapping, Tuple

import pyro
import torch
from pyro import poutine
from torch.distributions import biject_to

from ..data.batch import TaskBatch
from ..model import local_params
from .common import Problem
from .draws import per_task_log_density, trace_draws

__all__ = ["BATCH_TENSORS", "TaskPotential", "joint_potential", "problem_inputs", "with_tensors"]

#: the TaskBatch fields a potential reads as inputs (``None`` fields are skipped)
BATCH_TENSORS = ("context_x", "context_y", "context_mask", "target_x", "target_y", "target_mask")


def problem_inputs(problem: Problem) -> Dict[str, torch.Tensor]:
    """The tensors a potential of ``problem`` depends on besides ``u``: the conditioning batch's and the fixed globals'.

    Keys ``"batch.<field>"`` and ``"global.<site>"``, in a fixed order.
    """
    out = {f"batch.{k}": getattr(problem.cond, k) for k in BATCH_TENSORS if getattr(problem.cond, k) is not None}
    out.update({f"global.{k}": v for k, v in problem.fixed_globals.items()})
    return out


def with_tensors(batch: TaskBatch, tensors: Mapping[str, torch.Tensor]) -> TaskBatch:
    """A shallow copy of ``batch`` with the given fields replaced, *without* validation.

    For tracing: the new values are graph inputs (proxies) of the same shapes, which the
    constructor's data-dependent checks must not touch.
    """
    out = copy.copy(batch)
    for name, value in tensors.items():
        object.__setattr__(out, name, value)
    return out


def _model_fn(problem: Problem, inputs: Mapping[str, torch.Tensor]) -> Tuple[Callable, TaskBatch]:
    """``(model.model with the fixed globals conditioned on inputs, the conditioning batch rebuilt from inputs)``."""
    batch = with_tensors(problem.cond, {k[6:]: v for k, v in inputs.items() if k.startswith("batch.")})
    fixed = {k[7:]: v for k, v in inputs.items() if k.startswith("global.")}
    fn = poutine.condition(problem.model.model, data=fixed) if fixed else problem.model.model
    return fn, batch


@dataclasses.dataclass(frozen=True)
class _Coords:
    """One task site's block of the ``E`` coordinates: ``u[..., offset:offset+size]`` reshaped to ``[..., *uevent]``."""

    name: str
    transform: object
    event_shape: torch.Size
    uevent_shape: torch.Size
    offset: int
    size: int


class TaskPotential:
    """``U(u) [C, T]``: each chain-task's potential energy in unconstrained coordinates, ``u [C, T, E]``.

    ``U_ct = -(log p(z_ct, context_t) + log|det d z / d u|)`` with ``z = biject_to(support)(u)``
    per task site; the global latents are held at the problem's fixed values (``globals="sample"``
    is refused: sampled globals couple every task). The coordinates are the task sites in
    ``problem.sites`` order, each flattened: ``E = sum_site prod(unconstrained event shape)``.

    Calling it (``U = potential(u)``) is robust for sampling: Pyro's validation is off, a NaN
    potential becomes ``+inf``, and a ``ValueError`` raised by the model (e.g. a value check of its
    own) makes every chain-task's potential ``+inf`` instead of propagating; both read as a
    divergence to the sampler. :meth:`log_density` is the strict form (validation as configured,
    exceptions propagate): used once at the start to surface model errors.
    """

    def __init__(self, problem: Problem) -> None:
        if problem.globals == "sample":
            raise ValueError("TaskPotential holds the global latents fixed; globals='sample' couples every task")
        if not problem.sites:
            raise ValueError("the problem has no task-level latent site")
        self.problem = problem
        self.num_tasks = problem.num_tasks
        coords: List[_Coords] = []
        offset = 0
        for name, info in problem.sites.items():
            t = biject_to(info.support)
            uevent = torch.Size(t.inverse_shape(info.event_shape))
            size = math.prod(uevent)
            coords.append(_Coords(name, t, torch.Size(info.event_shape), uevent, offset, size))
            offset += size
        self.coords = coords
        self.num_coords = offset
        self.inputs = problem_inputs(problem)

    # ------------------------------------------------------------------ coordinates
    def pack(self, unconstrained: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``{site: [..., T, 1, *uevent]}`` (unconstrained, natural shape) -> ``u [..., T, E]``."""
        parts = []
        for c in self.coords:
            v = unconstrained[c.name]
            lead = v.shape[: v.dim() - len(c.uevent_shape) - 1]  # drop the points singleton
            parts.append(v.reshape(tuple(lead) + (c.size,)))
        return torch.cat(parts, -1)

    def unpack(self, u: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``u [..., E]`` -> unconstrained ``{site: [..., *uevent]}``."""
        return {
            c.name: u[..., c.offset : c.offset + c.size].reshape(u.shape[:-1] + c.uevent_shape) for c in self.coords
        }

    def constrain(self, u: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``u [..., T, E]`` -> site values ``{site: [..., T, *event]}`` (``biject_to(support)(u)``)."""
        return {c.name: c.transform(v) for c, v in zip(self.coords, self.unpack(u).values())}

    # ------------------------------------------------------------------ densities
    def log_density(self, u: torch.Tensor, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``log p(z, context_t) + log|J|`` per chain-task, ``[C, T]``, for ``u [C, T, E]`` (strict: errors propagate)."""
        problem = self.problem
        C, T = u.shape[0], self.num_tasks
        fn, batch = _model_fn(problem, inputs)
        data, log_jac = {}, 0.0
        for c, v in zip(self.coords, self.unpack(u).values()):
            v = v.unsqueeze(2)  # [C, T, 1, *uevent]: the points singleton of a task site
            z = c.transform(v)
            data[c.name] = z
            log_jac = log_jac + c.transform.log_abs_det_jacobian(v, z).reshape(C, T, -1).sum(-1)
        trace = trace_draws(fn, batch, C, problem.model, data=data, sites=problem.sites, log_prob=True)
        return per_task_log_density(trace, T) + log_jac

    def energy(self, u: torch.Tensor, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The robust ``U [C, T]`` at ``u [C, T, E]`` given ``inputs`` (see the class docstring)."""
        try:
            with pyro.validation_enabled(False):
                U = -self.log_density(u, inputs)
        except ValueError:
            return u.sum(-1) * 0.0 + math.inf  # keeps the autograd graph; every chain-task rejected
        return torch.where(torch.isnan(U), torch.full_like(U, math.inf), U)

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return self.energy(u, self.inputs)


def joint_potential(
    problem: Problem, values: Mapping[str, torch.Tensor], inputs: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Pyro's potential energy of every latent site, a scalar: ``-log p(context, z) - log|J|``.

    ``values``: unconstrained ``{site: [T, 1, *uevent]}`` for task sites (``[*ushape]`` for sampled
    global sites), as Pyro's HMC/NUTS pass them; ``inputs``: :func:`problem_inputs`. Equal to the
    potential ``pyro.infer.mcmc.util.initialize_model`` builds for a model without enumerated sites
    (``trace.log_prob_sum()`` of the conditioned model minus the log-Jacobians).
    """
    fn, batch = _model_fn(problem, inputs)
    sites = problem.latent_sites
    constrained, log_jac = {}, 0.0
    for name, u in values.items():
        t = biject_to(sites[name].support)
        z = t(u)
        constrained[name] = z
        log_jac = log_jac + t.log_abs_det_jacobian(u, z).sum()
    with local_params():
        trace = poutine.trace(poutine.condition(fn, data=constrained)).get_trace(batch)
    return -(trace.log_prob_sum() + log_jac)
