"""How firmly does "a Bayesian member is better calibrated than MAML at MAML's accuracy" hold on Omniglot?

Retrains a reference arm (default ``MAML 5-way``) and a compared arm (default ``PLATIPUS 5-way``) of
``benchmarks/fewshot_omniglot.py`` exactly as that script does (``run_arm``: same recipe, seed and seeded
meta-test episodes, so their rows equal the benchmark's on the same machine), keeps their predictive class
probabilities, and resamples the test episodes with replacement (paired: both arms on the same resampled
episodes). Per setting it prints each arm's ECE (15 bins) with its 95% bootstrap interval, the differences in
ECE and accuracy (compared - reference) with theirs, and the share of resamples in which the compared arm is
within 1 accuracy point of the reference with a lower ECE (issue 10's calibration line).

The bootstrap covers the test episodes' sampling only, not the training seed.

    python benchmarks/fewshot_calibration_bootstrap.py [--arms "MAML 5-way,PLATIPUS 5-way"] [--jobs 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fewshot_omniglot as fo  # noqa: E402

from pyro_meta.metrics import expected_calibration_error  # noqa: E402


def _accuracy(p: Dict[str, torch.Tensor], idx: torch.Tensor) -> float:
    mask = p["mask"][idx]
    hit = (p["probs"][idx].argmax(-1) == p["y"][idx]) & mask
    return float(hit.sum() / mask.sum())


def _ece(p: Dict[str, torch.Tensor], idx: torch.Tensor) -> float:
    return float(expected_calibration_error(p["probs"][idx], p["y"][idx], p["mask"][idx], bins=fo.ECE_BINS)[0])


def paired_bootstrap(
    ref: Dict[str, torch.Tensor], other: Dict[str, torch.Tensor], resamples: int, seed: int = 0
) -> Dict[str, Any]:
    """Episode-level paired bootstrap of ECE and accuracy; ``ref`` / ``other``: ``probs [T, Nt, K]``, ``y``, ``mask``.

    Returns the point values, the resampled values (``[resamples]`` tensors) and 95% intervals.
    """
    if not (torch.equal(ref["y"], other["y"]) and torch.equal(ref["mask"], other["mask"])):
        raise ValueError("the two arms were not scored on the same episodes (labels or masks differ)")
    T = ref["y"].shape[0]
    gen = torch.Generator().manual_seed(seed)
    full = torch.arange(T)
    draws = {k: [] for k in ("ece_ref", "ece_other", "acc_ref", "acc_other")}
    for _ in range(resamples):
        idx = torch.randint(T, (T,), generator=gen)
        draws["ece_ref"].append(_ece(ref, idx))
        draws["ece_other"].append(_ece(other, idx))
        draws["acc_ref"].append(_accuracy(ref, idx))
        draws["acc_other"].append(_accuracy(other, idx))
    d = {k: torch.tensor(v, dtype=torch.float64) for k, v in draws.items()}
    d_ece = d["ece_other"] - d["ece_ref"]
    d_acc = d["acc_other"] - d["acc_ref"]
    levels = torch.tensor([0.025, 0.975], dtype=torch.float64)

    def interval(t: torch.Tensor) -> List[float]:
        return torch.quantile(t, levels).tolist()

    return {
        "ece_ref": _ece(ref, full),
        "ece_other": _ece(other, full),
        "acc_ref": _accuracy(ref, full),
        "acc_other": _accuracy(other, full),
        "ece_ref_ci": interval(d["ece_ref"]),
        "ece_other_ci": interval(d["ece_other"]),
        "d_ece_ci": interval(d_ece),
        "d_acc_ci": interval(d_acc),
        "share_lower_ece": float((d_ece < 0).double().mean()),
        "share_line_holds": float(((d_acc.abs() <= 0.01) & (d_ece < 0)).double().mean()),
    }


def table(ref_name: str, other_name: str, results: Dict[str, Dict[str, Any]]) -> str:
    """The markdown table of :func:`paired_bootstrap` results per setting."""
    head = (
        f"| setting | ECE {ref_name} (95%) | ECE {other_name} (95%) | ECE difference (95%) | accuracy difference, "
        "points (95%) | resamples with a lower ECE | resamples where the line holds |\n"
        "|---|---|---|---|---|---:|---:|\n"
    )
    lines = []
    for setting, r in results.items():
        lo, hi = r["d_acc_ci"]
        lines.append(
            f"| {setting} | {r['ece_ref']:.4f} ({r['ece_ref_ci'][0]:.4f}-{r['ece_ref_ci'][1]:.4f}) "
            f"| {r['ece_other']:.4f} ({r['ece_other_ci'][0]:.4f}-{r['ece_other_ci'][1]:.4f}) "
            f"| {r['ece_other'] - r['ece_ref']:+.4f} ({r['d_ece_ci'][0]:+.4f} to {r['d_ece_ci'][1]:+.4f}) "
            f"| {100 * (r['acc_other'] - r['acc_ref']):+.2f} ({100 * lo:+.2f} to {100 * hi:+.2f}) "
            f"| {100 * r['share_lower_ece']:.0f}% | {100 * r['share_line_holds']:.0f}% |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arms", default="MAML 5-way,PLATIPUS 5-way", help="reference arm, compared arm")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny budgets (CI)")
    args = parser.parse_args(argv)
    names = args.arms.split(",")
    if len(names) != 2:
        raise ValueError(f"--arms: two comma-separated arm names, got {args.arms!r}")
    by_name = {a.name: a for a in fo.ARMS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"--arms: unknown {unknown}; the arms are {list(by_name)}")
    arms = [by_name[n] for n in names]
    if arms[0].settings() != arms[1].settings():
        raise ValueError(f"--arms: {names[0]} and {names[1]} serve different settings")
    config = fo.Config.make_smoke() if args.smoke else fo.Config()
    resamples = min(args.resamples, 20) if args.smoke else args.resamples
    t0 = time.perf_counter()
    if args.jobs > 1 and not args.smoke:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx, max_tasks_per_child=1) as pool:
            futures = [pool.submit(fo._in_bytes, fo.run_arm, arm, config, True) for arm in arms]
            done = [fo._load_result(f.result()) for f in futures]
    else:
        done = [fo.run_arm(arm, config, keep_predictions=True) for arm in arms]
    rows = [
        f"| {r['model']} | {r['setting']} | {100 * r['accuracy']:.2f} | {r['ece']:.4f} |"
        for res in done
        for r in res["rows"]
        if r["method"] == "amortized" and r["num_tasks"] == config.episodes
    ]
    results = {
        setting: paired_bootstrap(done[0]["predictions"][setting], done[1]["predictions"][setting], resamples)
        for setting in done[0]["predictions"]
    }
    text = (
        f"{config.episodes} episodes per setting, seed {config.seed}, {resamples} paired resamples of the episodes; "
        f"{(time.perf_counter() - t0) / 60:.1f} min\n\nThe arms' rows (as in the benchmark's tables):\n\n"
        "| arm | setting | accuracy % | ECE |\n|---|---|---:|---:|\n"
        + "\n".join(rows)
        + "\n\n"
        + table(names[0], names[1], results)
    )
    print(text, flush=True)
    return text


if __name__ == "__main__":
    main()
