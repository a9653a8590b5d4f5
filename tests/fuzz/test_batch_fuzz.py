"""Fuzz TaskBatch construction: one malformation of a valid batch at a time, each must name its field."""

import math

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from pyro_meta.data import TaskBatch

from ._check import expect_clear_error

FLOAT_FIELDS = ("context_x", "context_y", "target_x", "target_y")
MASKS = ("context_mask", "target_mask")


@st.composite
def valid_fields(draw):
    T = draw(st.integers(1, 4))
    Nc, Nt = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    Dx, Dy = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    labels = draw(st.booleans())
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    fields = {
        "context_x": torch.randn(T, Nc, Dx, generator=g),
        "target_x": torch.randn(T, Nt, Dx, generator=g),
        "context_y": torch.randint(0, 3, (T, Nc), generator=g) if labels else torch.randn(T, Nc, Dy, generator=g),
        "target_y": torch.randint(0, 3, (T, Nt), generator=g) if labels else torch.randn(T, Nt, Dy, generator=g),
        "context_mask": torch.ones(T, Nc, dtype=torch.bool),
        "target_mask": torch.rand(T, Nt, generator=g) > 0.3,
    }
    TaskBatch(**fields)  # the base is valid
    return fields


def _grow(t: torch.Tensor, dim: int) -> torch.Tensor:
    return (
        torch.cat([t, t.narrow(dim, 0, 1)], dim)
        if t.shape[dim]
        else t.new_zeros(t.shape[:dim] + (1,) + t.shape[dim + 1 :])
    )


# every mutation: (field that is malformed, fields whose agreement it breaks: acceptable names in the error)
@st.composite
def malformed(draw):
    fields = dict(draw(valid_fields()))
    kind = draw(
        st.sampled_from(
            [
                "ndim",
                "size",
                "nan",
                "inf",
                "int_x",
                "float_mask",
                "not_tensor",
                "empty_context",
                "negative_label",
                "kind_mismatch",
                "task_index",
                "no_tasks",
                "info",
            ]
        )
    )
    T = fields["context_x"].shape[0]
    labels = not fields["context_y"].is_floating_point()
    if kind == "ndim":
        name = draw(st.sampled_from(FLOAT_FIELDS + MASKS))
        t = fields[name]
        fields[name] = t[..., None] if draw(st.booleans()) else t.reshape(-1)
        names = (name,)
    elif kind == "size":
        name = draw(st.sampled_from(("context_y", "target_x", "target_y") + MASKS))
        t = fields[name]
        dim = draw(st.integers(0, t.dim() - 1))
        if name == "target_x" and dim == 1:  # Nt comes from target_x: the other target fields disagree
            fields[name] = _grow(t, 1)
            names = ("target_x", "target_y", "target_mask")
        else:
            fields[name] = _grow(t, dim)
            names = (name,)
    elif kind in ("nan", "inf"):
        choices = ("context_x", "target_x") + (() if labels else ("context_y", "target_y"))
        name = draw(st.sampled_from(choices))
        t = fields[name].clone()
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = math.nan if kind == "nan" else -math.inf
        fields[name] = t
        names = (name,)
    elif kind == "int_x":
        name = draw(st.sampled_from(("context_x", "target_x")))
        fields[name] = fields[name].round().long()
        names = (name,)
    elif kind == "float_mask":
        name = draw(st.sampled_from(MASKS))
        fields[name] = fields[name].float()
        names = (name,)
    elif kind == "not_tensor":
        name = draw(st.sampled_from(FLOAT_FIELDS[:3]))
        fields[name] = draw(st.sampled_from([fields[name].numpy(), fields[name].tolist(), None, 3.0]))
        names = (name,)
    elif kind == "empty_context":
        mask = fields["context_mask"].clone()
        mask[draw(st.integers(0, T - 1))] = False
        fields["context_mask"] = mask
        names = ("context_mask",)
    elif kind == "negative_label":
        if labels:
            name = draw(st.sampled_from(("context_y", "target_y")))
            y = fields[name].clone()
            y.view(-1)[0] = -1
            fields[name] = y
        else:
            name = "context_y"
            fields[name] = fields[name].to(torch.complex64)
        names = (name,)
    elif kind == "kind_mismatch":  # labels in one set, real values in the other
        if labels:
            fields["target_y"] = fields["target_y"].float()[..., None]
        else:
            fields["target_y"] = torch.zeros(fields["target_y"].shape[:2], dtype=torch.long)
        names = ("target_y",)
    elif kind == "task_index":
        case = draw(st.sampled_from(["range", "duplicate", "dtype", "alone", "size", "bool_size"]))
        idx, size = torch.arange(T), T
        if case == "range":
            idx = idx + 1
        elif case == "duplicate":
            idx = torch.zeros(T, dtype=torch.long) if T > 1 else torch.tensor([-1])
        elif case == "dtype":
            idx = idx.float()
        elif case == "alone":
            size = None
        elif case == "size":
            size = T - 1 if T > 1 else 0
        else:
            size = True
        fields.update(task_index=idx, task_set_size=size)
        names = ("task_index", "task_set_size")
    elif kind == "no_tasks":
        for name in FLOAT_FIELDS + MASKS:
            fields[name] = fields[name][:0]
        names = ("context_x",)
    else:
        fields["info"] = draw(st.sampled_from([[1, 2], "truth", 3]))
        names = ("info",)
    return fields, names


@given(malformed())
def test_malformed_taskbatch_names_the_field(case):
    fields, names = case
    expect_clear_error("TaskBatch", lambda: TaskBatch(**fields), names)


@given(valid_fields(), st.sampled_from(["select", "replace", "split"]), st.data())
def test_malformed_batch_methods(fields, method, data):
    batch = TaskBatch(**fields)
    T = batch.num_tasks
    if method == "select":
        index = data.draw(
            st.sampled_from(
                [
                    [T],
                    [-T - 1],
                    torch.tensor([T + 2]),
                    torch.zeros(T + 1, dtype=torch.bool),
                    [0.5],
                    "all",
                    torch.tensor([[0]]).float(),
                ]
            )
        )
        expect_clear_error(
            "TaskBatch.select", lambda: batch.select(index), ("index",), allowed=(ValueError, TypeError, IndexError)
        )  # IndexError: out of range (documented)
    elif method == "replace":
        value = data.draw(st.sampled_from([np.zeros(3), torch.zeros(T + 1, 1, 1), torch.full((T, 1, 1), math.nan)]))
        expect_clear_error("TaskBatch.replace", lambda: batch.replace(context_x=value), ("context_x",))
    else:
        k = data.draw(st.sampled_from([-1, True, 1.5, "2", 10**6]))
        expect_clear_error("TaskBatch.split", lambda: batch.split(k), ("num_context",))
