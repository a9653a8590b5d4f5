"""Exact per-task posteriors, how fast: NUTS (eager, JIT, TorchInductor), batched per-task HMC, NumPyro's NUTS.

Two models, both ``z_t ~ N(0, I_8)`` per task with a neural likelihood ``y ~ N(f(x, z_t), .)``:

* ``mlp`` -- the model of issue 17: a 9-64-1 tanh decoder, ``sigma = 0.2``, 10 points per task,
  ``x ~ U(-2, 2)``; weights drawn once (seed 0, first layer ``N(0, 1/3)``, second ``N(0, 1/16)``)
  and the tasks' ``y`` sampled from the model itself at ``z_t ~ N(0, I)``;
* ``np`` -- the demo's ``NeuralProcess(latent_dim=8, hidden=128, num_layers=3)`` (SiLU), meta-trained
  ``--np-steps`` steps on ``Sinusoid(noise_std=0.2)`` (seed 0), tasks of 10 context points.

Every arm samples the same posterior ``p(z_t | context_t)`` of the same tasks from the same start
(the model's guide mean: 0 for ``mlp``, the NP encoder's mean for ``np``), one chain of
``--warmup`` + ``--samples`` iterations, one CPU thread (torch and XLA):

* ``nuts eager`` / ``nuts jit`` / ``nuts inductor``: ``infer(method="nuts", jit_compile=False | True |
  "inductor")``, one joint NUTS run over the tasks plate (Pyro);
* ``batched`` / ``batched compiled``: ``infer(method="batched_hmc", num_chains=1, compile=False | True)``;
* ``numpyro first`` / ``numpyro warm``: NumPyro's NUTS on the same model written in NumPyro with the
  torch weights copied (identical densities, checked), the first call (JAX tracing and XLA compiling
  included) and a second call of the same ``MCMC`` object (compiled code reused).

Columns: ``wall s`` (the whole call; for ``inductor`` / ``batched compiled`` trace and compile
included, shown separately in ``compile s``); ``grads/s``: potential-and-gradient evaluations per
second excluding compile time (each evaluates every task: a joint NUTS leapfrog step or a batched
step); ``grads/iter``: those per iteration (warmup included); ``ESS``: the median over tasks of each
task's smallest bulk ESS over the 8 coordinates (ArviZ's, one chain); ``ESS/s``: that per second
of the call less its compile time (compiling is paid once per model, weights and shapes: cached); ``ms/task``: wall seconds (compile excluded) per task. Ratios are read within
one run: the machine is shared.

    python benchmarks/mcmc_speed.py [--smoke] [--plan full|reduced] [--warmup N] [--samples N] [--json PATH]
                                    [--markdown PATH] [--device cuda]

``--device cuda`` runs the batched sampler (eager and compiled) and NUTS (JIT, 10 tasks) on the
accelerator at T = 200, 1000, 5000, 20000 (``mlp`` model); it finishes in a few minutes on one GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import numpy as np  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, markdown_table  # noqa: E402

import pyro_meta  # noqa: E402
from pyro_meta import MetaModel, TaskBatch, observe, task_plate  # noqa: E402
from pyro_meta.arviz import rhat_ess  # noqa: E402
from pyro_meta.inference.common import prepare  # noqa: E402
from pyro_meta.inference.mcmc import _initial_params  # noqa: E402

LATENT, POINTS, SIGMA = 8, 10, 0.2
#: which arms run at which T (the full run); the slow arms are thinned at large T (see THINNING)
PLAN = {
    "mlp": {
        "nuts eager": (10, 50),
        "nuts jit": (10, 50, 200),
        "nuts inductor": (10, 50, 200),
        "batched": (10, 50, 200, 1000),
        "batched compiled": (10, 50, 200, 1000),
        "numpyro": (10, 50, 200, 1000),
    },
    "np": {
        "nuts jit": (10, 50),
        "nuts inductor": (10, 50),
        "batched compiled": (10, 50, 200, 1000),
        "numpyro": (10, 50, 200),
    },
}
THINNING = (
    "joint NUTS over 200+ tasks builds trees of depth 8-10 (up to 1023 gradients per iteration, every one "
    "over all tasks): the eager arm stops at 50 tasks and the JIT/inductor arms at 200 for `mlp`, and at 50 "
    "for the 5x costlier `np` gradient; eager `batched` is left out for `np` (its compiled twin is the "
    "candidate) and NumPyro stops at 200 tasks for `np`"
)
#: ``--plan reduced`` (``make bench``): the ``mlp`` model only, joint NUTS at 50 tasks only (on 2 cores shared at
#: load 7 it ran at about 100 gradients per second: 200 tasks, trees of depth 8-9, would take an hour), the compiled
#: batched sampler up to 200 (its eager twin, 95 s at 100 + 100 and read by no check, is left to the full plan)
REDUCED_PLAN = {
    "mlp": {
        "nuts jit": (50,),
        "nuts inductor": (50,),
        "batched compiled": (10, 50, 200),
        "numpyro": (50, 200),
    }
}
#: ``--plan acceptance``: exactly the arms and T the checks read (the ``mlp`` model), the issue's 300 + 300
#: iterations: JIT vs inductor NUTS at 50 tasks, joint JIT NUTS vs the compiled batched sampler and NumPyro at
#: 50 and 200 tasks, the batched sampler's per-task cost at 1,000 tasks
ACCEPTANCE_PLAN = {
    "mlp": {
        "nuts jit": (50, 200),
        "nuts inductor": (50,),
        "batched compiled": (50, 200, 1000),
        "numpyro": (50, 200),
    }
}
SMOKE_PLAN = {
    "mlp": {"nuts jit": (3,), "nuts inductor": (3,), "batched": (3,), "batched compiled": (3,), "numpyro": (3,)}
}
CUDA_PLAN = {
    "mlp": {"nuts jit": (10,), "batched": (200, 1000, 5000, 20000), "batched compiled": (200, 1000, 5000, 20000)}
}


# ------------------------------------------------------------------------------------ the models
class DecoderModel(MetaModel):
    """``z_t ~ N(0, I_8)``; ``y ~ N(f([x, z_t]), 0.2^2)``, ``f`` a 9-64-1 tanh MLP; guide: ``N(0, 0.01^2)`` (starts at 0)."""

    def __init__(self, latent_dim: int = LATENT, hidden: int = 64) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.decoder = nn.Sequential(nn.Linear(1 + latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def model(self, batch: TaskBatch) -> None:
        with task_plate(batch):
            z = pyro.sample("z", dist.Normal(batch.context_x.new_zeros(self.latent_dim), 1.0).to_event(1))

            def likelihood(x):
                shape = torch.broadcast_shapes(x.shape[:-1], z.shape[:-1])
                h = torch.cat([x.expand(*shape, 1), z.expand(*shape, self.latent_dim)], -1)
                return dist.Normal(self.decoder(h), SIGMA).to_event(1)

            observe(batch, likelihood)

    def guide(self, batch: TaskBatch) -> None:
        with task_plate(batch):
            loc = batch.context_x.new_zeros(batch.num_tasks, 1, self.latent_dim)
            pyro.sample("z", dist.Normal(loc, 0.01).to_event(1))


def mlp_model() -> DecoderModel:
    torch.manual_seed(0)
    model = DecoderModel()
    with torch.no_grad():
        for layer, sd in ((model.decoder[0], 3**-0.5), (model.decoder[2], 0.25)):
            layer.weight.normal_(0.0, sd)
            layer.bias.normal_(0.0, 0.5 * sd)
    return model.eval()


def mlp_tasks(model: DecoderModel, T: int, seed: int = 1) -> TaskBatch:
    """``T`` tasks of the model itself: ``x ~ U(-2, 2)``, ``z ~ N(0, I)``, ``y ~ N(f(x, z), 0.2^2)``."""
    g = torch.Generator().manual_seed(seed)
    x = 4 * torch.rand(T, POINTS, 1, generator=g) - 2
    z = torch.randn(T, 1, LATENT, generator=g)
    with torch.no_grad():
        f = model.decoder(torch.cat([x, z.expand(T, POINTS, LATENT)], -1))
    y = f + SIGMA * torch.randn(T, POINTS, 1, generator=g)
    return TaskBatch(x, y, x[:, :0], y[:, :0])


def np_model(steps: int) -> Tuple[MetaModel, Any]:
    from pyro_meta.data import Sinusoid
    from pyro_meta.models import NeuralProcess

    torch.manual_seed(0)
    model = NeuralProcess(latent_dim=LATENT, hidden=128, num_layers=3)
    tasks = Sinusoid(noise_std=0.2)
    if steps:
        pyro_meta.fit(
            model,
            tasks,
            num_steps=steps,
            tasks_per_batch=16,
            num_context=(1, 10),
            num_target=(10, 20),
            lr=2e-3,
            lr_decay=0.1,
            progress=False,
            seed=0,
        )
    return model.eval(), tasks


def np_tasks(tasks: Any, T: int, seed: int = 1) -> TaskBatch:
    return tasks.sample(T, POINTS, 0, generator=torch.Generator().manual_seed(seed)).context_only()


# ------------------------------------------------------------------------------------ the arms
def min_ess_per_task(z: torch.Tensor) -> torch.Tensor:
    """``z [C, S, T, D]`` -> each task's smallest bulk ESS over ``D`` (ArviZ's), ``[T]``."""
    return rhat_ess(z)["ess_bulk"].amin(-1)


def run_pyro_meta(model: MetaModel, batch: TaskBatch, arm: str, warmup: int, samples: int) -> Dict[str, Any]:
    if arm.startswith("nuts"):
        jit = {"nuts eager": False, "nuts jit": True, "nuts inductor": "inductor"}[arm]
        opts = dict(method="nuts", num_chains=1, jit_compile=jit)
    else:
        opts = dict(method="batched_hmc", num_chains=1, compile=arm == "batched compiled")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        post = pyro_meta.infer(model, batch, num_samples=samples, num_warmup=warmup, seed=0, progress=False, **opts)
        wall = time.perf_counter() - t0
    d = post.diagnostics
    comp = d.get("compile")
    comp = comp[0] if isinstance(comp, list) else comp
    compile_s = (comp["trace_seconds"] + comp["compile_seconds"]) if comp and "trace_seconds" in comp else 0.0
    if arm == "nuts inductor" and d["jit"] != "inductor":
        arm += " (fell back)"
    return {
        "arm": arm,
        "wall": wall,
        "compile": compile_s,
        "grads": d["num_grad_evals"],
        "ess": min_ess_per_task(post.samples["z"]),
        "divergences": int(d["divergences"].sum()),
    }


def _jax_mlp(params, h):
    import jax.numpy as jnp

    for i, (w, b) in enumerate(params["layers"]):
        h = h @ w.T + b
        if i < len(params["layers"]) - 1:
            h = jnp.tanh(h) if params["act"] == "tanh" else h * (1 / (1 + jnp.exp(-h)))
    return h


def numpyro_setup(model: MetaModel, batch: TaskBatch, kind: str):
    """The model in NumPyro with the torch weights: ``(numpyro_model, args, z0)``; densities checked equal."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as ndist

    seq = model.decoder
    layers = [
        (jnp.asarray(m.weight.detach().numpy()), jnp.asarray(m.bias.detach().numpy()))
        for m in seq
        if isinstance(m, nn.Linear)
    ]
    params = {"layers": layers, "act": "tanh" if kind == "mlp" else "silu"}
    min_std = getattr(model, "min_std", None)

    def nmodel(x, y):
        T, N = x.shape[0], x.shape[1]
        with numpyro.plate("tasks", T, dim=-2):
            z = numpyro.sample("z", ndist.Normal(jnp.zeros(LATENT), 1.0).to_event(1))
            h = jnp.concatenate([x, jnp.broadcast_to(z, (T, N, LATENT))], -1)
            out = _jax_mlp(params, h)
            if kind == "mlp":
                loc, scale = out, SIGMA
            else:
                loc, raw = out[..., :1], out[..., 1:]
                scale = min_std + (1 - min_std) * jax.nn.softplus(raw)
            with numpyro.plate("points", N, dim=-1):
                numpyro.sample("y", ndist.Normal(loc, scale).to_event(1), obs=y)

    pyro.set_rng_seed(0)  # the start infer(seed=0) uses: prepare, then the guide's mean over 64 draws
    problem = prepare(model, batch, progress=False)
    z0 = _initial_params(problem, "guide", 1)[0]["z"]
    args = (jnp.asarray(batch.context_x.numpy()), jnp.asarray(batch.context_y.numpy()))
    # identical densities: NumPyro's log joint vs the Pyro model's at the start
    from numpyro.infer.util import log_density

    lp_jax = float(log_density(nmodel, args, {}, {"z": jnp.asarray(z0.numpy())})[0])
    tr = pyro.poutine.trace(pyro.poutine.condition(problem.fn, data={"z": z0})).get_trace(problem.cond)
    lp_torch = float(tr.log_prob_sum().detach())
    if abs(lp_jax - lp_torch) > 1e-3 * max(1.0, abs(lp_torch)):
        raise AssertionError(f"NumPyro and Pyro log densities differ: {lp_jax} vs {lp_torch}")
    return nmodel, args, z0


