"""The config-driven commands: ``train``, ``evaluate`` and ``predict`` (``pyro-meta`` runs them).

* :func:`train` meta-trains the configured model with :func:`pyro_meta.fit` and writes
  ``OUT/checkpoint.ckpt`` (model class, constructor arguments, versions, fit's settings, and the
  whole configuration under ``meta["app"]``); ``resume=True`` continues a killed run from it.
* :func:`evaluate` rebuilds the model from a checkpoint alone (:func:`pyro_meta.rebuild_model`),
  scores it with :func:`pyro_meta.evaluate` as the configuration says, writes ``results.csv`` /
  ``results.md`` and prints a preset's published reference number beside the measured one.
* :func:`predict` rebuilds the model and writes, for every target point of a CSV file, the
  predictive mean and 5% / 95% quantiles (class probabilities for labels) as CSV.

Each raises :class:`~pyro_meta.apps.config.ConfigError` for a bad configuration or argument
(before any work), anything else for a failure while running.
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pyro
import torch
import torch.distributed as dist

from ..checkpoint import CheckpointError, check_writable, read_checkpoint_meta, rebuild_model
from ..data.batch import TaskBatch
from ..distributed import init_distributed, world
from ..evaluation import EvaluationTable
from ..evaluation import evaluate as evaluate_models
from ..inference import available_methods, fit, get_method, infer
from .build import TRUSTED, build_model, build_oracle, build_tasks, describe, read_table
from .config import DATA_DEFAULTS, ConfigError, check_config

__all__ = ["CHECKPOINT", "evaluate", "predict", "train"]

CHECKPOINT = "checkpoint.ckpt"
APP_FORMAT = 1
#: [train] keys that may change between a run and its --resume
RESUMABLE = ("num_steps", "checkpoint_every")
#: columns printed by `pyro-meta evaluate` (all of them go to results.csv / results.md)
SHOWN = (
    "model",
    "method",
    "num_context",
    "num_tasks",
    "nll",
    "nll_se",
    "nll_gap",
    "mse",
    "mse_se",
    "crps",
    "coverage_90",
    "accuracy",
    "ece",
    "seconds",
    "divergences",
    "min_ess",
    "max_r_hat",
)

Echo = Callable[[str], None]


# ------------------------------------------------------------------------------------ helpers
def ensure_out_dir(path: str, flag: str = "--out") -> str:
    """Create the output folder and prove it writable; ``ConfigError`` naming ``flag`` otherwise."""
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".pyro-meta-", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"{flag}: cannot write to {path!r} ({e.strerror or e})") from None
    return path


def _checkpoint_meta(path: str) -> Dict[str, Any]:
    try:
        return read_checkpoint_meta(path)
    except FileNotFoundError:
        raise ConfigError(f"--checkpoint: no such file {path!r}") from None
    except IsADirectoryError:
        raise ConfigError(f"--checkpoint: {path!r} is a directory; give the checkpoint file") from None
    except CheckpointError as e:
        raise ConfigError(f"--checkpoint: {e}") from None


def _recorded_config(path: str, header: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    app = (header.get("meta") or {}).get("app")
    if not isinstance(app, dict) or "config" not in app:
        return None
    return check_config(app["config"], source=f"{path} (its recorded configuration)")


def _rebuild(path: str, allow: Sequence[str]) -> Any:
    try:
        return rebuild_model(path, allow=(*TRUSTED, *allow))
    except CheckpointError as e:
        raise ConfigError(f"--checkpoint: {e}") from None


def _seed(config: Mapping[str, Any], section: str, seed: Optional[int]) -> int:
    return int(seed if seed is not None else config.get(section, {}).get("seed", 0))


def _is_labels(tasks: Any) -> bool:
    """Whether the tasks' ``y`` are class labels (a family: one task drawn with a private generator)."""
    if isinstance(tasks, TaskBatch):
        return tasks.is_classification
    return tasks.sample(1, 1, 1, generator=torch.Generator().manual_seed(0)).is_classification


def _config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> List[str]:
    """Keys whose values differ between two configurations (``[train]`` RESUMABLE keys and text ignored)."""
    out = []
    for section in sorted(set(old) | set(new)):
        if section in ("description", "reference", "evaluate"):
            continue
        a, b = old.get(section, {}), new.get(section, {})
        for key in sorted(set(a) | set(b)):
            if section == "train" and key in RESUMABLE:
                continue
            if _plain(a.get(key)) != _plain(b.get(key)):
                out.append(f"{section}.{key}")
    return out


def _plain(v: Any) -> Any:
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


# -------------------------------------------------------------------------------------- train
def _join_torchrun() -> Optional[torch.device]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1) join its process group: ``fit`` then trains data-parallel.

    Returns this rank's GPU (``cuda:LOCAL_RANK``) with NCCL, else None (the CPU, gloo).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not (dist.is_available() and dist.is_initialized()):
        return None
    device = init_distributed()
    return device if device.type == "cuda" else None


