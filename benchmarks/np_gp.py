"""The Neural Process family on GP curves: CNP, ANP (latent and conditional) and TNP-D next to the latent NP
and the exact GP oracle, on two protocols, with the same training budget for every model.

A. **DeepMind protocol** (ours, as ``docs/benchmarks.md``): ``GPCurves("rbf")``, training context U{3..49},
   extra targets U{2..49}, targets include the context. Evaluation on ``DM_TASKS`` seeded tasks per context
   size (5, 10, 20; the tasks ``evaluate(seed=0)`` draws), 50 extra targets, scored over all targets (context
   included: the docs' numbers) and over the 50 fresh targets alone.
B. **BNP/TNP protocol** (``BNPGPCurves``: Lee et al. 2020; Nguyen & Grover 2022): trained on RBF curves (as their
   code), evaluated on a fixed seeded set of ``BNP_TASKS`` tasks of each kernel (RBF, Matern-5/2, periodic):
   context and target log-likelihood per point.
C. **Latent path of the attentive model** (the latent ANP of A): amortized guide, importance sampling, NUTS
   (r_hat, ESS) and prior draws over its task latent on the same tasks; ``KL(q(z | C) || p(z))`` and the NLL
   difference between prior and posterior draws (does the decoder use ``z``?).
D. **Figure**: predictive bands of every model of A on three tasks beside the oracle's.

Every model: ``STEPS`` Adam steps of 16 tasks (learning rate per model, decayed x0.1 over the run), seed 0.
Models are trained and evaluated in ``--jobs`` worker processes (one torch thread each); the main process
scores the oracle, draws the figure and writes ``<out>/np_family.md``, ``<out>/np_family.json`` and
``<out>/figures/np_family_bands.png``.

    python benchmarks/np_gp.py [--out docs] [--jobs 2] [--smoke] [--device cpu] [--steps 3000]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import machine_info, markdown_table  # noqa: E402

import pyro_meta  # noqa: E402
from pyro_meta.data import BNPGPCurves, GPCurves, TaskBatch  # noqa: E402
from pyro_meta.evaluation import EvaluationTable, _ratio_se  # noqa: E402
from pyro_meta.models import AttentiveNP, ConditionalNP, NeuralProcess, TransformerNP  # noqa: E402
from pyro_meta.oracles import GPOracle  # noqa: E402

SEED = 0
STEPS = 3000
TASKS_PER_BATCH = 16
LR_DECAY = 0.1
DM_CONTEXT = [5, 10, 20]
DM_TARGET = 50
DM_TASKS = 200
BNP_TASKS = 1024
KERNELS = ["rbf", "matern52", "periodic"]
NUM_SAMPLES = 50  # posterior draws per task for the latent models' predictive (the TNP code's eval: 50)
CHUNK = 64  # tasks per inference call (bounds the memory of draws x tasks x points x width)
LATENT_TASKS = 20
LATENT_CONTEXT = 10
LATENT_OPTIONS = {
    "amortized": {},
    "importance": {"num_proposals": 2000},
    "nuts": {"num_warmup": 100, "num_samples": 100, "num_chains": 2, "jit_compile": True, "max_tree_depth": 7},
    "prior": {},
}
SMOKE = dict(
    steps=2,
    dm_tasks=6,
    bnp_tasks=8,
    latent_tasks=2,
    num_samples=8,
    latent_options={
        "amortized": {},
        "importance": {"num_proposals": 20},
        "nuts": {"num_warmup": 4, "num_samples": 4, "num_chains": 1},
        "prior": {},
    },
)


@dataclasses.dataclass(frozen=True)
class Spec:
    """A model of the benchmark: how to build it, its learning rate, a cost estimate (CPU seconds per 3000 steps
    of the DeepMind protocol, to balance the workers)."""

    build: Any
    lr: float
    cost: float
    latent: bool
    arch: str


MODELS: Dict[str, Spec] = {
    # the NeuralProcess of docs/benchmarks.md (3 x 128 SiLU, z in R^8, lr 3e-3)
    "NeuralProcess": Spec(
        lambda: NeuralProcess(latent_dim=8, hidden=128, num_layers=3),
        3e-3,
        100,
        True,
        "latent NP, mean-pooled encoder, 3 x 128 SiLU, z in R^8, ELBO",
    ),
    "ConditionalNP": Spec(
        lambda: ConditionalNP(hidden=128, num_layers=3), 3e-3, 60, False, "mean-pooled encoder and decoder 3 x 128 SiLU"
    ),
    "AttentiveNP": Spec(
        lambda: AttentiveNP(hidden=64, num_self_attention=1, latent_dim=8),
        2e-3,
        400,
        True,
        "2 x 64 ReLU MLPs, 4 heads, one self-attention block per path, z in R^8, ELBO",
    ),
    "AttentiveNP (conditional)": Spec(
        lambda: AttentiveNP(hidden=64, num_self_attention=1, latent=False),
        2e-3,
        110,
        False,
        "the same without the latent path",
    ),
    # TNP-D as published: 6 layers, d_model 64, 4 heads, feed-forward 128, 4-layer embedding
    "TransformerNP": Spec(
        lambda: TransformerNP(),
        1e-3,
        480,
        False,
        "TNP-D: 6 post-norm layers, d 64, 4 heads, feed-forward 128, 4-layer embedding",
    ),
}
NEW_MODELS = ["ConditionalNP", "AttentiveNP", "AttentiveNP (conditional)", "TransformerNP"]
PROTOCOLS = {"dm": "DeepMind protocol (RBF)", "bnp": "BNP/TNP protocol (trained on RBF)"}
#: cost of a BNP-protocol training relative to the DeepMind protocol's (fewer points per task, no padding)
BNP_COST = 0.4


# ------------------------------------------------------------------------------------ task sets
def dm_tasks() -> GPCurves:
    return GPCurves("rbf")


def bnp_train_tasks() -> BNPGPCurves:
    return BNPGPCurves("rbf")


def eval_sets(protocol: str, smoke: bool) -> Dict[Tuple[str, Any], TaskBatch]:
    """Seeded evaluation batches: ``{(set, size or kernel): batch}``.

    DeepMind: per context size, the batch ``evaluate(seed=0)`` draws (``all``: targets = context + 50 fresh points)
    and its ``fresh`` view (the 50 fresh points). BNP: per kernel, ``target`` (disjoint targets) and its
    ``context`` view (the context points as targets).
    """
    out = {}
    if protocol == "dm":
        T = SMOKE["dm_tasks"] if smoke else DM_TASKS
        for nc in DM_CONTEXT:
            batch = dm_tasks().sample(T, nc, DM_TARGET, generator=torch.Generator().manual_seed(SEED))
            out[("all", nc)] = batch
            out[("fresh", nc)] = batch.replace(
                target_x=batch.target_x[:, nc:], target_y=batch.target_y[:, nc:], target_mask=batch.target_mask[:, nc:]
            )
    else:
        T = SMOKE["bnp_tasks"] if smoke else BNP_TASKS
        for k, kernel in enumerate(KERNELS):
            batch = BNPGPCurves(kernel, shared_sizes=False).sample(T, generator=torch.Generator().manual_seed(SEED + k))
            out[("target", kernel)] = batch
            out[("context", kernel)] = batch.replace(
                target_x=batch.context_x, target_y=batch.context_y, target_mask=batch.context_mask
            )
    return out


# ------------------------------------------------------------------------------------ scoring
def _per_task(lp: torch.Tensor, mean: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, batch: TaskBatch):
    """Per-task sums ``{lp, n, sq, cover}`` (``[T]`` float64) over the real target points."""
    m, y = batch.target_mask, batch.target_y
    inside = ((y >= lo) & (y <= hi)).all(-1)
    return {
        "lp": (lp.double() * m).sum(-1),
        "n": m.sum(-1).double(),
        "sq": (((mean.double() - y.double()) ** 2).mean(-1) * m).sum(-1),
        "cover": (inside & m).sum(-1).double(),
    }


def _cat(parts: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def score_model(
    model,
    batch: TaskBatch,
    method: str = "amortized",
    options: Optional[dict] = None,
    num_samples: int = NUM_SAMPLES,
    chunk: int = CHUNK,
    device: str = "cpu",
) -> Dict[str, Any]:
    """Per-task log predictive density, squared error and 90% coverage of ``infer(model, ., method)`` (in chunks).

    The predictive's log density is the mixture over the posterior draws (exact for a model without a latent);
    mean and 90% interval come from ``num_samples`` predictive draws per chain, as in ``evaluate``.
    """
    options = dict(options or {})
    num = options.pop("num_samples", num_samples)
    parts, summaries, t0 = [], [], time.perf_counter()
    q = torch.tensor([0.05, 0.95])
    for start in range(0, batch.num_tasks, chunk):
        b = batch.select(torch.arange(start, min(start + chunk, batch.num_tasks))).to(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # low-ESS warnings: the table reports r_hat / ESS
            post = pyro_meta.infer(model, b, method=method, num_samples=num, seed=SEED, **options)
        pred = post.predict()
        lp = pred.log_prob(b.target_y).cpu()
        draws = pred.flat.cpu()
        lo, hi = torch.quantile(draws, q.to(draws.dtype), dim=0)
        parts.append(_per_task(lp, draws.mean(0), lo, hi, b.to("cpu")))
        summaries.append(dict(post.summary))
    out = _cat(parts)
    out["seconds"] = time.perf_counter() - t0
    out["summary"] = _merge_summaries(summaries)
    return out


def _merge_summaries(summaries: List[dict]) -> dict:
    merged: Dict[str, float] = {}
    for s in summaries:
        for k, v in s.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if k.startswith("min_"):
                merged[k] = min(merged.get(k, math.inf), v)
            elif k.startswith("max_"):
                merged[k] = max(merged.get(k, -math.inf), v)
            else:
                merged[k] = merged.get(k, 0) + v
    return merged


def score_oracle(batch: TaskBatch) -> Dict[str, Any]:
    """The exact GP predictive (true hyperparameters): per-task sums, interval ``mean +- 1.645 sd``."""
    t0 = time.perf_counter()
    oracle = GPOracle()
    lp = oracle.log_prob(batch)
    mean, var = oracle.predict(batch)
    half = 1.6448536269514722 * var.sqrt()
    out = _per_task(lp, mean, mean - half, mean + half, batch)
    out["seconds"] = time.perf_counter() - t0
    return out


def make_row(
    model: str, method: str, scores: Dict[str, Any], ref: Optional[Dict[str, Any]] = None, **head: Any
) -> Dict[str, Any]:
    """An ``EvaluationTable`` row from per-task sums: pooled means with their standard errors over tasks."""
    n = scores["n"]
    nll = _ratio_se(-scores["lp"], n)
    mse = _ratio_se(scores["sq"], n)
    row = {
        "model": model,
        "method": method,
        **head,
        "num_tasks": int(n.shape[0]),
        "nll": nll["mean"],
        "nll_se": nll["se"],
        "mse": mse["mean"],
        "mse_se": mse["se"],
        "coverage_90": float(scores["cover"].sum() / n.sum()),
        "seconds": scores["seconds"],
    }
    if ref is not None:
        gap = _ratio_se(ref["lp"] - scores["lp"], n)
        row["nll_gap"], row["nll_gap_se"] = gap["mean"], gap["se"]
    row.update(scores.get("summary", {}))
    return row


def paired_difference(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, float]:
    """Mean per-point log-likelihood of ``a`` minus ``b`` on the same tasks, with its paired standard error."""
    return _ratio_se(a["lp"] - b["lp"], a["n"])


# ------------------------------------------------------------------------------------ one unit of work
def train(name: str, protocol: str, steps: int, device: str) -> Tuple[Any, float, float]:
    spec = MODELS[name]
    torch.manual_seed(SEED)
    model = spec.build().to(device)
    tasks = dm_tasks() if protocol == "dm" else bnp_train_tasks()
    kw = dict(num_context=(3, 49), num_target=(2, 49)) if protocol == "dm" else {}
    t0 = time.perf_counter()
    result = pyro_meta.fit(
        model,
        tasks,
        num_steps=steps,
        tasks_per_batch=TASKS_PER_BATCH,
        lr=spec.lr,
        lr_decay=LR_DECAY,
        seed=SEED,
        progress=False,
        device=device,
        **kw,
    )
    return model, time.perf_counter() - t0, result.final_loss


def latent_path(model, smoke: bool, device: str) -> Dict[str, Any]:
    """Part C: every latent method on the same tasks; KL(q(z | C) || N(0, I)); prior vs posterior NLL."""
    T = SMOKE["latent_tasks"] if smoke else LATENT_TASKS
    options = SMOKE["latent_options"] if smoke else LATENT_OPTIONS
    batch = dm_tasks().sample(T, LATENT_CONTEXT, DM_TARGET, generator=torch.Generator().manual_seed(SEED))
    scores = {
        m: score_model(
            model, batch, m, opts, num_samples=SMOKE["num_samples"] if smoke else 100, chunk=T, device=device
        )
        for m, opts in options.items()
    }
    with torch.no_grad():
        q = model.encode(batch.context_x.to(device), batch.context_y.to(device), batch.context_mask.to(device))
        kl = (
            torch.distributions.kl_divergence(
                q,
                torch.distributions.Independent(torch.distributions.Normal(torch.zeros_like(q.base_dist.loc), 1.0), 1),
            )
            .double()
            .cpu()
        )
    return {"scores": scores, "kl": kl.tolist(), "num_tasks": T, "num_context": LATENT_CONTEXT}


def run_unit(name: str, protocol: str, smoke: bool, device: str, steps: int, work: Path) -> Dict[str, Any]:
    """Train one model on one protocol, score it on the protocol's evaluation sets (and part C for the ANP)."""
    c0 = time.process_time()
    model, seconds, final_loss = train(name, protocol, steps, device)
    cpu = time.process_time() - c0
    print(
        f"[{protocol}] trained {name}: {steps} steps in {seconds:.0f}s, CPU {cpu:.0f}s (final loss {final_loss:.3f})",
        flush=True,
    )
    torch.save(model.state_dict(), work / f"{protocol}_{_slug(name)}.pt")
    num = SMOKE["num_samples"] if smoke else NUM_SAMPLES
    scores = {}
    t0, c0 = time.perf_counter(), time.process_time()
    for key, batch in eval_sets(protocol, smoke).items():
        scores[key] = score_model(model, batch, num_samples=num, device=device)
    out = {
        "name": name,
        "protocol": protocol,
        "train_seconds": seconds,
        "train_cpu_seconds": cpu,
        "final_loss": final_loss,
        "steps": steps,
        "eval_seconds": time.perf_counter() - t0,
        "eval_cpu_seconds": time.process_time() - c0,
        "scores": scores,
    }
    print(f"[{protocol}] evaluated {name} in {out['eval_seconds']:.0f}s", flush=True)
    if protocol == "dm" and name == "AttentiveNP":
        t0, c0 = time.perf_counter(), time.process_time()
        out["latent_path"] = latent_path(model, smoke, device)
        out["latent_path"]["seconds"] = time.perf_counter() - t0
        out["latent_path"]["cpu_seconds"] = time.process_time() - c0
        print(f"[{protocol}] latent path of {name} in {out['latent_path']['seconds']:.0f}s", flush=True)
    return out


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace("(", "").replace(")", "")


