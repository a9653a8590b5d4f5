"""Guide objectives and guide heads: step time and fit quality, measured in the same run.

Part 1 -- one training step (loss + backward + Adam step on every parameter, the batch sampled
beforehand) of a small ``NeuralProcess`` under each objective of ``pyro_meta.inference.objectives``,
next to the ELBO: ``model.loss`` (the NP's closed-form-KL ELBO without a Pyro trace, what ``fit``
runs) and Pyro's generic ``Trace_ELBO`` over ``model.model``/``model.guide`` (``MetaModel.loss``).
Arms run interleaved; the median over rounds of the mean CPU time per step (``process_time``, one
torch thread: robust to other processes on a shared machine) is reported.

Part 2 -- each head of ``pyro_meta.guides`` fitted by maximum likelihood (forward KL) to the
conditional bimodal ``BimodalTarget`` (2-D): time per step, the worst mode-mass error over 7
contexts, the forward KL (Monte Carlo), and the time of a step in the other direction (``rsample``
and ``log q`` of the head's own draws, as the ELBO and IWAE use a guide). ``zuko``'s NSF and MAF are measured too when ``zuko``
is installed (it is not a dependency: this is the measurement that decided it).

Part 3 -- the two directions of ``FlowHead`` at ``D = 16``: scoring given points (forward KL, RWS,
sleep) and scoring the head's own draws (ELBO, IWAE).

    python benchmarks/guide_objectives.py [--iters 30] [--rounds 7] [--steps 1000] [--smoke]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Dict

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, median  # noqa: E402

from pyro_meta.data import Sinusoid  # noqa: E402
from pyro_meta.guides import BimodalTarget, FlowHead, FullNormalHead, MixtureHead, NormalHead  # noqa: E402
from pyro_meta.inference.objectives import iwae_loss, rws_wake_loss, sleep_loss  # noqa: E402
from pyro_meta.model import MetaModel, local_params  # noqa: E402
from pyro_meta.models import NeuralProcess  # noqa: E402


def cpu_times(steps: Dict[str, Callable[[], None]], iters: int, rounds: int, warmup: int = 3) -> Dict[str, list]:
    """CPU seconds per call (``time.process_time``), arms interleaved: robust to other processes' load."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    out = {k: [] for k in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            t0 = time.process_time()
            for _ in range(iters):
                fn()
            out[name].append((time.process_time() - t0) / iters)
    return out


