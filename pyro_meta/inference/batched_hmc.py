"""Vectorized HMC with per-(chain, task) adaptation, every chain of every task stepped in lockstep.

Tasks are conditionally independent given the global parameters, so each task's posterior
``p(z_t | context_t)`` can have its own chains, step size, mass matrix and trajectory length;
one batched gradient of ``sum_{c,t} U_{c,t}`` per leapfrog step serves every chain-task. This is
a known algorithm implemented for task batches, nothing new:

* HMC with leapfrog integration and a Metropolis correction (Duane, Kennedy, Pendleton & Roweth
  1987; Neal 2011, "MCMC using Hamiltonian dynamics"), with a diagonal mass matrix ``M^-1 = diag(m)``;
* step size by dual averaging on each chain-task's acceptance probability (Hoffman & Gelman 2014,
  Stan's constants ``gamma=0.05, t0=10, kappa=0.75, mu=log(10 eps)``), Stan's doubling/halving
  step-size initialisation after every metric update;
* windowed warmup as in Stan (initial fast window 75, slow windows 25, 50, 100, ... the last one
  stretched, final fast window 50; scaled to 15%/75%/10% for short warmups, none under 20), each
  slow window's Welford variance regularised as ``n/(n+5) var + 1e-3 * 5/(n+5)``;
* integration time jittered ``t = h L``, ``h`` a van der Corput (base-2 Halton) sequence in (0, 1)
  shared by all chain-tasks in an iteration (randomising the trajectory against periodicity, as
  Neal 2011 recommends; the Halton form as in ChEES-HMC). Each chain-task takes ``ceil(t / eps)``
  steps of size ``t / ceil(t / eps)``, so its integration time is exactly ``t``; chain-tasks whose
  trajectory is done step with size 0 while the others continue, and dual averaging never lets
  ``eps`` exceed ``L``;
* optionally ``L`` per task by ChEES (Hoffman, Radul & Sountsov 2021, AISTATS): stochastic gradient
  ascent on ``E[(|x' - E x|^2 - |x - E x|^2)^2] / 4`` over the task's ``C >= 2`` chains, with RMSProp
  on ``log L`` (rate 0.025, clip 0.35, iterate averaging ``k^-1/2``) and acceptance weights, as in
  TensorFlow Probability's ``GradientBasedTrajectoryLengthAdaptation``; ``x = u / sqrt(m)`` are
  mass-preconditioned coordinates. Departure: ``E x`` is a running mean over iterations of the
  task's chain mean (as fun_mc's ``state_mean`` option), since a handful of chains per task gives
  too noisy a centre. ChEES starts after the first metric update and ends with warmup.

Before the first metric update the time scale of the target is unknown, so warmup's initial window
integrates ``ceil(h * 10)`` steps of the current step size instead of a time ``h L``. A trajectory
that reaches a non-finite potential or gradient stops at its last finite point; it, and one whose
final energy error exceeds 1000, is a divergence, and its proposal is rejected (the first test is
symmetric under reversing the trajectory; the second only rejects moves Metropolis would accept
with probability below e^-1000).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, List, Optional, Tuple

import torch

__all__ = ["BatchedHMCResult", "sample_batched_hmc", "warmup_windows"]

TRAJECTORIES = ("jitter", "chees")
MAX_ENERGY_ERROR = 1000.0
INIT_WINDOW_STEPS = 10  # leapfrog steps (x jitter) before the first metric update


@dataclasses.dataclass
class BatchedHMCResult:
    """Draws and diagnostics of :func:`sample_batched_hmc` (C chains, S draws, T tasks, E coordinates)."""

    samples: torch.Tensor  # [C, S, T, E] unconstrained draws
    potential_energy: torch.Tensor  # [C, S, T] U at each draw
    accept_prob: torch.Tensor  # [C, S, T] Metropolis acceptance probability of each proposal
    diverging: torch.Tensor  # [C, S, T] bool
    num_steps: torch.Tensor  # [C, S, T] leapfrog steps planned for each chain-task's trajectory
    lockstep_steps: torch.Tensor  # [S] batched leapfrog steps (gradient calls) per draw
    step_size: torch.Tensor  # [C, T] adapted step size
    inverse_mass: torch.Tensor  # [C, T, E] adapted diagonal inverse mass matrix
    trajectory_length: torch.Tensor  # [T] maximum integration time L (jittered as h L)
    divergences: torch.Tensor  # [C, T] divergent draws after warmup
    warmup_divergences: torch.Tensor  # [C, T]
    mean_accept: torch.Tensor  # [C, T] mean acceptance probability after warmup
    num_grad_evals: int  # batched potential+gradient calls, warmup included (each is C*T gradients)
    seconds: float


def warmup_windows(num_warmup: int) -> Tuple[int, List[int]]:
    """Stan's metric adaptation schedule: ``(first, ends)``, 0-based warmup iterations.

    Draws from iteration ``first`` on enter the variance estimate; after each iteration in ``ends``
    the metric is updated and the estimate restarted. ``(num_warmup, [])`` when ``num_warmup < 20``.
    """
    if num_warmup < 20:
        return num_warmup, []
    init, term, size = 75, 50, 25
    if init + term + size > num_warmup:
        init, term = int(0.15 * num_warmup), int(0.1 * num_warmup)
        size = num_warmup - init - term
    last = num_warmup - term - 1
    ends = [init + size - 1]
    while ends[-1] != last:
        size *= 2
        end = ends[-1] + size
        if end + 2 * size >= num_warmup - term:
            end = last
        ends.append(end)
    return init, ends


def _van_der_corput(i: int) -> float:
    """The i-th (i >= 1) base-2 Halton number in (0, 1)."""
    h, f = 0.0, 0.5
    while i:
        h, i, f = h + f * (i & 1), i >> 1, f * 0.5
    return h


class _Potential:
    """``u [C, T, E] -> (U [C, T], dU/du [C, T, E])``: one batched backward, or ``value_and_grad``; counts calls."""

    def __init__(
        self, fn: Callable[[torch.Tensor], torch.Tensor], shape: torch.Size, value_and_grad: Optional[Callable] = None
    ) -> None:
        self.fn, self.shape, self.calls, self.value_and_grad = fn, shape, 0, value_and_grad

    def __call__(self, u: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        if self.value_and_grad is not None:
            U, g = self.value_and_grad(u.detach())
            if not torch.is_tensor(U) or U.shape != self.shape[:2] or not torch.is_tensor(g) or g.shape != u.shape:
                raise ValueError(
                    f"value_and_grad must return (U [C, T], dU/du [C, T, E]) = {list(self.shape[:2])}, "
                    f"{list(self.shape)}"
                )
            return U.detach().to(u.dtype), g.detach().to(u.dtype)
        u = u.detach().requires_grad_(True)
        with torch.enable_grad():
            U = self.fn(u)
            if not torch.is_tensor(U) or U.shape != self.shape[:2]:
                got = tuple(U.shape) if torch.is_tensor(U) else type(U).__name__
                raise ValueError(f"potential_fn must return U of shape [C, T] = {list(self.shape[:2])}, got {got}")
            if not U.requires_grad:
                raise ValueError("potential_fn's output does not depend differentiably on u (no autograd graph)")
            (g,) = torch.autograd.grad(U.sum(), u, allow_unused=True)
        return U.detach().to(u.dtype), (torch.zeros_like(u) if g is None else g.detach())


def _integrate(pot, q, p, U, g, eps, n, minv):
    """Leapfrog each chain-task ``n [C, T]`` steps of size ``eps [C, T]`` in lockstep.

    Returns ``(q, p, U, g, diverged, dH, calls)``: the end points and ``dH = H(end) - H(start)``.
    A finished chain-task keeps stepping with step size 0 (a no-op). One that reaches a non-finite
    potential or gradient is reverted to its last finite point and frozen; it, and any whose final
    energy error exceeds 1000, is flagged divergent (see the module docstring).
    """
    H0 = U + 0.5 * (minv * p * p).sum(-1)
    div = torch.zeros_like(U, dtype=torch.bool)
    ends = set(n.unique().tolist())
    steps = 0
    for i in range(int(n.max())):
        if i == 0 or i in ends:  # the set of running chain-tasks changed: new step vectors
            half = torch.where((n > i) & ~div, 0.5 * eps, 0.0).unsqueeze(-1)
            step_q = 2 * half * minv
        p_half = torch.addcmul(p, half, g, value=-1.0)
        q_new = torch.addcmul(q, step_q, p_half)
        U_new, g_new = pot(q_new)
        steps += 1
        p_new = torch.addcmul(p_half, half, g_new, value=-1.0)
        if not bool(torch.isfinite(U_new.sum() + g_new.sum())):  # rare: find and freeze the bad ones
            good = torch.isfinite(U_new) & torch.isfinite(g_new).all(-1)
            div |= ~good
            keep = good.unsqueeze(-1)
            q_new, p_new = torch.where(keep, q_new, q), torch.where(keep, p_new, p)
            U_new, g_new = torch.where(good, U_new, U), torch.where(keep, g_new, g)
            half, step_q = torch.where(keep, half, 0.0), torch.where(keep, step_q, 0.0)
            if not bool(((n > i + 1) & ~div).any()):
                q, p, U, g = q_new, p_new, U_new, g_new
                break
        q, p, U, g = q_new, p_new, U_new, g_new
    dH = U + 0.5 * (minv * p * p).sum(-1) - H0
    div |= ~(dH <= MAX_ENERGY_ERROR)
    return q, p, U, g, div, dH, steps


def _momentum(minv: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(minv.shape, generator=gen, dtype=minv.dtype, device=minv.device) * minv.rsqrt()


def _init_step_size(pot, q, U, g, eps, minv, gen):
    """Stan's heuristic per chain-task: double (halve) ``eps`` until one step's acceptance crosses 0.8."""
    log08 = math.log(0.8)

    def trial(e):
        dH = _integrate(pot, q, _momentum(minv, gen), U, g, e, torch.ones_like(U, dtype=torch.long), minv)[5]
        return torch.nan_to_num(-dH, nan=-math.inf)

    direction = torch.where(trial(eps) > log08, 2.0, 0.5).to(eps.dtype)
    active = torch.ones_like(eps, dtype=torch.bool)
    for _ in range(60):
        eps = torch.where(active, eps * direction, eps)
        delta = trial(eps)
        active &= torch.where(direction > 1, delta > log08, delta < log08)
        if not bool(active.any()):
            break
    return eps.clamp(1e-10, 1e7)


class _DualAveraging:
    """Hoffman & Gelman (2014) dual averaging of log step size, Stan's constants, one per chain-task."""

    gamma, t0, kappa = 0.05, 10.0, 0.75

    def __init__(self, eps: torch.Tensor, target: float) -> None:
        self.target = target
        self.restart(eps)

    def restart(self, eps: torch.Tensor) -> None:
        self.mu, self.k = torch.log(10 * eps), 0
        self.s_bar, self.x_bar = torch.zeros_like(eps), torch.zeros_like(eps)

    def update(self, accept: torch.Tensor, log_max: torch.Tensor) -> torch.Tensor:
        """One step; ``log_max [C, T]`` caps log eps (a step longer than the whole trajectory is never taken)."""
        self.k += 1
        eta = 1.0 / (self.k + self.t0)
        self.s_bar = (1 - eta) * self.s_bar + eta * (self.target - accept.clamp(max=1.0))
        x = torch.minimum(self.mu - self.s_bar * math.sqrt(self.k) / self.gamma, log_max)
        w = self.k**-self.kappa
        self.x_bar = w * x + (1 - w) * self.x_bar
        return x.exp()

    def final(self) -> torch.Tensor:
        return self.x_bar.exp()