def schedule(units: List[Tuple[str, str]], jobs: int) -> List[List[Tuple[str, str]]]:
    """Longest-first greedy split of the units over ``jobs`` workers by their cost estimates."""

    def cost(u):
        return MODELS[u[0]].cost * (1.0 if u[1] == "dm" else BNP_COST) + (200 if u == ("AttentiveNP", "dm") else 0)

    loads, groups = [0.0] * jobs, [[] for _ in range(jobs)]
    for u in sorted(units, key=cost, reverse=True):
        i = loads.index(min(loads))
        groups[i].append(u)
        loads[i] += cost(u)
    return [g for g in groups if g]


def worker(argv: Sequence[str]) -> None:
    """``np_gp.py --worker SPEC``: run the units listed in the JSON file SPEC, save their results beside it."""
    spec = json.loads(Path(argv[0]).read_text())
    torch.set_num_threads(1)
    work = Path(spec["work"])
    for name, protocol in spec["units"]:
        res = run_unit(name, protocol, spec["smoke"], spec["device"], spec["steps"], work)
        torch.save(res, work / f"result_{protocol}_{_slug(name)}.pt")


# ------------------------------------------------------------------------------------ tables
def dm_section(results, oracle, protocol_seconds) -> Tuple[str, Dict[str, Any], List[dict]]:
    rows, checks = [], {"acceptance": [], "beating_oracle": []}
    names = [n for n in MODELS if (n, "dm") in results]
    for view in ("all", "fresh"):
        for nc in DM_CONTEXT:
            ref = oracle[(view, nc)]
            rows.append(make_row("GPOracle", "oracle", ref, view=view, num_context=nc))
            for n in names:
                r = results[(n, "dm")]
                rows.append(
                    make_row(
                        n,
                        "amortized",
                        r["scores"][(view, nc)],
                        ref,
                        view=view,
                        num_context=nc,
                        train_seconds=r["train_seconds"],
                        steps=r["steps"],
                    )
                )
    table = EvaluationTable(rows)
    for view in ("all", "fresh"):
        bad = table.select(view=view).beating_oracle("nll")
        checks["beating_oracle"] += [f"{view} targets: {r['model']} at {r['num_context']}" for r in bad]
    # acceptance: the best new model closes >= half the NP's gap at 10 and 20 context points (paired, > 2 SE)
    if "NeuralProcess" in names:
        for view in ("all", "fresh"):
            for nc in (10, 20):
                np_row = table.select(view=view, num_context=nc, model="NeuralProcess").rows[0]
                cands = [r for r in table.select(view=view, num_context=nc).rows if r["model"] in NEW_MODELS]
                if not cands:
                    continue
                best = min(cands, key=lambda r: r["nll"])
                diff = paired_difference(
                    results[(best["model"], "dm")]["scores"][(view, nc)],
                    results[("NeuralProcess", "dm")]["scores"][(view, nc)],
                )
                gap = np_row["nll_gap"]
                closed = (gap - best["nll_gap"]) / gap if gap > 0 else math.nan
                checks["acceptance"].append(
                    {
                        "view": view,
                        "num_context": nc,
                        "best": best["model"],
                        "np_gap": np_row["nll_gap"],
                        "best_gap": best["nll_gap"],
                        "closed": closed,
                        "diff": diff["mean"],
                        "diff_se": diff["se"],
                        "pass": bool(closed >= 0.5 and diff["mean"] > 2 * diff["se"]),
                    }
                )
    cols = ["model", "num_context", "nll", "nll_se", "nll_gap", "nll_gap_se", "mse", "coverage_90", "seconds"]
    parts = []
    for view, title in (
        ("all", "all targets (the 50 fresh points and the context: the docs' protocol)"),
        ("fresh", "the 50 fresh target points only"),
    ):
        parts.append(f"**Scored on {title}.**\n\n" + table.select(view=view).to_markdown(cols))
    train = markdown_table(
        ["model", "steps", "lr", "train s (wall)", "train s (CPU)", "final loss", "eval s (wall)"],
        [
            [
                n,
                r["steps"],
                f"{MODELS[n].lr:g}",
                f"{r['train_seconds']:.0f}",
                _cpu(r, "train"),
                f"{r['final_loss']:.2f}",
                f"{r['eval_seconds']:.0f}",
            ]
            for n, r in ((n, results[(n, "dm")]) for n in names)
        ],
    )
    return "\n".join(parts) + "\nTraining (DeepMind protocol):\n\n" + train, checks, rows