def objective_steps(num_tasks: int, num_particles: int) -> Dict[str, Callable[[], None]]:
    torch.manual_seed(0)
    model = NeuralProcess(latent_dim=8, hidden=32)
    batch = Sinusoid(noise_std=0.1).sample(num_tasks, 5, 10, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    K = num_particles

    def step(loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            with local_params():
                loss = loss_fn()
                opt.zero_grad()
                loss.backward()
                opt.step()

        return run

    return {
        "ELBO, model.loss (closed-form KL)": step(lambda: model.loss(batch)),
        "ELBO, Trace_ELBO (MetaModel.loss)": step(lambda: MetaModel.loss(model, batch)),
        "iwae_loss K=1": step(lambda: iwae_loss(model, batch, 1)),
        f"iwae_loss K={K}": step(lambda: iwae_loss(model, batch, K)),
        f"rws_wake_loss K={K}": step(lambda: rws_wake_loss(model, batch, K)),
        f"sleep_loss K={K}": step(lambda: sleep_loss(model, batch, K)),
    }


def _reverse_step_seconds(q, conditional, target: BimodalTarget, steps: int) -> float:
    """Seconds per step of the ELBO direction: ``rsample`` 256 draws, ``log q`` of them, backward."""
    opt = torch.optim.Adam(q.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(2)
    t0 = time.process_time()
    for _ in range(steps):
        h = target.sample_context(256, gen)
        d = conditional(q, h)
        if hasattr(d, "rsample_and_log_prob"):  # zuko: one pass
            z, log_q = d.rsample_and_log_prob()
        else:  # pyro_meta heads: the transforms cache their inverse
            z = d.rsample()
            log_q = d.log_prob(z)
        loss = (log_q - target.log_prob(h, z)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.process_time() - t0) / steps


def head_fits(steps: int):
    target = BimodalTarget()
    contexts = torch.linspace(-0.9, 0.9, 7)[:, None]
    arms = {
        "NormalHead": lambda: NormalHead(1, 2, hidden=(32,)),
        "FullNormalHead": lambda: FullNormalHead(1, 2, hidden=(32,)),
        "MixtureHead K=2": lambda: MixtureHead(1, 2, num_components=2, hidden=(32,)),
        "MixtureHead K=4": lambda: MixtureHead(1, 2, num_components=4, hidden=(32,)),
        "FlowHead spline, 3 layers": lambda: FlowHead(1, 2, hidden=(32,)),
        "FlowHead affine, 3 layers": lambda: FlowHead(1, 2, transform="affine", hidden=(32,)),
        "FlowHead spline, 3 layers, density": lambda: FlowHead(1, 2, hidden=(32,), direction="density"),
        "FlowHead affine, 3 layers, density": lambda: FlowHead(
            1, 2, transform="affine", hidden=(32,), direction="density"
        ),
    }
    wrap = {name: (make, lambda q, h: q(h)) for name, make in arms.items()}
    try:
        import zuko

        wrap["zuko NSF, 3 layers"] = (
            lambda: zuko.flows.NSF(2, 1, transforms=3, hidden_features=(32, 32)),
            lambda f, h: f(h[:, None]),
        )
        wrap["zuko MAF, 3 layers"] = (
            lambda: zuko.flows.MAF(2, 1, transforms=3, hidden_features=(32, 32)),
            lambda f, h: f(h[:, None]),
        )
    except ImportError:
        print("(zuko not installed: its rows are left out)")
    rows = []
    for name, (make, conditional) in wrap.items():
        torch.manual_seed(0)
        q = make()
        opt = torch.optim.Adam(q.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(0)
        t0 = time.process_time()
        for _ in range(steps):
            h, z = target.sample_pairs(256, gen)
            loss = -conditional(q, h).log_prob(z).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        seconds = (time.process_time() - t0) / steps
        with torch.no_grad():
            draws = conditional(q, contexts).sample((4000,))
            error = (target.mode_masses(contexts, draws) - target.exact_mode_masses(contexts)).abs().max()
            h, z = target.sample_pairs(4000, torch.Generator().manual_seed(1))
            kl = (target.log_prob(h, z) - conditional(q, h).log_prob(z)).mean()
        reverse = _reverse_step_seconds(q, conditional, target, max(5, steps // 20))
        rows.append(
            [
                name,
                f"{1e3 * seconds:.1f}",
                f"{1e3 * reverse:.1f}",
                f"{float(error):.3f}",
                f"{float(kl):.3f}",
                sum(p.numel() for p in q.parameters()),
            ]
        )
        print(" | ".join(str(c) for c in rows[-1]), flush=True)
    return rows


def flow_directions(dim: int, repeats: int):
    """Per call with backward, ``D = dim``, 16 tasks, 8 draws each: ``log_prob`` of given points, and a draw scored."""
    torch.manual_seed(0)
    h, z = torch.randn(16, 32), torch.randn(8, 16, 1, dim)
    arms = {
        f"FlowHead {t}, {d}": (FlowHead(32, dim, transform=t, direction=d), lambda q, h: q(h))
        for t in ("spline", "affine")
        for d in ("sample", "density")
    }
    try:
        import zuko

        arms["zuko NSF"] = (zuko.flows.NSF(dim, 32, transforms=3, hidden_features=(32, 32)), lambda f, h: f(h[:, None]))
    except ImportError:
        pass
    rows = []
    for name, (q, conditional) in arms.items():

        def score(q=q, conditional=conditional) -> None:
            conditional(q, h).log_prob(z).sum().backward()

        def draw(q=q, conditional=conditional) -> None:
            d = conditional(q, h)
            if hasattr(d, "rsample_and_log_prob"):
                x, lp = d.rsample_and_log_prob((8,))
            else:
                x = d.rsample((8,))
                lp = d.log_prob(x)
            (lp.sum() + x.sum()).backward()

        times = cpu_times({"score": score, "draw": draw}, repeats, 3, warmup=1)
        rows.append([name, f"{1e3 * median(times['score']):.1f}", f"{1e3 * median(times['draw']):.1f}"])
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1000, help="maximum-likelihood steps per head (part 2)")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.iters, args.rounds, args.steps = 2, 1, 20
    torch.set_num_threads(1)
    times = cpu_times(objective_steps(args.tasks, args.particles), args.iters, args.rounds)
    base = median(times["ELBO, model.loss (closed-form KL)"])
    generic = median(times["ELBO, Trace_ELBO (MetaModel.loss)"])
    rows = [
        [name, f"{1e3 * median(t):.2f}", f"{median(t) / base:.2f}", f"{median(t) / generic:.2f}"]
        for name, t in times.items()
    ]
    print(f"\nNeuralProcess(latent_dim=8, hidden=32), {args.tasks} sinusoid tasks (5 context, 10 target), one thread")
    print(markdown_table(["objective", "CPU ms / step", "x model.loss", "x Trace_ELBO"], rows))
    print(f"Heads fitted by maximum likelihood to BimodalTarget (2-D), {args.steps} steps of 256 draws, Adam 1e-2")
    rows = head_fits(args.steps)
    print("(CPU ms / ML step: log q at the target's draws, the flows' inverse direction; ms / ELBO step: rsample and")
    print("log q of the head's own draws, the direction a guide trained by the ELBO or IWAE uses)")
    print(
        markdown_table(
            ["head", "CPU ms / ML step", "CPU ms / ELBO step", "max mode-mass error", "forward KL", "parameters"], rows
        )
    )
    print("Flow directions at D=16 (3 layers, hidden 32): CPU ms per call with backward")
    rows = flow_directions(16, 2 if args.smoke else 5)
    print(markdown_table(["flow", "log_prob of given points", "rsample + log_prob of the draws"], rows))


if __name__ == "__main__":
    main()
