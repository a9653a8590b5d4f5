"""Non-Gaussian amortized guides: the amortization gap and the Gaussian gap against NUTS, and calibration.

One NeuralProcess architecture (z in R^2 so that posteriors can be drawn, 2 x 64 SiLU networks) on
line-or-sine (noise 0.1; 1-3 context points: ambiguous) and noisy sinusoids (noise 0.2; 1-5).

A. *Trained once per guide family*: the NP meta-trained with a Normal, a mixture (4 components) and a
   flow (3 spline layers) guide, same budget and seed; each model's amortized guide, its importance
   sampling (the guide as proposal) and NUTS over z (the exact posterior of that model) per context size.
B. *The same trained model*: the Normal-guide model's decoder frozen, a fresh guide of each family fitted
   to it under each guide objective (ELBO, IWAE, reweighted wake-sleep, sleep), same budget. Against NUTS
   on that one model: the **amortization gap** (guide NLL - NUTS NLL) and the **Gaussian gap** (the Normal
   guide's NLL - this guide's), per context size, with paired standard errors over tasks; importance ESS
   with each guide as proposal; SBC uniformity p-values of each guide (amortized), of NUTS, and of a
   deliberately overconfident guide (the Normal guide's spread x 0.5).

D. *Line or sine? (PLATIPUS's ambiguity demonstration)*: on 100 line-or-sine tasks at 1 and 2 context points,
   the fraction of each method's predictive function draws nearer a line than a sine (``_ambiguity.py``)
   against the oracle's posterior probability of a line: its calibration curve, mean absolute error, and on
   the ambiguous tasks (0.2 <= P(line) <= 0.8) how often both families show (>= 5% of the draws each).
   The MAML family (PLATIPUS; MixturePLATIPUS, its non-Gaussian member, K = 2; the Normal ABML) meta-trained there with the same budget, next to NUTS and the amortized Normal and flow
   guides over part A's NeuralProcess.

Prints markdown tables and the checks against stated targets; writes ``--json`` and ``--figure`` (one ambiguous
task's posterior over z per guide next to NUTS's draws). ``--smoke``: tiny, under two minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _ambiguity import GRID, calibration, line_fraction  # noqa: E402
from _common import machine_info, markdown_table  # noqa: E402
from maml_sinusoid import train as maml_train  # noqa: E402

import pyro_meta  # noqa: E402
from pyro_meta import InferenceMethod, InferenceResult, Option, metrics  # noqa: E402
from pyro_meta.data import LineOrSine, Sinusoid  # noqa: E402
from pyro_meta.diagnostics import sbc  # noqa: E402
from pyro_meta.models import ABML, PLATIPUS, MixturePLATIPUS, NeuralProcess  # noqa: E402
from pyro_meta.oracles import LineOrSineOracle, SinusoidOracle  # noqa: E402

GUIDES = ("normal", "mixture", "flow")
OBJECTIVES = ("elbo", "iwae", "rws", "sleep")
NP = dict(latent_dim=2, hidden=64, num_layers=2, num_components=4, flow_layers=3)
FULL = dict(
    train_steps=4000,
    guide_steps=2000,
    tasks_per_batch=16,
    lr=2e-3,
    test_tasks=100,
    num_target=50,
    draws=200,
    proposals=1000,
    nuts=dict(num_samples=200, num_warmup=200, num_chains=2, jit_compile=True),
    sbc_replicates=100,
    sbc_nuts=dict(num_warmup=150, num_chains=2),
    sbc_samples=200,
    particles=8,
    maml_steps=6000,
    figure_nuts=dict(num_samples=400, num_warmup=300, num_chains=2),
    figure_draws=800,
    ambiguity_tasks=100,
)
SMOKE = dict(
    train_steps=20,
    guide_steps=10,
    tasks_per_batch=8,
    lr=2e-3,
    test_tasks=6,
    num_target=10,
    draws=20,
    proposals=64,
    nuts=dict(num_samples=10, num_warmup=10, num_chains=1, max_tree_depth=3),
    sbc_replicates=10,
    sbc_nuts=dict(num_warmup=10, num_chains=1, max_tree_depth=3),
    sbc_samples=40,
    max_contexts=2,  # line-or-sine 1 and 2 (the checks'), noisy sinusoids 1 and 3
    objectives=("elbo", "sleep"),  # a reverse and a forward KL (the full run: all four)
    particles=2,
    maml_steps=5,
    figure_nuts=dict(num_samples=10, num_warmup=10, num_chains=1, max_tree_depth=3),
    figure_draws=20,
    ambiguity_tasks=8,
)
#: the make-bench budget (``run_all.py``, about 5 minutes on each of 2 processes): a tenth of the full run's training
#: and a third of its test tasks; its numbers show the pipeline, the full run's (``docs/runs/guide_families.md``) the
#: measurements
BENCH = dict(
    FULL,
    train_steps=600,
    guide_steps=300,
    test_tasks=40,
    num_target=30,
    draws=100,
    proposals=300,
    nuts=dict(num_samples=100, num_warmup=100, num_chains=1, jit_compile=True),
    sbc_replicates=30,
    sbc_nuts=dict(num_warmup=100, num_chains=1),
    sbc_samples=80,
    maml_steps=1000,
    ambiguity_tasks=50,
    figure_nuts=dict(num_samples=200, num_warmup=200, num_chains=1),
    figure_draws=400,
)
BUDGETS = {"full": FULL, "bench": BENCH, "smoke": SMOKE}
FAMILIES = {
    "line_or_sine": dict(
        tasks=lambda: LineOrSine(noise_std=0.1), oracle=LineOrSineOracle, contexts=(1, 2, 3), train_context=(1, 5)
    ),
    "noisy_sinusoid": dict(
        tasks=lambda: Sinusoid(noise_std=0.2), oracle=SinusoidOracle, contexts=(1, 3, 5), train_context=(1, 10)
    ),
}


class Overconfident(InferenceMethod):
    """The amortized guide's draws pulled to their per-task mean by ``shrink`` (the SBC check must fail it)."""

    name = "overconfident_guide"
    options = {"shrink": Option(0.5)}

    def run(self, problem, num_samples, shrink):
        z = problem.guide_draws(num_samples)["z"]  # [S, T, 1, D]
        z = z.mean(0, keepdim=True) + shrink * (z - z.mean(0, keepdim=True))
        return InferenceResult(samples={"z": z.squeeze(-2)[None]})