class _ChEES:
    """Per-task ChEES adaptation of the trajectory length ``L [T]`` (Hoffman, Radul & Sountsov 2021)."""

    rate, sq_rate, clip = 0.025, 0.05, 0.35

    def __init__(self, length: torch.Tensor) -> None:
        self.log_L, self.k = length.log(), 0
        self.sq, self.log_avg = torch.zeros_like(length), torch.zeros_like(length)
        self.center = None

    def update(self, q0, q1, p1, accept, h, minv, eps, max_steps) -> None:
        s = minv.sqrt()
        # centre: running mean of the task's chains (few chains per task: their mean alone is too noisy)
        m = q0.mean(0)
        self.center = m if self.center is None else self.center + max(1.0 / (self.k + 1), 0.02) * (m - self.center)
        w = torch.where(torch.isfinite(accept) & (accept > 1e-4), accept, torch.zeros_like(accept))
        wsum = w.sum(0) + 1e-20  # [T]
        q1 = torch.where(torch.isfinite(q1), q1, torch.zeros_like(q1))
        x0, x1 = (q0 - self.center) / s, (q1 - self.center) / s
        D = (x1 * x1).sum(-1) - (x0 * x0).sum(-1)
        grad = h * D * (x1 * s * p1).sum(-1)  # d (D^2 / 4) / d L: the end point moves at velocity h dx/dt
        grad = torch.where(torch.isfinite(grad) & (w > 0), grad, torch.zeros_like(grad))
        grad = (w * grad).sum(0) / wsum  # [T]
        self.k += 1
        self.sq = (1 - self.sq_rate) * self.sq + self.sq_rate * grad**2
        lr = self.rate / (self.sq / (1 - (1 - self.sq_rate) ** self.k) + 1e-20).sqrt()
        self.log_L = self.log_L + (lr * grad).clamp(-self.clip, self.clip)
        self.log_L = torch.minimum(self.log_L, (eps.amin(0) * max_steps).log())  # at most max_steps steps
        w_avg = self.k**-0.5
        self.log_avg = w_avg * self.log_L + (1 - w_avg) * self.log_avg

    @property
    def length(self) -> torch.Tensor:
        return self.log_L.exp()

    def final(self) -> torch.Tensor:
        return self.log_avg.exp()


