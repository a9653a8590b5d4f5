"""Accuracy and calibration of every zoo model x inference method against the task family's oracle.

For each task family: meta-train every zoo model present in ``pyro_meta.models`` (a fixed number
of steps, seeded), then ``pyro_meta.evaluate`` all of them on the same seeded evaluation tasks,
with the Bayes-optimal oracle as a row where one exists. Writes ``<out>/accuracy_<family>.json``
(settings, training times, table rows) and ``<out>/figures/accuracy_<family>.png``.

Methods (sizes chosen to fit the 60-minute budget of ``make bench`` on 2 cores):

* ``amortized`` -- every model, every context size;
* ``svi`` and ``importance`` -- the models with small task latents (``NeuralProcess`` z in R^8,
  ``BayesianLinear`` w in R^32), every context size;
* ``svi`` for the gradient-based models (phi in R^1761) at the family's reference context size
  of the noisy sinusoid and line-or-sine (importance sampling degenerates there: ESS 1);
* ``nuts`` -- ``NeuralProcess`` and ``BayesianLinear`` at the reference context size of the
  noisy sinusoid, RBF GP curves and line-or-sine, 2 chains x (100 warmup + 100 draws), JIT, tree
  depth at most 7 (NUTS over 1761 weights x 50 tasks is out of budget).

    python benchmarks/accuracy.py [--families sinusoid,noisy_sinusoid,...] [--out DIR] [--smoke]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyro_meta  # noqa: E402
import pyro_meta.models as zoo  # noqa: E402
from pyro_meta.data import GPCurves, LineOrSine, Sinusoid  # noqa: E402
from pyro_meta.data.features import FourierFeatures  # noqa: E402
from pyro_meta.evaluation import EvaluationTable, evaluate  # noqa: E402
from pyro_meta.oracles import GPOracle, LineOrSineOracle, SinusoidOracle  # noqa: E402

SEED = 0
GRADIENT_BASED = ("MAML", "ABML", "BMAML", "PLATIPUS")
SMALL_LATENT = ("NeuralProcess", "BayesianLinear")


@dataclasses.dataclass
class Family:
    """A task family: how to train on it and how to evaluate on it."""

    name: str
    title: str
    protocol: str
    tasks: Callable[[], Any]
    oracle: Optional[Callable[[Any], Any]]
    train_context: Any
    train_target: Any
    eval_context: List[int]
    num_target: int
    metric: str  # the headline metric: "mse" (MAML protocol) or "nll"
    reference_context: int
    nuts: bool = False
    svi_gradient_based: bool = False
    fourier_lengthscale: float = 1.0


FAMILIES: Dict[str, Family] = {
    f.name: f
    for f in [
        Family(
            "sinusoid",
            "Sinusoid (MAML protocol, noiseless)",
            "A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5], no noise; MSE of the predictive mean on 50 query points",
            lambda: Sinusoid(),
            None,
            (5, 20),
            10,
            [5, 10, 20],
            50,
            "mse",
            10,
        ),
        Family(
            "noisy_sinusoid",
            "Noisy sinusoid (noise sd 0.3)",
            "the MAML sinusoid with N(0, 0.3^2) observation noise; Bayes-optimal oracle by numerical integration",
            lambda: Sinusoid(noise_std=0.3),
            lambda t: SinusoidOracle(t),
            (2, 10),
            10,
            [2, 5, 10],
            50,
            "nll",
            5,
            nuts=True,
            svi_gradient_based=True,
        ),
        Family(
            "gp_rbf",
            "GP curves, RBF kernel",
            "NP protocol: x ~ U[-2, 2], length scale ~ U[0.1, 0.6], signal scale ~ U[0.1, 1], noise 0.02, "
            "targets include the context; exact GP oracle with the true hyperparameters",
            lambda: GPCurves("rbf"),
            lambda t: GPOracle(),
            (3, 49),
            (2, 49),
            [5, 10, 20],
            50,
            "nll",
            10,
            nuts=True,
            fourier_lengthscale=0.3,
        ),
        Family(
            "gp_matern52",
            "GP curves, Matern-5/2 kernel",
            "as RBF with the Matern-5/2 kernel",
            lambda: GPCurves("matern52"),
            lambda t: GPOracle(),
            (3, 49),
            (2, 49),
            [5, 10, 20],
            50,
            "nll",
            10,
            fourier_lengthscale=0.3,
        ),
        Family(
            "gp_periodic",
            "GP curves, periodic kernel",
            "as RBF with the periodic kernel (length scale ~ U[0.5, 1], period ~ U[1, 2])",
            lambda: GPCurves("periodic"),
            lambda t: GPOracle(),
            (3, 49),
            (2, 49),
            [5, 10, 20],
            50,
            "nll",
            10,
            fourier_lengthscale=0.3,
        ),
        Family(
            "line_or_sine",
            "Line or sine (PLATIPUS)",
            "sinusoid or line (slope, intercept ~ U[-3, 3]) with prob. 1/2, noise sd 0.1; oracle integrates both "
            "hypotheses",
            lambda: LineOrSine(),
            lambda t: LineOrSineOracle(t),
            (1, 5),
            10,
            [1, 2, 5],
            50,
            "nll",
            2,
            nuts=True,
            svi_gradient_based=True,
        ),
    ]
}

#: meta-training per model: (steps, learning rate, lr_decay over the run); 16 tasks per step for everyone
TRAINING = {
    "NeuralProcess": (3000, 3e-3, 0.1),
    "BayesianLinear": (600, 1e-2, 0.1),
    "MAML": (3000, 1e-3, None),
    "ABML": (3000, 1e-3, None),
    "BMAML": (3000, 1e-3, None),
    "PLATIPUS": (3000, 1e-3, None),
}
TASKS_PER_BATCH = 16
NUM_TASKS = 50
NUM_SAMPLES = 200
OPTIONS = {
    "svi": {"num_steps": 200},
    "importance": {"num_proposals": 2000},
    "nuts": {"num_warmup": 100, "num_samples": 100, "num_chains": 2, "jit_compile": True, "max_tree_depth": 7},
}
SVI_GRADIENT_BASED = {"num_steps": 100}
SMOKE = dict(
    steps=5,
    num_tasks=4,
    num_samples=20,
    num_target=10,
    options={
        "svi": {"num_steps": 3},
        "importance": {"num_proposals": 50},
        "nuts": {"num_warmup": 5, "num_chains": 1, "jit_compile": False},
    },
)


def make_models(family: Family) -> Dict[str, Any]:
    """The zoo models present, built for 1-D regression; absent ones are skipped with a note."""
    builders = {
        # the demo's network (3 x 128 SiLU, z in R^8): on noisy sinusoids, 3000 steps, it reached amortized
        # MSE 0.30 at 5 context points where the 2 x 64, z in R^16 defaults stayed at 1.81 (measured)
        "NeuralProcess": lambda: zoo.NeuralProcess(x_dim=1, y_dim=1, latent_dim=8, hidden=128, num_layers=3),
        "BayesianLinear": lambda: zoo.BayesianLinear(
            features=FourierFeatures(num_features=32, lengthscale=family.fourier_lengthscale), learn_noise=True
        ),
        # one adaptation step at test time as at training, like the other three: with ten, MAML's
        # test-time adaptation diverged to non-finite values on noisy sinusoids after 3000 steps
        # (measured; the ten-step MAML protocol is benchmarks/maml_sinusoid.py, part A)
        "MAML": lambda: zoo.MAML(),
        "ABML": lambda: zoo.ABML(),
        "BMAML": lambda: zoo.BMAML(),
        "PLATIPUS": lambda: zoo.PLATIPUS(),
    }
    models = {}
    for name, build in builders.items():
        if not hasattr(zoo, name):
            print(f"note: pyro_meta.models has no {name}; skipped")
            continue
        torch.manual_seed(SEED)
        models[name] = build()
    return models


def methods_for(name: str, family: Family) -> Dict[int, List[str]]:
    """Inference methods per context size for one model."""
    out: Dict[int, List[str]] = {}
    for nc in family.eval_context:
        ms = ["amortized"]
        if name in SMALL_LATENT:
            ms += ["svi", "importance"]
            if family.nuts and nc == family.reference_context:
                ms.append("nuts")
        elif family.svi_gradient_based and nc == family.reference_context:
            ms.append("svi")
        out[nc] = ms
    return out


def run_family(family: Family, smoke: bool = False, progress: bool = False) -> Dict[str, Any]:
    """Train every model on the family, evaluate all of them on the same tasks; rows and timings."""
    tasks = family.tasks()
    oracle = family.oracle(tasks) if family.oracle is not None else None
    models = make_models(family)
    num_tasks = SMOKE["num_tasks"] if smoke else NUM_TASKS
    num_samples = SMOKE["num_samples"] if smoke else NUM_SAMPLES
    num_target = SMOKE["num_target"] if smoke else family.num_target
    options = SMOKE["options"] if smoke else OPTIONS
    train_seconds, eval_seconds, losses = {}, {}, {}
    for name, model in models.items():
        steps, lr, decay = TRAINING[name]
        steps = SMOKE["steps"] if smoke else steps
        t0 = time.perf_counter()
        result = pyro_meta.fit(
            model,
            tasks,
            num_steps=steps,
            tasks_per_batch=TASKS_PER_BATCH,
            num_context=family.train_context,
            num_target=family.train_target,
            lr=lr,
            lr_decay=decay,
            seed=SEED,
            progress=progress,
        )
        train_seconds[name] = time.perf_counter() - t0
        losses[name] = result.final_loss
        print(
            f"[{family.name}] trained {name}: {steps} steps in {train_seconds[name]:.0f}s "
            f"(final loss {result.final_loss:.3f})",
            flush=True,
        )

    table = EvaluationTable()
    for name, model in models.items():
        t0 = time.perf_counter()
        per_size = methods_for(name, family)
        groups: Dict[tuple, List[int]] = {}
        for nc, ms in per_size.items():
            groups.setdefault(tuple(ms), []).append(nc)
        for ms, ncs in groups.items():
            opts = {m: dict(options.get(m, {})) for m in ms if m in options}
            if name in GRADIENT_BASED and "svi" in opts and not smoke:
                opts["svi"] = dict(SVI_GRADIENT_BASED)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # low-ESS warnings: the table reports min_ess / r_hat
                table = table + evaluate(
                    {name: model},
                    tasks,
                    methods=list(ms),
                    num_tasks=num_tasks,
                    num_context=ncs,
                    num_target=num_target,
                    seed=SEED,
                    method_options=opts,
                    oracle=oracle,
                    num_samples=num_samples,
                )
        eval_seconds[name] = time.perf_counter() - t0
        print(f"[{family.name}] evaluated {name} in {eval_seconds[name]:.0f}s", flush=True)
    rows = _tidy(table.rows, list(models))
    identical = repeat_check(models, family, tasks, oracle, rows, num_tasks, num_target, num_samples, options)
    out = {
        "family": dataclasses.asdict(family) | {"tasks": repr(tasks), "oracle": repr(oracle) if oracle else None},
        "rows": rows,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "final_loss": losses,
        "training": {k: (SMOKE["steps"] if smoke else v[0], *v[1:]) for k, v in TRAINING.items() if k in models},
        "num_tasks": num_tasks,
        "num_samples": num_samples,
        "num_target": num_target,
        "seed": SEED,
        "options": options,
        "svi_gradient_based": SVI_GRADIENT_BASED,
        "smoke": smoke,
        "identical_twice": identical,
    }
    table = EvaluationTable(rows)
    out["beating_oracle"] = {m: table.beating_oracle(m).rows for m in ("nll", "mse")} if oracle else {}
    return out


def repeat_check(models, family, tasks, oracle, rows, num_tasks, num_target, num_samples, options) -> Optional[bool]:
    """Evaluate the first small-latent model again (amortized, svi, importance at the reference size):
    the same numbers as in ``rows``, ``seconds`` aside?"""
    name = next((n for n in SMALL_LATENT if n in models), None)
    if name is None:
        return None
    ms = ["amortized", "svi", "importance"]
    nc = family.reference_context
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = evaluate(
            {name: models[name]},
            tasks,
            methods=ms,
            num_tasks=num_tasks,
            num_context=nc,
            num_target=num_target,
            seed=SEED,
            method_options={m: options[m] for m in ms if m in options},
            oracle=oracle,
            num_samples=num_samples,
        )

    def strip(r):
        return {k: v for k, v in r.items() if k != "seconds"}

    first = [
        strip(r)
        for r in rows
        if r["num_context"] == nc and (r["model"] == name and r["method"] in ms or r["method"] == "oracle")
    ]
    return first == [strip(r) for r in again.rows]


def _tidy(rows: List[Dict[str, Any]], order: Sequence[str]) -> List[Dict[str, Any]]:
    """One oracle row per context size (the evaluations each scored it identically), sorted."""
    methods = ["oracle", "amortized", "svi", "importance", "nuts", "hmc", "prior"]
    seen, out = set(), []
    for r in rows:
        if r["method"] == "oracle":
            if r["num_context"] in seen:
                continue
            seen.add(r["num_context"])
        out.append(r)
    rank = {n: i for i, n in enumerate(order)}
    return sorted(
        out,
        key=lambda r: (r["num_context"], r["method"] != "oracle", rank.get(r["model"], -1), methods.index(r["method"])),
    )


# ---------------------------------------------------------------------------------- figures
def plot_family(result: Dict[str, Any], path: Path) -> None:
    """Headline metric vs context size: models (amortized, lines), other methods (markers), oracle (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fam = result["family"]
    metric = fam["metric"]
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    markers = {"svi": "s", "importance": "^", "nuts": "*"}
    names = [n for n in dict.fromkeys(r["model"] for r in rows if r["method"] != "oracle")]
    for i, name in enumerate(names):
        color = f"C{i}"
        amort = [r for r in rows if r["model"] == name and r["method"] == "amortized"]
        ax.errorbar(
            [r["num_context"] for r in amort],
            [r[metric] for r in amort],
            yerr=[r[f"{metric}_se"] for r in amort],
            color=color,
            marker="o",
            capsize=3,
            label=name,
        )
        for method, mk in markers.items():
            pts = [r for r in rows if r["model"] == name and r["method"] == method]
            if pts:
                ax.plot(
                    [r["num_context"] for r in pts],
                    [r[metric] for r in pts],
                    linestyle="none",
                    marker=mk,
                    color=color,
                    markersize=8 if mk == "*" else 6,
                    alpha=0.8,
                )
    orc = [r for r in rows if r["method"] == "oracle"]
    if orc:
        ax.plot([r["num_context"] for r in orc], [r[metric] for r in orc], "k--", marker="x", label="oracle")
    if metric == "mse":
        ax.set_yscale("log")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(fam["eval_context"], [str(k) for k in fam["eval_context"]])
    ax.set_xlabel("context points")
    ax.set_ylabel({"nll": "NLL per target point", "mse": "MSE"}[metric])
    ax.set_title(fam["title"] + "  (o amortized, s svi, ^ importance, * nuts)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated subset of {list(FAMILIES)}")
    p.add_argument("--out", default="docs/benchmarks_out", help="directory for the JSON results and figures")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (checks that everything runs)")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    names = [f for f in args.families.split(",") if f]
    unknown = [f for f in names if f not in FAMILIES]
    if unknown:
        raise SystemExit(f"unknown families {unknown}; choose from {list(FAMILIES)}")
    out = Path(args.out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    results = {}
    for name in names:
        t0 = time.perf_counter()
        res = run_family(FAMILIES[name], smoke=args.smoke, progress=args.progress)
        res["seconds"] = time.perf_counter() - t0
        plot_family(res, out / "figures" / f"accuracy_{name}.png")
        (out / f"accuracy_{name}.json").write_text(json.dumps(res, indent=1, default=str))
        table = EvaluationTable(res["rows"])
        cols = [
            "model",
            "method",
            "num_context",
            res["family"]["metric"],
            f"{res['family']['metric']}_se",
            "nll",
            "nll_gap",
            "nll_gap_se",
            "crps",
            "coverage_90",
            "seconds",
        ]
        print(table.to_markdown([c for c in dict.fromkeys(cols) if c in table.columns]), flush=True)
        print(f"[{name}] {res['seconds']:.0f}s", flush=True)
        results[name] = res
    return results


if __name__ == "__main__":
    main()