def run_numpyro(model: MetaModel, batch: TaskBatch, kind: str, warmup: int, samples: int) -> List[Dict[str, Any]]:
    """Two timed ``mcmc.run`` calls of one ``MCMC`` object (the second reuses the compiled sampler).

    NumPyro reports ``num_steps`` for the kept draws only; the warmup's are counted by an untimed
    ``mcmc.warmup(collect_warmup=True)`` with the same key, which repeats the same warmup iterations.
    """
    import jax
    from numpyro.infer import MCMC, NUTS, init_to_value

    nmodel, args, z0 = numpyro_setup(model, batch, kind)
    kernel = NUTS(nmodel, init_strategy=init_to_value(values={"z": jax.numpy.asarray(z0.numpy())}))
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=samples, num_chains=1, progress_bar=False)
    timed = []
    for arm in ("numpyro first", "numpyro warm"):
        t0 = time.perf_counter()
        mcmc.run(jax.random.PRNGKey(0), *args, extra_fields=("num_steps",))
        z = np.asarray(mcmc.get_samples()["z"])  # [S, T, 1, D]
        timed.append((arm, time.perf_counter() - t0))
    extra = mcmc.get_extra_fields()
    steps, div = int(np.asarray(extra["num_steps"]).sum()), int(np.asarray(extra["diverging"]).sum())
    mcmc.warmup(jax.random.PRNGKey(0), *args, extra_fields=("num_steps",), collect_warmup=True)
    steps += int(np.asarray(mcmc.get_extra_fields()["num_steps"]).sum())
    ess = min_ess_per_task(torch.from_numpy(z[None, :, :, 0, :].copy()))
    return [
        {"arm": arm, "wall": wall, "compile": 0.0, "grads": steps, "ess": ess, "divergences": div}
        for arm, wall in timed
    ]