def train(
    config: Dict[str, Any],
    out: str,
    resume: bool = False,
    seed: Optional[int] = None,
    progress: bool = True,
    allow: Sequence[str] = (),
    echo: Echo = print,
) -> Dict[str, Any]:
    """Meta-train the configured model; the checkpoint is ``out/checkpoint.ckpt``.

    Returns ``{"checkpoint", "fit", "model"}``. A checkpoint already there is refused unless
    ``resume`` (then its recorded configuration must match, apart from ``train.num_steps`` and
    ``train.checkpoint_every``, and training continues from its last step). Launched by ``torchrun``
    with several processes, it trains data-parallel (:mod:`pyro_meta.distributed`): rank 0 prints and
    writes the checkpoint, every rank returns the same model.
    """
    device = _join_torchrun()
    rank = world()[0]
    if rank != 0:

        def echo(*_: Any, **__: Any) -> None:
            return None

    ckpt = os.path.join(out, CHECKPOINT)
    ensure_out_dir(out)
    try:
        check_writable(ckpt)
    except CheckpointError as e:
        raise ConfigError(f"--out: {e}") from None
    if os.path.exists(ckpt):
        if not resume:
            raise ConfigError(f"--out: {ckpt} exists; pass --resume to continue that run, or choose another --out")
        recorded = _recorded_config(ckpt, _checkpoint_meta(ckpt))
        if recorded is None:
            raise ConfigError(f"--resume: {ckpt} records no configuration of pyro-meta train; cannot resume it")
        changed = _config_diff(recorded, config)
        if changed:
            raise ConfigError(
                f"--resume: the configuration differs from the one {ckpt} was trained with at {', '.join(changed)}"
            )
    elif resume:
        echo(f"--resume: no checkpoint in {out} yet; starting from step 0")
    settings = _evaluation_settings(config)  # a bad [evaluate] fails now, not after training
    opts = dict(config.get("train", {}))
    seed = _seed(config, "train", seed)
    checkpoint_every = opts.pop("checkpoint_every", 500)
    opts.pop("seed", None)
    pyro.set_rng_seed(seed)
    model = build_model(config, allow)
    tasks = build_tasks(config, "train")
    if isinstance(tasks, TaskBatch) and opts.get("tasks_per_batch", 16) > tasks.num_tasks:
        raise ConfigError(
            f"train.tasks_per_batch: {opts.get('tasks_per_batch', 16)} exceeds the {tasks.num_tasks} "
            f"tasks of {config['data']['path']}"
        )
    build_oracle(settings["oracle"], tasks)
    labels = _is_labels(tasks)
    model_words, task_words = describe(config)
    steps = opts.get("num_steps", 1000)
    echo(
        f"meta-training {model_words} on {task_words} for {steps} steps, seed {seed} "
        f"({torch.get_num_threads()} torch thread(s)); checkpoint {ckpt}"
    )
    app = {"format": APP_FORMAT, "config": config, "labels": labels}
    result = fit(
        model,
        tasks,
        seed=seed,
        progress=progress and rank == 0,
        checkpoint=ckpt,
        checkpoint_every=checkpoint_every,
        resume=resume,
        checkpoint_meta={"app": app},
        device=device,
        **opts,
    )
    if result.interrupted:
        echo(f"interrupted at step {result.num_steps}; {ckpt} holds that state: continue with --resume")
    else:
        echo(
            f"trained {result.num_steps} steps in {result.seconds:.1f} s, final loss {result.final_loss:.4g}; "
            f"wrote {ckpt}"
        )
    return {"checkpoint": ckpt, "fit": result, "model": model}


# ----------------------------------------------------------------------------------- evaluate
def _evaluation_settings(config: Mapping[str, Any]) -> Dict[str, Any]:
    """``[evaluate]`` checked against the method registry: methods, options, the rest for ``evaluate``."""
    ev = dict(config.get("evaluate", {}))
    ev.pop("tasks", None)  # the evaluation task family: build_tasks(config, "evaluate")
    methods = ev.pop("methods", ["amortized"])
    for m in methods:
        if m not in available_methods():
            raise ConfigError(f"evaluate.methods: unknown method {m!r} (registered: {', '.join(available_methods())})")
    options = ev.pop("options", {})
    for m, opts in options.items():
        if m not in available_methods():
            raise ConfigError(
                f"evaluate.options.{m}: unknown method {m!r} (registered: {', '.join(available_methods())})"
            )
        try:
            get_method(m).validate({k: v for k, v in opts.items() if k != "num_samples"})
        except (TypeError, ValueError) as e:
            raise ConfigError(f"evaluate.options.{m}: {e}") from None
    return {"methods": methods, "method_options": options, "oracle": ev.pop("oracle", None), **ev}


