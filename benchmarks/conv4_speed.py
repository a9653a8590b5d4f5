"""Conv-4 per-task weights on CPU: grouped convolution (``FunctionalConv4``) vs ``torch.func.vmap`` vs a per-task loop.

Part 1: one evaluation of ``T`` copies of the Omniglot Conv-4 (28x28x1 images, 64 channels, batch norm,
5-way head), each copy on its task's own ``N`` images: (a) forward + backward, (b) a second-order
step (forward, ``autograd.grad(create_graph=True)``, forward at the moved weights, backward), for
``FunctionalConv4`` (one grouped ``conv2d(..., groups=T)`` per layer), a ``torch.func.vmap`` of the same
per-task network, and a Python loop over tasks. Part 2: a MAML meta-step (5-way 1-shot, 15 queries
per class: 5 context and 75 target images per task, 1 inner step with ``inner_loop``, second order,
cross-entropy, ``Adam``) on a meta-batch of ``T`` tasks, with each arm as the network. Random images
(only speed is measured). One torch thread. Times are CPU seconds of this process
(``time.process_time``), which other processes' load disturbs less than wall time (though they still
share the memory bandwidth); the arms are interleaved over rounds and the median is reported. Compare
the ratios, measured in the same run, rather than absolute times.

Usage: ``python benchmarks/conv4_speed.py [--tasks 25] [--images 5 25] [--no-maml] [--rounds 3] [--smoke]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import vmap

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, median  # noqa: E402

from pyro_meta.nn import FunctionalConv4, inner_loop  # noqa: E402


def per_task_features(net: FunctionalConv4, x: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """One copy: images ``x [N, C*H*W]``, weights ``phi [P]`` -> features ``[N, F]`` (plain ``F.conv2d``)."""
    p = net.unflatten(phi)
    h = x.reshape((-1,) + net.image_shape)
    for i in range(1, 5):
        h = F.conv2d(h, p[f"conv{i}.weight"], p[f"conv{i}.bias"], padding=1)
        h = F.batch_norm(h, None, None, p[f"norm{i}.weight"], p[f"norm{i}.bias"], training=True, eps=1e-5)
        h = torch.relu(F.max_pool2d(h, 2))
    return h.flatten(1)


def per_task_logits(net: FunctionalConv4, x: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """One copy: ``x [N, C*H*W]``, ``phi [P]`` -> logits ``[N, K]``."""
    W, b = net.unflatten(phi)["head.weight"], net.unflatten(phi)["head.bias"]
    return per_task_features(net, x, phi) @ W + b


def arms(net: FunctionalConv4):
    """``name -> f(x [T, N, D], phi [T, P]) -> logits [T, N, K]``."""
    vmapped = vmap(lambda x, p: per_task_logits(net, x, p))
    return {
        "grouped conv (FunctionalConv4)": net,
        "torch.func.vmap": vmapped,
        "per-task loop": lambda x, phi: torch.stack([per_task_logits(net, x[t], phi[t]) for t in range(len(x))]),
    }


def cpu_times(steps, rounds: int, warmup: int = 1):
    """CPU seconds (``time.process_time``) per call of each ``steps[name]()``, ``rounds`` interleaved rounds."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    out = {k: [] for k in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            t0 = time.process_time()
            fn()
            out[name].append(time.process_time() - t0)
    return out


def evaluation_steps(fn, x, phi, second_order: bool):
    def step():
        p = phi.detach().requires_grad_(True)
        loss = fn(x, p).square().mean()
        if second_order:
            (g,) = torch.autograd.grad(loss, p, create_graph=True)
            loss = fn(x, p - 0.1 * g).square().mean()
        loss.backward()

    return step


def maml_step(net: FunctionalConv4, fn, tasks: int, ways: int, shots: int, queries: int, generator: torch.Generator):
    """A MAML meta-step with the network ``fn(x, phi)`` on one pre-sampled batch of random images and labels."""
    D = net.in_features
    xc = torch.rand(tasks, ways * shots, D, generator=generator)
    xt = torch.rand(tasks, ways * queries, D, generator=generator)
    yc = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1)
    yt = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1)
    theta = torch.nn.Parameter(net.init_params(generator=generator))
    opt = torch.optim.Adam([theta], lr=1e-3)

    def ce(logits, y):  # per-task mean cross-entropy [T]
        return F.cross_entropy(logits.transpose(-1, -2), y, reduction="none").mean(-1)

    def step():
        phi = inner_loop(lambda p: ce(fn(xc, p), yc), theta.expand(tasks, -1), 1, 0.4)
        loss = ce(fn(xt, phi), yt).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=25)
    parser.add_argument("--images", type=int, nargs="*", default=[5, 25], help="images per task in part 1")
    parser.add_argument("--no-maml", action="store_true", help="skip part 2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (checks that the script runs)")
    args = parser.parse_args(argv)
    channels, image, (ways, shots, queries) = 64, (1, 28, 28), (5, 1, 15)
    if args.smoke:
        args.tasks, args.images, args.rounds, channels, image = 2, [2], 1, 4, (1, 16, 16)
        ways, shots, queries = 2, 1, 2
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    net = FunctionalConv4(image, channels=channels, num_classes=5, norm="batch")
    T = args.tasks
    phi = net.init_params(T, generator=g)
    fns = arms(net)
    print(
        f"T = {T} tasks, {image} images, {channels} channels, batch norm, torch threads = {torch.get_num_threads()}, "
        f"CPU seconds, median of {args.rounds} interleaved rounds{' (SMOKE: tiny sizes)' if args.smoke else ''}\n"
    )
    rows = []
    for N in args.images:
        x = torch.rand(T, N, net.in_features, generator=g)
        ref = fns["per-task loop"](x, phi)
        for name, fn in fns.items():
            err = float((fn(x, phi) - ref).abs().max())
            assert err < 1e-4, f"{name} differs from the per-task loop by {err}"
        for second in (False, True):
            steps = {name: evaluation_steps(fn, x, phi, second) for name, fn in fns.items()}
            times = {k: median(v) for k, v in cpu_times(steps, args.rounds).items()}
            base = times["grouped conv (FunctionalConv4)"]
            for name, t in times.items():
                rows.append(
                    [
                        name,
                        N,
                        "second-order step" if second else "forward + backward",
                        f"{1e3 * t:.0f}",
                        f"{t / base:.2f}",
                    ]
                )
    if rows:
        print(markdown_table(["arm", "images per task", "what", "ms", "time / grouped"], rows))
    if args.no_maml:
        return
    steps = {
        name: maml_step(net, fn, T, ways, shots, queries, torch.Generator().manual_seed(1)) for name, fn in fns.items()
    }
    times = {k: median(v) for k, v in cpu_times(steps, args.rounds).items()}
    base = times["grouped conv (FunctionalConv4)"]
    print(
        f"MAML meta-step, {T} tasks, {ways}-way {shots}-shot + {queries} queries per class, 1 inner step, "
        f"second order:\n"
    )
    print(
        markdown_table(
            ["arm", "s / step", "it/s", "time / grouped"],
            [[k, f"{t:.2f}", f"{1 / t:.3f}", f"{t / base:.2f}"] for k, t in times.items()],
        )
    )


if __name__ == "__main__":
    main()
