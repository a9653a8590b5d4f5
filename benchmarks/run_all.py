"""Regenerate ``docs/benchmarks.md`` (and ``docs/figures/``) from runs on this machine: ``make bench``.

1. accuracy and calibration (``benchmarks/accuracy.py``), task families split over ``--jobs``
   parallel processes (one torch thread each);
2. the Neural Process family on GP curves (``benchmarks/np_gp.py``: CNP, ANP, TNP-D, the latent NP and the GP
   oracle on the DeepMind and BNP/TNP protocols; it writes ``<out>/np_family.md``), included as a section,
   and few-shot Omniglot (``benchmarks/fewshot_omniglot.py``: the zoo's classifiers against pixel nearest
   neighbour, with NUTS over the Bayesian last layer; its reliability figure in ``<out>/figures``), and the
   non-Gaussian guides (``benchmarks/guide_families.py`` at its make-bench budget on two processes);
3. speed, each arm against its reference in the same process and run, one after the other with
   nothing else of ours running: the NeuralProcess training step vs plain PyTorch
   (``np_overhead.py``), MAML-family meta-iterations vs a per-task loop (``maml_throughput.py``,
   when present), joint vs per-task NUTS (``nuts_joint_vs_per_task.py``) and the peak memory of
   each NUTS arm (``ru_maxrss`` growth of a fresh process above its level after setup), and the MCMC
   samplers' speed (``mcmc_speed.py``: NUTS eager/JIT/inductor, batched per-task HMC, NumPyro);
4. the markdown: machine, versions, seeds, every table, the checks against stated targets.

    python benchmarks/run_all.py [--out docs] [--jobs 2] [--smoke]

``--smoke`` runs every part at tiny sizes (CI: under 3 minutes) and writes to ``--out`` as well.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import machine_info, markdown_table  # noqa: E402

FAMILY_ORDER = ["sinusoid", "noisy_sinusoid", "gp_rbf", "gp_matern52", "gp_periodic", "line_or_sine"]
#: families split over two jobs with about equal work: family wall times in the 2026-11-30 run (s) were sinusoid 398,
#: noisy_sinusoid 504, gp_rbf 783, gp_matern52 639, gp_periodic 691, line_or_sine 515 (1802 / 1728 s this way)
JOB_SPLIT = [["gp_rbf", "noisy_sinusoid", "line_or_sine"], ["gp_matern52", "gp_periodic", "sinusoid"]]
NUTS_ARGS = ["--tasks", "10", "--samples", "200", "--warmup", "200"]
NUTS_SMOKE_ARGS = ["--tasks", "2", "--samples", "10", "--warmup", "10", "--chains", "1"]
#: ``make bench`` has 90 minutes on 2 cores: the two scripts whose full runs take hours run here at a stated
#: budget; their full runs are single commands whose outputs are kept in ``docs/runs/`` (see its README)
#: (0.15 of every arm's full budget: ProtoNet's 2,000 full steps give the 300 it had at 0.2 of its old 1,500)
FEWSHOT_BENCH_ARGS = ["--step-scale", "0.15", "--episodes", "200", "--nuts-episodes", "20"]
MCMC_SPEED_BENCH_ARGS = ["--plan", "reduced", "--warmup", "100", "--samples", "100"]
#: guide_families.py's make-bench budget, split over two processes of about equal work
GUIDE_FAMILIES_SPLIT = ["line_or_sine:AB", "noisy_sinusoid:AB,line_or_sine:D"]
BENCH_MINUTES = 90


# ---------------------------------------------------------------------------------- processes
def run(cmd: Sequence[str], log: Path) -> Tuple[int, float, float]:
    """Run ``cmd`` with stdout+stderr to ``log``; ``(returncode, seconds, peak RSS MiB)`` (``wait4``)."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(list(cmd), stdout=f, stderr=subprocess.STDOUT, env=_env())
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss / 1024