def have_numpyro() -> Optional[str]:
    try:
        import jax  # noqa: F401
        import numpyro  # noqa: F401
    except ImportError as err:
        return f"NumPyro arm skipped: {err} (pip install -e '.[bench]': numpyro and jax[cpu], pinned together)"
    return None


def numpyro_versions() -> Dict[str, str]:
    """``{"numpyro": ..., "jax": ...}`` when both import, else ``{}`` (recorded with the machine facts)."""
    if have_numpyro():
        return {}
    import jax
    import numpyro

    return {"numpyro": numpyro.__version__, "jax": jax.__version__}


# ------------------------------------------------------------------------------------ the run
def row_of(model_name: str, T: int, r: Dict[str, Any], warmup: int, samples: int) -> Dict[str, Any]:
    run_s = max(r["wall"] - r["compile"], 1e-9)
    ess = float(r["ess"].median())
    return {
        "model": model_name,
        "T": T,
        "arm": r["arm"],
        "wall": r["wall"],
        "compile": r["compile"],
        "grads_per_s": r["grads"] / run_s,
        "grads_per_iter": r["grads"] / (warmup + samples),
        "ess": ess,
        "ess_per_s": ess / run_s,
        "ms_per_task": 1e3 * run_s / T,
        "divergences": r["divergences"],
    }


