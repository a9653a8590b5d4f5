"""Omniglot sanity figures: shipped file, episode sampling speed, pixel-space nearest-neighbour accuracy.

    python benchmarks/omniglot_baselines.py [--episodes 600] [--seed 0]

Nearest neighbour: each query gets the label of the closest support image in Euclidean (or cosine) pixel distance
(28 x 28 ink in [0, 1]); episodes from the default meta-test alphabets (``OMNIGLOT_SPLITS["test"]``,
no rotations), seeded. This is the baseline a few-shot model must beat. The same episodes are also
scored on binarised images (ink >= 0.5) to measure what the 8-bit gray levels are worth.
Timings use one torch thread and are noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import math
import time
from importlib import resources

import torch

from pyro_meta.data import OmniglotEpisodes, TaskBatch
from pyro_meta.data.omniglot import OMNIGLOT_RESOURCE, OMNIGLOT_SHA256


def nearest_neighbour_accuracy(batch: TaskBatch, binarise: bool = False, cosine: bool = False) -> torch.Tensor:
    """Per-episode accuracy ``[T]`` of 1-nearest-neighbour classification of the queries (Euclidean or cosine)."""
    cx, tx = batch.context_x, batch.target_x
    if binarise:
        cx, tx = (cx >= 0.5).float(), (tx >= 0.5).float()
    if cosine:  # Euclidean distance between unit vectors orders neighbours as cosine similarity does
        cx = torch.nn.functional.normalize(cx, dim=-1)
        tx = torch.nn.functional.normalize(tx, dim=-1)
    d = torch.cdist(tx, cx)  # [T, Nt, Nc]
    d = d.masked_fill(~batch.context_mask[:, None, :], math.inf)
    pred = batch.context_y.gather(1, d.argmin(-1))
    hit = (pred == batch.target_y).float() * batch.target_mask
    return hit.sum(-1) / batch.target_mask.sum(-1)


def mean_ci(acc: torch.Tensor) -> str:
    half = 1.96 * acc.std() / math.sqrt(acc.numel())
    return f"{100 * acc.mean():.1f}% +- {100 * half:.1f}"


def sampling_speed(episodes: OmniglotEpisodes, repeats: int, seed: int) -> tuple:
    """(us per 25-episode batch, us of the TaskBatch construction alone on the same tensors)."""
    g = torch.Generator().manual_seed(seed)
    batch = episodes.sample(25, generator=g)
    start = time.perf_counter()
    for _ in range(repeats):
        episodes.sample(25, generator=g)
    total = (time.perf_counter() - start) / repeats * 1e6
    fields = (batch.context_x, batch.context_y, batch.target_x, batch.target_y, batch.context_mask, batch.target_mask)
    start = time.perf_counter()
    for _ in range(repeats):
        TaskBatch(*fields, dict(batch.info))
    return total, (time.perf_counter() - start) / repeats * 1e6


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=50, help="timing repeats per configuration")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    data = resources.files("pyro_meta.data").joinpath(*OMNIGLOT_RESOURCE).read_bytes()
    print(f"shipped file: {len(data)} bytes, sha256 {OMNIGLOT_SHA256}")

    print("\nsampling speed (25 episodes per batch, one torch thread):")
    for label, eps in (
        ("train, 5-way 1-shot 15 queries, rotations", OmniglotEpisodes("train", way=5, shots=1, queries=15)),
        ("test, 5-way 1-shot 15 queries", OmniglotEpisodes("test", way=5, shots=1, queries=15)),
        ("test, 20-way 5-shot 15 queries", OmniglotEpisodes("test", way=20, shots=5, queries=15)),
    ):
        total, validation = sampling_speed(eps, args.repeats, args.seed)
        print(f"  {label}: {total:.0f} us per batch, of which TaskBatch validation {validation:.0f} us")

    print(
        f"\n1-nearest neighbour in pixel space, meta-test alphabets, {args.episodes} episodes, seed {args.seed} "
        "(mean +- 95% CI):"
    )
    for way, shots in ((5, 1), (5, 5), (20, 1), (20, 5)):
        eps = OmniglotEpisodes("test", way=way, shots=shots, queries=15)
        batch = eps.sample(args.episodes, generator=torch.Generator().manual_seed(args.seed))
        cells = [
            f"{metric} {kind} {mean_ci(nearest_neighbour_accuracy(batch, binarise=b, cosine=c))}"
            for metric, c in (("Euclidean", False), ("cosine", True))
            for kind, b in (("gray", False), ("binarised", True))
        ]
        print(f"  {way}-way {shots}-shot (chance {100 / way:.0f}%): " + ", ".join(cells))


if __name__ == "__main__":
    main()