def run_parallel(cmds: List[Sequence[str]], logs: List[Path]) -> List[Tuple[int, float, float]]:
    """Run the commands at once; per command ``(returncode, seconds, peak RSS MiB)``."""
    t0 = time.perf_counter()
    procs, files = {}, []
    for i, (cmd, log) in enumerate(zip(cmds, logs)):
        f = open(log, "w")
        files.append(f)
        procs[subprocess.Popen(list(cmd), stdout=f, stderr=subprocess.STDOUT, env=_env()).pid] = i
    out: List[Any] = [None] * len(cmds)
    while procs:
        pid, status, usage = os.wait4(-1, 0)
        if pid in procs:
            out[procs.pop(pid)] = (os.waitstatus_to_exitcode(status), time.perf_counter() - t0, usage.ru_maxrss / 1024)
    for f in files:
        f.close()
    return out


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONWARNINGS="ignore")
    return env


def _tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def _clean_log(text: str) -> str:
    """Drop the torch profiler's own chatter from a captured log."""
    noise = ("USDT:", "profiler_start", "profiler_stop", "CPUAllocator", "[W")
    return "\n".join(line for line in text.splitlines() if not any(s in line for s in noise)).strip()


NUTS_MEMORY = r"""
import resource, sys, warnings, torch
warnings.simplefilter("ignore")
torch.set_num_threads(1)
import pyro_meta
from pyro_meta.data import LinearTasks
from pyro_meta.models import BayesianLinear
tasks, model = LinearTasks(), BayesianLinear()
with torch.no_grad():
    model.mu.copy_(tasks.weight_mean); model.log_s.copy_(tasks.weight_scale.log())
T, S, W, C = (int(a) for a in sys.argv[2:6])
batch = tasks.sample(T, (3, 10), 10, generator=torch.Generator().manual_seed(0))
opts = dict(method="nuts", num_samples=S, num_warmup=W, num_chains=C, seed=0)
pyro_meta.infer(model, batch.select([0]), method="nuts", num_samples=4, num_warmup=4, num_chains=1, seed=0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[1] == "joint":
    pyro_meta.infer(model, batch, **opts)
else:
    for t in range(T):
        pyro_meta.infer(model, batch.select([t]), **opts)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""


# ---------------------------------------------------------------------------------- sections
def accuracy_section(results: Dict[str, Dict[str, Any]], fig_rel: str) -> Tuple[str, Dict[str, Any]]:
    """Markdown of every family's table and figure; the oracle checks."""
    sys.path.insert(0, str(HERE.parent))
    from pyro_meta.evaluation import EvaluationTable

    parts, checks = [], {"violations": [], "identical": {}, "np_vs_gp": None}
    for name in FAMILY_ORDER:
        if name not in results:
            continue
        res = results[name]
        fam = res["family"]
        table = EvaluationTable(res["rows"])
        metric = fam["metric"]
        if metric == "mse":
            cols = [
                "model",
                "method",
                "num_context",
                "mse",
                "mse_se",
                "nll",
                "crps",
                "coverage_50",
                "coverage_90",
                "seconds",
            ]
        else:
            cols = [
                "model",
                "method",
                "num_context",
                "nll",
                "nll_se",
                "nll_gap",
                "nll_gap_se",
                "mse",
                "crps",
                "coverage_50",
                "coverage_90",
                "seconds",
                "divergences",
                "min_ess",
                "max_r_hat",
            ]
        cols = [c for c in cols if c in table.columns]
        train = ", ".join(
            f"{m} {res['training'][m][0]} steps (lr {res['training'][m][1]:g}"
            + (f", decayed x{res['training'][m][2]:g}" if res["training"][m][2] else "")
            + f") {res['train_seconds'][m]:.0f}s"
            for m in res["train_seconds"]
        )
        parts.append(
            f"### {fam['title']}\n\n{fam['protocol']}.\n\n"
            f"Training: {TASKS_NOTE}; context {fam['train_context']}, extra targets {fam['train_target']}; "
            f"{train}. Evaluation: {res['num_tasks']} tasks per context size, {res['num_target']} target "
            f"points{' (plus the context)' if 'gp' in name else ''}, {res['num_samples']} draws per chain, "
            f"seed {res['seed']}; family wall time {res['seconds']:.0f}s.\n\n"
            + table.to_markdown(cols)
            + f"\n![{fam['title']}]({fig_rel}/accuracy_{name}.png)\n"
        )
        for metric_name, bad in res.get("beating_oracle", {}).items():
            for r in bad:
                checks["violations"].append(f"{name}: {r['model']} {r['method']} at {r['num_context']} ({metric_name})")
        checks["identical"][name] = res.get("identical_twice")
        if name == "gp_rbf":
            checks["np_vs_gp"] = _np_vs_gp(table)
    return "\n".join(parts), checks


