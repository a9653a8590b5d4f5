"""NeuralProcess training step: pyro_meta vs the same networks and loss in plain PyTorch.

One training step = loss + backward + Adam step on a pre-sampled batch (sampling excluded).

* ``pyro_meta``: ``model.loss(batch)``, the model's default loss as ``fit`` runs it: ``-ELBO / T``
  with the KL to ``N(0, I)`` in closed form (``TraceMeanField_ELBO``'s estimator, written without a
  Pyro trace in ``NeuralProcess.loss``; the model tests check the two agree);
* ``plain torch`` (the reference): the same encoder/decoder modules (``model.latent_encoder``,
  ``latent_head``, ``decoder``) and the same loss written by hand with ``torch.distributions``:
  ``(1/T) sum_t [KL(q(z_t | D_t) || N(0, I)) - sum_n m_tn log p(y_tn | x_tn, z_t)]``, ``z_t ~ q(z_t | D_t)``
  reparameterised, context and target decoded in one call. Both give the same loss value on the
  same batch, weights and random state (checked below before timing).
* diagnostics: Pyro's generic ``Trace_ELBO`` (sampled KL, built once) over ``model.model`` /
  ``model.guide``, next to its own plain twin (sampled KL by hand): the cost of Pyro's tracing.

The arms run interleaved (same machine load), one torch thread; the median over rounds of the
mean step time is reported. Peak memory: torch profiler on CPU (``profile_memory=True``), the
maximum of live tensor bytes during one step above the level at its start.

    python benchmarks/np_overhead.py [--iters 100] [--rounds 7] [--tasks 16] [--smoke] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict

import pyro
import torch
from pyro.infer import Trace_ELBO
from torch.distributions import Normal, kl_divergence
from torch.nn.functional import softplus

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_times, markdown_table, median, peak_step_memory_mib  # noqa: E402

from pyro_meta.data import GPCurves, TaskBatch  # noqa: E402
from pyro_meta.model import local_params  # noqa: E402
from pyro_meta.models import NeuralProcess  # noqa: E402


# ------------------------------------------------------------------------- plain PyTorch
def _masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(h.dtype)[..., None]
    return (h * m).sum(-2) / m.sum(-2).clamp_min(1.0)


def plain_posterior(model: NeuralProcess, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> Normal:
    """``q(z | D) = N(m, diag s^2)`` from the NP's own encoder modules, ``[T, D]``."""
    h = _masked_mean(model.latent_encoder(torch.cat([x, y], -1)), mask)
    loc, raw = model.latent_head(h).chunk(2, -1)
    return Normal(loc, model.min_latent_std + softplus(raw))


def plain_log_lik(
    model: NeuralProcess, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, z: torch.Tensor
) -> torch.Tensor:
    """``sum_n m_tn log N(y_tn | mu(x_tn, z_t), sigma(x_tn, z_t)^2)``, ``[T]``; ``z [T, D]``."""
    zz = z[:, None, :].expand(x.shape[0], x.shape[1], z.shape[-1])
    loc, raw = model.decoder(torch.cat([x, zz], -1)).chunk(2, -1)
    scale = model.min_std + (1.0 - model.min_std) * softplus(raw)
    return (Normal(loc, scale).log_prob(y).sum(-1) * mask.to(y.dtype)).sum(-1)


def plain_loss(model: NeuralProcess, batch: TaskBatch, analytic_kl: bool = True) -> torch.Tensor:
    """The NP's ``-ELBO / T`` by hand over the observed points (context and target, decoded at once)."""
    x, y, mask = batch.observed()
    q = plain_posterior(model, x, y, mask)
    z = q.rsample()
    ll = plain_log_lik(model, x, y, mask, z)
    if analytic_kl:
        kl = kl_divergence(q, Normal(torch.zeros_like(q.loc), 1.0)).sum(-1)
    else:
        kl = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1)
    return (kl - ll).mean()


# ----------------------------------------------------------------------------------- arms
class Arm:
    """A model, its Adam and one training step ``loss -> backward -> step``."""

    def __init__(self, make_model, loss_fn, seed: int = 0):
        torch.manual_seed(seed)
        self.model = make_model()
        self.model.train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss_fn = loss_fn

    def step(self, batch: TaskBatch) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.loss_fn(self.model, batch).backward()
        self.opt.step()


def _cached_elbo_loss():
    elbo = Trace_ELBO(num_particles=1, max_plate_nesting=2)

    def loss(model, batch):
        return elbo.differentiable_loss(model.model, model.guide, batch) / batch.num_tasks

    return loss


LOSSES = {
    "analytic KL": plain_loss,
    "sampled KL": lambda m, b: plain_loss(m, b, analytic_kl=False),
}


