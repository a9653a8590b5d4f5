"""``evaluate``: one tidy table of predictive metrics per model x inference method x context size.

Every model and method is scored on the *same* tasks: for each context size the evaluation batch
is drawn from ``tasks`` with a ``torch.Generator`` seeded by ``seed`` (so, for families that draw
the task parameters first, the context sizes share the task parameters too), and every inference
run is seeded by ``seed`` as well: two calls with the same model and seed give identical numbers
(apart from ``seconds``).

Regression rows (``T`` tasks, ``Nt`` target points, ``lp_tn = log p(y_tn | context_t)``):

* ``nll`` -- mean negative log predictive density per real target point,
  ``-sum_tn lp_tn / sum_t n_t``; ``nll_se`` its standard error over tasks (ratio estimator,
  ``sqrt(sum_t (s_t - nll n_t)^2 / (T (T - 1))) / mean_t n_t`` with ``s_t = -sum_n lp_tn``);
* ``mse`` (of the predictive mean) and ``mse_se``, ``crps`` (energy form over the draws),
  ``coverage_50`` / ``coverage_90`` (central predictive intervals);
* with an ``oracle``: ``nll_gap = nll - nll_oracle`` on the same tasks and its paired standard
  error ``nll_gap_se`` (the same ratio estimator on per-task differences);
* ``seconds`` -- wall time of ``infer`` plus the predictive; for MCMC ``divergences`` (all
  chains), ``min_ess`` / ``min_ess_tail`` (ArviZ's bulk / tail ESS) and ``max_r_hat`` (rank-normalised,
  with two or more chains) over tasks; for importance sampling ``min_ess``
  (importance ESS).

Memory: inference, the predictive and the draw metrics run in chunks of tasks sized to the memory
budget (:func:`pyro_meta.set_memory_budget`), so the peak does not grow with ``num_tasks`` beyond the
draws kept (``[S, T, Nt, Dy]``).

Classification rows (``context_y``/``target_y`` long class labels) carry ``nll``, ``nll_se``,
``accuracy`` and its standard error over tasks ``accuracy_se`` (the ratio estimator above; a 95% interval
is ``accuracy +- 1.96 accuracy_se``), ``ece`` (``ece_bins`` equal-width confidence bins) and ``brier`` instead of the regression metrics; the class
probabilities are the predictive's :attr:`~pyro_meta.PosteriorPredictive.class_probs`
``p(y = k | context) [T, Nt, K]`` (the mean over posterior draws of each draw's class probabilities).
"""

from __future__ import annotations

import csv
import math
import numbers
import os
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

import torch

from . import metrics
from .data.batch import TaskBatch
from .inference import available_methods, get_method, infer
from .inference.common import model_device, move_batch
from .locking import serialized
from .memory import get_memory_budget
from .model import MetaModel
from .oracles.base import check_oracle
from .validation import check_bool, check_int

__all__ = ["EvaluationTable", "evaluate"]

#: column order of the tables (columns a table lacks are left out)
COLUMNS = (
    "model",
    "method",
    "num_context",
    "num_tasks",
    "nll",
    "nll_se",
    "nll_gap",
    "nll_gap_se",
    "mse",
    "mse_se",
    "crps",
    "coverage_50",
    "coverage_90",
    "accuracy",
    "accuracy_se",
    "ece",
    "brier",
    "seconds",
    "divergences",
    "min_ess",
    "min_ess_tail",
    "max_r_hat",
)
ORACLE = "oracle"