def fmt_rows(rows: List[Dict[str, Any]]) -> str:
    header = ["model", "T", "arm", "wall s", "compile s", "grads/s", "grads/iter", "ESS", "ESS/s", "ms/task", "div"]
    body = [
        [
            r["model"],
            r["T"],
            r["arm"],
            f"{r['wall']:.1f}",
            f"{r['compile']:.1f}",
            f"{r['grads_per_s']:.0f}",
            f"{r['grads_per_iter']:.1f}",
            f"{r['ess']:.0f}",
            f"{r['ess_per_s']:.2f}",
            f"{r['ms_per_task']:.1f}",
            r["divergences"],
        ]
        for r in rows
    ]
    return markdown_table(header, body)


def _get(rows, model, T, arm, key):
    for r in rows:
        if r["model"] == model and r["T"] == T and r["arm"] == arm:
            return r[key]
    return None


def checks(rows: List[Dict[str, Any]]) -> List[List[str]]:
    """The issue's acceptance figures, each from rows of this run (``n/a`` when an arm did not run at that T; the
    figures of an arm absent from the run, as eager ``batched`` from the reduced plan, are left out)."""
    out = []
    ran = {r["arm"] for r in rows}

    def ratio(a, b):
        return None if a is None or b is None else a / b

    r = ratio(_get(rows, "mlp", 50, "nuts inductor", "grads_per_s"), _get(rows, "mlp", 50, "nuts jit", "grads_per_s"))
    out.append(["nuts inductor / nuts jit, gradient evaluations per second, mlp, 50 tasks", ">= 1.4", r])
    best = None
    for arm in ("batched compiled", "batched"):
        v = _get(rows, "mlp", 200, arm, "ess_per_s")
        if v is not None and (best is None or v > best[1]):
            best = (arm, v)
    jit200 = _get(rows, "mlp", 200, "nuts jit", "ess_per_s")
    if best is not None:
        out.append(
            [f"{best[0]} / nuts jit, median per-task ESS per second, mlp, 200 tasks", ">= 4", ratio(best[1], jit200)]
        )
        for arm in [a for a in ("batched compiled", "batched") if a in ran]:  # the same at 50 tasks (reduced plan)
            out.append(
                [
                    f"{arm} / nuts jit, median per-task ESS per second, mlp, 50 tasks",
                    "(>= 4 at 200)",
                    ratio(_get(rows, "mlp", 50, arm, "ess_per_s"), _get(rows, "mlp", 50, "nuts jit", "ess_per_s")),
                ]
            )
        for T in (50, 200, 1000):
            warm = _get(rows, "mlp", T, "numpyro warm", "ess_per_s")
            ours = _get(rows, "mlp", T, best[0], "ess_per_s")
            out.append(
                [f"{best[0]} / numpyro warm, ESS per second, mlp, {T} tasks", ">= 1/3 (goal)", ratio(ours, warm)]
            )
        for arm in [a for a in ("batched", "batched compiled") if a in ran]:
            for T in (200, 1000):
                r = ratio(_get(rows, "mlp", T, arm, "ms_per_task"), _get(rows, "mlp", 50, arm, "ms_per_task"))
                out.append([f"{arm}: ms per task at {T} / at 50 tasks, mlp", "<= 2", r])
    return [[a, b, "n/a" if c is None else f"{c:.2f}"] for a, b, c in out]