def loss_values(make_model, batch: TaskBatch, seed: int = 123) -> Dict[str, float]:
    """Every loss at the same weights and RNG state (each starts from ``pyro.set_rng_seed(seed)``)."""
    model = make_model()
    fns = {
        "model.loss": lambda m, b: m.loss(b),
        "Trace_ELBO": _cached_elbo_loss(),
        **{f"plain, {k}": f for k, f in LOSSES.items()},
    }
    out = {}
    with local_params(), torch.no_grad():
        for name, fn in fns.items():
            pyro.set_rng_seed(seed)
            out[name] = float(fn(model, batch))
    return out


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-4 * max(1.0, abs(b))


def main(argv=None) -> Dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=100, help="steps per round and arm")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median reported)")
    p.add_argument("--tasks", type=int, default=16, help="tasks per batch")
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--smoke", action="store_true", help="tiny run (checks that the script works)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.smoke:
        args.iters, args.rounds = 5, 1
    torch.set_num_threads(1)

    def make_model():
        return NeuralProcess(x_dim=1, y_dim=1, latent_dim=args.latent_dim, hidden=args.hidden)

    g = torch.Generator().manual_seed(0)
    batches = [GPCurves().sample(args.tasks, (3, 49), (10, 50), generator=g) for _ in range(10)]
    values = loss_values(make_model, batches[0])
    # the plain reference is the hand-written twin of whatever model.loss computes (same value, same seed)
    match = [k for k in LOSSES if _same(values["model.loss"], values[f"plain, {k}"])]
    if not match:
        raise AssertionError(f"no plain PyTorch loss reproduces model.loss at the same weights and seed: {values}")
    if not _same(values["Trace_ELBO"], values["plain, sampled KL"]):
        raise AssertionError(f"Pyro's Trace_ELBO differs from its plain twin (sampled KL): {values}")
    kind = match[0]
    other = next(k for k in LOSSES if k != kind)

    arms = {
        "pyro_meta NeuralProcess.loss": lambda m, b: m.loss(b),
        f"plain torch, {kind} (reference)": LOSSES[kind],
        "Pyro Trace_ELBO (sampled KL, built once)": _cached_elbo_loss(),
        f"plain torch, {other}": LOSSES[other],
    }
    learners = {name: Arm(make_model, fn) for name, fn in arms.items()}
    counter = {name: 0 for name in learners}

    def stepper(name):
        def run():
            learners[name].step(batches[counter[name] % len(batches)])
            counter[name] += 1

        return run

    with local_params():
        times = interleaved_times({n: stepper(n) for n in learners}, args.iters, args.rounds)
        memory = {n: peak_step_memory_mib(lambda n=n: learners[n].step(batches[0])) for n in learners}
    med = {n: median(v) for n, v in times.items()}
    ref_name = f"plain torch, {kind} (reference)"
    ref = med[ref_name]
    ratio = med["pyro_meta NeuralProcess.loss"] / ref
    print(
        f"NeuralProcess training step (loss + backward + Adam), latent_dim={args.latent_dim}, hidden={args.hidden}x2, "
        f"{args.tasks} GP-curve tasks/batch (3-49 context, 10-50 extra targets), torch threads=1, "
        f"{args.rounds} interleaved rounds x {args.iters} steps (median)"
    )
    print("loss values at the same weights and seed: " + ", ".join(f"{k} {v:.6f}" for k, v in values.items()))
    print(f"model.loss is the {kind} ELBO: the reference is its plain PyTorch twin")
    rows = [[n, f"{1e3 * med[n]:.2f}", f"{med[n] / ref:.3f}", f"{memory[n]:.2f}"] for n in learners]
    table = markdown_table(["step", "ms/step", "ratio to reference", "peak MiB (profiler)"], rows)
    print(table)
    print(f"ratio pyro_meta / plain torch = {ratio:.3f} (target <= 1.25)")
    out: Dict[str, object] = {
        "ratio": ratio,
        "kind": kind,
        "table": table,
        "ms": {n: 1e3 * v for n, v in med.items()},
        "memory_mib": memory,
        "losses": values,
        "rounds_ms": {n: [1e3 * t for t in v] for n, v in times.items()},
        "iters": args.iters,
        "rounds": args.rounds,
        "tasks": args.tasks,
    }
    trace_elbo = med["Pyro Trace_ELBO (sampled KL, built once)"] / med["plain torch, sampled KL"]
    out["trace_elbo_vs_twin"] = trace_elbo
    print(f"diagnostic: Pyro's Trace_ELBO = {trace_elbo:.3f} x its plain twin (sampled KL)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
