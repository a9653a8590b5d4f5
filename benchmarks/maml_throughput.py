"""MAML meta-training throughput: pyro_meta's MAML vs a per-task Python loop and a bare torch.func.vmap MAML.

Setting: sinusoid tasks, 25 tasks per meta-batch, 10 context + 10 target points, a 1-40-40-1
ReLU net, 1 inner step (alpha = 0.01), second order, Adam(1e-3), one torch thread. Each
meta-iteration = loss + backward + optimizer step on a pre-sampled batch (data sampling is
excluded for all three, so only the meta-learner is timed). All three are measured in the same
run, interleaved over several rounds; the median rate is reported.

Peak memory for K = 1, 5, 10 inner steps is measured with the torch profiler on CPU
(``profile_memory=True``): the running sum of the allocation/free events of one
meta-iteration (loss + backward), its maximum above the level at the start.

Usage: ``python benchmarks/maml_throughput.py [--iters 200] [--rounds 5] [--smoke]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from pyro_meta.data import Sinusoid
from pyro_meta.models import MAML

TASKS, NC, NT, HIDDEN, ALPHA = 25, 10, 10, (40, 40), 0.01


def make_batches(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [Sinusoid().sample(TASKS, NC, NT, generator=g) for _ in range(n)]


# ---------------------------------------------------------------- ours
class Ours:
    name = "pyro_meta MAML"

    def __init__(self, steps: int = 1):
        self.model = MAML(hidden=HIDDEN, inner_lr=ALPHA, inner_steps=steps, learn_noise=False)
        self.model.train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def loss(self, b):
        return self.model.loss(b)

    def step(self, b):
        self.opt.zero_grad(set_to_none=True)
        self.loss(b).backward()
        self.opt.step()


# ---------------------------------------------------------------- references
def _net():
    return nn.Sequential(
        nn.Linear(1, HIDDEN[0]), nn.ReLU(), nn.Linear(HIDDEN[0], HIDDEN[1]), nn.ReLU(), nn.Linear(HIDDEN[1], 1)
    )


class LoopMAML:
    """The textbook PyTorch MAML: a Python loop over tasks, torch.autograd.grad(create_graph=True)."""

    name = "per-task loop MAML"

    def __init__(self, steps: int = 1):
        self.net, self.steps = _net(), steps
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)

    def loss(self, b):
        params = dict(self.net.named_parameters())
        total = 0.0
        for t in range(b.num_tasks):
            fast = params
            for _ in range(self.steps):
                inner = ((functional_call(self.net, fast, (b.context_x[t],)) - b.context_y[t]) ** 2).mean()
                grads = torch.autograd.grad(inner, list(fast.values()), create_graph=True)
                fast = {k: v - ALPHA * g for (k, v), g in zip(fast.items(), grads)}
            total = total + ((functional_call(self.net, fast, (b.target_x[t],)) - b.target_y[t]) ** 2).mean()
        return total / b.num_tasks

    def step(self, b):
        self.opt.zero_grad(set_to_none=True)
        self.loss(b).backward()
        self.opt.step()


class VmapMAML:
    """A bare torch.func MAML: vmap over tasks of an inner torch.func.grad step, outer autograd."""

    name = "torch.func.vmap MAML"

    def __init__(self, steps: int = 1):
        self.net, self.steps = _net(), steps
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)

        def inner_loss(p, x, y):
            return ((functional_call(self.net, p, (x,)) - y) ** 2).mean()

        def task_loss(p, xc, yc, xt, yt):
            for _ in range(self.steps):
                g = grad(inner_loss)(p, xc, yc)
                p = {k: p[k] - ALPHA * g[k] for k in p}
            return inner_loss(p, xt, yt)

        self._batched = vmap(task_loss, in_dims=(None, 0, 0, 0, 0))

    def loss(self, b):
        params = dict(self.net.named_parameters())
        return self._batched(params, b.context_x, b.context_y, b.target_x, b.target_y).mean()

    def step(self, b):
        self.opt.zero_grad(set_to_none=True)
        self.loss(b).backward()
        self.opt.step()


# ---------------------------------------------------------------- measurement
def rate(learner, batches, iters: int) -> float:
    for b in batches[:5]:  # warm-up
        learner.step(b)
    t0 = time.perf_counter()
    for i in range(iters):
        learner.step(batches[i % len(batches)])
    return iters / (time.perf_counter() - t0)


def peak_memory_mb(learner, batch) -> float:
    """Peak bytes allocated during one loss + backward (torch profiler on CPU), in MiB."""
    from torch.profiler import ProfilerActivity, profile

    learner.step(batch)  # warm-up, allocate optimizer state
    learner.opt.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        learner.loss(batch).backward()
    events = sorted(
        (e for e in prof.events() if e.cpu_memory_usage != 0),
        key=lambda e: e.time_range.start,
    )
    level = peak = 0
    for e in events:
        level += e.cpu_memory_usage
        peak = max(peak, level)
    return peak / 2**20


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=200, help="meta-iterations per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median rate is reported")
    parser.add_argument("--smoke", action="store_true", help="tiny run (checks that the script works)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.iters, args.rounds = 10, 1
    torch.set_num_threads(1)
    torch.manual_seed(0)
    batches = make_batches(20)

    # the three meta-gradients agree at the same weights (a sanity check of the comparison)
    ours, loop, vm = Ours(), LoopMAML(), VmapMAML()
    with torch.no_grad():
        flat = ours.model.theta
        for ref in (loop.net, vm.net):
            for (W, bias), lin in zip(ours.model.net.unflatten(flat), [m for m in ref if isinstance(m, nn.Linear)]):
                lin.weight.copy_(W.T)
                lin.bias.copy_(bias)
    losses = [float(x.loss(batches[0])) for x in (ours, loop, vm)]
    print(f"same-weights meta-loss: ours {losses[0]:.6f}, loop {losses[1]:.6f}, vmap {losses[2]:.6f}")

    rates = {c.name: [] for c in (Ours, LoopMAML, VmapMAML)}
    learners = [Ours(), LoopMAML(), VmapMAML()]
    for _ in range(args.rounds):
        for learner in learners:
            rates[learner.name].append(rate(learner, batches, args.iters))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(
        f"\nthroughput, {TASKS} tasks/batch, 1-40-40-1 ReLU, 1 inner step, second order, "
        f"torch threads = {torch.get_num_threads()}, {args.rounds} rounds x {args.iters} iters (median):"
    )
    for k, v in med.items():
        print(f"  {k:24s} {v:8.1f} meta-iterations/s   (rounds: {', '.join(f'{r:.1f}' for r in rates[k])})")
    o = med[Ours.name]
    print(f"  ratio ours / loop  = {o / med[LoopMAML.name]:.2f}  (target >= 4)")
    print(f"  ratio ours / vmap  = {o / med[VmapMAML.name]:.2f}  (target >= 0.75)")

    print("\npeak memory of one meta-iteration (loss + backward), torch profiler on CPU (profile_memory=True):")
    for K in (1, 5, 10):
        row = [peak_memory_mb(cls(steps=K), batches[0]) for cls in (Ours, LoopMAML, VmapMAML)]
        print(f"  K = {K:2d}: ours {row[0]:7.2f} MiB   loop {row[1]:7.2f} MiB   vmap {row[2]:7.2f} MiB")


if __name__ == "__main__":
    main()
