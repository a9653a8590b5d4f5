"""TaskBatch: validation names the field and the expected shape; padding, masks, slicing; data in from
per-task arrays (tensors, numpy, lists) and tables; re-splitting."""

import numpy as np
import pytest
import torch

from pyro_meta.data import TaskBatch


def make(T=2, Nc=3, Nt=4, Dx=1, Dy=1, **kw):
    fields = dict(
        context_x=torch.randn(T, Nc, Dx),
        context_y=torch.randn(T, Nc, Dy),
        target_x=torch.randn(T, Nt, Dx),
        target_y=torch.randn(T, Nt, Dy),
    )
    fields.update(kw)
    return TaskBatch(**fields)


def test_valid_batch_defaults_masks_to_all_true():
    b = make()
    assert b.context_mask.dtype == torch.bool and bool(b.context_mask.all())
    assert b.target_mask.shape == (2, 4)
    assert (b.num_tasks, b.x_dim, b.y_dim) == (2, 1, 1)


@pytest.mark.parametrize(
    "change, field, exc",
    [
        (dict(context_x=torch.randn(2, 3)), "context_x", ValueError),
        (dict(target_x=torch.randn(3, 4, 1)), "target_x", ValueError),
        (dict(target_x=torch.randn(2, 4, 2)), "target_x", ValueError),
        (dict(context_y=torch.randn(2, 5, 1)), "context_y", ValueError),
        (dict(target_y=torch.randn(3, 4, 1)), "target_y", ValueError),
        (dict(target_y=torch.randn(2, 4, 2)), "target_y", ValueError),
        (dict(context_mask=torch.ones(2, 3)), "context_mask", TypeError),
        (dict(context_mask=torch.ones(2, 2, dtype=torch.bool)), "context_mask", ValueError),
        (dict(target_mask=torch.ones(1, 4, dtype=torch.bool)), "target_mask", ValueError),
        (dict(context_x=torch.tensor([[[float("nan")]] * 3] * 2)), "context_x", ValueError),
        (dict(target_y=torch.full((2, 4, 1), float("inf"))), "target_y", ValueError),
        (dict(context_x=torch.zeros(2, 3, 1, dtype=torch.long)), "context_x", TypeError),
        (dict(context_y=torch.zeros(2, 3, dtype=torch.bool)), "context_y", TypeError),
        (dict(context_x=[[0.0]]), "context_x", TypeError),
        (dict(context_mask=torch.tensor([[True, True, True], [False, False, False]])), "context_mask", ValueError),
        (dict(context_x=torch.randn(2, 0, 1), context_y=torch.randn(2, 0, 1)), "context_x", ValueError),
        (dict(context_x=torch.randn(0, 3, 1)), "context_x", ValueError),
    ],
)
def test_bad_input_names_the_field(change, field, exc):
    with pytest.raises(exc, match=field):
        make(**change)


def test_empty_context_allowed_when_asked():
    b = make(context_mask=torch.zeros(2, 3, dtype=torch.bool), allow_empty_context=True)
    assert not bool(b.context_mask.any())


def test_class_labels():
    b = make(context_y=torch.randint(0, 3, (2, 3)), target_y=torch.randint(0, 3, (2, 4)))
    assert b.is_classification and b.y_dim == 1
    with pytest.raises(ValueError, match="target_y"):
        make(context_y=torch.randint(0, 3, (2, 3)), target_y=torch.randn(2, 4, 1))


def test_from_tasks_pads_and_masks():
    ctx = [(torch.randn(2, 1), torch.randn(2, 1)), (torch.randn(5, 1), torch.randn(5, 1))]
    tgt = [(torch.randn(3, 1), torch.randn(3, 1)), (torch.randn(1, 1), torch.randn(1, 1))]
    b = TaskBatch.from_tasks(ctx, tgt, info={"id": torch.tensor([7, 8])})
    assert b.context_x.shape == (2, 5, 1) and b.target_x.shape == (2, 3, 1)
    assert b.context_mask.sum(-1).tolist() == [2, 5] and b.target_mask.sum(-1).tolist() == [3, 1]
    assert torch.equal(b.context_x[1], ctx[1][0]) and torch.equal(b.target_y[0], tgt[0][1])
    assert bool(torch.isfinite(b.context_x).all())
    with pytest.raises(ValueError, match="target"):
        TaskBatch.from_tasks(ctx, tgt[:1])
    with pytest.raises(ValueError, match="points"):
        TaskBatch.from_tasks([(torch.randn(2, 1), torch.randn(3, 1))])


