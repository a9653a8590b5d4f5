"""Helpers shared by the benchmark scripts: machine description, timing, peak memory, markdown tables."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Sequence

import torch

__all__ = ["machine_info", "markdown_table", "peak_step_memory_mib", "interleaved_times"]


def machine_info() -> Dict[str, str]:
    """CPU model (``/proc/cpuinfo``), core count, Python/torch/pyro/arviz/numpy versions, torch threads."""
    import arviz
    import numpy
    import pyro

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "arviz": arviz.__version__,
        "numpy": numpy.__version__,
        "torch threads": str(torch.get_num_threads()),
        "platform": platform.platform(),
    }


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table (first column left-aligned, others right-aligned)."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def interleaved_times(
    steps: Dict[str, Callable[[], None]], iters: int, rounds: int, warmup: int = 5
) -> Dict[str, List[float]]:
    """Seconds per call of each ``steps[name]()``: ``rounds`` interleaved rounds of ``iters`` calls each.

    Interleaving makes the arms see the same machine load; report the median over rounds.
    """
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    out: Dict[str, List[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            out[name].append((time.perf_counter() - t0) / iters)
    return out


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def peak_step_memory_mib(step: Callable[[], None]) -> float:
    """Peak live tensor memory of one call above the level at its start, in MiB.

    Measured with the torch profiler on CPU (``profile_memory=True``): the running sum of the
    allocation/free events of the call, its maximum. Python objects are not counted.
    """
    from torch.profiler import ProfilerActivity, profile

    step()  # warm-up (optimizer state)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.events() if e.cpu_memory_usage != 0), key=lambda e: e.time_range.start)
    level = peak = 0
    for e in events:
        level += e.cpu_memory_usage
        peak = max(peak, level)
    return peak / 2**20