class EvaluationTable:
    """A tidy table: one row (a dict) per model x method x context size.

    Parameters
    ----------
    rows : iterable of dict
        Column name -> value (str, int or float); rows may lack columns (shown empty).
    """

    def __init__(self, rows: Iterable[Mapping[str, Any]] = ()) -> None:
        self.rows: List[Dict[str, Any]] = [dict(r) for r in rows]

    @property
    def columns(self) -> List[str]:
        """Every column some row has: the known ones in :data:`COLUMNS` order, then the others."""
        seen = {k for r in self.rows for k in r}
        extra = sorted(seen.difference(COLUMNS))
        return [c for c in COLUMNS if c in seen] + extra

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return iter(self.rows)

    def __add__(self, other: "EvaluationTable") -> "EvaluationTable":
        if not isinstance(other, EvaluationTable):
            return NotImplemented
        return EvaluationTable(self.rows + other.rows)

    def select(self, **where: Any) -> "EvaluationTable":
        """Rows whose columns equal the given values, e.g. ``table.select(method="nuts")``."""
        return EvaluationTable(r for r in self.rows if all(r.get(k) == v for k, v in where.items()))

    def column(self, name: str) -> List[Any]:
        """The values of one column (``None`` where a row lacks it)."""
        return [r.get(name) for r in self.rows]

    def beating_oracle(self, metric: str = "nll", num_se: float = 2.0) -> "EvaluationTable":
        """Rows that beat the oracle row of their context size by more than ``num_se`` standard errors.

        For ``"nll"`` the paired gap is used (``nll_gap < -num_se * nll_gap_se``); for ``"mse"``
        ``mse < mse_oracle - num_se * mse_se``. An empty table means no model beats the oracle
        beyond sampling noise (the oracle is the Bayes-optimal predictive, so none should).
        """
        if metric not in ("nll", "mse"):
            raise ValueError(f"metric must be 'nll' or 'mse', got {metric!r}")
        oracles = {r["num_context"]: r for r in self.rows if r.get("method") == ORACLE}
        out = []
        for r in self.rows:
            o = oracles.get(r.get("num_context"))
            if r.get("method") == ORACLE or o is None:
                continue
            if metric == "nll" and r.get("nll_gap") is not None:
                bad = r["nll_gap"] < -num_se * r["nll_gap_se"]
            else:
                bad = r[metric] < o[metric] - num_se * r[f"{metric}_se"]
            if bad:
                out.append(r)
        return EvaluationTable(out)

    # ----------------------------------------------------------------------------- export
    def to_markdown(self, columns: Optional[Sequence[str]] = None, digits: int = 3) -> str:
        """A GitHub markdown table; floats with ``digits`` significant decimals, missing values empty."""
        cols = list(columns) if columns is not None else self.columns
        lines = [
            "| " + " | ".join(cols) + " |",
            "|" + "|".join("---" if c in ("model", "method") else "---:" for c in cols) + "|",
        ]
        for r in self.rows:
            lines.append("| " + " | ".join(_fmt(r.get(c), digits) for c in cols) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self, path: Union[str, os.PathLike]) -> None:
        """Write the table as CSV (header = :attr:`columns`, full float precision)."""
        cols = self.columns
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for r in self.rows:
                w.writerow({c: r.get(c, "") for c in cols})

    def to_pandas(self):
        """A ``pandas.DataFrame`` of the rows (pandas is optional: ``ImportError`` without it)."""
        try:
            import pandas as pd
        except ImportError as err:  # pragma: no cover - pandas comes with arviz
            raise ImportError("EvaluationTable.to_pandas needs pandas (pip install pandas)") from err
        return pd.DataFrame(self.rows, columns=self.columns)

    def __repr__(self) -> str:
        return f"EvaluationTable({len(self.rows)} rows, columns={self.columns})"


def _fmt(v: Any, digits: int) -> str:
    if v is None:
        return ""
    if isinstance(v, bool) or isinstance(v, numbers.Integral):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 10**-digits):
            return f"{v:.{digits}g}"
        return f"{v:.{digits}f}"
    return str(v)


# --------------------------------------------------------------------------------- scoring
def _ratio_se(per_task_sum: torch.Tensor, counts: torch.Tensor) -> Dict[str, float]:
    """Pooled mean ``sum s_t / sum n_t`` and its standard error over tasks (ratio estimator)."""
    s, n = per_task_sum.double(), counts.double()
    mean = s.sum() / n.sum()
    T = s.shape[0]
    se = ((s - mean * n).pow(2).sum() / (T * (T - 1))).sqrt() / n.mean() if T > 1 else s.new_tensor(float("nan"))
    return {"mean": float(mean), "se": float(se)}