def test_select_context_only_and_observed():
    b = make(T=3, info={"a": torch.arange(3), "name": "sine"})
    s = b.select([2, 0])
    assert torch.equal(s.context_x, b.context_x[[2, 0]]) and s.info["a"].tolist() == [2, 0] and s.info["name"] == "sine"
    c = b.context_only()
    assert c.num_points("target") == 0 and torch.equal(c.context_y, b.context_y)
    x, y, m = b.observed()
    assert x.shape == (3, 7, 1) and m.shape == (3, 7)
    x, y, m = b.without_target_y().observed()
    assert x.shape == (3, 3, 1)
    with pytest.raises(ValueError, match="split"):
        b.x("query")
    assert torch.equal(b.select([-1]).context_x, b.context_x[[2]])
    with pytest.raises(IndexError, match="3 tasks"):
        b.select([0, 3])


def test_frozen():
    b = make()
    with pytest.raises(AttributeError):
        b.context_x = torch.zeros(2, 3, 1)


# ------------------------------------------------------------------ from_tasks: numpy, lists, 1-D, dtypes
def test_from_tasks_1d_float_y_is_one_column():
    """Bug on main: a 1-D float y of length n broadcast into [n, n] (context_y [2, 4, 4])."""
    xs, ys = [torch.randn(4, 1), torch.randn(3, 1)], [torch.arange(4.0), torch.arange(3.0) + 10]
    b = TaskBatch.from_tasks(list(zip(xs, ys)))
    assert b.context_y.shape == (2, 4, 1)
    assert torch.equal(b.context_y[0, :, 0], ys[0]) and torch.equal(b.context_y[1, :3, 0], ys[1])
    assert b.context_mask.sum(-1).tolist() == [4, 3]


def test_from_tasks_numpy_lists_and_1d_x():
    rng = np.random.default_rng(0)
    x64, y64 = rng.normal(size=(2, 5)), rng.normal(size=(2, 5))
    b = TaskBatch.from_tasks([(x64[t], y64[t]) for t in range(2)], [(x64[t][:2], y64[t][:2]) for t in range(2)])
    assert b.context_x.dtype == torch.float64 and b.context_x.shape == (2, 5, 1) and b.context_y.shape == (2, 5, 1)
    assert np.array_equal(b.context_x[..., 0].numpy(), x64) and np.array_equal(b.target_y[..., 0].numpy(), y64[:, :2])
    b32 = TaskBatch.from_tasks([(x64[t], y64[t]) for t in range(2)], dtype=torch.float32)
    assert b32.context_x.dtype == b32.context_y.dtype == torch.float32
    assert torch.equal(b32.context_y, b.context_y.float())
    lists = TaskBatch.from_tasks([([[0.0, 1.0], [2.0, 3.0]], [0.5, 1.5])])
    assert lists.context_x.tolist() == [[[0.0, 1.0], [2.0, 3.0]]] and lists.context_y.tolist() == [[[0.5], [1.5]]]
    assert lists.context_x.dtype == torch.get_default_dtype()
    ints = TaskBatch.from_tasks([(np.arange(3), np.arange(3.0))], dtype=torch.float64)  # explicit cast of int x
    assert ints.context_x[0, :, 0].tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize(
    "labels",
    [
        np.array([2, 0, 1], dtype=np.int32),
        np.array([2, 0, 1], dtype=np.uint8),
        torch.tensor([2, 0, 1], dtype=torch.int32),
        torch.tensor([2, 0, 1]),
        [2, 0, 1],
    ],
)
def test_from_tasks_integer_labels_become_long(labels):
    b = TaskBatch.from_tasks([(torch.randn(3, 2), labels), (torch.randn(2, 2), np.array([1, 1]))])
    assert b.is_classification and b.context_y.dtype == torch.long and b.context_y.shape == (2, 3)
    assert b.context_y[0].tolist() == [2, 0, 1] and b.context_y[1, :2].tolist() == [1, 1]


