"""``method="nuts"`` / ``"hmc"``: Pyro MCMC over the task latents (and optionally the global latents).

All tasks of a chunk run as one joint chain over the product posterior
``prod_t p(z_t | context_t)`` (one NUTS over the tasks plate is far cheaper per draw than a
loop of per-task runs, docs/design.md); ``chunk_size`` splits the tasks so that the
shared step size is set by fewer tasks. Chains run one after the other, each started from
the amortized guide by default (``init="guide"``): chain 0 at the guide's mean, the others
at independent guide draws (dispersed starts for r_hat). With ``globals="sample"`` the global
latent sites are sampled jointly with every task's latents (a full hierarchical posterior on a
fixed task set); they need one joint run, so ``chunk_size`` is refused then.

Convergence diagnostics are ArviZ's (rank-normalised split R-hat, bulk and tail ESS), so the
numbers equal ``az.rhat``/``az.ess`` on the exported ``InferenceData``.

``jit_compile``: ``False`` (Pyro's eager potential), ``True`` (Pyro's ``torch.jit.trace`` of the
potential, network frozen) or ``"inductor"``: the potential *and its gradient* traced into one flat
graph with ``make_fx`` and compiled by ``torch.compile`` (:mod:`.compiled`), given to Pyro's kernel
as ``potential_fn`` with the sites' ``biject_to`` transforms. It pays a one-time trace + compile
(about 10 s with a warm TorchInductor cache, see :mod:`.compiled`), is cached across ``infer`` calls
with the same model, weights and shapes, and falls back to ``jit_compile=True`` with a warning when
tracing or compiling fails. Pyro's tree building stays in Python either way.
"""

from __future__ import annotations

import time
import warnings
from functools import partial
from typing import Any, Dict, List, Optional, Tuple

import torch
from pyro.infer import HMC, MCMC, NUTS
from pyro.infer.autoguide.initialization import init_to_median
from pyro.infer.mcmc.util import initialize_model
from torch.distributions import biject_to

from ..model import frozen, local_params
from ..validation import check_bool, check_int, check_number, check_one_of, check_probability, optional
from .common import Problem
from .compiled import CompileError, compile_value_and_grad, with_grad
from .method import InferenceMethod, InferenceResult, Option, register_method
from .potential import joint_potential, problem_inputs

__all__ = ["HMCMethod", "JIT_CHOICES", "NUTSMethod", "convergence", "mcmc_result"]

INITS = ("guide", "prior", "median")
HMC_TRAJECTORY_LENGTH = 1.3
#: ``jit_compile`` values: eager, Pyro's JIT, or the traced potential-and-gradient compiled by TorchInductor
JIT_CHOICES = (False, True, "inductor")


def check_jit(name: str, value: Any) -> Any:
    """``False``, ``True`` or ``"inductor"`` (``ValueError`` otherwise; 0/1 are not booleans here)."""
    if value is True or value is False or (isinstance(value, str) and value == "inductor"):
        return value
    raise ValueError(f"{name} must be one of {JIT_CHOICES}, got {value!r}")


def _initial_params(problem: Problem, init: str, num_chains: int) -> Optional[List[Dict[str, torch.Tensor]]]:
    """Unconstrained start per chain: task sites ``[T, 1, *ushape]``, globals ``[*ushape]`` (``None`` for ``"median"``)."""
    if init == "median":
        return None
    n = max(64, num_chains)
    draws = problem.guide_draws(n) if init == "guide" else problem.prior_draws(n)
    starts = []
    for c in range(num_chains):
        start = {}
        for name, info in problem.latent_sites.items():
            u = biject_to(info.support).inv(draws[name].detach())
            start[name] = u.mean(0) if (c == 0 and init == "guide") else u[c]
        starts.append(start)
    return starts


#: the HMC/NUTS kernel attributes the per-draw recorder reads: Pyro has no public per-draw statistics
#: (NumPyro's ``extra_fields``); checked by :func:`check_kernel_internals` so a Pyro release that renames
#: them fails with a clear message instead of an AttributeError deep in sampling (tested)
KERNEL_INTERNALS = ("_mean_accept_prob", "_divergences", "_potential_energy_last", "step_size")


def check_kernel_internals(kernel: Any) -> None:
    """``RuntimeError`` naming the Pyro version when an HMC/NUTS kernel lacks an attribute the recorder reads."""
    missing = [name for name in KERNEL_INTERNALS if not hasattr(kernel, name)]
    if missing:
        import pyro

        raise RuntimeError(
            f"pyro-ppl {pyro.__version__}: the {type(kernel).__name__} kernel has no {missing}, which pyro_meta reads "
            "for per-draw MCMC statistics (tested with pyro-ppl 1.9); install a supported pyro-ppl or report it"
        )