TASKS_NOTE = "16 tasks per step, Adam, seed 0"


def _np_vs_gp(table) -> Optional[Dict[str, Any]]:
    """NeuralProcess target log-likelihood next to the exact GP oracle's on the same RBF tasks."""
    rows = []
    for r in table.select(model="NeuralProcess").rows:
        o = table.select(method="oracle", num_context=r["num_context"]).rows
        if not o:
            continue
        rows.append(
            {
                "num_context": r["num_context"],
                "method": r["method"],
                "np_ll": -r["nll"],
                "oracle_ll": -o[0]["nll"],
                "gap": r["nll_gap"],
                "gap_se": r["nll_gap_se"],
                "oracle_better": r["nll_gap"] > 2 * r["nll_gap_se"],
            }
        )
    if not rows:
        return None
    amort = [x for x in rows if x["method"] == "amortized"]
    mean_gap = sum(x["gap"] for x in amort) / len(amort)
    se = (sum(x["gap_se"] ** 2 for x in amort) ** 0.5) / len(amort)
    return {"rows": rows, "mean_gap": mean_gap, "mean_gap_se": se, "oracle_better": mean_gap > 2 * se}


def np_family_section(work: Path, out: Path, smoke: bool, python: str) -> Tuple[str, Dict[str, Any]]:
    """Run ``benchmarks/np_gp.py`` (it writes ``<out>/np_family.md`` and its figure); its text with headings one level
    down, and its checks against stated targets."""
    log = work / "np_gp.log"
    rc, secs, rss = run([python, str(HERE / "np_gp.py"), "--out", str(out), *(["--smoke"] if smoke else [])], log)
    if rc != 0:
        raise RuntimeError(f"np_gp.py failed:\n{_tail(log)}")
    text = (out / "np_family.md").read_text()
    text = re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)
    summary = json.loads((out / "np_family.json").read_text())
    return "\n" + text + "\n", summary


def fewshot_section(work: Path, out: Path, smoke: bool, python: str) -> str:
    """Run ``benchmarks/fewshot_omniglot.py`` (its reliability figure to ``<out>/figures``); its tables as a section."""
    log, md = work / "fewshot_omniglot.log", work / "fewshot_omniglot.md"
    figure = out / "figures" / "fewshot_omniglot_bench_reliability.png"
    cmd = [python, str(HERE / "fewshot_omniglot.py"), "--markdown", str(md), "--figure", str(figure)]
    budget = ["--smoke"] if smoke else FEWSHOT_BENCH_ARGS
    rc, secs, rss = run(cmd + budget, log)
    if rc != 0:
        raise RuntimeError(f"fewshot_omniglot.py failed:\n{_tail(log)}")
    return (
        "\n## Few-shot classification on Omniglot\n\n"
        f"`benchmarks/fewshot_omniglot.py {' '.join(budget)}` (its docstring gives the protocol): the zoo's "
        "classifiers meta-trained on the shipped alphabets and scored on the two meta-test alphabets, against pixel "
        f"nearest neighbour and an MLP trained from scratch on each support set; {secs / 60:.1f} min. This is the "
        "make-bench budget (the options above): the full run "
        "(`python benchmarks/fewshot_omniglot.py`, about 40 minutes on 2 cores) is kept in "
        "[runs/fewshot_omniglot.md](runs/fewshot_omniglot.md).\n\n"
        + md.read_text()
        + "\n![5-way 1-shot reliability](figures/fewshot_omniglot_bench_reliability.png)\n"
    )


