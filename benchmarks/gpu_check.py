"""GPU check: the suite's device tests, then a CUDA-vs-CPU timing table, in one run.

1. ``pytest tests/test_devices.py`` (slow tests included): fit, every inference method, predict,
   metrics, evaluate and the ArviZ export on every available device in float32 and float64,
   against closed forms and CPU runs. Without CUDA its CUDA cases are skipped with a reason.
2. Timings on the CPU and, when CUDA is available, on ``cuda``: ``infer`` with ``amortized``,
   ``svi``, ``importance`` and ``nuts`` on ``--tasks`` sinusoid tasks of the demo's NeuralProcess
   (``DemoConfig``'s architecture and method options, meta-trained here for ``--train-steps`` steps
   on the CPU and copied to each device), and MAML meta-training throughput (1-40-40-1 net, 25
   tasks per step, loss + backward + Adam step on pre-sampled batches). CUDA times include a
   ``torch.cuda.synchronize()``. One torch thread on the CPU.

On a machine without CUDA it says so and times the CPU only. Usage::

    python benchmarks/gpu_check.py [--tasks 50] [--skip-tests] [--smoke] [--out table.md]
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from _common import machine_info, markdown_table  # noqa: E402


def devices() -> List[str]:
    """``["cpu", "cuda"]`` with CUDA, else ``["cpu"]``."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def run_device_tests(smoke: bool) -> Dict[str, object]:
    """``pytest tests/test_devices.py`` in a subprocess: ``{"rc", "summary"}`` (the last line pytest prints)."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        os.path.join(ROOT, "tests", "test_devices.py"),
    ]
    if smoke:
        cmd += ["-k", "metrics or taskbatch"]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    return {"rc": proc.returncode, "summary": lines[-1] if lines else proc.stderr.strip()[-500:]}


def _timed(where: str, fn: Callable[..., object], /, *args, **kwargs) -> float:
    """Seconds of ``fn(*args, **kwargs)`` on ``where`` (CUDA synchronised before and after)."""
    if where == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    if where == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def inference_times(args, devs: List[str]) -> Dict[str, Dict[str, float]]:
    """Seconds of each ``infer`` method on each device, the same trained model and tasks."""
    import pyro_meta
    from pyro_meta.apps.demo import DemoConfig
    from pyro_meta.data import Sinusoid
    from pyro_meta.models import NeuralProcess

    cfg = DemoConfig().smoke() if args.smoke else DemoConfig()
    torch.manual_seed(0)
    model = NeuralProcess(
        latent_dim=cfg.latent_dim, hidden=cfg.hidden, num_layers=cfg.num_layers, activation=cfg.activation
    )
    tasks = Sinusoid(noise_std=cfg.noise_std)
    pyro_meta.fit(
        model,
        tasks,
        num_steps=args.train_steps,
        tasks_per_batch=cfg.tasks_per_batch,
        num_context=cfg.train_context,
        num_target=cfg.train_target,
        lr=cfg.lr,
        seed=0,
        progress=False,
    )
    batch = tasks.sample(args.tasks, 5, cfg.num_target, generator=torch.Generator().manual_seed(1))
    options = cfg.method_options()
    options["nuts"].update(num_warmup=args.nuts_iters, num_samples=args.nuts_iters)
    out: Dict[str, Dict[str, float]] = {}
    for device in devs:
        m = copy.deepcopy(model).to(device)
        for method, opts in options.items():
            opts = dict(opts)
            num_samples = opts.pop("num_samples", cfg.num_samples)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # mixing warnings of short NUTS runs
                seconds = _timed(
                    device,
                    pyro_meta.infer,
                    m,
                    batch,
                    method=method,
                    num_samples=num_samples,
                    seed=0,
                    progress=False,
                    device=device,
                    **opts,
                )
            out.setdefault(f"infer {method} ({args.tasks} tasks)", {})[device] = seconds
    return out


def _maml_steps(model, opt, batches, n: int) -> None:
    for i in range(n):
        opt.zero_grad(set_to_none=True)
        model.loss(batches[i % len(batches)]).backward()
        opt.step()


def maml_throughput(args, devs: List[str]) -> Dict[str, float]:
    """MAML meta-training steps per second on each device (after ``warmup`` steps)."""
    from pyro_meta.data import Sinusoid
    from pyro_meta.models import MAML

    g = torch.Generator().manual_seed(0)
    batches = [Sinusoid().sample(25, 10, 10, generator=g) for _ in range(4)]
    out = {}
    for device in devs:
        torch.manual_seed(0)
        model = MAML(hidden=(40, 40), inner_steps=1, learn_noise=False).to(device)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        moved = [b.to(device) for b in batches]

        _maml_steps(model, opt, moved, 5)
        out[device] = args.maml_steps / _timed(device, _maml_steps, model, opt, moved, args.maml_steps)
    return out


def table(inference: Dict[str, Dict[str, float]], maml: Dict[str, float], devs: List[str]) -> str:
    cuda = "cuda" in devs
    header = ["workload", "CPU", "CUDA" if cuda else "CUDA (absent)", "CPU / CUDA time"]
    rows = []
    for name, t in inference.items():
        rows.append(
            [
                f"{name}, seconds",
                f"{t['cpu']:.2f}",
                f"{t['cuda']:.2f}" if cuda else "n/a",
                f"{t['cpu'] / t['cuda']:.2f}" if cuda else "n/a",
            ]
        )
    rows.append(
        [
            "MAML meta-training, steps / s",
            f"{maml['cpu']:.1f}",
            f"{maml['cuda']:.1f}" if cuda else "n/a",
            f"{maml['cuda'] / maml['cpu']:.2f}" if cuda else "n/a",
        ]
    )
    return markdown_table(header, rows)


def main(argv: Optional[List[str]] = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=50)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--nuts-iters", type=int, default=100, help="NUTS warmup and draws per chain")
    p.add_argument("--maml-steps", type=int, default=100)
    p.add_argument("--skip-tests", action="store_true", help="timings only")
    p.add_argument(
        "--smoke", action="store_true", help="tiny sizes and a few device tests: checks that everything runs"
    )
    p.add_argument("--out", help="also write the report (markdown) there")
    args = p.parse_args(argv)
    if args.smoke:
        args.tasks, args.train_steps, args.nuts_iters, args.maml_steps = 3, 5, 5, 3
    torch.set_num_threads(1)
    devs = devices()
    info = machine_info()
    lines = ["SMOKE RUN (numbers meaningless)\n" if args.smoke else ""]
    if "cuda" in devs:
        lines.append(f"CUDA device: {torch.cuda.get_device_name(0)}; CPU: {info['cpu']}\n")
    else:
        lines.append(
            f"CUDA is not available on this machine: the CUDA tests are skipped and only the CPU is timed "
            f"(CPU: {info['cpu']}, {info['cores']} cores, 1 torch thread).\n"
        )
    ok = True
    if not args.skip_tests:
        tests = run_device_tests(args.smoke)
        ok = tests["rc"] == 0
        lines.append(f"device tests (tests/test_devices.py): {'PASS' if ok else 'FAIL'}: {tests['summary']}\n")
    lines.append("\n" + table(inference_times(args, devs), maml_throughput(args, devs), devs))
    text = "".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if not ok:
        raise SystemExit(1)
    return text


if __name__ == "__main__":
    main()