def test_from_tasks_bool_labels_are_binary_long():
    b = TaskBatch.from_tasks(
        [(torch.randn(3, 1), np.array([True, False, True]))], [(torch.randn(2, 1), torch.tensor([False, True]))]
    )
    assert b.context_y.dtype == torch.long and b.context_y.tolist() == [[1, 0, 1]] and b.target_y.tolist() == [[0, 1]]


def _xy(n=4, dx=1, dy=1, dtype=torch.float32):
    return torch.randn(n, dx, dtype=dtype), torch.randn(n, dy, dtype=dtype)


@pytest.mark.parametrize(
    "context, target, kw, exc, match",
    [
        ([_xy(), _xy(dy=2)], None, {}, ValueError, r"context\[1\] y \(task 1\).*Dy = 2.*context\[0\] y.*Dy = 1"),
        ([_xy(), (torch.randn(4, 1), torch.arange(4))], None, {}, ValueError, r"context\[1\] y.*labels"),
        ([_xy()], [(torch.randn(2, 1), torch.tensor([0, 1]))], {}, ValueError, r"target\[0\] y.*labels"),
        (
            [(torch.randn(4, 1, dtype=torch.float64), torch.randn(4, 1))],
            None,
            {},
            TypeError,
            r"context\[0\] y \(task 0\) is torch.float32 but context\[0\] x \(task 0\) is torch.float64.*dtype=",
        ),
        ([_xy(), _xy(dtype=torch.float64)], None, {}, TypeError, r"context\[1\] x \(task 1\) is torch.float64"),
        ([_xy()], [_xy(dtype=torch.float64)], {}, TypeError, r"target\[0\] x"),
        ([(np.random.randn(4, 1), np.random.randn(4, 1).astype(np.float32))], None, {}, TypeError, r"context\[0\] y"),
        ([_xy(), _xy(dx=2)], None, {}, ValueError, r"context\[1\] x \(task 1\) has Dx = 2"),
        ([_xy()], [_xy(dx=3)], {}, ValueError, r"target\[0\] x.*Dx = 3"),
        ([(torch.arange(4), torch.randn(4, 1))], None, {}, TypeError, r"context\[0\] x.*floating.*dtype="),
        ([(torch.randn(4, 1), torch.zeros(4, 1, dtype=torch.long))], None, {}, ValueError, r"context\[0\] y.*1-D"),
        ([(torch.randn(4, 1), torch.tensor([0, 1, -1, 2]))], None, {}, ValueError, r"context\[0\] y.*non-negative"),
        ([(torch.randn(4, 1), torch.randn(3))], None, {}, ValueError, r"context\[0\] y.*3 points.*4"),
        ([(torch.randn(4, 1, 1), torch.randn(4))], None, {}, ValueError, r"context\[0\] x.*\[n, Dx\]"),
        ([(torch.randn(4, 1), torch.randn(4, 1, 1))], None, {}, ValueError, r"context\[0\] y.*\[n, Dy\]"),
        ([(torch.randn(4, 1),)], None, {}, TypeError, r"context\[0\].*pair"),
        ([(torch.randn(4, 1), None)], None, {}, ValueError, r"context\[0\] y is None"),
        ([("abc", torch.randn(4))], None, {}, TypeError, r"context\[0\] x"),
        ([(np.array(["a", "b"]), torch.randn(2))], None, {}, TypeError, r"context\[0\] x.*numpy dtype"),
        ([_xy(), _xy()], [(torch.randn(2, 1), None), _xy()], {}, ValueError, r"target.*\[0\]"),
        ([_xy()], [_xy(), _xy()], {}, ValueError, "target has 2 tasks"),
        ([_xy()], None, dict(dtype=torch.long), TypeError, "dtype"),
        ([_xy()], None, dict(dtype="float32"), TypeError, "dtype"),
        ([_xy()], None, dict(pad_value=float("nan")), ValueError, "pad_value"),
        (
            [_xy(), (torch.randn(4, 1, device="meta"), torch.randn(4, 1, device="meta"))],
            None,
            {},
            ValueError,
            r"context\[1\] x.*meta.*device=",
        ),
        (torch.randn(2, 4, 1), None, {}, TypeError, "context must be a list"),
        ([], None, {}, ValueError, "at least one task"),
    ],
)
def test_from_tasks_bad_input_names_task_and_argument(context, target, kw, exc, match):
    with pytest.raises(exc, match=match):
        TaskBatch.from_tasks(context, target, **kw)


