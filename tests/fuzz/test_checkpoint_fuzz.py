"""Fuzz the checkpoint loader: damaged, truncated and foreign files, and bad arguments."""

import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pyro_meta
from pyro_meta import CheckpointError, load_checkpoint, read_checkpoint_meta, rebuild_model
from pyro_meta.checkpoint import MAGIC
from pyro_meta.models import BayesianLinear

from ._check import expect_clear_error


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "good.ckpt"
    model = BayesianLinear()
    opt = torch.optim.Adam(model.parameters())
    model.loss(pyro_meta.data.LinearTasks().sample(2, 3, 3)).backward()
    opt.step()
    pyro_meta.save_checkpoint(
        path, model, opt, extra={"step": 3, "losses": [1.0, 2.0]}, meta={"model_args": model.init_args}
    )
    return path.read_bytes()


@st.composite
def damaged(draw, data: bytes):
    kind = draw(st.sampled_from(["flip", "truncate", "append", "garbage", "magic_garbage", "empty", "zip"]))
    if kind == "flip":
        out = bytearray(data)
        for i in draw(st.sets(st.integers(0, len(out) - 1), min_size=1, max_size=4)):  # distinct bytes: never undone
            out[i] ^= draw(st.integers(1, 255))
        return bytes(out)
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "append":
        return data + draw(st.binary(min_size=1, max_size=64))
    if kind == "garbage":
        return draw(st.binary(min_size=1, max_size=512))
    if kind == "magic_garbage":
        return MAGIC + draw(st.binary(min_size=0, max_size=512))
    if kind == "empty":
        return b""
    return b"PK\x03\x04" + draw(st.binary(max_size=128))  # a plain torch.save / zip file


@given(st.data())
def test_damaged_checkpoints_give_one_clear_error_naming_the_file(original, tmp_path_factory, data):
    content = data.draw(damaged(original))
    path = tmp_path_factory.mktemp("bad") / "c.ckpt"
    path.write_bytes(content)
    reader = data.draw(st.sampled_from(["load", "load_into", "meta", "rebuild"]))
    if reader == "load":
        call = lambda: load_checkpoint(path)  # noqa: E731
    elif reader == "load_into":
        model = BayesianLinear()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        call = lambda: load_checkpoint(path, model, torch.optim.Adam(model.parameters()))  # noqa: E731
    elif reader == "meta":
        call = lambda: read_checkpoint_meta(path)  # noqa: E731
    else:
        call = lambda: rebuild_model(path)  # noqa: E731
    err = expect_clear_error("checkpoint", call, (str(path),), allowed=(CheckpointError,))
    assert "weights_only=False" not in str(err)
    if reader == "load_into":  # a refused file changes nothing
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@given(st.data())
def test_bad_loader_arguments_name_the_argument(original, tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("args")
    path = folder / "c.ckpt"
    path.write_bytes(original)
    kind = data.draw(
        st.sampled_from(
            ["path", "model", "optimizer", "optimizer_alone", "other_optimizer", "other_model", "allow", "directory"]
        )
    )
    if kind == "path":
        value = data.draw(st.sampled_from([3, None, ["c.ckpt"], b"\x00bad"]))
        call, names = (lambda: load_checkpoint(value)), ("path",)
    elif kind == "model":
        value = data.draw(st.sampled_from([3, "model", BayesianLinear]))
        call, names = (lambda: load_checkpoint(path, value)), ("model",)
    elif kind == "optimizer":
        value = data.draw(st.sampled_from([3, "adam", torch.optim.Adam]))
        call, names = (lambda: load_checkpoint(path, BayesianLinear(), value)), ("optimizer",)
    elif kind == "optimizer_alone":
        m = BayesianLinear()
        call, names = (lambda: load_checkpoint(path, None, torch.optim.SGD(m.parameters(), lr=0.1))), ("model",)
    elif kind == "other_optimizer":
        m = BayesianLinear()
        call, names = (lambda: load_checkpoint(path, m, torch.optim.SGD(m.parameters(), lr=0.1))), (str(path),)
    elif kind == "other_model":
        call, names = (lambda: load_checkpoint(path, torch.nn.Linear(2, 3))), (str(path),)
    elif kind == "allow":
        value = data.draw(st.sampled_from(["pyro_meta", [3], [""], None]))
        call, names = (lambda: rebuild_model(path, allow=value)), ("allow",)
    else:
        call, names = (lambda: load_checkpoint(folder)), (str(folder), "path")
    expect_clear_error(
        "checkpoint arguments", call, names, allowed=(ValueError, TypeError, IsADirectoryError, FileNotFoundError)
    )


def test_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(os.path.join(tmp_path, "nope.ckpt"))