# ------------------------------------------------------------------------------------ training
def train(guide: str, tasks, cfg, fam, objective: str = "elbo", decoder_from=None, seed: int = 0):
    torch.manual_seed(seed)
    model = NeuralProcess(guide=guide, **NP)
    if decoder_from is not None:
        model.decoder.load_state_dict(decoder_from.decoder.state_dict())
        model.decoder.requires_grad_(False)  # the same trained model: only the guide is fitted
    steps = cfg["guide_steps"] if decoder_from is not None else cfg["train_steps"]
    t0 = time.perf_counter()
    pyro_meta.fit(
        model,
        tasks,
        num_steps=steps,
        tasks_per_batch=cfg["tasks_per_batch"],
        num_context=fam["train_context"],
        # joint training: the decoder learns from extra targets (q sees context + targets, 6-20 points); a guide
        # refitted to a fixed decoder sees the observed sets it will serve (1-5 or 1-10 points), none added
        num_target=(5, 15) if decoder_from is None else 0,
        lr=cfg["lr"],
        lr_decay=0.2,
        seed=seed,
        progress=False,
        guide_objective=objective,
        guide_particles=cfg["particles"],
    )
    model.decoder.requires_grad_(True)
    return model, time.perf_counter() - t0


# ------------------------------------------------------------------------------------ scoring
def per_task(post, batch):
    """Per task: NLL sums ``[T]``, point counts ``[T]``, and the predictive (for MSE, coverage, CRPS)."""
    pred = post.predict()
    lp = pred.log_prob(batch.target_y).double()
    m = batch.target_mask
    return -(lp * m).sum(-1), m.sum(-1).double(), pred


