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

from _common import machine_info, markdown_table  # noqa: E402

import pyro_meta  # noqa: E402
from pyro_meta import InferenceMethod, InferenceResult, Option, metrics  # noqa: E402
from pyro_meta.data import LineOrSine, Sinusoid  # noqa: E402
from pyro_meta.diagnostics import sbc  # noqa: E402
from pyro_meta.models import NeuralProcess  # noqa: E402
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
    particles=8,
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
    particles=2,
)
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
        num_target=(5, 15),
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


def run_family(name: str, cfg, out: Dict, smoke: bool) -> None:
    fam = FAMILIES[name]
    tasks = fam["tasks"]()
    oracle = fam["oracle"](tasks) if not smoke else fam["oracle"](tasks, num_grid=64, num_fine=32)
    rows: List[Dict] = []
    models = {}
    for guide in GUIDES:
        models[guide], secs = train(guide, tasks, cfg, fam)
        out.setdefault("train_seconds", {})[f"{name}/joint/{guide}"] = secs
    batches = {
        nc: tasks.sample(cfg["test_tasks"], nc, cfg["num_target"], generator=torch.Generator().manual_seed(7 + nc))
        for nc in fam["contexts"]
    }
    nuts_nll = {}
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
    # B: one trained model (the Normal guide's decoder), a fresh guide of each family and objective
    base = models["normal"]
    objectives = OBJECTIVES if name == "line_or_sine" else ("elbo",)
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
        num_samples=200 if cfg is FULL else 20,
        num_rank_draws=99 if cfg is FULL else 19,
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
    draws = {"NUTS": pyro_meta.infer(base, one, method="nuts", seed=0, num_samples=400, num_warmup=300, num_chains=2)}
    for guide in GUIDES:
        best = min((o for g, o in fitted if g == guide), key=lambda o: out_nll(out, guide, o))
        draws[f"{guide} ({best})"] = pyro_meta.infer(fitted[(guide, best)], one, num_samples=800, seed=0)
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


# ------------------------------------------------------------------------------------ report
def checks(out) -> Dict[str, object]:
    """The stated targets (gaps, ESS ratio, SBC), measured."""
    res = {}
    rows = out["rows"]

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
    text = markdown_table(cols, [[fmt(r.get(c)) for c in cols] for r in out["rows"]])
    if "sbc" in out:
        text += "\n" + markdown_table(
            ["guide (SBC, 2 context points)", "min p", "passes (Bonferroni, 0.01)"],
            [[k, f"{v['min_p']:.3g}", v["passed"]] for k, v in out["sbc"].items()],
        )
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json", default="")
    parser.add_argument("--figure", default="")
    parser.add_argument("--families", default="line_or_sine,noisy_sinusoid")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    cfg = SMOKE if args.smoke else FULL
    t0 = time.perf_counter()
    out: Dict = {"machine": machine_info(), "config": {k: v for k, v in cfg.items()}, "np": NP}
    for name in args.families.split(","):
        run_family(name, cfg, out, args.smoke)
    out["checks"] = checks(out)
    out["seconds"] = time.perf_counter() - t0
    print(report(out))
    print(json.dumps(out["checks"], indent=1))
    print(f"total {out['seconds']:.0f}s")
    if args.figure:
        save_figure(out, args.figure)
    if args.json:
        Path(args.json).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