class _Recorder:
    """``hook_fn`` collecting per-draw step size, acceptance, divergence and log density (see KERNEL_INTERNALS)."""

    def __init__(self) -> None:
        self.step_size: List[float] = []
        self.accept: List[float] = []
        self.diverging: List[bool] = []
        self.lp: List[float] = []
        self._prev_mean, self._n, self._div = 0.0, 0, 0

    def __call__(self, kernel, params, stage, i) -> None:
        if not self._n and not self.accept:
            check_kernel_internals(kernel)
        if not stage.startswith("Sample"):
            return
        self._n += 1
        mean = float(kernel._mean_accept_prob)
        self.accept.append(self._n * mean - (self._n - 1) * self._prev_mean)
        self._prev_mean = mean
        self.step_size.append(float(kernel.step_size))
        ndiv = len(kernel._divergences)
        self.diverging.append(ndiv > self._div)
        self._div = ndiv
        pe = kernel._potential_energy_last
        self.lp.append(float(-pe) if pe is not None else float("nan"))


class _Counting:
    """Mixin counting the kernel's potential evaluations (one per gradient: Pyro's ``potential_grad``)."""

    num_potential_calls = 0

    @property
    def potential_fn(self):
        return self.__dict__.get("_counted_potential_fn")

    @potential_fn.setter
    def potential_fn(self, fn) -> None:
        if fn is None:
            self.__dict__["_counted_potential_fn"] = None
            return

        def counted(params):
            self.num_potential_calls += 1
            return fn(params)

        self.__dict__["_counted_potential_fn"] = counted


class _NUTS(_Counting, NUTS):
    pass


class _HMC(_Counting, HMC):
    pass


class InductorPotential:
    """Pyro's ``potential_fn(params)`` from one call of the compiled potential-and-gradient graph.

    ``start``: unconstrained ``{site: value}`` in Pyro's shapes (task sites ``[T, 1, *uevent]``), the
    point the compiled graph is checked at. ``transforms`` (constrained -> unconstrained, Pyro's
    convention) go to the kernel with it. Raises :class:`~pyro_meta.inference.compiled.CompileError`.
    """

    def __init__(self, problem: Problem, start: Dict[str, torch.Tensor]) -> None:
        self.names = list(start)
        inputs = problem_inputs(problem)
        self.rest, rest_names, k = list(inputs.values()), list(inputs), len(self.names)

        def potential(*args: torch.Tensor) -> torch.Tensor:
            return joint_potential(problem, dict(zip(self.names, args[:k])), dict(zip(rest_names, args[k:])))

        key = (tuple(self.names), tuple(rest_names), problem.globals)
        self.compiled = compile_value_and_grad(
            potential, [start[n] for n in self.names] + self.rest, k, owner=problem.model, kind="joint", key=key
        )
        self.transforms = {n: biject_to(problem.latent_sites[n].support).inv for n in self.names}

    def __call__(self, params: Dict[str, torch.Tensor]) -> torch.Tensor:
        return with_grad(self.compiled, [params[n] for n in self.names], self.rest)


def _median_start(problem: Problem) -> Dict[str, torch.Tensor]:
    """Pyro's ``init_to_median`` start, unconstrained (what ``init="median"`` gives the model-based kernel)."""
    params, _, _, _ = initialize_model(
        problem.fn,
        model_args=(problem.cond,),
        init_strategy=init_to_median,
        max_plate_nesting=problem.model.max_plate_nesting,
    )
    return {k: v.detach() for k, v in params.items()}