def guide_families_section(work: Path, out: Path, smoke: bool, python: str) -> str:
    """Run ``benchmarks/guide_families.py`` at the make-bench budget on two processes, merge, and return its section."""
    budget = ["--smoke"] if smoke else ["--budget", "bench"]
    figs = out / "figures"
    extra = [
        ["--figure", str(figs / "guide_families_posterior.png")],
        ["--ambiguity-figure", str(figs / "guide_families_line_or_sine.png")],
    ]
    js = [work / f"guide_families_{i}.json" for i in range(len(GUIDE_FAMILIES_SPLIT))]
    cmds = [
        [python, str(HERE / "guide_families.py"), *budget, "--families", fams, "--json", str(j), *x]
        for fams, j, x in zip(GUIDE_FAMILIES_SPLIT, js, extra)
    ]
    logs = [work / f"guide_families_{i}.log" for i in range(len(cmds))]
    t0 = time.perf_counter()
    for (rc, _, _), log in zip(run_parallel(cmds, logs), logs):
        if rc != 0:
            raise RuntimeError(f"guide_families.py failed:\n{_tail(log)}")
    md = work / "guide_families.md"
    cmd = [python, str(HERE / "guide_families.py"), "--merge", *map(str, js), "--markdown", str(md)]
    rc, _, _ = run(cmd, work / "guide_families_merge.log")
    if rc != 0:
        raise RuntimeError(f"guide_families.py --merge failed:\n{_tail(work / 'guide_families_merge.log')}")
    return (
        "\n## Non-Gaussian amortized guides: amortization and Gaussian gaps, SBC, line or sine\n\n"
        f"`benchmarks/guide_families.py {' '.join(budget)}` on two processes (families "
        f"{' | '.join(GUIDE_FAMILIES_SPLIT)}; its docstring gives the protocol), {(time.perf_counter() - t0) / 60:.1f} "
        "min. This is the make-bench budget: the full run (`python benchmarks/guide_families.py`, about an hour "
        "of CPU) is kept in [runs/guide_families.md](runs/guide_families.md).\n\n"
        + md.read_text()
        + "\n![posterior over z](figures/guide_families_posterior.png)\n"
        + "\n![line or sine](figures/guide_families_line_or_sine.png)\n"
    )


def mcmc_speed_section(work: Path, smoke: bool, python: str) -> Tuple[str, Dict[str, Any]]:
    """Run ``benchmarks/mcmc_speed.py``: its table and acceptance checks as a section, and ``{"checks": ...}``."""
    js = work / "mcmc_speed.json"
    rc, secs, rss = run(
        [python, str(HERE / "mcmc_speed.py"), "--json", str(js), *(["--smoke"] if smoke else MCMC_SPEED_BENCH_ARGS)],
        work / "mcmc_speed.log",
    )
    if rc != 0:
        raise RuntimeError(f"mcmc_speed.py failed:\n{_tail(work / 'mcmc_speed.log')}")
    mc = json.loads(js.read_text())
    text = (
        "### Exact per-task posteriors: NUTS (eager, JIT, TorchInductor), batched per-task HMC, NumPyro\n\n"
        f"`benchmarks/mcmc_speed.py {'--smoke' if smoke else ' '.join(MCMC_SPEED_BENCH_ARGS)}` (its docstring gives "
        f"the protocol and columns): one chain of {mc['warmup']} + {mc['samples']} iterations per arm, one thread; "
        f"wall time {secs:.0f}s. The make-bench budget; the acceptance run at 300 + 300 iterations "
        "(`--plan acceptance`: joint NUTS at 200 tasks, the batched sampler at 1,000) is kept in "
        "[runs/mcmc_speed_acceptance.md](runs/mcmc_speed_acceptance.md). "
        f"Grid: {mc['thinning']}.{' ' + mc['numpyro_skipped'] if mc['numpyro_skipped'] else ''}\n\n"
        + mc["table"]
        + "\n"
        + markdown_table(["check", "target", "measured"], mc["checks"])
    )
    return text, {"checks": mc["checks"]}