def test_from_tasks_dtype_and_device_options():
    ctx = [(torch.randn(3, 1, dtype=torch.float64), torch.randn(3, dtype=torch.float64)), _xy(2)]
    b = TaskBatch.from_tasks(ctx, dtype=torch.float32, device="cpu")
    assert b.context_x.dtype == b.context_y.dtype == torch.float32 and b.device == torch.device("cpu")
    assert torch.equal(b.context_x[0], ctx[0][0].float()) and torch.equal(b.context_y[1, :2], ctx[1][1])
    assert b.device == torch.device("cpu")


# ------------------------------------------------------------------ from_table
def _table(seed=0):
    rng = np.random.default_rng(seed)
    ids = np.array([3, 1, 3, 2, 1, 3, 2, 1, 3, 2, 1, 1])  # 5 rows of task 1, 3 of task 2, 4 of task 3
    return {
        "task_id": ids,
        "x0": rng.normal(size=12),
        "x1": rng.normal(size=12),
        "y": rng.normal(size=12),
        "label": rng.integers(0, 3, size=12),
        "role": np.where(np.isin(np.arange(12), [0, 1, 3, 4]), "context", "target"),
    }


def _reference(table, x_cols, y_col, is_context):
    """Per task (sorted ids), the rows of each set in table order: an independent grouping loop."""
    out = []
    for tid in sorted(set(table["task_id"].tolist())):
        rows = [i for i in range(len(table["task_id"])) if table["task_id"][i] == tid]
        sets = []
        for want in (True, False):
            r = [i for i in rows if bool(is_context[i]) == want]
            sets.append((np.stack([np.asarray(table[c])[r] for c in x_cols], -1), np.asarray(table[y_col])[r]))
        out.append((tid, sets))
    return out


def _check_against_reference(b, table, x_cols, y_col, is_context):
    ref = _reference(table, x_cols, y_col, is_context)
    assert b.info["task_id"] == [tid for tid, _ in ref]
    for t, (_, ((cx, cy), (tx, ty))) in enumerate(ref):
        assert int(b.context_mask[t].sum()) == len(cx) and int(b.target_mask[t].sum()) == len(tx)
        assert np.array_equal(b.context_x[t, : len(cx)].numpy(), cx)
        assert np.array_equal(b.target_x[t, : len(tx)].numpy(), tx)
        got_cy = b.context_y[t, : len(cy)].numpy()
        assert np.array_equal(got_cy.reshape(len(cy)), cy)
        assert np.array_equal(b.target_y[t, : len(ty)].numpy().reshape(len(ty)), ty)


@pytest.mark.parametrize("kind", ["dict", "pandas"])
def test_from_table_split_column(kind):
    table = _table()
    src = table if kind == "dict" else pytest.importorskip("pandas").DataFrame(table)
    b = TaskBatch.from_table(src, x=["x0", "x1"], y="y", split="role")
    assert b.context_x.shape[-1] == 2 and b.context_y.shape[-1] == 1 and b.context_x.dtype == torch.float64
    _check_against_reference(b, table, ["x0", "x1"], "y", table["role"] == "context")
    flags = dict(table, ctx=table["role"] == "context")
    b2 = TaskBatch.from_table(flags, x=["x0", "x1"], y="y", split="ctx")
    assert torch.equal(b2.context_x, b.context_x) and torch.equal(b2.target_y, b.target_y)