def _cpu(result: Dict[str, Any], what: str) -> str:
    value = result.get(f"{what}_cpu_seconds")
    return "" if value is None else f"{value:.0f}"


def bnp_section(results, oracle) -> Tuple[str, List[str], List[dict]]:
    names = [n for n in MODELS if (n, "bnp") in results]
    rows, lines, violations = [], [], []
    for kernel in KERNELS:
        ref_t, ref_c = oracle[("target", kernel)], oracle[("context", kernel)]
        entries = [("GPOracle", ref_c, ref_t, None)] + [
            (
                n,
                results[(n, "bnp")]["scores"][("context", kernel)],
                results[(n, "bnp")]["scores"][("target", kernel)],
                results[(n, "bnp")],
            )
            for n in names
        ]
        table_rows = []
        for n, sc, st, res in entries:
            method = "oracle" if res is None else "amortized"
            head = dict(kernel=kernel, num_context="protocol")
            rc = make_row(n, method, sc, None if res is None else ref_c, view="context", **head)
            rt = make_row(n, method, st, None if res is None else ref_t, view="target", **head)
            rows += [rc, rt]
            table_rows.append(
                [
                    n,
                    f"{-rc['nll']:.3f} ± {rc['nll_se']:.3f}",
                    f"{-rt['nll']:.3f} ± {rt['nll_se']:.3f}",
                    "" if res is None else f"{-rt['nll_gap']:.3f} ± {rt['nll_gap_se']:.3f}",
                    f"{rt['mse']:.4f}",
                    f"{rt['coverage_90']:.3f}",
                    f"{rc['coverage_90']:.3f}",
                    "" if res is None else res["steps"],
                    "" if res is None else f"{res['train_seconds']:.0f}",
                    "" if res is None else _cpu(res, "train"),
                ]
            )
        lines.append(
            f"**{kernel}** ({ref_t['n'].shape[0]} tasks)\n\n"
            + markdown_table(
                [
                    "model",
                    "context log-lik",
                    "target log-lik",
                    "target - oracle",
                    "target MSE",
                    "target 90% cov.",
                    "context 90% cov.",
                    "steps",
                    "train s (wall)",
                    "train s (CPU)",
                ],
                table_rows,
            )
        )
    table = EvaluationTable(rows)
    violations = [
        f"{r['kernel']}: {r['model']}"
        for k in KERNELS
        for r in table.select(view="target", kernel=k).beating_oracle("nll")
    ]
    return "\n".join(lines), violations, rows