def ratio(s: torch.Tensor, n: torch.Tensor):
    """Pooled ``sum s / sum n`` and its standard error over tasks (ratio estimator)."""
    mean = s.sum() / n.sum()
    T = s.shape[0]
    se = ((s - mean * n).pow(2).sum() / (T * (T - 1))).sqrt() / n.mean() if T > 1 else torch.tensor(float("nan"))
    return float(mean), float(se)


def score(post, batch, ref_nll=None):
    s, n, pred = per_task(post, batch)
    nll, nll_se = ratio(s, n)
    row = dict(
        nll=nll,
        nll_se=nll_se,
        mse=metrics.mse(pred.mean, batch.target_y, batch.target_mask),
        coverage_90=metrics.coverage(pred.flat, batch.target_y, batch.target_mask, 0.9),
        crps=metrics.crps(pred.flat, batch.target_y, batch.target_mask),
        seconds=post.seconds,
    )
    if "ess" in post.diagnostics and post.method == "importance":
        row["median_ess"] = float(post.diagnostics["ess"].median())
    if post.method == "nuts":
        row["max_r_hat"] = float(post.diagnostics["r_hat"].max())
        row["min_ess"] = float(post.diagnostics["ess_bulk"].min())
    if ref_nll is not None:
        row["_gap"] = ratio(s - ref_nll, n)
    return row, s, n


def run_family(name: str, cfg, out: Dict, smoke: bool, parts: str = "ABD") -> None:
    """Parts ``A`` (joint training per guide), ``B`` (one model, every guide and objective; SBC; the figure) and
    ``D`` (line or sine, line-or-sine only) of the module docstring; the models of part A are trained for any."""
    fam = FAMILIES[name]
    tasks = fam["tasks"]()
    oracle = fam["oracle"](tasks) if not smoke else fam["oracle"](tasks, num_grid=64, num_fine=32)
    rows: List[Dict] = []
    models = {}
    for guide in GUIDES if ("A" in parts or "B" in parts) else ("normal", "flow"):
        models[guide], secs = train(guide, tasks, cfg, fam)
        out.setdefault("train_seconds", {})[f"{name}/joint/{guide}"] = secs
    batches = {
        nc: tasks.sample(cfg["test_tasks"], nc, cfg["num_target"], generator=torch.Generator().manual_seed(7 + nc))
        for nc in fam["contexts"][: cfg.get("max_contexts")]
    }
    nuts_nll = {}
    if "D" in parts and name == "line_or_sine":
        ambiguity_part(tasks, oracle, models, cfg, out)
    if "A" not in parts and "B" not in parts:
        return
    for nc, batch in batches.items():
        o = oracle.log_prob(batch).double()
        o_nll, _ = ratio(-(o * batch.target_mask).sum(-1), batch.target_mask.sum(-1).double())
        rows.append(
            dict(family=name, stage="oracle", guide="", objective="", method="oracle", num_context=nc, nll=o_nll)
        )
        for guide, model in models.items():
            nuts = pyro_meta.infer(
                model,
                batch,
                method="nuts",
                seed=0,
                num_samples=cfg["nuts"]["num_samples"],
                **{k: v for k, v in cfg["nuts"].items() if k != "num_samples"},
            )
            r_nuts, s_nuts, n = score(nuts, batch)
            nuts_nll[(guide, nc)] = (s_nuts, nuts)
            rows.append(
                dict(
                    family=name, stage="A joint", guide=guide, objective="elbo", method="nuts", num_context=nc, **r_nuts
                )
            )
            for method, opts in (("amortized", {}), ("importance", {"num_proposals": cfg["proposals"]})):
                post = pyro_meta.infer(model, batch, method=method, num_samples=cfg["draws"], seed=0, **opts)
                r, _, _ = score(post, batch, ref_nll=s_nuts)
                gap = r.pop("_gap")
                rows.append(
                    dict(
                        family=name,
                        stage="A joint",
                        guide=guide,
                        objective="elbo",
                        method=method,
                        num_context=nc,
                        amortization_gap=gap[0],
                        amortization_gap_se=gap[1],
                        **r,
                    )
                )
    out["rows"] = out.get("rows", []) + rows
    rows = []
    if "B" not in parts:
        return
    # B: one trained model (the Normal guide's decoder), a fresh guide of each family and objective
    base = models["normal"]
    objectives = cfg.get("objectives", OBJECTIVES) if name == "line_or_sine" else ("elbo",)
    fitted = {}
    for guide in GUIDES:
        for objective in objectives:
            model, secs = train(guide, tasks, cfg, fam, objective=objective, decoder_from=base, seed=1)
            fitted[(guide, objective)] = model
            out["train_seconds"][f"{name}/B/{guide}/{objective}"] = secs
    for nc, batch in batches.items():
        s_nuts, _ = nuts_nll[("normal", nc)]
        normal_s = None
        for (guide, objective), model in fitted.items():
            post = pyro_meta.infer(model, batch, method="amortized", num_samples=cfg["draws"], seed=0)
            r, s, n = score(post, batch, ref_nll=s_nuts)
            gap = r.pop("_gap")
            if (guide, objective) == ("normal", "elbo"):
                normal_s = s
            extra = {}
            if normal_s is not None:
                g = ratio(normal_s - s, n)
                extra = dict(gaussian_gap=g[0], gaussian_gap_se=g[1])
            imp = pyro_meta.infer(
                model,
                batch,
                method="importance",
                num_samples=cfg["draws"],
                seed=0,
                num_proposals=cfg["proposals"],
                proposal="guide",
            )
            rows.append(
                dict(
                    family=name,
                    stage="B same model",
                    guide=guide,
                    objective=objective,
                    method="amortized",
                    num_context=nc,
                    amortization_gap=gap[0],
                    amortization_gap_se=gap[1],
                    importance_median_ess=float(imp.diagnostics["ess"].median()),
                    **extra,
                    **r,
                )
            )
    out["rows"] = out.get("rows", []) + rows
    if name == "line_or_sine":
        sbc_part(tasks, fitted, base, cfg, out)
        figure_part(tasks, fitted, base, oracle, cfg, out)