def speed_section(work: Path, smoke: bool, python: str) -> Tuple[str, Dict[str, Any]]:
    parts, out = [], {}
    # --- NeuralProcess step
    js = work / "np_overhead.json"
    args = ["--smoke"] if smoke else []
    rc, secs, rss = run([python, str(HERE / "np_overhead.py"), "--json", str(js), *args], work / "np_overhead.log")
    if rc != 0:
        raise RuntimeError(f"np_overhead.py failed:\n{_tail(work / 'np_overhead.log')}")
    np_res = json.loads(js.read_text())
    out["np"] = np_res
    losses = ", ".join(f"{k} {v:.6f}" for k, v in np_res["losses"].items())
    parts.append(
        "### NeuralProcess training step: pyro_meta vs plain PyTorch\n\n"
        "One step = loss + backward + Adam on a pre-sampled batch of 16 GP-curve tasks (3-49 context, 10-50 extra "
        "targets), `NeuralProcess()` defaults (latent 16, 2 x 64 hidden), one torch thread; arms interleaved, "
        f"{np_res['rounds']} rounds x {np_res['iters']} steps, median. The plain PyTorch reference uses the same "
        "encoder/decoder modules and the same loss written by hand with `torch.distributions`; at the same weights "
        f"and seed the losses are: {losses} (the reference is the twin of `model.loss`: {np_res['kind']} ELBO). "
        "Peak memory: torch profiler on CPU (`profile_memory=True`), live tensor bytes during one step above "
        f"the level at its start. Script wall time {secs:.0f}s, process peak RSS {rss:.0f} MiB (getrusage).\n\n"
        + np_res["table"]
        + f"\n**pyro_meta / plain PyTorch = {np_res['ratio']:.3f}** (target <= 1.25)"
        + (
            f"; diagnostic: Pyro's generic `Trace_ELBO` = {np_res['trace_elbo_vs_twin']:.3f} x its own plain twin "
            "(sampled KL)."
            if "trace_elbo_vs_twin" in np_res
            else "."
        )
        + "\n"
    )
    # --- MAML family throughput
    maml = HERE / "maml_throughput.py"
    if maml.exists():
        rc, secs, rss = run([python, str(maml), *(["--smoke"] if smoke else [])], work / "maml.log")
        text = _clean_log((work / "maml.log").read_text(errors="replace"))
        if rc != 0:
            raise RuntimeError(f"maml_throughput.py failed:\n{_tail(work / 'maml.log')}")
        ratios = dict(re.findall(r"ratio (ours / \w+)\s*=\s*([0-9.]+)", text))
        out["maml"] = {k: float(v) for k, v in ratios.items()}
        parts.append(
            "### MAML meta-iterations: batched vs per-task loop\n\n"
            f"`benchmarks/maml_throughput.py` (its own protocol and memory method, printed below); wall time "
            f"{secs:.0f}s, process peak RSS {rss:.0f} MiB (getrusage).\n\n```\n{text}\n```\n"
        )
    else:
        parts.append("### MAML meta-iterations\n\n`benchmarks/maml_throughput.py` is absent: skipped.\n")
        print("note: benchmarks/maml_throughput.py is absent; skipped")
    # --- joint vs per-task NUTS
    nuts_args = NUTS_SMOKE_ARGS if smoke else NUTS_ARGS
    rc, secs, rss = run([python, str(HERE / "nuts_joint_vs_per_task.py"), *nuts_args], work / "nuts.log")
    text = _clean_log((work / "nuts.log").read_text(errors="replace"))
    if rc != 0:
        raise RuntimeError(f"nuts_joint_vs_per_task.py failed:\n{_tail(work / 'nuts.log')}")
    m = re.search(r"ratio:\s*([0-9.]+)", text)
    out["nuts_ratio"] = float(m.group(1)) if m else None
    T, S, W = (nuts_args[i + 1] for i in (0, 2, 4))
    C = nuts_args[7] if "--chains" in nuts_args else "2"
    mem = {}
    for arm in ("joint", "loop"):
        log = work / f"nuts_mem_{arm}.log"
        rc2, _, _ = run([python, "-c", NUTS_MEMORY, arm, T, S, W, C], log)
        if rc2 != 0:
            raise RuntimeError(f"NUTS memory probe failed:\n{_tail(log)}")
        mem[arm] = float(log.read_text().strip().splitlines()[-1])
    out["nuts_memory_mib"] = mem
    parts.append(
        "### Joint NUTS over the tasks plate vs a loop of per-task NUTS runs\n\n"
        f"`benchmarks/nuts_joint_vs_per_task.py {' '.join(nuts_args)}` (BayesianLinear, min-ESS per second; its "
        f"output below); wall time {secs:.0f}s.\n\n```\n{text}\n```\n\n"
        + markdown_table(
            ["arm", "peak RSS growth MiB"],
            [["joint (one run)", f"{mem['joint']:.1f}"], ["per task (loop)", f"{mem['loop']:.1f}"]],
        )
        + "\nPeak memory: a fresh process per arm, same setting; `resource.getrusage(RUSAGE_SELF).ru_maxrss` after "
        "the run minus its value after imports, setup and a 4-draw warm-up run (the growth of the process's "
        "high-water mark; 0 means the arm stayed below the warm-up level).\n"
    )
    # --- MCMC speed: NUTS eager/JIT/inductor, batched per-task HMC, NumPyro (when installed)
    text, out["mcmc_speed"] = mcmc_speed_section(work, smoke, python)
    parts.append(text)
    return "\n".join(parts), out