def reference_line(
    reference: Mapping[str, Any], table: EvaluationTable, methods: Sequence[str], sizes: Sequence[int]
) -> str:
    """The published number beside the measured one (same metric, method and context size)."""
    metric = reference["metric"]
    method = reference.get("method", methods[0])
    size = reference.get("num_context", sizes[0])
    rows = [r for r in table.select(method=method, num_context=size) if metric in r]
    if reference.get("value") is not None:
        published = f"{metric} {reference['value']:.4g}"
    else:
        published = f"{metric} not recorded"
    if rows:
        r = rows[0]
        se = r.get(f"{metric}_se")
        measured = f"{metric} {r[metric]:.4g}" + (f" +- {se:.2g} (1 s.e.)" if se is not None else "")
        measured += f" ({method}, {size} context points, {r['num_tasks']} tasks)"
    else:
        measured = f"no {method} row with {size} context points evaluated"
    line = f"published: {published} [{reference['source']}] | measured here: {measured}"
    if reference.get("note"):
        line += f"\n  note: {reference['note']}"
    return line


def evaluate(
    checkpoint: str,
    config: Optional[Dict[str, Any]] = None,
    out: Optional[str] = None,
    seed: Optional[int] = None,
    progress: bool = True,
    allow: Sequence[str] = (),
    echo: Echo = print,
) -> Dict[str, Any]:
    """Rebuild the model of ``checkpoint`` and evaluate it (``config`` default: the recorded one).

    Writes ``out/results.csv`` and ``out/results.md`` (``out`` default: the checkpoint's folder).
    Returns ``{"table", "files", "reference"}``.
    """
    header = _checkpoint_meta(checkpoint)
    if config is None:
        config = _recorded_config(checkpoint, header)
        if config is None:
            raise ConfigError(
                f"--config: {checkpoint} records no pyro-meta configuration (written by fit directly?); pass --config"
            )
    settings = _evaluation_settings(config)
    out = ensure_out_dir(out if out is not None else os.path.dirname(os.path.abspath(checkpoint)))
    model = _rebuild(checkpoint, allow)
    tasks = build_tasks(config, "evaluate")
    oracle = build_oracle(settings.pop("oracle"), tasks)
    settings["seed"] = _seed(config, "evaluate", seed)
    sizes = settings.setdefault("num_context", [5])
    name = type(model).__name__  # the checkpoint's model, whatever --config names
    echo(
        f"evaluating {name} from {checkpoint} (step {header.get('step')}) with {', '.join(settings['methods'])} "
        f"on {describe(config, 'evaluate')[1]}, context sizes {sizes}, seed {settings['seed']}"
    )
    table = evaluate_models({name: model}, tasks, oracle=oracle, progress=progress, **settings)
    files = {"csv": os.path.join(out, "results.csv"), "markdown": os.path.join(out, "results.md")}
    table.to_csv(files["csv"])
    with open(files["markdown"], "w") as f:
        f.write(table.to_markdown())
    echo(table.to_markdown(columns=[c for c in SHOWN if c in table.columns]))
    reference = None
    if "reference" in config:
        reference = reference_line(config["reference"], table, settings["methods"], sizes)
        echo(reference)
    for kind, path in files.items():
        echo(f"wrote {kind}: {path}")
    return {"table": table, "files": files, "reference": reference}