def ambiguity_part(tasks, oracle, np_models, cfg, out) -> None:
    """Part D: fraction of function draws nearer a line than a sine against the oracle's ``P(line | context)``."""
    members = {
        "PLATIPUS": PLATIPUS(),
        "MixturePLATIPUS (K=2)": MixturePLATIPUS(num_components=2),
        "ABML (Normal)": ABML(),
    }
    for label, model in members.items():  # the MAML family's protocol (maml_sinusoid.py), 1-3 context points
        torch.manual_seed(0)
        secs = maml_train(model, tasks, cfg["maml_steps"], (1, 3))
        out.setdefault("train_seconds", {})[f"line_or_sine/D/{label}"] = secs
    rows, curves = [], {}
    for nc in (1, 2):
        batch = tasks.sample(cfg["ambiguity_tasks"], nc, 20, generator=torch.Generator().manual_seed(60 + nc))
        p_line = 1.0 - oracle.sine_probability(batch).double()
        dense = batch.with_targets(GRID)
        posts = {label: pyro_meta.infer(m, batch, num_samples=cfg["draws"], seed=0) for label, m in members.items()}
        posts["NeuralProcess (NUTS)"] = pyro_meta.infer(
            np_models["normal"],
            batch,
            method="nuts",
            seed=0,
            num_samples=cfg["nuts"]["num_samples"],
            **{k: v for k, v in cfg["nuts"].items() if k != "num_samples"},
        )
        for guide in ("normal", "flow"):
            posts[f"NeuralProcess ({guide} guide)"] = pyro_meta.infer(
                np_models[guide], batch, num_samples=cfg["draws"], seed=0
            )
        for label, post in posts.items():
            f, _ = post.function_draws(dense)  # [S, T, G, 1]
            frac = line_fraction(f[..., 0])
            cal = calibration(frac, p_line)
            lp = post.predict().log_prob().double()
            nll = float(-(lp * batch.target_mask).sum() / batch.target_mask.sum())
            rows.append(
                dict(
                    num_context=nc,
                    model=label,
                    mae=cal["mae"],
                    both_families=cal["both_families"],
                    num_ambiguous=cal["num_ambiguous"],
                    mean_line_fraction=float(frac.mean()),
                    nll=nll,
                )
            )
            curves[f"{label}/{nc}"] = cal["curve"]
        o = oracle.log_prob(batch).double()
        rows.append(
            dict(
                num_context=nc,
                model="oracle",
                mae=0.0,
                mean_line_fraction=float(p_line.mean()),
                nll=float(-(o * batch.target_mask).sum() / batch.target_mask.sum()),
            )
        )
    out["ambiguity"] = dict(rows=rows, curves=curves)