def test_from_table_labels_and_string_ids():
    pd = pytest.importorskip("pandas")
    table = _table()
    table["task_id"] = np.array(["c", "a", "c", "b", "a", "c", "b", "a", "c", "b", "b", "a"])
    b = TaskBatch.from_table(pd.DataFrame(table), x="x0", y="label", split="role", dtype=torch.float32)
    assert b.info["task_id"] == ["a", "b", "c"] and b.is_classification and b.context_x.dtype == torch.float32
    _check_against_reference(
        b, dict(table, x0=table["x0"].astype(np.float32)), ["x0"], "label", table["role"] == "context"
    )
    assert b.select([2, 0]).info["task_id"] == ["c", "a"]


def test_from_table_num_context_is_seeded_per_task():
    table = _table()
    b = TaskBatch.from_table(table, x="x0", y="y", num_context=2, seed=5)
    assert b.context_mask.sum(-1).tolist() == [2, 2, 2] and b.target_mask.sum(-1).tolist() == [3, 1, 2]
    # the same rows as one torch.randperm(n_t) per task, in sorted task order, from torch.Generator(5)
    g = torch.Generator().manual_seed(5)
    is_context = np.zeros(12, dtype=bool)
    for tid in (1, 2, 3):
        rows = np.flatnonzero(table["task_id"] == tid)
        is_context[rows[torch.randperm(len(rows), generator=g)[:2].numpy()]] = True
    _check_against_reference(b, table, ["x0"], "y", is_context)
    same = TaskBatch.from_table(table, x="x0", y="y", num_context=2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(same.context_x, b.context_x)
    other = [TaskBatch.from_table(table, x="x0", y="y", num_context=2, seed=s).context_x for s in range(6, 10)]
    assert any(not torch.equal(o, b.context_x) for o in other)


def test_from_table_context_fraction_and_targets_to_predict():
    table = _table()
    b = TaskBatch.from_table(table, x="x0", y="y", context_fraction=0.5)  # round(2.5), round(1.5), round(2.0)
    assert b.context_mask.sum(-1).tolist() == [2, 2, 2]
    b = TaskBatch.from_table(table, x="x0", y="y", context_fraction=0.1)  # at least one per task
    assert b.context_mask.sum(-1).tolist() == [1, 1, 1]
    y = table["y"].copy()
    y[table["role"] == "target"] = np.nan
    b = TaskBatch.from_table(dict(table, y=y), x="x0", y="y", split="role")
    assert b.target_y is None and b.target_mask.sum().item() == int((table["role"] == "target").sum())


@pytest.mark.parametrize(
    "change, kw, exc, match",
    [
        ({}, dict(), ValueError, "exactly one"),
        ({}, dict(split="role", num_context=1), ValueError, "exactly one"),
        ({}, dict(num_context=4), ValueError, "task 2 has only 3 rows"),
        ({}, dict(split="nope"), ValueError, "split: no column 'nope'"),
        ({}, dict(split="role", x="nope"), ValueError, "x: no column 'nope'"),
        ({}, dict(split="role", y="nope"), ValueError, "y: no column 'nope'"),
        ({}, dict(split="role", task="nope"), ValueError, "task: no column 'nope'"),
        (dict(role=np.array(["context", "query"] * 6)), dict(split="role"), ValueError, "'query'"),
        (dict(role=np.array(["target"] * 12)), dict(split="role"), ValueError, "allow_empty_context"),
        (dict(role=np.arange(12.0)), dict(split="role"), TypeError, "split: column 'role'"),
        (dict(y=np.where(np.arange(12) == 2, np.nan, 1.0)), dict(split="role"), ValueError, "target rows.*NaN"),
        (dict(y=np.where(np.arange(12) == 0, np.nan, 1.0)), dict(split="role"), ValueError, "context rows.*NaN"),
        (dict(x0=np.where(np.arange(12) == 0, np.inf, 1.0)), dict(split="role"), ValueError, "x: column 'x0'"),
        (dict(x0=np.arange(12)), dict(split="role", x=["x0", "x1"]), TypeError, "x: columns"),
        (dict(x0=np.arange(12), x1=np.arange(12)), dict(split="role", x=["x0", "x1"]), TypeError, "x: columns.*dtype="),
        (dict(y=np.arange(12.0, dtype=np.float32)), dict(split="role"), TypeError, "y: column.*float32.*float64"),
        (dict(y=np.arange(11.0)), dict(split="role"), ValueError, "equal lengths"),
        ({}, dict(num_context=1, seed=0, generator=torch.Generator()), ValueError, "generator or seed"),
        ({}, dict(num_context=-1), ValueError, "num_context"),
        ({}, dict(context_fraction=1.5), ValueError, "context_fraction"),
        ({}, dict(split="role", y=["y", "label"]), TypeError, "y: a list of columns"),
    ],
)
def test_from_table_bad_input_names_the_argument(change, kw, exc, match):
    table = dict(_table(), **change)
    kw = {"x": "x0", "y": "y", **kw}
    with pytest.raises(exc, match=match):
        TaskBatch.from_table(table, **kw)


def test_from_table_explicit_dtype_casts_integer_columns():
    table = dict(_table(), x0=np.arange(12), y=np.arange(12.0, dtype=np.float32))
    b = TaskBatch.from_table(table, x="x0", y="y", split="role", dtype=torch.float32)
    assert b.context_x.dtype == b.context_y.dtype == torch.float32
    assert b.context_x[0, :, 0].tolist() == [1.0, 4.0]  # task 1's context rows, table order


def test_from_table_rejects_other_types():
    with pytest.raises(TypeError, match="table must be"):
        TaskBatch.from_table(np.zeros((3, 3)), num_context=1)


# ------------------------------------------------------------------ split
def test_split_pools_and_resplits_each_task():
    ctx = [(torch.arange(3.0)[:, None], torch.arange(3.0)), (torch.arange(2.0)[:, None] + 10, torch.arange(2.0) + 10)]
    tgt = [(torch.arange(3.0, 6.0)[:, None], torch.arange(3.0, 6.0)), (torch.tensor([[12.0]]), torch.tensor([12.0]))]
    b = TaskBatch.from_tasks(ctx, tgt, info={"id": torch.tensor([7, 8])})
    s = b.split(2, generator=torch.Generator().manual_seed(0))
    assert s.context_mask.sum(-1).tolist() == [2, 2] and s.target_mask.sum(-1).tolist() == [4, 1]
    assert torch.equal(s.info["id"], b.info["id"])
    for t, pooled in enumerate([list(range(6)), [10, 11, 12]]):
        xs = s.context_x[t][s.context_mask[t], 0].tolist() + s.target_x[t][s.target_mask[t], 0].tolist()
        assert sorted(xs) == pooled  # every point once, none invented
        ys = s.context_y[t][s.context_mask[t], 0].tolist() + s.target_y[t][s.target_mask[t], 0].tolist()
        assert ys == xs  # y travels with its x
    again = b.split(2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.context_x, s.context_x)
    assert any(
        not torch.equal(b.split(2, torch.Generator().manual_seed(k)).context_x, s.context_x) for k in range(1, 6)
    )


def test_split_errors_and_labels():
    b = TaskBatch.from_tasks(
        [(torch.randn(2, 1), [0, 1]), (torch.randn(3, 1), [1, 1, 0])],
        [(torch.randn(1, 1), [1]), (torch.randn(1, 1), [0])],
    )
    s = b.split(3, torch.Generator().manual_seed(0))
    assert s.is_classification and s.target_mask.sum(-1).tolist() == [0, 1]
    with pytest.raises(ValueError, match="task 0 has 3 observed points, fewer than num_context=4"):
        b.split(4)
    with pytest.raises(ValueError, match="target_y is None"):
        b.without_target_y().split(1)
    with pytest.raises(ValueError, match="num_context"):
        b.split(1.5)