def latent_section(res: Dict[str, Any], oracle_scores: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
    sc = res["scores"]
    rows = [make_row("GPOracle", "oracle", oracle_scores)]
    rows += [make_row("AttentiveNP", m, s, oracle_scores) for m, s in sc.items()]
    table = EvaluationTable(rows)
    cols = [
        "model",
        "method",
        "nll",
        "nll_se",
        "nll_gap",
        "nll_gap_se",
        "mse",
        "coverage_90",
        "seconds",
        "divergences",
        "min_ess",
        "max_r_hat",
    ]
    kl = torch.tensor(res["kl"])
    kl_se = float(kl.std() / len(kl) ** 0.5) if len(kl) > 1 else math.nan
    diffs = {m: paired_difference(sc[m], sc["prior"]) for m in sc if m != "prior"}
    lines = [
        f"KL(q(z | C) || p(z)) per task: mean {float(kl.mean()):.3f} ± {kl_se:.3f} nats "
        f"(min {float(kl.min()):.3f}, max {float(kl.max()):.3f}).",
        "Target log-likelihood per point of posterior draws minus prior draws (paired over tasks): "
        + ", ".join(f"{m} {d['mean']:+.3f} ± {d['se']:.3f}" for m, d in diffs.items())
        + ".",
    ]
    summary = {"kl_mean": float(kl.mean()), "kl_se": kl_se, "posterior_minus_prior": diffs, "rows": rows}
    return table.to_markdown([c for c in cols if c in table.columns]) + "\n" + "\n\n".join(lines) + "\n", summary


# ------------------------------------------------------------------------------------ figure
def plot_bands(models: Dict[str, Any], path: Path, smoke: bool) -> None:
    """Predictive mean and 90% band of each model on three RBF tasks (5, 10, 20 context points) beside the oracle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(models) + ["GPOracle"]
    sizes = DM_CONTEXT
    fig, axes = plt.subplots(
        len(sizes), len(columns), figsize=(2.6 * len(columns), 2.2 * len(sizes)), sharex=True, squeeze=False
    )
    for i, nc in enumerate(sizes):
        batch = dm_tasks().sample(1, nc, 200, generator=torch.Generator().manual_seed(100 + i))
        order = batch.target_x[0, :, 0].argsort()
        batch = batch.replace(target_x=batch.target_x[:, order], target_y=batch.target_y[:, order])
        x = batch.target_x[0, :, 0]
        mean_o, var_o = GPOracle().predict(batch)
        sd_o = var_o[0, :, 0].sqrt()
        for j, name in enumerate(columns):
            ax = axes[i, j]
            if name == "GPOracle":
                mu, lo, hi = mean_o[0, :, 0], mean_o[0, :, 0] - 1.645 * sd_o, mean_o[0, :, 0] + 1.645 * sd_o
            else:
                post = pyro_meta.infer(models[name], batch, num_samples=20 if smoke else 500, seed=SEED)
                draws = post.predict().flat[:, 0, :, 0]
                mu = draws.mean(0)
                lo, hi = torch.quantile(draws, torch.tensor([0.05, 0.95]), dim=0)
            ax.fill_between(x, lo, hi, color="C0", alpha=0.3, lw=0)
            ax.plot(x, mu, color="C0", lw=1)
            ax.plot(x, batch.target_y[0, :, 0], ".", color="0.5", ms=2)
            ax.plot(batch.context_x[0, :, 0], batch.context_y[0, :, 0], "k.", ms=5)
            if i == 0:
                ax.set_title(name, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{nc} context", fontsize=8)
            ax.tick_params(labelsize=6)
    fig.suptitle("RBF GP curves: predictive mean and 90% band (grey dots: fresh targets, black: context)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------ main
def train_and_score(units: List[Tuple[str, str]], args, steps: int, work: Path) -> None:
    """Run every unit (in ``--jobs`` worker processes); each leaves ``result_<protocol>_<model>.pt`` in ``work``."""
    groups = schedule(units, max(1, args.jobs))
    if args.jobs <= 1:
        for name, pr in units:
            res = run_unit(name, pr, args.smoke, args.device, steps, work)
            torch.save(res, work / f"result_{pr}_{_slug(name)}.pt")
    else:
        procs = []
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        for i, group in enumerate(groups):
            spec = work / f"job{i}.json"
            spec.write_text(
                json.dumps(
                    {"units": group, "work": str(work), "smoke": args.smoke, "device": args.device, "steps": steps}
                )
            )
            log = open(work / f"job{i}.log", "w")
            procs.append(
                (
                    subprocess.Popen(
                        [sys.executable, __file__, "--worker", str(spec)], stdout=log, stderr=subprocess.STDOUT, env=env
                    ),
                    log,
                    i,
                )
            )
        for proc, log, i in procs:
            proc.wait()
            log.close()
            text = (work / f"job{i}.log").read_text(errors="replace")
            print(text, end="")
            if proc.returncode != 0:
                raise RuntimeError(f"np_gp worker {i} failed:\n{text[-3000:]}")


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(HERE.parent / "docs"), help="directory of np_family.md and figures/")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (1: everything in this process)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    p.add_argument("--device", default="cpu", help="torch device for training and inference (e.g. cuda)")
    p.add_argument("--steps", type=int, default=None, help=f"training steps per model (default {STEPS})")
    p.add_argument("--protocols", default="dm,bnp")
    p.add_argument(
        "--models",
        default=",".join(MODELS),
        help="models to train (with --work: the others' results are read from there)",
    )
    p.add_argument("--work", default=None, help="keep the trained models and per-task scores in this directory")
    p.add_argument("--render-only", action="store_true", help="no training: tables and figure from --work")
    p.add_argument("--worker", nargs=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return Path(args.worker[0])
    torch.set_num_threads(1)
    steps = args.steps if args.steps is not None else (SMOKE["steps"] if args.smoke else STEPS)
    out = Path(args.out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    protocols = [x for x in args.protocols.split(",") if x]
    units = [(n, pr) for pr in protocols for n in MODELS]
    t_start = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="np_gp_") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if not args.render_only:
            chosen = [x for x in args.models.split(",") if x]
            unknown = sorted(set(chosen).difference(MODELS))
            if unknown:
                raise ValueError(f"--models: unknown {unknown}; choose among {list(MODELS)}")
            train_and_score([u for u in units if u[0] in chosen], args, steps, work)
            (work / "run.json").write_text(
                json.dumps(
                    {
                        "started": started,
                        "load_before": load_before[0],
                        "load_after": os.getloadavg()[0],
                        "seconds": time.perf_counter() - t_start,
                        "jobs": args.jobs,
                        "device": args.device,
                    }
                )
            )
        run = json.loads((work / "run.json").read_text())
        results = {(n, pr): torch.load(work / f"result_{pr}_{_slug(n)}.pt", weights_only=False) for n, pr in units}
        steps = next(iter(results.values()))["steps"]
        models = {}
        if "dm" in protocols:
            for n in MODELS:
                m = MODELS[n].build()
                m.load_state_dict(torch.load(work / f"dm_{_slug(n)}.pt", weights_only=True))
                models[n] = m
    doc, summary = render(results, models, protocols, args, steps, out, run)
    total = time.perf_counter() - t_start + (run["seconds"] if args.render_only else 0.0)
    summary["seconds"] = total
    summary["train_and_eval_seconds"] = run["seconds"]
    doc = doc.replace("@TOTAL@", f"{total / 60:.1f}")
    path = out / "np_family.md"
    path.write_text(doc)
    (out / "np_family.json").write_text(json.dumps(summary, indent=1, default=float))
    print(f"wrote {path} in {summary['seconds']:.0f}s")
    return path


def render(results, models, protocols, args, steps, out: Path, run: Dict[str, Any]) -> Tuple[str, dict]:
    summary: Dict[str, Any] = {"steps": steps, "smoke": args.smoke, "device": run["device"]}
    parts = []
    if "dm" in protocols:
        oracle = {k: score_oracle(b) for k, b in eval_sets("dm", args.smoke).items()}
        md, checks, rows = dm_section(results, oracle, None)
        summary["dm"] = {"rows": rows, **checks}
        acc = checks["acceptance"]
        acc_md = (
            markdown_table(
                [
                    "targets",
                    "context",
                    "best new model",
                    "NP gap",
                    "its gap",
                    "gap closed",
                    "log-lik diff vs NP",
                    "verdict",
                ],
                [
                    [
                        a["view"],
                        a["num_context"],
                        a["best"],
                        f"{a['np_gap']:.3f}",
                        f"{a['best_gap']:.3f}",
                        f"{100 * a['closed']:.0f}%",
                        f"{a['diff']:+.3f} ± {a['diff_se']:.3f}",
                        "pass" if a["pass"] else "FAIL",
                    ]
                    for a in acc
                ],
            )
            if acc
            else "(no NeuralProcess row)\n"
        )
        parts.append(
            "## A. DeepMind protocol, RBF kernel\n\n"
            f'Training: `GPCurves("rbf")`, context U{{3..49}}, extra targets U{{2..49}} (targets include '
            f"the context), {steps} steps of {TASKS_PER_BATCH} tasks, Adam, learning rate decayed "
            f"x{LR_DECAY:g} over the run, seed {SEED}. Evaluation: the {len(oracle[('all', 5)]['n'])} "
            "tasks per context size "
            f"that `evaluate(seed={SEED})` draws, {DM_TARGET} fresh targets; amortized predictive "
            f"({NUM_SAMPLES} posterior draws for the latent models). On the targets that are context "
            "points the GP oracle is not an upper bound: it scores the observed value as a fresh noisy "
            "draw (sd >= 0.02), while a model that attends to the context can return it with its minimum "
            "scale (0.01); the fresh targets are the sound comparison with the oracle.\n\n"
            + md
            + "\n**Target**: the best new model's paired target log-likelihood against the NeuralProcess "
            "trained here with the same budget; gap closed = (NP gap - its gap) / NP gap; pass = at least "
            "half closed and the difference > 2 SE.\n\n"
            + acc_md
            + "\nModel rows beating the oracle by > 2 SE (`EvaluationTable.beating_oracle`): "
            + ("; ".join(checks["beating_oracle"]) or "none")
            + ".\n"
        )
        lp = results.get(("AttentiveNP", "dm"), {}).get("latent_path")
        if lp is not None:
            lb = dm_tasks().sample(
                lp["num_tasks"], lp["num_context"], DM_TARGET, generator=torch.Generator().manual_seed(SEED)
            )
            md_c, lsum = latent_section(lp, score_oracle(lb))
            summary["latent_path"] = lsum
            opts = SMOKE["latent_options"] if args.smoke else LATENT_OPTIONS
            parts.append(
                "## C. The latent path of the attentive model (latent AttentiveNP of part A)\n\n"
                f"{lp['num_tasks']} RBF tasks with {lp['num_context']} context points, {DM_TARGET} fresh "
                "targets plus the context; the same trained model, its task latent inferred by every method "
                f"(options: {json.dumps({k: v for k, v in opts.items() if v})}); `prior` draws z from "
                f"N(0, I). Wall time {lp['seconds']:.0f}s.\n\n" + md_c
            )
        fig = out / "figures" / "np_family_bands.png"
        plot_bands(models, fig, args.smoke)
        parts.append("## D. Predictive bands\n\n![predictive bands](figures/np_family_bands.png)\n")
    if "bnp" in protocols:
        oracle = {k: score_oracle(b) for k, b in eval_sets("bnp", args.smoke).items()}
        md, violations, rows = bnp_section(results, oracle)
        summary["bnp"] = {"rows": rows, "beating_oracle": violations}
        parts.insert(
            1 if "dm" in protocols else 0,
            "## B. BNP/TNP protocol: trained on RBF, tested on three kernels\n\n"
            "`BNPGPCurves`: x ~ U[-2, 2], length scale U[0.1, 0.6], signal scale U[0.1, 1], period "
            "U[0.1, 0.5] (periodic), noise sd 0.02; Nc ~ U{3..46}, Nt ~ U{3..49-Nc} disjoint from the "
            f"context, sizes shared within a training batch. Training on RBF curves as the papers' code, "
            f"{steps} steps of {TASKS_PER_BATCH} tasks (same learning rates as A); evaluation on a fixed "
            f"seeded set per kernel. Log-likelihoods per point (mean ± SE over tasks, higher is better); "
            "`target - oracle` is the paired difference (negative: below the oracle). The oracle's "
            "context log-likelihood is not an upper bound (a model may reproduce an observed context "
            "value more sharply than a fresh noisy draw).\n\n"
            + md
            + "\nTarget rows beating the oracle by > 2 SE: "
            + (", ".join(violations) or "none")
            + ".\n",
        )
    header = (
        f"# The Neural Process family on GP curves\n\nGenerated by `python benchmarks/np_gp.py"
        f"{' --smoke' if args.smoke else ''}` on {run['started']} (device {run['device']}, {run['jobs']} worker "
        f"processes, one torch thread each); total wall time @TOTAL@ min. 1-minute load average "
        f"{run['load_before']:.1f} at the start, {run['load_after']:.1f} at the end of the training "
        f"({machine_info()['cores']} cores; other work shares them: wall times are pessimistic).\n"
        + ("\n**SMOKE RUN: tiny sizes, the numbers mean nothing.**\n" if args.smoke else "")
        + "\nModels (same budget: "
        f"{steps} steps x {TASKS_PER_BATCH} tasks each): "
        + "; ".join(f"`{n}` ({s.arch}; lr {s.lr:g})" for n, s in MODELS.items())
        + ". Minimum predictive "
        "scale 0.01 for every model.\n\n"
    )
    return header + "\n".join(parts), summary


if __name__ == "__main__":
    main()