def sbc_part(tasks, fitted, base, cfg, out) -> None:
    res = {}
    for (guide, objective), model in fitted.items():
        r = sbc(model, tasks, method="amortized", num_replicates=cfg["sbc_replicates"], num_context=2, seed=3)
        res[f"{guide}/{objective}"] = dict(min_p=r.min_pvalue, passed=r.passed(), p=[float(p) for p in r.pvalues["z"]])
    r = sbc(
        base,
        tasks,
        method="nuts",
        num_replicates=cfg["sbc_replicates"],
        num_context=2,
        seed=3,
        num_samples=cfg["sbc_samples"],
        num_rank_draws=cfg["sbc_samples"] // 2 - 1,
        num_bins=10,
        method_options=cfg["sbc_nuts"],
    )
    res["NUTS"] = dict(min_p=r.min_pvalue, passed=r.passed(), p=[float(p) for p in r.pvalues["z"]])
    r = sbc(base, tasks, method=Overconfident(), num_replicates=cfg["sbc_replicates"], num_context=2, seed=3)
    res["overconfident (Normal x 0.5)"] = dict(
        min_p=r.min_pvalue, passed=r.passed(), p=[float(p) for p in r.pvalues["z"]]
    )
    out["sbc"] = res


def figure_part(tasks, fitted, base, oracle, cfg, out, path=None) -> None:
    batch = tasks.sample(200, 2, 20, generator=torch.Generator().manual_seed(11))
    p_sine = oracle.sine_probability(batch)
    t = int((p_sine - 0.5).abs().argmin())  # the most ambiguous task
    one = batch.select([t])
    draws = {"NUTS": pyro_meta.infer(base, one, method="nuts", seed=0, **cfg["figure_nuts"])}
    for guide in GUIDES:
        best = min((o for g, o in fitted if g == guide), key=lambda o: out_nll(out, guide, o))
        draws[f"{guide} ({best})"] = pyro_meta.infer(
            fitted[(guide, best)], one, num_samples=cfg["figure_draws"], seed=0
        )
    out["figure_task"] = dict(
        p_sine=float(p_sine[t]), draws={k: v.samples["z"].reshape(-1, 2).tolist()[:800] for k, v in draws.items()}
    )


def out_nll(out, guide, objective, nc=2):
    rows = [
        r
        for r in out["rows"]
        if r["stage"] == "B same model"
        and r["guide"] == guide
        and r["objective"] == objective
        and r["num_context"] == nc
        and r["family"] == "line_or_sine"
    ]
    return rows[0]["nll"] if rows else math.inf


