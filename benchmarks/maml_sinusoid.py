"""The MAML family on the sinusoid protocol, noisy sinusoids and line-or-sine.

Three parts, one run, one torch thread:

A. MAML on the MAML sinusoid protocol (Finn et al. 2017): noiseless sinusoids, 25 tasks per
   meta-batch, K = 10 context and 10 target points, 1 inner step (alpha = 0.01) at training and
   10 at test time, Adam(1e-3). Reports the MSE over 600 test tasks (100 target points each)
   with a 95% interval (mean +- 1.96 standard errors over tasks); target: at or below 0.20.
B. MAML, ABML, BMAML and PLATIPUS on noisy sinusoids (``noise_std = 0.3``), same protocol and
   number of meta-iterations for all. Reports, over 600 test tasks, the MSE of the predictive
   mean against the noise-free function (with its 95% interval), the coverage of the central
   90% predictive interval of the noisy targets, the predictive NLL per point and the
   Bayes-optimal oracle's NLL. Targets: MSE <= 1.25x MAML's, coverage in [0.80, 0.97].
C. LineOrSine (PLATIPUS's ambiguity benchmark, ``noise_std = 0.1``), 2 context points: each model
   meta-trained there, then the predictive NLL per target point of every method, NUTS over the
   task weights (globals fixed) included, next to the oracle's. Saves a figure of the
   predictives on a few test tasks (``--figure``) next to the oracle's. One adaptation step at
   training and test time here (ten steps of the sinusoid's step size diverge on lines). As a
   reference on the same tasks, a latent NeuralProcess (z in R^8) meta-trained there too, with its
   amortized guide and NUTS over z: the family's 1761 weights per task are beyond NUTS at this
   budget (it does not mix), an 8-dim task latent is not, and there NUTS shows the line and sine
   hypotheses as separate ridges where the Gaussian guide shows one.

Usage: ``python benchmarks/maml_sinusoid.py [--smoke] [--figure maml_line_or_sine.png]``
(``--smoke``: a few iterations of everything, under a minute; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Dict, List

import torch

from pyro_meta import fit, infer, metrics
from pyro_meta.data import LineOrSine, Sinusoid
from pyro_meta.models import ABML, BMAML, MAML, PLATIPUS, NeuralProcess
from pyro_meta.oracles import LineOrSineOracle, SinusoidOracle

NOISE_B = 0.3
NOISE_C = 0.1
TASKS_PER_BATCH = 25

FULL = dict(
    maml_steps=20000,
    steps=6000,
    los_steps=6000,
    np_steps=6000,
    test_tasks=600,
    test_targets=100,
    draws=100,
    los_test_tasks=100,
    nuts=dict(num_samples=100, num_warmup=150, num_chains=2, max_tree_depth=7, jit_compile=True),
    nuts_tasks=20,
)
SMOKE = dict(
    maml_steps=30,
    steps=10,
    los_steps=10,
    np_steps=10,
    test_tasks=50,
    test_targets=20,
    draws=20,
    los_test_tasks=6,
    nuts=dict(num_samples=5, num_warmup=5, num_chains=1, max_tree_depth=3),
    nuts_tasks=3,
)


def make_models(eval_inner_steps: int = 10) -> Dict[str, torch.nn.Module]:
    """The four learners (1-40-40-1 ReLU base net, each model's defaults), 1 step at training, ``eval_inner_steps`` at test."""
    return {
        "MAML": MAML(inner_steps=1, eval_inner_steps=eval_inner_steps),
        "ABML": ABML(inner_steps=1, eval_inner_steps=eval_inner_steps),
        "BMAML": BMAML(inner_steps=1, eval_inner_steps=eval_inner_steps),
        "PLATIPUS": PLATIPUS(inner_steps=1, eval_inner_steps=eval_inner_steps),
    }


def mean_ci(values: torch.Tensor):
    """Mean and 95% half-width (1.96 standard errors) over tasks."""
    v = values.double()
    return float(v.mean()), 1.96 * float(v.std()) / math.sqrt(v.numel())


def train(model, tasks, steps: int, num_context, seed: int = 0) -> float:
    t0 = time.perf_counter()
    fit(
        model,
        tasks,
        num_steps=steps,
        tasks_per_batch=TASKS_PER_BATCH,
        num_context=num_context,
        num_target=10,
        lr=1e-3,
        seed=seed,
        progress=False,
    )
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------ part A
def part_a(cfg) -> bool:
    print(
        f"\n== A. MAML, noiseless sinusoids: {cfg['maml_steps']} meta-iterations, 1 inner step (train), "
        f"10 (test), {cfg['test_tasks']} test tasks =="
    )
    torch.manual_seed(0)  # the weights' initialisation: each part is reproducible on its own
    model = MAML(inner_steps=1, eval_inner_steps=10, learn_noise=False)
    seconds = train(model, Sinusoid(), cfg["maml_steps"], 10)
    test = Sinusoid().sample(cfg["test_tasks"], 10, cfg["test_targets"], generator=torch.Generator().manual_seed(1234))
    model.eval()
    phi = model.adapt(test.context_x, test.context_y, test.context_mask).detach()
    per_task = model.mse(test.target_x, test.target_y, test.target_mask, phi).detach()
    m, h = mean_ci(per_task)
    ok = m <= 0.20
    print(
        f"MAML MSE after 10 steps: {m:.3f} +- {h:.3f} (95% interval [{m - h:.3f}, {m + h:.3f}]); "
        f"trained in {seconds:.0f} s -> {'PASS' if ok else 'FAIL'} (target <= 0.20)"
    )
    return ok


# ------------------------------------------------------------------------------------------ part B
def part_b(cfg) -> bool:
    print(
        f"\n== B. noisy sinusoids (noise_std = {NOISE_B}): {cfg['steps']} meta-iterations each, "
        f"{cfg['test_tasks']} test tasks, {cfg['draws']} predictive draws =="
    )
    tasks = Sinusoid(noise_std=NOISE_B)
    test = tasks.sample(cfg["test_tasks"], 10, cfg["test_targets"], generator=torch.Generator().manual_seed(4321))
    f = tasks.function(test.target_x, test.info)
    oracle_nll = -metrics.log_likelihood(SinusoidOracle(tasks).log_prob(test), test.target_mask)
    rows = {}
    torch.manual_seed(0)
    for name, model in make_models().items():
        seconds = train(model, tasks, cfg["steps"], 10)
        pred = infer(model, test, method="amortized", num_samples=cfg["draws"], seed=0).predict()
        per_task = ((pred.mean - f) ** 2 * test.target_mask[..., None]).sum((-1, -2)) / test.target_mask.sum(-1)
        m, h = mean_ci(per_task)
        cov = metrics.coverage(pred.flat, test.target_y, test.target_mask, 0.9)
        nll = -metrics.log_likelihood(pred.log_prob(), test.target_mask)
        rows[name] = (m, h, cov, nll, seconds)
    base = rows["MAML"][0]
    ok_all = True
    print(f"{'model':10s} {'MSE vs f (95% CI)':>22s} {'ratio':>6s} {'cov90':>6s} {'NLL':>7s} {'train s':>8s}  check")
    for name, (m, h, cov, nll, s) in rows.items():
        ok = name == "MAML" or (m <= 1.25 * base and 0.80 <= cov <= 0.97)
        ok_all &= ok
        print(
            f"{name:10s} {m:10.3f} +- {h:.3f}     {m / base:6.2f} {cov:6.3f} {nll:7.3f} {s:8.0f}  "
            f"{'' if name == 'MAML' else ('PASS' if ok else 'FAIL')}"
        )
    print(f"{'oracle':10s} {'':22s} {'':6s} {'':6s} {oracle_nll:7.3f}")
    return ok_all


# ------------------------------------------------------------------------------------------ part C
def part_c(cfg, figure: str) -> None:
    print(
        f"\n== C. LineOrSine (noise_std = {NOISE_C}), 2 context points: {cfg['los_steps']} meta-iterations each, "
        f"{cfg['los_test_tasks']} test tasks; NUTS on the first {cfg['nuts_tasks']} =="
    )
    tasks = LineOrSine(noise_std=NOISE_C)
    test = tasks.sample(cfg["los_test_tasks"], 2, 50, generator=torch.Generator().manual_seed(777))
    sub = test.select(slice(0, cfg["nuts_tasks"]))
    oracle = LineOrSineOracle(tasks)
    rows: List[tuple] = []
    shown = {}
    k = cfg["nuts_tasks"]

    def score(name: str, model, seconds: float, nuts_label: str = "") -> None:
        """Amortized NLL on all test tasks and the NUTS tasks; NUTS on the latter if ``nuts_label``."""
        post = infer(model, test, method="amortized", num_samples=cfg["draws"], seed=0)
        lp = post.predict().log_prob()
        rows.append(
            (
                f"{name} (amortized)",
                -metrics.log_likelihood(lp, test.target_mask),
                -metrics.log_likelihood(lp[:k], sub.target_mask),
                seconds,
            )
        )
        shown[name] = post.select(slice(0, k))
        if nuts_label:
            t0 = time.perf_counter()
            nuts = infer(model, sub, method="nuts", seed=0, init="guide", **cfg["nuts"])
            nlp = nuts.predict().log_prob()
            rows.append(
                (nuts_label, float("nan"), -metrics.log_likelihood(nlp, sub.target_mask), time.perf_counter() - t0)
            )
            d = nuts.diagnostics
            print(
                f"  NUTS on {name}'s model: divergences {d['divergences'].tolist()}, worst r_hat "
                f"{float(d['r_hat'].max()):.2f}, smallest ESS {float(d['ess'].min()):.0f}"
            )
            shown[f"{name} NUTS"] = nuts

    # one adaptation step at test time as in training: lines reach |y| = 18 on [-5, 5], where ten steps
    # of the sinusoid's inner step size diverge (measured: MAML's 10-step predictions became non-finite)
    torch.manual_seed(0)
    for name, model in make_models(eval_inner_steps=1).items():
        seconds = train(model, tasks, cfg["los_steps"], 2)
        score(name, model, seconds, f"{name} model, NUTS" if name in ("ABML", "PLATIPUS") else "")
    # the model-based reference: the accuracy bench's NeuralProcess network (3 x 128 SiLU, z in R^8),
    # trained on 1-5 context points (a ragged context trains the set encoder; measured here)
    torch.manual_seed(0)
    npm = NeuralProcess(x_dim=1, y_dim=1, latent_dim=8, hidden=128, num_layers=3)
    t0 = time.perf_counter()
    fit(
        npm,
        tasks,
        num_steps=cfg["np_steps"],
        tasks_per_batch=16,
        num_context=(1, 5),
        num_target=10,
        lr=3e-3,
        lr_decay=0.1,
        seed=0,
        progress=False,
    )
    score("NeuralProcess", npm, time.perf_counter() - t0, "NeuralProcess, NUTS")
    print("  (NUTS chains that settle in different hypotheses, line or sine, raise r_hat: the posterior is multimodal)")
    print(f"{'method':24s} {'NLL/point (all)':>16s} {'NLL (NUTS tasks)':>17s} {'seconds':>8s}")
    for label, nll_all, nll_sub, s in rows:
        print(f"{label:24s} {nll_all:16.3f} {nll_sub:17.3f} {s:8.0f}")
    o_all = -metrics.log_likelihood(oracle.log_prob(test), test.target_mask)
    o_sub = -metrics.log_likelihood(oracle.log_prob(sub), sub.target_mask)
    print(f"{'oracle (Bayes optimal)':24s} {o_all:16.3f} {o_sub:17.3f}")
    if figure:
        density_figure(shown, sub, oracle, tasks, figure, rows=range(min(4, sub.num_tasks)))


def density_figure(shown, batch, oracle, tasks, figure: str, rows=(0, 1, 2), num_draws: int = 2000) -> None:
    """Posterior predictive density of y over x (a 2-D histogram per panel): oracle first, then each method.

    A multimodal predictive shows as separate ridges (line and sine hypotheses); a Gaussian-like one
    as a single band. Columns: the Bayes-optimal oracle, then every entry of ``shown``; rows: tasks.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(rows)
    sub = batch.select(rows)
    grid = torch.linspace(-5.5, 5.5, 111)
    dense = sub.with_targets(grid)
    draws = {
        "Bayes-optimal oracle": oracle.sample(dense, num_draws, generator=torch.Generator().manual_seed(0))[..., 0]
    }
    for label, post in shown.items():
        pred = post.select(rows).predict(dense)
        draws[label] = pred.flat[..., 0]  # [N, T, G]
    y_edges = torch.linspace(-12.0, 12.0, 97)
    fig, axes = plt.subplots(
        len(rows), len(draws), squeeze=False, sharex=True, sharey=True, figsize=(2.6 * len(draws), 2.3 * len(rows))
    )
    f_true = tasks.function(dense.target_x, sub.info)[..., 0]
    for j, (label, y) in enumerate(draws.items()):
        for i in range(len(rows)):
            dens = torch.stack(
                [torch.histc(y[:, i, g].clamp(-12, 12), bins=96, min=-12.0, max=12.0) for g in range(grid.numel())], 1
            )  # [bins, G]
            dens = dens / dens.sum(0, keepdim=True).clamp_min(1)
            ax = axes[i, j]
            ax.imshow(
                dens.sqrt().numpy(),
                origin="lower",
                aspect="auto",
                cmap="Blues",
                extent=(float(grid[0]), float(grid[-1]), float(y_edges[0]), float(y_edges[-1])),
            )
            ax.plot(grid.numpy(), f_true[i].numpy(), "k--", lw=0.8)
            m = sub.context_mask[i]
            ax.scatter(sub.context_x[i, m, 0].numpy(), sub.context_y[i, m, 0].numpy(), s=18, color="red", zorder=3)
            if i == 0:
                ax.set_title(label, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"task {rows[i]}: y")
            if i == len(rows) - 1:
                ax.set_xlabel("x")
    fig.suptitle(
        "LineOrSine, 2 context points (red): posterior predictive density of y (sqrt scale), true function dashed",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(figure, dpi=80, bbox_inches="tight")
    print(f"figure: {figure} (predictive density; rows: test tasks with 2 context points; columns: oracle, methods)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few iterations of everything (< 60 s)")
    parser.add_argument(
        "--figure", default="maml_line_or_sine.png", help="where to save the part-C figure ('' for none)"
    )
    parser.add_argument("--parts", default="ABC", help="which parts to run, e.g. 'AB'")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = SMOKE if args.smoke else FULL
    print(
        f"torch threads = {torch.get_num_threads()}; {'SMOKE run: numbers are meaningless' if args.smoke else 'full run'}"
    )
    t0 = time.perf_counter()
    results = {}
    if "A" in args.parts:
        results["A"] = part_a(cfg)
    if "B" in args.parts:
        results["B"] = part_b(cfg)
    if "C" in args.parts:
        part_c(cfg, args.figure)
    print(
        f"\ntotal {time.perf_counter() - t0:.0f} s; checks: "
        + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in results.items())
    )


if __name__ == "__main__":
    main()