def _regression_scores(lp: torch.Tensor, mean: torch.Tensor, draws: torch.Tensor, batch: TaskBatch) -> Dict[str, Any]:
    """Metrics of a regression predictive: ``lp [T, Nt]`` (padded 0), ``mean [T, Nt, Dy]``, ``draws [S, T, Nt, Dy]``."""
    y, m = batch.target_y, batch.target_mask
    counts = m.sum(-1)
    nll = _ratio_se(-(lp.double() * m).sum(-1), counts)
    sq = ((mean.double() - y.double()) ** 2).mean(-1) * m
    err = _ratio_se(sq.sum(-1), counts)
    return {
        "nll": nll["mean"],
        "nll_se": nll["se"],
        "mse": err["mean"],
        "mse_se": err["se"],
        **_draw_scores(draws, y, m),
    }


#: bytes the draw metrics (CRPS: float64 copies, a sort; coverage: quantiles) allocate per draw and point
_DRAW_METRIC_BYTES = 48


def _draw_scores(draws: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> Dict[str, float]:
    """CRPS and 50%/90% coverage of ``draws [S, T, Nt, Dy]``, over chunks of tasks sized to the memory budget.

    Each metric is a mean over real points (and features): chunk means are combined weighted by their
    real-point counts (one chunk, the exact call, when everything fits the budget).
    """
    S, T = draws.shape[0], draws.shape[1]
    per_task = S * max(1, y[0].numel()) * _DRAW_METRIC_BYTES
    step = max(1, min(T, get_memory_budget() // per_task))
    names = ("crps", "coverage_50", "coverage_90")
    totals, count = dict.fromkeys(names, 0.0), 0
    for start in range(0, T, step):
        tasks = slice(start, min(start + step, T))
        k = int(m[tasks].sum()) * (y.shape[-1] if y.dim() == 3 else 1)
        if k == 0:
            continue
        d, yy, mm = draws[:, tasks], y[tasks], m[tasks]
        part = {
            "crps": metrics.crps(d, yy, mm),
            "coverage_50": metrics.coverage(d, yy, mm, 0.5),
            "coverage_90": metrics.coverage(d, yy, mm, 0.9),
        }
        if step >= T:
            return part
        for name in names:
            totals[name] += part[name] * k
        count += k
    return {name: totals[name] / count for name in names}


def _classification_scores(log_probs: torch.Tensor, batch: TaskBatch, ece_bins: int = 10) -> Dict[str, Any]:
    """Metrics from ``log_probs [T, Nt, K]`` (``log p(y = c | context)``, padded points arbitrary)."""
    y, m = batch.target_y, batch.target_mask
    K = log_probs.shape[-1]
    if bool((y[m] >= K).any()):
        raise ValueError(f"target labels reach {int(y[m].max())} but the predictive has K = {K} classes")
    probs = torch.softmax(log_probs.double(), -1)  # renormalise over the K classes scored
    lp = torch.gather(log_probs.double(), -1, y.clamp(0, K - 1)[..., None])[..., 0] * m
    nll = _ratio_se(-lp.sum(-1), m.sum(-1))
    hits = (probs.argmax(-1) == y) & m
    acc = _ratio_se(hits.sum(-1).double(), m.sum(-1))
    ece, _ = metrics.expected_calibration_error(probs, y, m, bins=ece_bins)
    return {
        "nll": nll["mean"],
        "nll_se": nll["se"],
        "accuracy": metrics.accuracy(probs, y, m),
        "accuracy_se": acc["se"],
        "ece": ece,
        "brier": metrics.brier_score(probs, y, m),
    }


def _oracle_class_log_probs(
    log_prob: Callable[[torch.Tensor], torch.Tensor], batch: TaskBatch, num_classes: int
) -> torch.Tensor:
    """An oracle's ``[T, Nt, K]`` from its pointwise ``log_prob(labels [T, Nt]) -> [T, Nt]``, one class at a time."""
    shape = batch.target_mask.shape
    return torch.stack(
        [log_prob(torch.full(shape, c, dtype=torch.long, device=batch.target_mask.device)) for c in range(num_classes)],
        -1,
    )


def _num_classes(model: Any, batch: TaskBatch) -> int:
    k = getattr(model, "num_classes", None)
    if isinstance(k, int) and k > 1:
        return k
    return int(max(batch.context_y.max(), batch.target_y.max())) + 1


def _per_task_nll(lp: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
    return -(lp.double() * batch.target_mask).sum(-1)


def _score_method(
    model: MetaModel,
    batch: TaskBatch,
    method: str,
    num_samples: int,
    seed: int,
    options: Mapping[str, Any],
    ece_bins: int = 10,
) -> tuple:
    options = dict(options)
    num_samples = options.pop("num_samples", num_samples)
    t0 = time.perf_counter()
    post = infer(model, batch, method=method, num_samples=num_samples, seed=seed, **options)
    pred = post.predict()
    if batch.is_classification:
        log_probs = pred.class_log_probs  # [T, Nt, K]: the public predictive class probabilities
        lp = torch.gather(log_probs, -1, batch.target_y.clamp(0, log_probs.shape[-1] - 1)[..., None])[..., 0]
        row = _classification_scores(log_probs, batch, ece_bins)
    else:
        lp = pred.log_prob(batch.target_y)
        row = _regression_scores(lp, pred.mean, pred.flat, batch)
    row["seconds"] = time.perf_counter() - t0
    row.update(post.summary)  # the method's own columns (MCMC divergences / ESS / R-hat, importance ESS...)
    return row, _per_task_nll(lp, batch), post


def _score_oracle(oracle: Any, batch: TaskBatch, num_samples: int, seed: int, ece_bins: int = 10) -> tuple:
    t0 = time.perf_counter()
    lp = oracle.log_prob(batch)
    if batch.is_classification:
        row = _classification_scores(
            _oracle_class_log_probs(
                lambda y: oracle.log_prob(batch.replace(target_y=y)), batch, _num_classes(oracle, batch)
            ),
            batch,
            ece_bins,
        )
    else:
        mean, _ = oracle.predict(batch)
        draws = oracle.sample(batch, num_samples, generator=torch.Generator().manual_seed(seed))
        row = _regression_scores(lp, mean, draws, batch)
    row["seconds"] = time.perf_counter() - t0
    return row, _per_task_nll(lp, batch)


# ------------------------------------------------------------------------------ arguments
def _check_models(model: Any) -> Dict[str, MetaModel]:
    if isinstance(model, MetaModel):
        items = [(type(model).__name__, model)]
    elif isinstance(model, Mapping):
        items = list(model.items())
    elif isinstance(model, (list, tuple)):
        items = [(type(m).__name__, m) for m in model]
    else:
        raise TypeError(
            f"model must be a pyro_meta.MetaModel, a list of them or a dict name -> model, got {type(model).__name__}"
        )
    out: Dict[str, MetaModel] = {}
    for name, m in items:
        if not isinstance(m, MetaModel):
            raise TypeError(f"model {name!r} must be a pyro_meta.MetaModel, got {type(m).__name__}")
        base, k = str(name), 2
        while name in out:
            name, k = f"{base}_{k}", k + 1
        out[str(name)] = m
    if not out and model is not None:
        raise ValueError("model: no model to evaluate")
    return out


def _check_sizes(num_context: Union[int, Sequence[int]]) -> List[int]:
    sizes = (
        [num_context]
        if isinstance(num_context, numbers.Integral) and not isinstance(num_context, bool)
        else num_context
    )
    if (
        not isinstance(sizes, (list, tuple))
        or not sizes
        or any(isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1 for k in sizes)
    ):
        raise ValueError(f"num_context must be a positive int or a non-empty list of them, got {num_context!r}")
    return [int(k) for k in sizes]


def _positive_int(name: str, value: Any) -> int:
    return check_int(name, value)


@serialized
def evaluate(
    model: Union[MetaModel, Sequence[MetaModel], Mapping[str, MetaModel], None],
    tasks: Any,
    methods: Sequence[str] = ("amortized",),
    num_tasks: Optional[int] = None,
    num_context: Union[int, Sequence[int]] = 5,
    num_target: Optional[int] = None,
    seed: int = 0,
    method_options: Optional[Mapping[str, Mapping[str, Any]]] = None,
    oracle: Any = None,
    num_samples: int = 200,
    progress: bool = False,
    callback: Optional[Callable[[Dict[str, Any], Any], None]] = None,
    ece_bins: int = 10,
    device: Optional[Union[str, torch.device]] = None,
) -> EvaluationTable:
    """Score models x inference methods x context sizes on the same seeded tasks.

    Parameters
    ----------
    model : MetaModel, list of them, dict ``name -> MetaModel``, or None (oracle only)
        Trained models (their parameters are held fixed; ``infer`` sets eval mode).
    tasks : task distribution or TaskBatch
        ``tasks.sample(num_tasks, num_context, num_target, generator=)`` -> ``TaskBatch``; or a fixed
        ``TaskBatch`` of real tasks, whose points (context and target pooled) are re-split per context
        size by :meth:`TaskBatch.split`: ``num_context`` random context points per task (seeded), the
        rest targets.
    methods : sequence of str
        Registered ``infer`` methods (``"amortized"``, ``"svi"``, ``"importance"``, ``"nuts"``, ...).
    num_tasks : int, optional
        Tasks per context size (default 100; for a fixed ``TaskBatch``, all its tasks, or its first
        ``num_tasks``).
    num_target : int, optional
        Target points per task (default: the distribution's ``default_num_target`` if it declares one,
        e.g. the queries per class of few-shot episodes, else 50; unused for a fixed ``TaskBatch``).
    num_context : int or list of int
        Context sizes (for episodes: shots per class); one row per model x method x size.
    seed : int
        Seeds the task draws (a fresh ``torch.Generator(seed)`` per context size), every
        ``infer`` call and the oracle's draws.
    method_options : dict ``method -> dict``, optional
        Keyword arguments of ``infer`` per method, e.g. ``{"nuts": {"num_warmup": 200}}``; a
        ``num_samples`` there overrides the common one for that method.
    oracle : object, optional
        Adds a row (``method="oracle"``) per context size: any :class:`~pyro_meta.oracles.Oracle`
        (``log_prob(batch) -> [T, Nt]``, ``predict(batch) -> (mean, var)``, ``sample(batch, num_samples,
        generator) -> [S, T, Nt, Dy]``; e.g. :class:`pyro_meta.GPOracle`); model rows then carry ``nll_gap``.
    num_samples : int
        Posterior draws per chain (and oracle predictive draws).
    progress : bool
        Show a tqdm bar over the runs.
    callback : callable ``(row, posterior) -> None``, optional
        Called after every model x method x size run with its finished table row and its
        :class:`~pyro_meta.Posterior` (e.g. to keep posteriors for plots, or report MCMC mixing
        per task); the oracle rows have no posterior and are not passed.
    ece_bins : int
        Equal-width confidence bins of the expected calibration error (classification rows).
    device : str or torch.device, optional
        Infer and score the models there: each evaluation batch is drawn on the CPU (the same tasks
        whatever the device) and moved (``batch.to(device)``); the models must be there already
        (``model.to(device)``, else ``TypeError``), as in :func:`~pyro_meta.infer`. The oracle is scored
        on the CPU batch. Default: where the task batches are.

    Returns
    -------
    EvaluationTable
        Oracle row first, then models in order, methods in order, for each context size.
    """
    models = _check_models(model) if model is not None else {}
    if not isinstance(tasks, TaskBatch) and not callable(getattr(tasks, "sample", None)):
        raise TypeError(
            f"tasks must be a TaskBatch or a task distribution with .sample(num_tasks, num_context, num_target, "
            f"generator=), got {type(tasks).__name__}"
        )
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, (list, tuple)):
        raise TypeError(
            f"methods must be a method name or a list of them {list(available_methods())}, got {type(methods).__name__}"
        )
    methods = list(methods)
    bad = [m for m in methods if not isinstance(m, str) or m not in available_methods()]
    if bad:
        raise ValueError(f"methods must be among {available_methods()}, got {bad}")
    if models and not methods:
        raise ValueError("methods is empty: name at least one inference method")
    if method_options is not None and not isinstance(method_options, Mapping):
        raise TypeError(
            f"method_options must be a dict method -> dict of infer options, got {type(method_options).__name__}"
        )
    options = dict(method_options or {})
    stray = sorted(set(options).difference(available_methods()))
    if stray:
        raise ValueError(f"method_options names unknown methods {stray} (methods are {available_methods()})")
    for k, v in options.items():
        if not isinstance(v, Mapping):
            raise TypeError(f"method_options[{k!r}] must be a dict of infer keyword arguments, got {type(v).__name__}")
        get_method(k).validate({key: val for key, val in v.items() if key != "num_samples"})
    if oracle is not None:
        check_oracle(oracle)
    if not models and oracle is None:
        raise ValueError("nothing to evaluate: pass a model or an oracle")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a callable (row, posterior) -> None, got {type(callback).__name__}")
    sizes = _check_sizes(num_context)
    fixed = isinstance(tasks, TaskBatch)
    if fixed:
        if tasks.target_y is None:
            raise ValueError("tasks: a fixed TaskBatch to evaluate on needs target_y (observed points)")
        num_tasks = (
            tasks.num_tasks if num_tasks is None else min(_positive_int("num_tasks", num_tasks), tasks.num_tasks)
        )
    else:
        num_tasks = 100 if num_tasks is None else _positive_int("num_tasks", num_tasks)
        if num_target is None:
            num_target = getattr(tasks, "default_num_target", 50)
        if num_target is not None:
            num_target = _positive_int("num_target", num_target)
    num_samples = _positive_int("num_samples", num_samples)
    ece_bins = _positive_int("ece_bins", ece_bins)
    seed = check_int("seed", seed, minimum=0, maximum=2**32 - 1)
    progress = check_bool("progress", progress)

    if device is not None:
        for m in models.values():
            model_device(m, device, "evaluate")  # every model on the device before any work
    runs = len(sizes) * (len(models) * len(methods) + (oracle is not None))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=runs, desc="evaluate")
    rows: List[Dict[str, Any]] = []
    try:
        for nc in sizes:
            generator = torch.Generator().manual_seed(int(seed))
            if fixed:
                batch = tasks.select(torch.arange(num_tasks)).split(nc, generator)
            else:
                batch = tasks.sample(num_tasks, nc, num_target, generator=generator)
            if not isinstance(batch, TaskBatch) or batch.target_y is None:
                raise TypeError("tasks.sample(...) must return a TaskBatch with target_y")
            head = {"num_context": nc, "num_tasks": num_tasks}
            ref = None
            if oracle is not None:
                row, ref = _score_oracle(oracle, batch, num_samples, int(seed), ece_bins)
                rows.append({"model": type(oracle).__name__, "method": ORACLE, **head, **row})
                if bar is not None:
                    bar.update(1)
            for name, m in models.items():
                model_batch = batch if device is None else move_batch(m, batch, device, "evaluate")
                for method in methods:
                    row, task_nll, post = _score_method(
                        m, model_batch, method, num_samples, int(seed), options.get(method, {}), ece_bins
                    )
                    if ref is not None:
                        gap = _ratio_se(task_nll.to(ref.device) - ref, batch.target_mask.sum(-1).to(ref.device))
                        row["nll_gap"], row["nll_gap_se"] = gap["mean"], gap["se"]
                    rows.append({"model": name, "method": method, **head, **row})
                    if callback is not None:
                        callback(dict(rows[-1]), post)
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return EvaluationTable(rows)
