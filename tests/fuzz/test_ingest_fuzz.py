"""Fuzz TaskBatch.from_tasks and TaskBatch.from_table: one malformation of valid data at a time."""

import math

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from pyro_meta.data import TaskBatch

from ._check import expect_clear_error


@st.composite
def tasks(draw):
    """Valid per-task ``(x, y)`` context and target lists (numpy, torch or lists; real or class labels)."""
    T = draw(st.integers(1, 4))
    Dx, Dy = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    labels = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    form = draw(st.sampled_from(["torch", "numpy", "list"]))

    def convert(a):
        return torch.from_numpy(a) if form == "torch" else a if form == "numpy" else a.tolist()

    def pairs():
        out = []
        for _ in range(T):
            n = int(rng.integers(1, 5))
            x = rng.normal(size=(n, Dx)).astype(np.float32)
            y = rng.integers(0, 3, n) if labels else rng.normal(size=(n, Dy)).astype(np.float32)
            out.append((convert(x), convert(y)))
        return out

    context, target = pairs(), pairs()
    kw = {"dtype": torch.float32} if form == "list" else {}  # python floats are float32 by default anyway
    TaskBatch.from_tasks(context, target, **kw)
    return context, target, kw, labels


def _array(v):
    return v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


@given(tasks(), st.data())
def test_malformed_from_tasks_names_the_argument(valid, data):
    context, target, kw, labels = valid
    context, target, kw = list(context), list(target), dict(kw)
    draw = data.draw
    T = len(context)
    t = draw(st.integers(0, T - 1))
    which = draw(st.sampled_from(["context", "target"]))
    sets = {"context": context, "target": target}
    x, y = sets[which][t]
    kind = draw(
        st.sampled_from(
            [
                "not_list",
                "empty",
                "pair",
                "x_3d",
                "x_int",
                "x_complex",
                "x_ragged",
                "x_nan",
                "y_len",
                "y_none",
                "y_2d_labels",
                "y_negative",
                "mix_kind",
                "mix_dx",
                "mix_dtype",
                "target_len",
                "pad",
                "dtype",
                "device",
            ]
        )
    )
    names = (which,)
    if kind == "not_list":
        arg = draw(st.sampled_from([torch.zeros(2, 3), {"x": 1}, 3, "tasks"]))
        if which == "context":
            context = arg
        else:
            target = arg
    elif kind == "empty":
        context, names = [], ("context",)
    elif kind == "pair":
        sets[which][t] = draw(st.sampled_from([(x,), (x, y, y), x, None]))
    elif kind == "x_3d":
        sets[which][t] = (_array(x)[None], y)
    elif kind == "x_int":
        kw.pop("dtype", None)
        sets[which][t] = (np.ones((2, 1), dtype=np.int64), y)
        names = (which, "dtype")
    elif kind == "x_complex":
        sets[which][t] = (_array(x).astype(np.complex64), y)
    elif kind == "x_ragged":
        sets[which][t] = ([[1.0, 2.0], [3.0]], y)
    elif kind == "x_nan":
        bad = _array(x).copy()
        bad.flat[0] = draw(st.sampled_from([math.nan, math.inf]))
        sets[which][t] = (bad, y)
        names = (which, f"{which}_x")  # from_tasks pads, the TaskBatch check names the padded field
    elif kind == "y_len":
        sets[which][t] = (x, np.concatenate([_array(y), _array(y)[:1]]))
    elif kind == "y_none":
        context[t] = (context[t][0], None)
        which, names = "context", ("context",)
    elif kind == "y_2d_labels":
        sets[which][t] = (x, np.zeros((len(_array(x)), 2), dtype=np.int64))
    elif kind == "y_negative":
        sets[which][t] = (x, -np.ones(len(_array(x)), dtype=np.int64))
    elif kind == "mix_kind":
        n = len(_array(x))
        sets[which][t] = (x, np.zeros((n, 1), np.float32) if labels else np.zeros(n, np.int64))
        if T == 1:  # one task: mix context and target instead
            names = ("context", "target")
            other = "target" if which == "context" else "context"
            ox, _ = sets[other][0]
            m = len(_array(ox))
            sets[other][0] = (ox, np.zeros(m, np.int64) if not labels else np.zeros((m, 1), np.float32))
            sets[which][t] = (x, y)
        names = ("context", "target")
    elif kind == "mix_dx":
        sets[which][t] = (np.zeros((len(_array(x)), _array(x).shape[1] + 1), np.float32), y)
        names = ("context", "target")
    elif kind == "mix_dtype":
        kw.pop("dtype", None)
        sets[which][t] = (_array(x).astype(np.float64), y)
        names = ("context", "target", "dtype")
        if T == 1 and which == "context" and not labels:  # keep a float32 input elsewhere to disagree with
            pass
    elif kind == "target_len":
        target, names = target + [target[0]], ("target",)
    elif kind == "pad":
        kw["pad_value"], names = draw(st.sampled_from([math.nan, math.inf, "0", None])), ("pad_value",)
    elif kind == "dtype":
        kw["dtype"], names = draw(st.sampled_from([torch.int64, "float32", np.float32, torch.bool])), ("dtype",)
    else:
        kw["device"], names = draw(st.sampled_from(["gpu7", "cuda:abc", 3.5, "nonsense"])), ("device",)
    expect_clear_error("from_tasks", lambda: TaskBatch.from_tasks(context, target, **kw), names)