def _check(
    init, potential_fn, num_samples, num_warmup, target_accept, trajectory, max_leapfrog, value_and_grad=None
) -> None:
    if not torch.is_tensor(init) or not init.is_floating_point():
        raise TypeError(f"init must be a floating-point tensor [C, T, E], got {getattr(init, 'dtype', type(init))}")
    if init.dim() != 3 or init.numel() == 0:
        raise ValueError(f"init must have shape [C, T, E] (chains, tasks, coordinates), none 0; got {list(init.shape)}")
    if not bool(torch.isfinite(init).all()):
        raise ValueError("init must be finite")
    if value_and_grad is not None and not callable(value_and_grad):
        raise TypeError("value_and_grad must be callable: u [C, T, E] -> (U [C, T], dU/du [C, T, E])")
    if value_and_grad is None and not callable(potential_fn):
        raise TypeError("potential_fn must be callable: u [C, T, E] -> U [C, T] (or pass value_and_grad)")
    for name, value, low in (
        ("num_samples", num_samples, 1),
        ("num_warmup", num_warmup, 0),
        ("max_leapfrog", max_leapfrog, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if not 0.0 < float(target_accept) < 1.0:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept!r}")
    if trajectory not in TRAJECTORIES:
        raise ValueError(f"trajectory must be one of {TRAJECTORIES}, got {trajectory!r}")
    if trajectory == "chees" and init.shape[0] < 2:
        raise ValueError(f"trajectory='chees' needs init with C >= 2 chains per task, got C = {init.shape[0]}")


def _positive(name: str, value, shape: Tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """``value`` (number or tensor broadcastable to ``shape``) as a positive finite tensor of ``shape``."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    try:
        t = t.expand(shape).clone()
    except RuntimeError:
        raise ValueError(f"{name} must broadcast to {list(shape)}, got shape {list(t.shape)}") from None
    if not bool((torch.isfinite(t) & (t > 0)).all()):
        raise ValueError(f"{name} must be positive and finite")
    return t


def sample_batched_hmc(
    potential_fn: Callable[[torch.Tensor], torch.Tensor],
    init: torch.Tensor,
    num_samples: int,
    num_warmup: int = 500,
    *,
    step_size=None,
    target_accept: float = 0.8,
    trajectory: str = "jitter",
    trajectory_length=None,
    max_leapfrog: int = 256,
    adapt_mass: bool = True,
    inverse_mass=None,
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    progress: bool = False,
    value_and_grad: Optional[Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]] = None,
) -> BatchedHMCResult:
    """HMC over ``C`` chains of each of ``T`` independent targets, all advanced in lockstep.

    Parameters
    ----------
    potential_fn : ``u [C, T, E] -> U [C, T]``, each chain-task's negative log density (up to a
        constant) in unconstrained space. Chain-tasks must not interact: ``d U.sum() / du`` is then every
        chain-task's own gradient. Return ``inf`` (not raise) outside the support.
    init : ``[C, T, E]`` finite starting points (floating; float32 and float64 keep their dtype).
    num_samples, num_warmup : draws kept per chain; warmup iterations (adaptation, discarded).
    step_size : initial step size (number or ``[C, T]``-broadcastable); default: Stan's heuristic from 1.
    target_accept : dual-averaging target for each chain-task's acceptance probability.
    trajectory : ``"jitter"`` (integration time ``h L``, ``h`` in (0, 1)) or ``"chees"`` (``L`` per task
        adapted by ChEES during warmup; needs ``C >= 2``).
    trajectory_length : ``L`` (number or ``[T]``), integration time in mass-preconditioned units
        (a posterior of unit scale); default ``pi`` for ``"jitter"``, the starting ``L`` for ``"chees"``.
    max_leapfrog : most leapfrog steps of one chain-task's trajectory (a longer one is cut short). Every
        draw costs the longest trajectory in the batch; where a smaller step does not raise acceptance
        (a hard wall returning ``inf``), dual averaging shrinks the step and this cap bounds the cost.
    adapt_mass, inverse_mass : adapt the diagonal inverse mass matrix in Stan's windows; its starting
        value (number, ``[E]``, ``[T, E]`` or ``[C, T, E]``; default 1).
    seed, generator : randomness (a ``torch.Generator`` on ``init``'s device wins; default: a seed drawn
        from torch's global generator, so ``pyro.set_rng_seed`` fixes it).
    progress : show a tqdm bar.
    value_and_grad : optional ``u [C, T, E] -> (U [C, T], dU/du [C, T, E])`` used for every evaluation instead
        of autograd on ``potential_fn`` (which may then be ``None``): e.g. a compiled potential and gradient.

    Returns
    -------
    BatchedHMCResult with ``samples [C, S, T, E]`` and per chain-task diagnostics.
    """
    _check(init, potential_fn, num_samples, num_warmup, target_accept, trajectory, max_leapfrog, value_and_grad)
    t_start = time.perf_counter()
    C, T, E = init.shape
    dtype, device = init.dtype, init.device
    if generator is None:
        generator = torch.Generator(device=device)
        generator.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, ()).item()))
    pot = _Potential(potential_fn, init.shape, value_and_grad)
    q = init.detach().clone()
    U, g = pot(q)
    bad = ~(torch.isfinite(U) & torch.isfinite(g).all(-1))
    if bool(bad.any()):
        where = bad.nonzero().tolist()[:10]
        raise ValueError(f"potential_fn (or its gradient) is not finite at init for (chain, task) {where}")
    minv = _positive("inverse_mass", 1.0 if inverse_mass is None else inverse_mass, (C, T, E), q)
    L = _positive("trajectory_length", math.pi if trajectory_length is None else trajectory_length, (T,), q)
    eps = _positive("step_size", 1.0 if step_size is None else step_size, (C, T), q)
    if step_size is None or num_warmup > 0:
        eps = _init_step_size(pot, q, U, g, eps, minv, generator)
    first, ends = warmup_windows(num_warmup) if adapt_mass else (num_warmup, [])
    fixed_steps = bool(ends) and inverse_mass is None  # no time scale before the first metric update
    da = _DualAveraging(eps, float(target_accept))
    chees = _ChEES(L) if trajectory == "chees" else None
    n_welford, mean, m2 = 0, torch.zeros_like(q), torch.zeros_like(q)

    S = num_samples
    out = BatchedHMCResult(
        samples=q.new_zeros(C, S, T, E),
        potential_energy=q.new_zeros(C, S, T),
        accept_prob=q.new_zeros(C, S, T),
        diverging=torch.zeros(C, S, T, dtype=torch.bool, device=device),
        num_steps=torch.zeros(C, S, T, dtype=torch.long, device=device),
        lockstep_steps=torch.zeros(S, dtype=torch.long),
        step_size=eps,
        inverse_mass=minv,
        trajectory_length=L,
        divergences=torch.zeros(C, T, dtype=torch.long, device=device),
        warmup_divergences=torch.zeros(C, T, dtype=torch.long, device=device),
        mean_accept=q.new_zeros(C, T),
        num_grad_evals=0,
        seconds=0.0,
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_warmup + S, desc="batched HMC")
    for it in range(num_warmup + S):
        warm = it < num_warmup
        h = _van_der_corput(it + 1)
        if fixed_steps and it <= ends[0]:
            time_ct = h * INIT_WINDOW_STEPS * eps
        else:
            time_ct = h * (chees.length if chees is not None else L).expand(C, T)
        n = torch.ceil(time_ct / eps).clamp(1, max_leapfrog).long()
        e = torch.minimum(eps, time_ct / n)
        q1, p1, U1, g1, div, dH, steps = _integrate(pot, q, _momentum(minv, generator), U, g, e, n, minv)
        accept = torch.where(div, torch.zeros_like(dH), torch.exp(torch.clamp(-dH, max=0.0)))
        accept = torch.nan_to_num(accept, nan=0.0)
        uniform = torch.rand(accept.shape, generator=generator, dtype=dtype, device=device)
        take = (uniform < accept) & ~div
        q0 = q
        q = torch.where(take.unsqueeze(-1), q1, q)
        U, g = torch.where(take, U1, U), torch.where(take.unsqueeze(-1), g1, g)
        if warm:
            out.warmup_divergences += div
            eps = da.update(accept, (time_ct / h).log())
            if chees is not None and not (fixed_steps and it <= ends[0]):
                chees.update(q0, q1, p1, accept, h, minv, eps, max_leapfrog)
            if ends and first <= it <= ends[-1]:
                n_welford += 1
                delta = q - mean
                mean = mean + delta / n_welford
                m2 = m2 + delta * (q - mean)
                if it in ends:
                    var = m2 / (n_welford - 1)
                    minv = n_welford / (n_welford + 5.0) * var + 1e-3 * (5.0 / (n_welford + 5.0))
                    n_welford, mean, m2 = 0, torch.zeros_like(q), torch.zeros_like(q)
                    eps = _init_step_size(pot, q, U, g, eps, minv, generator)
                    da.restart(eps)
            if it == num_warmup - 1:
                eps = da.final()
                if chees is not None:  # sample with the averaged length, no more adaptation
                    L, chees = (chees.final() if chees.k else L), None
        else:
            s = it - num_warmup
            out.samples[:, s], out.potential_energy[:, s], out.accept_prob[:, s] = q, U, accept
            out.diverging[:, s], out.num_steps[:, s], out.lockstep_steps[s] = div, n, steps
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    out.step_size, out.inverse_mass = eps, minv
    out.trajectory_length = L
    out.divergences = out.diverging.sum(1)
    out.mean_accept = out.accept_prob.mean(1)
    out.num_grad_evals, out.seconds = pot.calls, time.perf_counter() - t_start
    return out