def _run_chain(
    problem: Problem,
    kernel_name: str,
    num_samples: int,
    num_warmup: int,
    start,
    jit_compile: bool,
    kernel_kwargs,
    potential: Optional[InductorPotential] = None,
) -> Tuple[Dict[str, torch.Tensor], _Recorder, float, int]:
    cls = _NUTS if kernel_name == "nuts" else _HMC
    kw: Dict[str, Any] = {}
    if potential is None:
        kw.update(max_plate_nesting=problem.model.max_plate_nesting, jit_compile=jit_compile, ignore_jit_warnings=True)
        if start is None:
            kw["init_strategy"] = init_to_median
    if (
        kernel_name == "hmc"
        and kernel_kwargs.get("num_steps") is None
        and kernel_kwargs.get("trajectory_length") is None
    ):
        # Pyro's default trajectory (2 pi) is one full period of a unit-scale Gaussian coordinate
        # after mass adaptation, so HMC lands back near its start (measured r_hat 1.31 on
        # BayesianLinear); 1.3 is short of a half period and not a rational multiple of pi.
        kw["trajectory_length"] = HMC_TRAJECTORY_LENGTH
    kw.update({k: v for k, v in kernel_kwargs.items() if v is not None})
    if potential is None:
        kernel = cls(problem.fn, **kw)
    else:
        kernel = cls(potential_fn=potential, transforms=potential.transforms, **kw)
    rec = _Recorder()
    mcmc = MCMC(
        kernel,
        num_samples=num_samples,
        warmup_steps=num_warmup,
        num_chains=1,
        initial_params=start,
        disable_progbar=not problem.progress,
        hook_fn=rec,
    )
    mcmc.run(problem.cond)
    return mcmc.get_samples(), rec, float(kernel.step_size), kernel.num_potential_calls


def convergence(samples: Dict[str, torch.Tensor], sites) -> Dict[str, Any]:
    """ArviZ's rank-normalised split R-hat and bulk/tail ESS of every coordinate, summarised.

    ``samples``: ``{site: [C, S, T, *event]}`` (task sites) or ``[C, S, *shape]`` (global sites).
    Returns ``r_hat``, ``ess_bulk``, ``ess_tail`` per task ``[T]`` (worst over the task's
    coordinates: max R-hat, min ESS) and ``globals``: ``{site: {"r_hat", "ess_bulk", "ess_tail"}}``
    (worst over the site's coordinates). R-hat is NaN with one chain (ArviZ needs two).
    """
    from ..arviz import rhat_ess

    per_task: Dict[str, List[torch.Tensor]] = {"r_hat": [], "ess_bulk": [], "ess_tail": []}
    glob: Dict[str, Dict[str, float]] = {}
    for name, info in sites.items():
        stats = rhat_ess(samples[name])
        if info.is_global:
            glob[name] = {
                "r_hat": float(stats["r_hat"].max()) if stats["r_hat"].numel() else float("nan"),
                "ess_bulk": float(stats["ess_bulk"].min()),
                "ess_tail": float(stats["ess_tail"].min()),
            }
            continue
        T = samples[name].shape[2]
        for key in per_task:
            v = stats[key].reshape(T, -1)
            per_task[key].append(v.amax(-1) if key == "r_hat" else v.amin(-1))
    out: Dict[str, Any] = {
        k: torch.stack(v).amax(0) if k == "r_hat" else torch.stack(v).amin(0) for k, v in per_task.items() if v
    }
    out["globals"] = glob
    return out


def mcmc_result(
    name: str,
    samples: Dict[str, torch.Tensor],
    sites,
    num_chains: int,
    num_samples: int,
    rhat_threshold: float,
    ess_threshold: Optional[float],
    divergences: torch.Tensor,
    diagnostics: Dict[str, Any],
    sample_stats: Dict[str, torch.Tensor],
    per_task: Optional[Dict[str, torch.Tensor]] = None,
) -> InferenceResult:
    """The MCMC methods' common result: ArviZ convergence per task, the mixing warning, the summary.

    ``samples {site: [C, S, T, *event]}``; ``divergences [C]`` (divergent draws per chain).
    Per task: ``r_hat``, ``ess_bulk`` (also as ``ess``), ``ess_tail`` (plus ``per_task``); warns
    naming the tasks (and global sites) whose R-hat exceeds ``rhat_threshold`` or whose bulk or
    tail ESS is below ``ess_threshold`` (default ``min(100, C*S/4)``), and lists them as bad tasks.
    """
    conv = convergence(samples, sites)
    threshold = ess_threshold if ess_threshold is not None else min(100.0, num_chains * num_samples / 4)
    r_hat, ess_bulk, ess_tail = conv["r_hat"], conv["ess_bulk"], conv["ess_tail"]
    bad_mask = (r_hat > rhat_threshold) | (ess_bulk < threshold) | (ess_tail < threshold)
    bad = torch.nonzero(bad_mask).flatten().tolist()
    bad_globals = [
        n
        for n, g in conv["globals"].items()
        if g["r_hat"] > rhat_threshold or min(g["ess_bulk"], g["ess_tail"]) < threshold
    ]
    if bad or bad_globals:
        what = f"tasks {bad}" if bad else ""
        if bad_globals:
            what += (" and " if bad else "") + f"global sites {bad_globals}"
        warnings.warn(
            f"{name.upper()}: {what} mixed badly (R-hat > {rhat_threshold} or bulk/tail ESS < {threshold:.0f}); "
            f"worst R-hat {_nanmax(r_hat):.3f}, smallest bulk ESS {float(ess_bulk.min()):.1f}, tail ESS "
            f"{float(ess_tail.min()):.1f}. Run more warmup/samples or chains, or smaller chunks.",
            stacklevel=4,
        )
    return InferenceResult(
        samples=samples,
        per_task={"r_hat": r_hat, "ess_bulk": ess_bulk, "ess_tail": ess_tail, "ess": ess_bulk, **(per_task or {})},
        diagnostics={"divergences": divergences, "globals": conv["globals"], **diagnostics},
        sample_stats=sample_stats,
        summary={
            "divergences": int(divergences.sum()),
            "min_ess": float(ess_bulk.min()),
            "min_ess_tail": float(ess_tail.min()),
            **({"max_r_hat": _nanmax(r_hat)} if num_chains > 1 else {}),
        },  # R-hat needs two chains
        bad_tasks=bad,
    )