def main(argv=None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CI): checks the script runs")
    p.add_argument(
        "--plan",
        default="full",
        choices=("full", "reduced", "acceptance"),
        help="full: both models, T up to 1000; reduced: the mlp model's acceptance arms, T up to 200; "
        "acceptance: only the arms and T the checks read (mlp, T up to 1000)",
    )
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--np-steps", type=int, default=1500, help="meta-training steps of the NeuralProcess")
    p.add_argument("--models", default="mlp,np")
    p.add_argument("--tasks", default=None, help="only these T (comma-separated), within the plan")
    p.add_argument("--arms", default=None, help="only these arms (comma-separated), within the plan")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (the batched sampler at large T)")
    p.add_argument("--json", default=None, help="write the rows and checks to this JSON file")
    p.add_argument("--markdown", default=None, help="write the tables to this markdown file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    plan = {"full": PLAN, "reduced": REDUCED_PLAN, "acceptance": ACCEPTANCE_PLAN}[args.plan]
    if args.smoke:
        plan, args.warmup, args.samples, args.np_steps = SMOKE_PLAN, 10, 10, 0
    if args.device != "cpu":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: no CUDA device here (torch.cuda.is_available() is False)")
        plan = CUDA_PLAN
    skip = have_numpyro()
    if skip:
        print(skip)
    load = os.getloadavg()
    print(
        f"load average at start: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min), {os.cpu_count()} cores"
    )
    rows: List[Dict[str, Any]] = []
    t_start = time.perf_counter()
    for name in [m for m in args.models.split(",") if m in plan]:
        if name == "mlp":
            model = mlp_model()
        else:
            model, tasks = np_model(args.np_steps)
        for T in sorted({t for ts in plan[name].values() for t in ts}):
            if args.tasks and str(T) not in args.tasks.split(","):
                continue
            batch = mlp_tasks(model, T) if name == "mlp" else np_tasks(tasks, T)
            if args.device != "cpu":
                model, batch = model.to(args.device), batch.to(args.device)
            for arm, Ts in plan[name].items():
                if T not in Ts or (args.arms and arm not in args.arms.split(",")):
                    continue
                if arm == "numpyro":
                    if skip or args.device != "cpu":
                        continue
                    results = run_numpyro(model, batch, name, args.warmup, args.samples)
                else:
                    results = [run_pyro_meta(model, batch, arm, args.warmup, args.samples)]
                for r in results:
                    rows.append(row_of(name, T, r, args.warmup, args.samples))
                    print(fmt_rows(rows[-1:]).splitlines()[-1], flush=True)
    total = time.perf_counter() - t_start
    load_end = os.getloadavg()
    table = fmt_rows(rows)
    check_rows = checks(rows)
    print("\n" + table)
    print(markdown_table(["check", "target", "measured"], check_rows))
    print(f"total {total / 60:.1f} min; load average at end {load_end[0]:.1f} / {load_end[1]:.1f} / {load_end[2]:.1f}")
    result = {
        "rows": [{k: v for k, v in r.items()} for r in rows],
        "checks": check_rows,
        "seconds": total,
        "load_start": load,
        "load_end": load_end,
        "warmup": args.warmup,
        "samples": args.samples,
        "np_steps": args.np_steps,
        "smoke": args.smoke,
        "device": args.device,
        "numpyro_skipped": skip,
        "machine": {**machine_info(), **numpyro_versions()},
        "plan": args.plan,
        "thinning": THINNING if plan is PLAN else f"arms and T of this run: {plan}",
        "table": table,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(render(result))
    return result


def render(res: Dict[str, Any]) -> str:
    machine = "\n".join(f"- {k}: {v}" for k, v in res["machine"].items())
    ls, le = res["load_start"], res["load_end"]
    return (
        f"# MCMC speed (`benchmarks/mcmc_speed.py`)\n\n"
        f"{'**SMOKE RUN: tiny sizes, the numbers mean nothing.**' if res['smoke'] else ''}\n\n"
        f"One chain of {res['warmup']} warmup + {res['samples']} iterations per arm, one thread, device "
        f"{res['device']}; NeuralProcess meta-trained {res['np_steps']} steps. Load average (1/5/15 min) "
        f"{ls[0]:.1f}/{ls[1]:.1f}/{ls[2]:.1f} at the start and {le[0]:.1f}/{le[1]:.1f}/{le[2]:.1f} at the end on "
        f"{res['machine']['cores']} cores: other jobs shared the machine, so absolute times are pessimistic "
        f"and the ratios within this run are what counts. Total {res['seconds'] / 60:.1f} min. Thinned grid: "
        f"{res['thinning']}.{' ' + res['numpyro_skipped'] if res['numpyro_skipped'] else ''}\n\n"
        f"{res['table']}\n## Checks\n\n{markdown_table(['check', 'target', 'measured'], res['checks'])}\n"
        f"Machine and software:\n\n{machine}\n"
    )


if __name__ == "__main__":
    main()