# ------------------------------------------------------------------------------------- main
def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(HERE.parent / "docs"), help="directory of benchmarks.md and figures/")
    p.add_argument("--jobs", type=int, default=2, help="parallel accuracy processes")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    p.add_argument("--families", default=",".join(FAMILY_ORDER))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # as every benchmark process does (machine_info reports it)
    t_start = time.perf_counter()
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    out = Path(args.out)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    families = [f for f in args.families.split(",") if f]
    with tempfile.TemporaryDirectory(prefix="pyro_meta_bench_") as tmp:
        work = Path(tmp)
        # 1. accuracy, split over jobs
        groups = [[f for f in g if f in families] for g in JOB_SPLIT] if args.jobs >= 2 else [families]
        groups += [[f for f in families if not any(f in g for g in groups)]]
        groups = [g for g in groups if g]
        cmds = [
            [
                python,
                str(HERE / "accuracy.py"),
                "--families",
                ",".join(g),
                "--out",
                str(work / "acc"),
                *(["--smoke"] if args.smoke else []),
            ]
            for g in groups
        ]
        logs = [work / f"accuracy_{i}.log" for i in range(len(cmds))]
        t0 = time.perf_counter()
        status = run_parallel(cmds, logs) if args.jobs >= 2 else [run(c, lg) for c, lg in zip(cmds, logs)]
        acc_seconds = time.perf_counter() - t0
        for (rc, _, _), log in zip(status, logs):
            if rc != 0:
                raise RuntimeError(f"accuracy.py failed:\n{_tail(log)}")
        results = {f: json.loads((work / "acc" / f"accuracy_{f}.json").read_text()) for f in families}
        for f in families:
            shutil.copy(work / "acc" / "figures" / f"accuracy_{f}.png", figs / f"accuracy_{f}.png")
        acc_md, checks = accuracy_section(results, "figures")
        # 2. the Neural Process family (its own 2 worker processes): <out>/np_family.md, figures/np_family_bands.png
        t0 = time.perf_counter()
        np_md, np_checks = np_family_section(work, out, args.smoke, python)
        checks["np_family"] = np_checks
        acc_md += np_md
        np_seconds = time.perf_counter() - t0
        # 2b. few-shot Omniglot (its own training processes)
        t0 = time.perf_counter()
        acc_md += fewshot_section(work, out, args.smoke, python)
        fewshot_seconds = time.perf_counter() - t0
        # 2c. non-Gaussian guides (two processes)
        t0 = time.perf_counter()
        acc_md += guide_families_section(work, out, args.smoke, python)
        guides_seconds = time.perf_counter() - t0
        # 3. speed, alone
        t0 = time.perf_counter()
        speed_md, speed = speed_section(work, args.smoke, python)
        speed_seconds = time.perf_counter() - t0
    total = time.perf_counter() - t_start
    info = machine_info()
    doc = render(info, started, total, acc_seconds, speed_seconds, args, status, acc_md, checks, speed_md, speed)
    doc = (
        doc.replace("@NP_FAMILY_MIN@", f"{np_seconds / 60:.1f}")
        .replace("@FEWSHOT_MIN@", f"{fewshot_seconds / 60:.1f}")
        .replace("@GUIDES_MIN@", f"{guides_seconds / 60:.1f}")
    )
    path = out / "benchmarks.md"
    path.write_text(doc)
    print(f"wrote {path} in {total:.0f}s")
    return path


