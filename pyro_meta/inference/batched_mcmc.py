"""``method="batched_hmc"``: HMC on every task's posterior separately, all chains of all tasks in lockstep.

The tasks' posteriors ``p(z_t | context_t)`` are independent given the global parameters, so
nothing forces them to share one step size, one mass matrix and one tree depth, as one NUTS run
over the tasks plate does (there the hardest task sets the pace for all). This method runs
:func:`~pyro_meta.inference.batched_hmc.sample_batched_hmc` -- standard HMC with Stan's warmup
(dual-averaging step size, windowed diagonal mass matrix) and a jittered (or ChEES-adapted)
integration time, adapted per chain and task -- on the per-task potential
:class:`~pyro_meta.inference.potential.TaskPotential` built from the Pyro model: one vectorized
model run under ``pyro.plate("_draws", C)`` and one backward pass per leapfrog step serve all
``C x T`` chain-tasks. Nothing here is new; see the sampler's docstring for the algorithms and
their references (Neal 2011; Hoffman & Gelman 2014; Hoffman, Radul & Sountsov 2021).

What it is not: NUTS. Each trajectory has a fixed (jittered) length, not a U-turn criterion, and
every draw costs the longest trajectory in the batch (chain-tasks that finish early idle). Its
samples are exact in the MCMC sense (a Metropolis-corrected reversible kernel per chain-task).
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, Optional

import torch

from ..model import frozen, local_params
from ..validation import check_bool, check_int, check_number, check_one_of, check_probability, optional
from .batched_hmc import TRAJECTORIES, sample_batched_hmc
from .common import Problem
from .compiled import CompileError, compile_value_and_grad
from .mcmc import _initial_params, mcmc_result
from .method import InferenceMethod, InferenceResult, Option, register_method
from .potential import TaskPotential

__all__ = ["BatchedHMCMethod"]


def _starts(problem: Problem, potential: TaskPotential, init: str, num_chains: int) -> torch.Tensor:
    """``u [C, T, E]``: chain 0 at the guide's mean (or a prior draw), the others at draws; checked finite.

    The potential is evaluated once strictly (Pyro's validation as configured, errors propagate) so
    that a model error surfaces here; a chain-task start with a non-finite potential (c > 0) is
    moved to chain 0's start of that task.
    """
    starts = _initial_params(problem, init, num_chains)
    u = torch.stack([potential.pack(s) for s in starts]).detach()
    with torch.no_grad():
        lp = potential.log_density(u, potential.inputs)
    bad = ~torch.isfinite(lp)
    if bool(bad[0].any()):
        tasks = torch.nonzero(bad[0]).flatten().tolist()
        raise ValueError(
            f"batched_hmc: the log density is not finite at the start of chain 0 for tasks {tasks} "
            f"(init={init!r}); check the model and guide there"
        )
    return torch.where(bad.unsqueeze(-1), u[:1].expand_as(u), u)


class BatchedHMCMethod(InferenceMethod):
    """Per-task HMC over ``p(z_t | context_t)``, every chain of every task advanced in one batched gradient.

    Samples ``{site: [C, S, T, *event]}``; the global latents are held at their point estimate
    (``globals="sample"`` is refused: sampled globals couple every task, use ``nuts``). Options:
    ``num_warmup`` (Stan's windows), ``num_chains`` (per task, an extra batch dim; >= 2 for R-hat;
    chain 0 starts at the guide's mean, the others at guide draws), ``init`` (``"guide"`` or
    ``"prior"``), ``trajectory`` (``"jitter"``: integration time ``h L`` with ``h`` a Halton
    sequence in (0, 1); ``"chees"``: ``L`` per task adapted by ChEES, needs ``num_chains >= 2``),
    ``trajectory_length`` (``L`` in units of the mass-preconditioned posterior scale, default
    ``pi``), ``target_accept_prob``, ``step_size`` (initial), ``adapt_mass_matrix``,
    ``max_leapfrog`` (cap on one trajectory's steps), ``compile`` (trace the per-task potential
    and its gradient into one graph and compile it, :mod:`.compiled`; falls back with a warning),
    ``rhat_threshold``/``ess_threshold`` (the mixing warning, as ``nuts``).

    Per task (ArviZ, as ``nuts``): ``r_hat``, ``ess_bulk`` (also ``ess``), ``ess_tail``,
    ``task_divergences`` (divergent draws over the chains). Diagnostics: ``divergences [C]``,
    ``acceptance_rate [C]``, ``step_size [C, T]``, ``inverse_mass [C, T, E]``, ``trajectory_length
    [T]``, ``warmup_divergences [C]``, ``num_grad_evals`` (batched gradient calls, warmup included;
    each evaluates all ``C x T`` chain-tasks), ``leapfrog_per_draw`` (mean batched steps per draw
    after warmup), ``compile``. Sample stats ``[C, S]`` over tasks: ``diverging`` (any task),
    ``acceptance_rate`` (mean), ``step_size`` (median), ``lp`` (sum of the tasks' log densities).
    """

    name = "batched_hmc"
    samples_globals = False
    options = {
        "num_warmup": Option(500, partial(check_int, minimum=0)),
        "num_chains": Option(4, check_int),
        "init": Option("guide", partial(check_one_of, choices=("guide", "prior"))),
        "trajectory": Option("jitter", partial(check_one_of, choices=TRAJECTORIES)),
        "trajectory_length": Option(None, optional(check_number, minimum=0.0)),
        "target_accept_prob": Option(0.8, check_probability),
        "step_size": Option(None, optional(check_number, minimum=0.0)),
        "adapt_mass_matrix": Option(True, check_bool),
        "max_leapfrog": Option(256, check_int),
        "compile": Option(False, check_bool),
        "rhat_threshold": Option(1.05, partial(check_number, minimum=1.0)),
        "ess_threshold": Option(None, optional(check_number, minimum=0.0, strict_min=False)),
    }

    def run(
        self,
        problem: Problem,
        num_samples: int,
        num_warmup: int,
        num_chains: int,
        init: str,
        trajectory: str,
        trajectory_length: Optional[float],
        target_accept_prob: float,
        step_size: Optional[float],
        adapt_mass_matrix: bool,
        max_leapfrog: int,
        compile: bool,
        rhat_threshold: float,
        ess_threshold: Optional[float],
    ) -> InferenceResult:
        if num_samples < 4:
            raise ValueError(
                f"num_samples must be >= 4 draws per chain for {self.name} (R-hat and ESS need 4), got {num_samples}"
            )
        if trajectory == "chees" and num_chains < 2:
            raise ValueError(
                f"trajectory='chees' adapts the length from the spread of a task's chains: it needs "
                f"num_chains >= 2, got {num_chains}"
            )
        model = problem.model
        t0 = time.perf_counter()
        potential = TaskPotential(problem)
        compile_info = None
        with frozen(model), local_params():
            u0 = _starts(problem, potential, init, num_chains)
            value_and_grad = None
            if compile:
                value_and_grad, compile_info = _compiled(potential, u0)
            res = sample_batched_hmc(
                potential,
                u0,
                num_samples,
                num_warmup,
                step_size=step_size,
                target_accept=target_accept_prob,
                trajectory=trajectory,
                trajectory_length=trajectory_length,
                max_leapfrog=max_leapfrog,
                adapt_mass=adapt_mass_matrix,
                progress=problem.progress,
                value_and_grad=value_and_grad,
            )
        samples = {k: v.detach() for k, v in potential.constrain(res.samples).items()}
        C, S = num_chains, num_samples
        stats = {
            "diverging": res.diverging.any(-1),
            "acceptance_rate": res.accept_prob.mean(-1),
            "step_size": res.step_size.median(-1).values[:, None].expand(C, S).clone(),
            "lp": -res.potential_energy.sum(-1),
        }
        diagnostics: dict[str, Any] = {
            "acceptance_rate": res.mean_accept.mean(-1),
            "step_size": res.step_size,
            "inverse_mass": res.inverse_mass,
            "trajectory_length": res.trajectory_length,
            "warmup_divergences": res.warmup_divergences.sum(-1),
            "num_warmup": num_warmup,
            "init": init,
            "trajectory": trajectory,
            "num_grad_evals": res.num_grad_evals,
            "leapfrog_per_draw": float(res.lockstep_steps.double().mean()),
            "sampling_seconds": time.perf_counter() - t0,
        }
        if compile_info is not None:
            diagnostics["compile"] = compile_info
        return mcmc_result(
            self.name,
            samples,
            problem.sites,
            C,
            S,
            rhat_threshold,
            ess_threshold,
            res.divergences.sum(-1),
            diagnostics,
            stats,
            per_task={"task_divergences": res.divergences.sum(0)},
        )


def _compiled(potential: TaskPotential, u0: torch.Tensor):
    """``(value_and_grad, info)``: the compiled per-task potential and gradient, or ``None`` (and a warning)."""
    names, rest = list(potential.inputs), list(potential.inputs.values())

    def energy(u: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        return potential.energy(u, dict(zip(names, args)))

    key = (tuple(c.name for c in potential.coords), tuple(names))
    try:
        compiled = compile_value_and_grad(energy, [u0, *rest], 1, owner=potential.problem.model, kind="tasks", key=key)
    except CompileError as err:
        import warnings

        warnings.warn(f"batched_hmc: compile=True failed ({err}); running the eager potential", stacklevel=4)
        return None, {"backend": "eager (compile failed)"}
    return (lambda u: compiled(u, *rest)), compiled.info()


register_method(BatchedHMCMethod())