@st.composite
def table(draw):
    T = draw(st.integers(1, 4))
    rows = draw(st.integers(T * 2, T * 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    ids = np.concatenate([np.arange(T), rng.integers(0, T, rows - T)])
    cols = {
        "task_id": ids,
        "x": rng.normal(size=rows),
        "x2": rng.normal(size=rows),
        "y": rng.normal(size=rows),
        "label": rng.integers(0, 3, rows),
        "role": np.where(rng.random(rows) < 0.5, "context", "target"),
    }
    TaskBatch.from_table(cols, x=["x", "x2"], y="y", num_context=1)
    return cols


@given(table(), st.data())
def test_malformed_from_table_names_the_argument(cols, data):
    draw = data.draw
    cols = dict(cols)
    kw = dict(task="task_id", x=["x", "x2"], y="y", num_context=1)
    kind = draw(
        st.sampled_from(
            [
                "no_table",
                "missing_column",
                "x_nan",
                "x_text",
                "lengths",
                "column_2d",
                "num_context",
                "fraction",
                "two_rules",
                "no_rule",
                "split_values",
                "seed",
                "generator",
                "y_nan_context",
                "empty",
                "task_nan",
                "y_list_labels",
            ]
        )
    )
    if kind == "no_table":
        table_arg, names = draw(st.sampled_from([[1, 2, 3], 3, "table", None])), ("table",)
    else:
        table_arg = cols
    if kind == "missing_column":
        arg = draw(st.sampled_from(["task", "x", "y"]))
        kw[arg] = "nope" if arg != "x" else ["x", "nope"]
        names = (arg,)
    elif kind == "x_nan":
        x = cols["x"].copy()
        x[draw(st.integers(0, len(x) - 1))] = draw(st.sampled_from([math.nan, math.inf]))
        cols["x"], names = x, ("x",)
    elif kind == "x_text":
        cols["x"], names = cols["x"].astype(str), ("x",)
    elif kind == "lengths":
        cols["y"], names = cols["y"][:-1], ("table", "length")
    elif kind == "column_2d":
        cols["x2"], names = np.stack([cols["x2"], cols["x2"]], 1), ("x2", "table")
    elif kind == "num_context":
        kw["num_context"] = draw(st.sampled_from([-1, True, 1.5, "1", 10**6]))
        names = ("num_context",)
    elif kind == "fraction":
        kw.pop("num_context")
        kw["context_fraction"] = draw(st.sampled_from([0, -0.5, 1.5, math.nan, True, "half"]))
        names = ("context_fraction",)
    elif kind == "two_rules":
        kw["context_fraction"], names = 0.5, ("num_context", "context_fraction", "rule")
    elif kind == "no_rule":
        kw.pop("num_context")
        names = ("num_context", "context_fraction", "rule")
    elif kind == "split_values":
        kw.pop("num_context")
        cols["role"] = np.where(cols["role"] == "context", "ctx", "target")
        cols["role"][0] = "ctx"
        kw["split"], names = "role", ("split",)
    elif kind == "seed":
        kw["seed"], names = draw(st.sampled_from([-1, 1.5, "0", True, 2**64])), ("seed",)
    elif kind == "generator":
        kw["generator"], names = draw(st.sampled_from([0, "g", np.random.default_rng(0)])), ("generator",)
    elif kind == "y_nan_context":
        y, role = cols["y"].copy(), cols["role"].copy()
        role[0], y[0] = "context", math.nan  # a context row without y
        kw.pop("num_context")
        kw["split"] = "role"
        cols["role"] = role
        cols["y"], names = y, ("y",)
    elif kind == "empty":
        table_arg, names = {k: v[:0] for k, v in cols.items()}, ("table",)
    elif kind == "task_nan":
        ids = cols["task_id"].astype(float)
        ids[0] = math.nan
        cols["task_id"], names = ids, ("task",)
    elif kind == "y_list_labels":
        kw["y"], names = ["label"], ("y",)
    expect_clear_error("from_table", lambda: TaskBatch.from_table(table_arg, **kw), names)