def render(info, started, total, acc_seconds, speed_seconds, args, status, acc_md, checks, speed_md, speed) -> str:
    np_ratio = speed["np"]["ratio"]
    gp = checks["np_vs_gp"]
    ident = checks["identical"]
    rows = [
        [
            "NeuralProcess training step / plain PyTorch step",
            "<= 1.25",
            f"{np_ratio:.3f}",
            "pass" if np_ratio <= 1.25 else "FAIL",
        ],
        [
            "`evaluate` identical twice (same model, same seed)",
            "identical",
            ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in ident.items()),
            "pass" if all(ident.values()) else "FAIL",
        ],
        [
            "model rows beating an oracle row by > 2 SE (NLL paired gap, MSE)",
            "none",
            "; ".join(checks["violations"]) or "none",
            "pass" if not checks["violations"] else "FAIL",
        ],
    ]
    if gp is not None:
        rows.append(
            [
                "GP oracle beats the NeuralProcess on RBF curves (mean amortized gap > 2 SE)",
                "yes",
                f"gap {gp['mean_gap']:.3f} +- {gp['mean_gap_se']:.3f} nats/point",
                "pass" if gp["oracle_better"] else "FAIL",
            ]
        )
    npf = checks.get("np_family") or {}
    for a in (npf.get("dm") or {}).get("acceptance", []):
        rows.append(
            [
                f"best NP-family model closes >= half the NeuralProcess's gap to the GP oracle (RBF, "
                f"{a['view']} targets, {a['num_context']} context; paired diff > 2 SE)",
                ">= 50%",
                f"{a['best']}: {100 * a['closed']:.0f}%, {a['diff']:+.3f} +- {a['diff_se']:.3f}",
                "pass" if a["pass"] else "FAIL",
            ]
        )
    if npf:
        bad = (npf.get("dm") or {}).get("beating_oracle", []) + (npf.get("bnp") or {}).get("beating_oracle", [])
        rows.append(
            [
                "NP-family target rows beating the GP oracle by > 2 SE",
                "none",
                "; ".join(bad) or "none",
                "pass" if not bad else "FAIL",
            ]
        )
    if speed.get("nuts_ratio") is not None:
        rows.append(
            [
                "joint / per-task NUTS (min-ESS per second)",
                "> 1",
                f"{speed['nuts_ratio']:.1f}",
                "pass" if speed["nuts_ratio"] > 1 else "FAIL",
            ]
        )
    for k, v in speed.get("maml", {}).items():
        rows.append([f"MAML {k} (meta-iterations per second)", "see below", f"{v:.2f}", ""])
    if not args.smoke:
        rows.append(
            [
                "`make bench` total wall time on this machine",
                f"<= {BENCH_MINUTES} min",
                f"{total / 60:.1f} min",
                "pass" if total <= 60 * BENCH_MINUTES else "FAIL",
            ]
        )
    acc_rss = ", ".join(f"{r[2]:.0f}" for r in status)
    machine = "\n".join(f"- {k}: {v}" for k, v in info.items())
    gp_md = ""
    if gp is not None:
        gp_md = (
            "\n### NeuralProcess vs the exact GP oracle (RBF curves)\n\n"
            "Mean target log-likelihood per point on the same tasks (higher is better); the gap is the paired "
            "NLL difference with its standard error over tasks.\n\n"
            + markdown_table(
                ["context", "method", "NP log-lik", "GP oracle log-lik", "gap", "gap SE", "oracle better (> 2 SE)"],
                [
                    [
                        r["num_context"],
                        r["method"],
                        f"{r['np_ll']:.3f}",
                        f"{r['oracle_ll']:.3f}",
                        f"{r['gap']:.3f}",
                        f"{r['gap_se']:.3f}",
                        "yes" if r["oracle_better"] else "no",
                    ]
                    for r in gp["rows"]
                ],
            )
        )
    return f"""# Benchmarks

Generated by `make bench` (`python benchmarks/run_all.py{" --smoke" if args.smoke else ""}`) on {started};
every number below comes from that run on this machine: nothing is typed by hand.
{"**SMOKE RUN: tiny sizes, the numbers mean nothing.**" if args.smoke else ""}

Machine and software:

{machine}

Seeds: 0 for training (`fit(seed=0)`, models built after `torch.manual_seed(0)`) and for evaluation
(`evaluate(seed=0)`: the same tasks for every model and method). One torch thread per process.
Total wall time {total / 60:.1f} min: accuracy {acc_seconds / 60:.1f} min ({args.jobs} parallel processes, peak RSS
{acc_rss} MiB), Neural Process family @NP_FAMILY_MIN@ min (`benchmarks/np_gp.py`, 2 worker processes), few-shot
Omniglot @FEWSHOT_MIN@ min (2 worker processes), non-Gaussian guides @GUIDES_MIN@ min (2 processes), speed
{speed_seconds / 60:.1f} min (one process at a time). Timings measured while other work
shares the cores are pessimistic; the ratios are measured within one run and are what counts.

## Checks against stated targets

Each row: what is measured, the target it is held to, the value measured in this run, and whether it meets it.

{markdown_table(["check", "target", "measured", "verdict"], rows)}
## Accuracy and calibration

Columns: `nll` mean negative log predictive density per real target point (`nll_se` its standard
error over tasks), `nll_gap` the paired difference to the oracle row on the same tasks (`nll_gap_se`
its standard error), `mse` of the predictive mean, `crps` (energy form over the draws), `coverage_50`/
`coverage_90` of the central predictive intervals, `seconds` of inference + predictive, and for
NUTS `divergences`, `min_ess`, `max_r_hat` over tasks (`min_ess` for importance sampling is the
importance ESS). Methods and sizes were chosen to fit a 25-minute share of the 90-minute budget on 2 cores:
`amortized` for every model; `svi` (200 steps) and `importance` (2000 proposals) for the models with
small task latents (NeuralProcess 3 x 128 SiLU with z in R^8, BayesianLinear w in R^32 on random Fourier features);
`svi` (100 steps) for the gradient-based models (phi in R^1761) at the reference context size of
the noisy sinusoid and line-or-sine only (importance sampling degenerates to ESS 1 there); `nuts`
(2 chains x (100 warmup + 100 draws), JIT, tree depth <= 7) for NeuralProcess and BayesianLinear
at the reference context size of the noisy sinusoid, RBF curves and line-or-sine (NUTS over the
gradient-based models' 1761 weights per task is out of budget). Other methods draw 200 per task. Meta-training is short (600
to 3000 steps, the four gradient-based models 3000 each, far below the papers' budgets): the tables
compare models and methods on the same tasks, they do not reproduce published numbers; trained for
6,000 to 20,000 meta-iterations (`benchmarks/maml_sinusoid.py`) MAML reaches the MAML protocol's
MSE and ABML, BMAML and PLATIPUS that of MAML on noisy sinusoids.

{acc_md}{gp_md}
## Speed and memory

{speed_md}"""


if __name__ == "__main__":
    main()
