"""The README's 20-way model ("Your own Omniglot-style images"): its meta-training time on this machine and its accuracy.

Runs the README block's training exactly (``torch.manual_seed(0)``, ``ProtoNet(image_shape=(1, 28, 28),
test_shifts=2)``, ``fit`` on
``omniglot_training_episodes(way=20, shots=1, queries=5, shift=2)``, 1,500 steps, one episode per step, Adam
at 1e-3, seed 0) with torch's default threads, times ``fit`` (wall clock), then scores the model with
:func:`pyro_meta.evaluate` on seeded episodes of the meta-test alphabets (20-way 1-shot with 5 queries per
class and 5-way 1-shot with 15; amortized, ECE with 15 bins), as the README block predicts (features averaged over
test shifts of up to 2 pixels) and without test shifts. The issue's target: a 20-way-capable model meta-trained in
under 15 minutes on 2 cores.

    python benchmarks/omniglot_readme_model.py [--steps 1500] [--episodes 600] [--smoke]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, markdown_table  # noqa: E402

import pyro_meta  # noqa: E402
from pyro_meta.apps import omniglot_training_episodes  # noqa: E402
from pyro_meta.apps.omniglot_demo import feature_memo  # noqa: E402
from pyro_meta.data import OmniglotEpisodes, load_omniglot  # noqa: E402

TARGET_MINUTES = 15.0
SETTINGS = ((20, 1, 5), (5, 1, 15))


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI): 2 steps, 4 channels, 4 episodes")
    args = parser.parse_args(argv)
    from pyro_meta.models import ProtoNet

    steps, episodes, channels = (2, 4, 4) if args.smoke else (args.steps, args.episodes, 64)
    info = machine_info()
    print(
        ("SMOKE run (tiny sizes; numbers meaningless)\n" if args.smoke else "")
        + f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} ({torch.get_num_threads()} threads), "
        f"pyro {info['pyro']}",
        flush=True,
    )
    torch.manual_seed(0)  # the initial weights (fit's seed covers the training episodes and draws)
    model = ProtoNet(image_shape=(1, 28, 28), channels=channels, test_shifts=2)
    t0 = time.perf_counter()
    pyro_meta.fit(
        model,
        omniglot_training_episodes(way=20, shots=1, queries=5, shift=2),
        num_steps=steps,
        tasks_per_batch=1,
        lr=1e-3,
        seed=0,
        progress=False,
    )
    fit_seconds = time.perf_counter() - t0
    rows = []
    for shifts in (2, 0):  # as the README block predicts; then the same weights without test shifts
        model.features.test_shifts = shifts
        with feature_memo(model, load_omniglot("test").images.reshape(-1, 28 * 28)):
            for way, shots, queries in SETTINGS:
                table = pyro_meta.evaluate(
                    {"ProtoNet (README block)": model},
                    OmniglotEpisodes("test", way=way, shots=shots, queries=queries),
                    methods=["amortized"],
                    num_tasks=episodes,
                    num_context=shots,
                    seed=0,
                    num_samples=1,
                    ece_bins=15,
                )
                rows.append(dict(table.rows[0], setting=f"{way}-way {shots}-shot", test_shifts=shifts))
    model.features.test_shifts = 2
    print(
        markdown_table(
            ["setting", "test shifts", "episodes", "accuracy % (95% CI)", "NLL", "ECE", "Brier"],
            [
                [
                    r["setting"],
                    r["test_shifts"],
                    r["num_tasks"],
                    f"{100 * r['accuracy']:.1f} +- {100 * 1.96 * r['accuracy_se']:.1f}",
                    f"{r['nll']:.3f}",
                    f"{r['ece']:.3f}",
                    f"{r['brier']:.3f}",
                ]
                for r in rows
            ],
        )
    )
    minutes = fit_seconds / 60
    verdict = "PASS" if minutes < TARGET_MINUTES else "FAIL"
    print(f"\nmeta-training ({steps} steps): {minutes:.1f} min: {verdict} (< {TARGET_MINUTES:.0f} min on this machine)")
    return {"rows": rows, "fit_seconds": fit_seconds}


if __name__ == "__main__":
    main()