def save_figure(out, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = out.get("figure_task")
    if not task:
        return
    panels = list(task["draws"].items())
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.0), sharex=True, sharey=True)
    for ax, (label, z) in zip(axes, panels):
        z = torch.tensor(z)
        ax.scatter(z[:, 0], z[:, 1], s=3, alpha=0.3, color="k" if label == "NUTS" else "C0", edgecolors="none")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("z[0]")
    axes[0].set_ylabel("z[1]")
    fig.suptitle(
        f"p(z | 2 context points) of an ambiguous line-or-sine task (oracle P(sine) = {task['p_sine']:.2f})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_ambiguity_figure(out, path: str) -> None:
    """Part D: the fraction of line draws against the oracle's P(line), one panel per context size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "ambiguity" not in out:
        return
    curves = out["ambiguity"]["curves"]
    labels = list(dict.fromkeys(k.rsplit("/", 1)[0] for k in curves))
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 4.0), sharey=True)
    for ax, nc in zip(axes, (1, 2)):
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="calibrated")
        for i, label in enumerate(labels):
            pts = curves.get(f"{label}/{nc}", [])
            if pts:  # marker area ~ tasks in the bin
                x, y = [p[0] for p in pts], [p[1] for p in pts]
                ax.plot(x, y, color=f"C{i}", lw=1, alpha=0.7, label=label)
                ax.scatter(x, y, s=[4 + 2 * p[2] for p in pts], color=f"C{i}", alpha=0.8)
        ax.set_title(f"{nc} context point{'s' if nc > 1 else ''} (marker area: tasks per bin)", fontsize=10)
        ax.set_xlabel("oracle P(line | context)")
    axes[0].set_ylabel("fraction of predictive functions nearer a line")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Line or sine: predictive family fractions against the Bayes-optimal posterior", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------ report
def checks(out) -> Dict[str, object]:
    """The stated targets (gaps, ESS ratio, SBC), measured."""
    res = {}
    rows = out.get("rows", [])

    def row(**kw):
        hits = [r for r in rows if all(r.get(k) == v for k, v in kw.items())]
        return hits[0] if hits else None

    nuts2 = row(family="line_or_sine", stage="A joint", guide="normal", method="nuts", num_context=2)
    normal2 = row(family="line_or_sine", stage="B same model", guide="normal", objective="elbo", num_context=2)
    if nuts2 and normal2:
        gap = normal2["nll"] - nuts2["nll"]
        cands = [
            r
            for r in rows
            if r["family"] == "line_or_sine"
            and r["stage"] == "B same model"
            and r["guide"] in ("mixture", "flow")
            and r["num_context"] == 2
        ]
        best = min(cands, key=lambda r: r["nll"])
        closed = (normal2["nll"] - best["nll"]) / gap if gap > 0 else float("nan")
        res["closes_half_of_gap"] = dict(
            normal_minus_nuts=gap,
            best=f"{best['guide']}/{best['objective']}",
            fraction_closed=closed,
            paired_diff=best.get("gaussian_gap"),
            paired_se=best.get("gaussian_gap_se"),
            coverage=best["coverage_90"],
            nuts_coverage=nuts2["coverage_90"],
            passed=bool(
                closed >= 0.5
                and best.get("gaussian_gap", 0) > 2 * best.get("gaussian_gap_se", math.inf)
                and abs(best["coverage_90"] - nuts2["coverage_90"]) <= 0.05
            ),
        )
    ess = {}
    for nc in (1, 2):
        n = row(family="line_or_sine", stage="B same model", guide="normal", objective="elbo", num_context=nc)
        f = [
            r
            for r in rows
            if r["family"] == "line_or_sine"
            and r["stage"] == "B same model"
            and r["guide"] == "flow"
            and r["num_context"] == nc
        ]
        if n and f:
            bestf = max(f, key=lambda r: r["importance_median_ess"])
            ess[nc] = dict(
                normal=n["importance_median_ess"],
                flow=bestf["importance_median_ess"],
                objective=bestf["objective"],
                ratio=bestf["importance_median_ess"] / n["importance_median_ess"],
            )
    res["importance_ess"] = dict(per_context=ess, passed=bool(ess) and all(v["ratio"] >= 3 for v in ess.values()))
    if "ambiguity" in out:
        amb = {}
        for nc in (1, 2):
            get = {r["model"]: r for r in out["ambiguity"]["rows"] if r["num_context"] == nc}
            best = max(("PLATIPUS", "MixturePLATIPUS (K=2)"), key=lambda k: get[k]["both_families"])
            amb[nc] = dict(
                member=best,
                both_families=get[best]["both_families"],
                mae=get[best]["mae"],
                abml_mae=get["ABML (Normal)"]["mae"],
                nuts_mae=get["NeuralProcess (NUTS)"]["mae"],
            )
        # "gives predictive functions of both families where the oracle's P(line) is in [0.2, 0.8]": on most
        # ambiguous tasks (>= 5% of the draws of each family), at both context sizes
        res["hybrid_shows_both_families"] = dict(
            per_context=amb, passed=all(v["both_families"] >= 0.5 for v in amb.values())
        )
    if "sbc" in out:
        res["sbc"] = dict(
            nuts_passes=out["sbc"]["NUTS"]["passed"],
            overconfident_fails=not out["sbc"]["overconfident (Normal x 0.5)"]["passed"],
        )
    return res


def report(out) -> str:
    cols = [
        "family",
        "stage",
        "guide",
        "objective",
        "method",
        "num_context",
        "nll",
        "nll_se",
        "amortization_gap",
        "amortization_gap_se",
        "gaussian_gap",
        "gaussian_gap_se",
        "mse",
        "coverage_90",
        "crps",
        "median_ess",
        "importance_median_ess",
        "max_r_hat",
        "seconds",
    ]
    fmt = lambda v: "" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    text = markdown_table(cols, [[fmt(r.get(c)) for c in cols] for r in out["rows"]]) if out.get("rows") else ""
    if "ambiguity" in out:
        acols = ["num_context", "model", "mae", "both_families", "num_ambiguous", "mean_line_fraction", "nll"]
        text += "\n" + markdown_table(
            [
                "context points",
                "model",
                "MAE |line fraction - P(line)|",
                "both families shown (ambiguous tasks)",
                "ambiguous tasks",
                "mean line fraction",
                "NLL / point",
            ],
            [[fmt(r.get(c)) for c in acols] for r in out["ambiguity"]["rows"]],
        )
    if "sbc" in out:
        text += "\n" + markdown_table(
            ["guide (SBC, 2 context points)", "min p", "passes (Bonferroni, 0.01)"],
            [[k, f"{v['min_p']:.3g}", v["passed"]] for k, v in out["sbc"].items()],
        )
    return text


def merge(outs: List[Dict]) -> Dict:
    """One result from runs of different families or parts (``--merge``): rows concatenated, the rest united."""
    merged: Dict = {"rows": [], "train_seconds": {}, "seconds": 0.0}
    for o in outs:
        merged["rows"] += o.get("rows", [])
        merged["train_seconds"].update(o.get("train_seconds", {}))
        merged["seconds"] += o.get("seconds", 0.0)
        for key in ("machine", "config", "np", "budget", "sbc", "figure_task", "ambiguity"):
            if key in o:
                merged.setdefault(key, o[key])
    return merged


def checks_table(res: Dict) -> str:
    """The stated targets as a markdown table: check, target, measured, pass/FAIL."""
    rows = []
    if "closes_half_of_gap" in res:
        c = res["closes_half_of_gap"]
        rows.append(
            [
                "line-or-sine, 2 context: best flow/mixture guide closes >= half the Normal guide's NLL gap to NUTS "
                "(same model), paired difference > 2 SE, 90% coverage within 0.05 of NUTS's",
                ">= 50%, > 2 SE, <= 0.05",
                f"{c['best']}: {100 * c['fraction_closed']:.0f}% of {c['normal_minus_nuts']:.3f} nats, "
                f"{c['paired_diff']:.3f} +- {c['paired_se']:.3f}; coverage {c['coverage']:.3f} vs NUTS "
                f"{c['nuts_coverage']:.3f}",
                "pass" if c["passed"] else "FAIL",
            ]
        )
    if res.get("importance_ess", {}).get("per_context"):
        e = res["importance_ess"]
        rows.append(
            [
                "importance sampling, flow guide as proposal: median per-task ESS / the Normal guide's, 1-2 context",
                ">= 3x",
                "; ".join(
                    f"{nc} context: {v['flow']:.1f} ({v['objective']}) / {v['normal']:.1f} = {v['ratio']:.2f}x"
                    for nc, v in e["per_context"].items()
                ),
                "pass" if e["passed"] else "FAIL",
            ]
        )
    if "sbc" in res:
        rows.append(
            [
                "SBC (Bonferroni, p < 0.01 fails): NUTS on the trained NeuralProcess passes, the overconfident "
                "control fails",
                "pass / fail",
                f"NUTS {'passes' if res['sbc']['nuts_passes'] else 'FAILS'}, control "
                f"{'fails' if res['sbc']['overconfident_fails'] else 'PASSES'}",
                "pass" if res["sbc"]["nuts_passes"] and res["sbc"]["overconfident_fails"] else "FAIL",
            ]
        )
    if "hybrid_shows_both_families" in res:
        h = res["hybrid_shows_both_families"]
        rows.append(
            [
                "MAML-family hybrid shows both families where 0.2 <= P(line) <= 0.8 (>= 5% of draws each, on most "
                "ambiguous tasks), 1 and 2 context; its calibration MAE next to ABML's and NUTS's (NeuralProcess)",
                ">= 50% of ambiguous tasks",
                "; ".join(
                    f"{nc} context: {v['member']} {100 * v['both_families']:.0f}%, MAE {v['mae']:.3f} (ABML "
                    f"{v['abml_mae']:.3f}, NUTS {v['nuts_mae']:.3f})"
                    for nc, v in h["per_context"].items()
                ),
                "pass" if h["passed"] else "FAIL",
            ]
        )
    return markdown_table(["check", "target", "measured", "result"], rows)


def markdown(out: Dict) -> str:
    """The whole report: budget, training seconds, the tables, the checks."""
    cfg = out.get("config", {})
    head = (
        f"Budget `{out.get('budget', 'as configured')}`: NeuralProcess {NP}, {cfg.get('train_steps')} training steps per guide "
        f"family, {cfg.get('guide_steps')} guide steps per refit, {cfg.get('tasks_per_batch')} tasks per step, Adam "
        f"(lr {cfg.get('lr')}, decayed x0.2), seed 0 (refits seed 1); {cfg.get('test_tasks')} test tasks per context "
        f"size (seed 7 + context size), {cfg.get('draws')} draws, NUTS {cfg.get('nuts')}. Wall time "
        f"{out.get('seconds', 0) / 60:.1f} min (summed over processes).\n\n"
        "Training seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in out.get("train_seconds", {}).items()) + "\n\n"
    )
    return head + report(out) + "\n### Checks against stated targets\n\n" + checks_table(out["checks"]) + "\n"


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="full")
    parser.add_argument("--smoke", action="store_true", help="the same as --budget smoke")
    parser.add_argument("--json", default="")
    parser.add_argument("--markdown", default="", help="write the report and the checks as markdown")
    parser.add_argument("--figure", default="")
    parser.add_argument(
        "--families",
        default="line_or_sine,noisy_sinusoid",
        help="comma-separated; a family may name its own parts, e.g. 'noisy_sinusoid,line_or_sine:D'",
    )
    parser.add_argument("--parts", default="ABD", help="any of A, B, D (module docstring); B implies A's scoring")
    parser.add_argument("--ambiguity-figure", default="", help="part D's calibration curves")
    parser.add_argument("--merge", nargs="+", default=[], help="merge these --json outputs instead of running")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    budget = "smoke" if args.smoke else args.budget
    cfg = BUDGETS[budget]
    t0 = time.perf_counter()
    if args.merge:
        out = merge([json.loads(Path(p).read_text()) for p in args.merge])
    else:
        out = {"machine": machine_info(), "config": dict(cfg), "np": NP, "budget": budget}
        for token in args.families.split(","):
            name, _, parts = token.partition(":")
            run_family(name, cfg, out, budget == "smoke", parts or args.parts)
        out["seconds"] = time.perf_counter() - t0
    out["checks"] = checks(out)
    print(report(out))
    print(json.dumps(out["checks"], indent=1))
    print(f"total {out['seconds']:.0f}s")
    if args.markdown:
        Path(args.markdown).write_text(markdown(out))
    if args.figure:
        save_figure(out, args.figure)
    if args.ambiguity_figure:
        save_ambiguity_figure(out, args.ambiguity_figure)
    if args.json:
        Path(args.json).write_text(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