# ------------------------------------------------------------------------------------ predict
def _prediction_batch(frame: Any, data: Mapping[str, Any], labels: bool, path: str) -> TaskBatch:
    """Context = rows with observed ``y`` (or the split column's ``"context"`` rows), targets = the rest."""
    y_cols = list(data["y"])
    missing = [c for c in [data["task"], *data["x"], *y_cols] if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"--data: {path} lacks the column(s) {missing} (columns: {list(frame.columns)}; the "
            "checkpoint's [data] names task, x and y)"
        )
    split = data.get("split") if data.get("split") in frame.columns else None
    unobserved = frame[y_cols].isna().all(axis=1).to_numpy()
    if split is None:
        flags = np.where(unobserved, "target", "context")
        frame = frame.assign(__split__=flags)
        split = "__split__"
    if labels and len(y_cols) == 1 and frame[y_cols[0]].dtype.kind == "f":
        column = frame[y_cols[0]]
        known = column.dropna()
        if not bool((known == known.round()).all()):
            raise ConfigError(f"--data: column {y_cols[0]!r} of {path} must hold integer class labels")
        frame = frame.assign(**{y_cols[0]: column.fillna(0).astype("int64")})
    is_target = frame[split].astype(str).to_numpy() == "target"
    if not is_target.any():
        raise ConfigError(
            f"--data: {path} has no point to predict (rows with an empty {'/'.join(y_cols)}, or "
            f"'target' rows in column {split!r})"
        )
    y = y_cols[0] if len(y_cols) == 1 else y_cols
    try:
        batch = TaskBatch.from_table(
            frame, task=data["task"], x=list(data["x"]), y=y, split=split, dtype=torch.get_default_dtype()
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--data: {path}: {e}") from None
    if labels and bool(unobserved[is_target].any()):
        batch = batch.without_target_y()
    return batch


def predict(
    checkpoint: str,
    data_path: str,
    out: Optional[str] = None,
    method: Optional[str] = None,
    num_samples: Optional[int] = None,
    seed: Optional[int] = None,
    allow: Sequence[str] = (),
    progress: bool = True,
    echo: Echo = print,
) -> Dict[str, Any]:
    """Predict the target points of the CSV file ``data_path`` with the model of ``checkpoint``.

    Rows are grouped into tasks by the checkpoint's ``[data]`` columns (default ``task_id``,
    ``x``, ``y``); rows with an observed ``y`` are each task's context, rows with an empty ``y`` are
    predicted (or, when the file has the configured split column, its ``"target"`` rows). Writes
    one CSV row per target point: the task id, the inputs, the observed ``y`` when known, and
    ``<y>_mean``, ``<y>_q05``, ``<y>_q95`` (regression) or ``p_<class>`` and ``predicted``
    (labels). Returns ``{"path", "posterior", "rows"}``.
    """
    header = _checkpoint_meta(checkpoint)
    app = (header.get("meta") or {}).get("app") or {}
    config = _recorded_config(checkpoint, header) or {}
    data = {**DATA_DEFAULTS, **config.get("data", {})}
    settings = config.get("evaluate", {})
    method = method or settings.get("methods", ["amortized"])[0]
    if method not in available_methods():
        raise ConfigError(f"--method: unknown method {method!r} (registered: {', '.join(available_methods())})")
    options = dict(settings.get("options", {}).get(method, {}))
    num_samples = int(num_samples or options.pop("num_samples", settings.get("num_samples", 200)))
    options.pop("num_samples", None)
    if out is None:
        out = os.path.splitext(os.path.basename(data_path))[0] + "_predictions.csv"
    if os.path.isdir(out):
        raise ConfigError(f"--out: {out!r} is a directory; give a file name")
    ensure_out_dir(os.path.dirname(os.path.abspath(out)))
    frame = read_table(data_path, "--data")
    batch = _prediction_batch(frame, data, bool(app.get("labels", False)), data_path)
    model = _rebuild(checkpoint, allow)
    seed = _seed(config, "evaluate", seed)
    echo(
        f"predicting {int(batch.target_mask.sum())} points of {batch.num_tasks} tasks from {data_path} with "
        f"{type(model).__name__} ({method}, {num_samples} draws, seed {seed})"
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        post = infer(model, batch, method=method, num_samples=num_samples, seed=seed, progress=progress, **options)
    pred = post.predict()
    rows = _prediction_rows(model, batch, pred, data)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    echo(f"wrote {len(rows)} predictions to {out} in {time.perf_counter() - t0:.1f} s")
    return {"path": out, "posterior": post, "rows": rows}


def _short(v: Any) -> float:
    """A float32 value as the shortest float that reads back to it (``-3.8889``, not ``-3.888900041580200``)."""
    return float(str(np.float32(v)))


def _prediction_rows(model: Any, batch: TaskBatch, pred: Any, data: Mapping[str, Any]) -> List[Dict[str, Any]]:
    ids = batch.info.get("task_id", list(range(batch.num_tasks)))
    x_names, y_names = list(data["x"]), list(data["y"])
    mask = batch.target_mask
    if batch.is_classification:
        probs = pred.class_probs  # [T, Nt, K], the predictive class probabilities
    else:
        mean = pred.mean
        lo, hi = pred.interval(0.9)
    rows = []
    for t in range(batch.num_tasks):
        for n in torch.nonzero(mask[t]).flatten().tolist():
            row: Dict[str, Any] = {data["task"]: ids[t]}
            row.update({c: _short(batch.target_x[t, n, i]) for i, c in enumerate(x_names)})
            if batch.is_classification:
                if batch.target_y is not None:
                    row[y_names[0]] = int(batch.target_y[t, n])
                row["predicted"] = int(probs[t, n].argmax())
                row.update({f"p_{c}": _short(probs[t, n, c]) for c in range(probs.shape[-1])})
            else:
                for j, c in enumerate(y_names):
                    if batch.target_y is not None:
                        row[c] = _short(batch.target_y[t, n, j])
                    row[f"{c}_mean"] = _short(mean[t, n, j])
                    row[f"{c}_q05"] = _short(lo[t, n, j])
                    row[f"{c}_q95"] = _short(hi[t, n, j])
            rows.append(row)
    return rows