class NUTSMethod(InferenceMethod):
    """Pyro NUTS (or HMC) over ``p(z_t | context_t)`` for all tasks (or chunks of ``chunk_size`` tasks).

    Samples ``{site: [C, S, T, *event]}`` (global sites ``[C, S, *shape]`` with ``globals="sample"``).
    Per task: ``r_hat``, ``ess_bulk`` (also as ``ess``), ``ess_tail`` (ArviZ). Diagnostics:
    ``divergences [C]``, ``acceptance_rate [C]``, ``step_size [C]`` (or ``[C, chunks]``),
    ``globals`` (convergence of the global sites), ``jit`` (the ``jit_compile`` that ran),
    ``compile`` (``"inductor"``: cache hit, trace and compile seconds per chunk), ``num_grad_evals``
    (potential-and-gradient evaluations, all chains and warmup included). Sample stats ``[C, S]``:
    ``diverging``, ``acceptance_rate``, ``step_size``, ``lp``. ``jit_compile=True`` tries Pyro's JIT
    with the network frozen and falls back to the eager potential (with a warning) if tracing fails;
    ``jit_compile="inductor"`` compiles the traced potential and gradient (module docstring) and falls
    back to ``True``. Warns naming the tasks whose R-hat exceeds ``rhat_threshold`` or whose bulk or
    tail ESS is below ``ess_threshold`` (default ``min(100, C*S/4)``).
    """

    name = "nuts"
    kernel = "nuts"
    samples_globals = True
    options = {
        "num_warmup": Option(500, partial(check_int, minimum=0)),
        "num_chains": Option(2, check_int),
        "init": Option("guide", partial(check_one_of, choices=INITS)),
        "chunk_size": Option(None, optional(check_int)),
        "jit_compile": Option(False, check_jit),
        "rhat_threshold": Option(1.05, partial(check_number, minimum=1.0)),
        "ess_threshold": Option(None, optional(check_number, minimum=0.0, strict_min=False)),
        "target_accept_prob": Option(None, optional(check_probability)),
        "step_size": Option(None, optional(check_number, minimum=0.0)),
        "adapt_step_size": Option(None, optional(check_bool)),
        "adapt_mass_matrix": Option(None, optional(check_bool)),
        "full_mass": Option(None, optional(check_bool)),
        "max_tree_depth": Option(None, optional(check_int)),
    }
    #: options passed to the Pyro kernel (when not None)
    kernel_options = (
        "target_accept_prob",
        "step_size",
        "adapt_step_size",
        "adapt_mass_matrix",
        "full_mass",
        "max_tree_depth",
    )

    def run(
        self,
        problem: Problem,
        num_samples: int,
        num_warmup: int,
        num_chains: int,
        init: str,
        chunk_size: Optional[int],
        jit_compile: Any,
        rhat_threshold: float,
        ess_threshold: Optional[float],
        **kernel_kwargs: Any,
    ) -> InferenceResult:
        if num_samples < 4:
            raise ValueError(
                f"num_samples must be >= 4 draws per chain for {self.name} (R-hat and ESS need 4), got {num_samples}"
            )
        T = problem.num_tasks
        if chunk_size is not None and problem.globals == "sample":
            raise ValueError("chunk_size: sampled global latents couple every task; run them jointly (chunk_size=None)")
        size = T if chunk_size is None else chunk_size
        chunks = [torch.arange(i, min(i + size, T)) for i in range(0, T, size)]
        sites = problem.latent_sites

        per_chain: List[List[Dict[str, torch.Tensor]]] = [[] for _ in range(num_chains)]
        stats = {k: torch.zeros(num_chains, num_samples) for k in ("acceptance_rate", "step_size", "lp")}
        stats["diverging"] = torch.zeros(num_chains, num_samples, dtype=torch.bool)
        step_sizes = torch.zeros(num_chains, len(chunks))
        used_jit, grad_evals, compile_info = jit_compile, 0, []
        t0 = time.perf_counter()
        for k, idx in enumerate(chunks):
            sub = problem if len(chunks) == 1 else problem.select(idx)
            starts = _initial_params(sub, init, num_chains)
            potential = None
            if used_jit == "inductor":
                with frozen(problem.model), local_params():
                    try:
                        potential = InductorPotential(sub, starts[0] if starts is not None else _median_start(sub))
                        compile_info.append(potential.compiled.info())
                    except CompileError as err:
                        warnings.warn(
                            f"jit_compile='inductor' failed ({err}); running with jit_compile=True", stacklevel=3
                        )
                        used_jit = True
            for c in range(num_chains):
                start = None if starts is None else starts[c]
                if potential is not None and start is None:
                    start = _median_start(sub)
                with frozen(problem.model), local_params():
                    try:
                        samples, rec, step, calls = _run_chain(
                            sub, self.kernel, num_samples, num_warmup, start, used_jit is True, kernel_kwargs, potential
                        )
                    except Exception as err:  # JIT tracing failures surface as many error types
                        if used_jit is not True:
                            raise
                        warnings.warn(
                            f"jit_compile=True failed ({type(err).__name__}: {err}); running without JIT", stacklevel=3
                        )
                        used_jit = False
                        samples, rec, step, calls = _run_chain(
                            sub, self.kernel, num_samples, num_warmup, start, False, kernel_kwargs
                        )
                grad_evals += calls
                per_chain[c].append({n: v.detach() for n, v in samples.items() if n in sites})
                w = len(idx) / T
                stats["acceptance_rate"][c] += w * torch.tensor(rec.accept)
                stats["step_size"][c] += w * torch.tensor(rec.step_size)
                stats["lp"][c] += torch.tensor(rec.lp)
                stats["diverging"][c] |= torch.tensor(rec.diverging, dtype=torch.bool)
                step_sizes[c, k] = step
        out = {}
        for name, info in sites.items():
            if info.is_global:
                out[name] = torch.stack([per_chain[c][0][name] for c in range(num_chains)])
                continue
            # each chunk gives [S, t, 1, *event]; join tasks, squeeze the points singleton
            chains = [
                torch.cat([ch[name] for ch in per_chain[c]], 1).squeeze(-(info.event_dim + 1))
                for c in range(num_chains)
            ]
            out[name] = torch.stack(chains)
        diagnostics = {
            "acceptance_rate": stats["acceptance_rate"].mean(-1),
            "step_size": step_sizes.squeeze(-1) if len(chunks) == 1 else step_sizes,
            "num_warmup": num_warmup,
            "num_chunks": len(chunks),
            "init": init,
            "jit": used_jit,
            "num_grad_evals": grad_evals,
            "sampling_seconds": time.perf_counter() - t0,
        }
        if compile_info:
            diagnostics["compile"] = compile_info
        return mcmc_result(
            self.name,
            out,
            sites,
            num_chains,
            num_samples,
            rhat_threshold,
            ess_threshold,
            stats["diverging"].sum(-1),
            diagnostics,
            stats,
        )


def _nanmax(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.max()) if x.numel() else float("nan")


class HMCMethod(NUTSMethod):
    """Pyro HMC with a fixed trajectory (default ``trajectory_length=1.3``; see the README's design notes)."""

    name = "hmc"
    kernel = "hmc"
    options = {
        **{k: v for k, v in NUTSMethod.options.items() if k != "max_tree_depth"},
        "num_steps": Option(None, optional(check_int)),
        "trajectory_length": Option(None, optional(check_number, minimum=0.0)),
    }
    kernel_options = tuple(k for k in NUTSMethod.kernel_options if k != "max_tree_depth") + (
        "num_steps",
        "trajectory_length",
    )


register_method(NUTSMethod())
register_method(HMCMethod())
