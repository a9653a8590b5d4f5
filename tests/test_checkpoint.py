"""Checkpoints: the documented format, integrity (every flipped byte, every truncation), metadata and
rebuilding, mismatched optimizers, atomic and interrupt-safe writes."""

import glob
import hashlib
import io
import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import pyro_meta
from pyro_meta.checkpoint import (
    CheckpointError,
    check_writable,
    load_checkpoint,
    read_checkpoint_meta,
    rebuild_model,
    save_checkpoint,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def trained(seed=0, width=3):
    """A small Linear model and an Adam optimizer with state (one step taken)."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(width, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(5, width)).pow(2).sum().backward()
    opt.step()
    return model, opt


def write_raw(path, payload, header=None, version=1):
    """An independent writer of the documented format: magic, SHA-256, <IQQ, JSON header, torch.save payload."""
    header = (
        {
            "format": "pyro_meta.checkpoint",
            "format_version": 1,
            "model_class": None,
            "optimizer_class": None,
            "step": None,
            "versions": {},
            "meta": {},
        }
        if header is None
        else header
    )
    buf = io.BytesIO()
    torch.save(payload, buf)
    h = json.dumps(header).encode()
    body = struct.pack("<IQQ", version, len(h), len(buf.getvalue())) + h + buf.getvalue()
    with open(path, "wb") as f:
        f.write(b"PYRO-META-CKPT\n\x00" + hashlib.sha256(body).digest() + body)


def no_temp_files(folder):
    return not glob.glob(os.path.join(folder, ".ckpt-*"))


# ------------------------------------------------------------------------------- round trip, format
def test_round_trip_model_optimizer_extra_and_meta(tmp_path):
    model, opt = trained()
    path = tmp_path / "c.ckpt"
    losses = [0.1, 1 / 3, 2.5e-8]
    g = torch.Generator().manual_seed(3)
    save_checkpoint(
        path,
        model,
        opt,
        extra={"step": 7, "losses": losses, "generator": g.get_state()},
        meta={"model_args": {"in_features": 3, "out_features": 2}, "config": {"lr": 0.1, "sizes": (1, 2)}},
    )
    fresh, fresh_opt = trained(seed=1)
    state = load_checkpoint(path, fresh, fresh_opt)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert state["step"] == 7 and type(state["step"]) is int
    assert state["losses"] == losses and all(type(v) is float for v in state["losses"])
    assert torch.equal(state["generator"], g.get_state())
    meta = read_checkpoint_meta(path)
    assert meta == state["meta"]
    assert meta["model_class"] == {"module": "torch.nn.modules.linear", "qualname": "Linear"}
    assert meta["optimizer_class"] == {"module": "torch.optim.adam", "qualname": "Adam"}
    assert meta["step"] == 7 and meta["meta"]["config"] == {"lr": 0.1, "sizes": [1, 2]}
    assert meta["versions"]["torch"] == torch.__version__ and meta["versions"]["pyro_meta"] == pyro_meta.__version__
    assert no_temp_files(tmp_path)


def test_documented_format_is_what_is_written(tmp_path):
    model, _ = trained()
    a, b = tmp_path / "a", tmp_path / "b"
    save_checkpoint(a, model, extra={"step": 1})
    data = a.read_bytes()
    assert data[:16] == b"PYRO-META-CKPT\n\x00" and hashlib.sha256(data[48:]).digest() == data[16:48]
    version, h, p = struct.unpack_from("<IQQ", data, 48)
    assert version == 1 and len(data) == 68 + h + p
    header = json.loads(data[68 : 68 + h])
    payload = torch.load(io.BytesIO(data[68 + h :]), weights_only=True)
    assert header["step"] == 1 and torch.equal(payload["model"]["weight"], model.weight)
    write_raw(b, payload, header)  # the independent writer's file loads too
    assert load_checkpoint(b)["step"] == 1


# ------------------------------------------------------------------------------- integrity
def _assert_one_clear_error(path, fn=load_checkpoint):
    with pytest.raises(CheckpointError) as info:
        fn(path)
    message = str(info.value)
    assert str(path) in message and "weights_only" not in message
    assert info.value.__cause__ is None


def _flip_each(path, positions, rng, check):
    """Flip one byte at a time in place (XOR a seeded non-zero value), check, restore."""
    data = path.read_bytes()
    with open(path, "r+b") as f:
        for pos in positions:
            f.seek(pos)
            f.write(bytes([data[pos] ^ rng.randrange(1, 256)]))
            f.flush()
            check(path)
            f.seek(pos)
            f.write(data[pos : pos + 1])
            f.flush()
    assert path.read_bytes() == data


def test_single_byte_flips_are_all_detected(tmp_path):
    """Bug on main: about 25% of single-byte flips loaded silently with different weights."""
    model, opt = trained()
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, model, opt, extra={"step": 3, "losses": [1.0, 0.5]}, meta={"model_args": {}})
    size = os.path.getsize(path)
    fresh = trained(1)[0]
    rng = random.Random(0)
    # every byte of a ~4 KB checkpoint: fixed header, JSON metadata, payload
    _flip_each(path, range(size), rng, lambda p: _assert_one_clear_error(p, lambda q: load_checkpoint(q, fresh)))
    _flip_each(path, rng.sample(range(size), 50), rng, lambda p: _assert_one_clear_error(p, read_checkpoint_meta))
    assert torch.equal(load_checkpoint(path, fresh)["model"]["weight"], model.weight)


def test_sampled_byte_flips_of_a_larger_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(200, 500), torch.nn.Linear(500, 200))  # ~0.8 MB
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, model)
    rng = random.Random(1)
    _flip_each(path, rng.sample(range(os.path.getsize(path)), 100), rng, _assert_one_clear_error)


def test_every_truncation_is_detected(tmp_path):
    model, opt = trained()
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, model, opt, extra={"step": 3})
    for n in range(os.path.getsize(path) - 1, -1, -1):
        os.truncate(path, n)
        _assert_one_clear_error(path)


def test_foreign_and_old_format_files(tmp_path):
    model, _ = trained()
    old = tmp_path / "old.pt"
    torch.save({"model": model.state_dict(), "step": 3}, old)  # the format of main before this change
    with pytest.raises(CheckpointError, match="not a pyro_meta checkpoint.*torch.save"):
        load_checkpoint(old, model)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    _assert_one_clear_error(text)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_malicious_pickle_is_refused_without_torch_advice(tmp_path):
    ran = []

    class Evil:
        def __reduce__(self):
            return (ran.append, ("executed",))

    path = tmp_path / "evil.ckpt"
    write_raw(path, {"model": {"weight": Evil()}, "extra": {}})
    with pytest.raises(CheckpointError, match="refuses to unpickle") as info:
        load_checkpoint(path)
    assert "weights_only" not in str(info.value) and info.value.__suppress_context__ and not ran


def test_non_finite_weights_refused_on_save_and_load(tmp_path):
    model, opt = trained()
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, model, extra={"step": 1})
    before = path.read_bytes()
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="'weight' has NaN or inf"):
        save_checkpoint(path, model, extra={"step": 2})
    assert path.read_bytes() == before and no_temp_files(tmp_path)  # the last good checkpoint is kept
    write_raw(path, {"model": {"weight": torch.tensor([1.0, float("inf")])}, "extra": {}})
    with pytest.raises(CheckpointError, match="'weight' has NaN or inf"):
        load_checkpoint(path)
    with torch.no_grad():
        model.weight[0, 0] = 0.0
    opt.state_dict()["state"][0]["exp_avg"][0, 0] = float("inf")  # a view of the optimizer's own state
    with pytest.raises(CheckpointError, match="optimizer state 'exp_avg'"):
        save_checkpoint(path, model, opt)


# ------------------------------------------------------------------------------- mismatches, extras
def test_optimizer_mismatch_names_both_and_changes_nothing(tmp_path):
    """Bug on main: Adam state loaded into SGD raised KeyError: 'momentum'."""
    model, opt = trained()
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, model, opt)
    fresh, _ = trained(seed=1)
    weight = fresh.weight.detach().clone()
    sgd = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(CheckpointError, match=r"torch\.optim\.adam\.Adam.*torch\.optim\.sgd\.SGD"):
        load_checkpoint(path, fresh, sgd)
    assert torch.equal(fresh.weight, weight)
    other = torch.optim.Adam([fresh.weight])  # one parameter group of a different size
    with pytest.raises(CheckpointError, match="optimizer state"):
        load_checkpoint(path, fresh, other)
    assert torch.equal(fresh.weight, weight)  # the model is restored when the optimizer fails
    save_checkpoint(path, model)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(path, fresh, sgd)


def test_model_mismatch_changes_nothing(tmp_path):
    model, _ = trained()
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, model)
    wrong = torch.nn.Sequential(torch.nn.Linear(3, 2))
    before = {k: v.clone() for k, v in wrong.state_dict().items()}
    with pytest.raises(CheckpointError, match="Linear.*do not fit the given Sequential"):
        load_checkpoint(path, wrong)
    wrong_shape = torch.nn.Linear(4, 2)
    w = wrong_shape.weight.detach().clone()
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path, wrong_shape)
    assert torch.equal(wrong_shape.weight, w) and all(torch.equal(before[k], v) for k, v in wrong.state_dict().items())


@pytest.mark.parametrize("step", [-1, 1.5, True, "3", torch.tensor(3)])
def test_bad_step_refused_on_save_and_load(tmp_path, step):
    model, _ = trained()
    with pytest.raises(CheckpointError, match="step"):
        save_checkpoint(tmp_path / "c.ckpt", model, extra={"step": step})
    path = tmp_path / "raw.ckpt"
    write_raw(path, {"model": model.state_dict(), "extra": {"step": step}})
    with pytest.raises(CheckpointError, match="step"):
        load_checkpoint(path)


def test_losses_come_back_as_floats(tmp_path):
    model, _ = trained()
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, model, extra={"losses": torch.tensor([0.5, 0.25])})
    assert load_checkpoint(path)["losses"] == [0.5, 0.25]
    with pytest.raises(CheckpointError, match="losses"):
        save_checkpoint(path, model, extra={"losses": [[1.0, 2.0]]})
    with pytest.raises(CheckpointError, match="losses"):
        save_checkpoint(path, model, extra={"losses": ["a"]})


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(meta={"model_args": {"f": object()}}), TypeError, r"meta\['model_args'\]\['f'\]"),
        (dict(meta={"x": float("nan")}), ValueError, r"meta\['x'\]"),
        (dict(meta={1: 2}), TypeError, "meta: keys must be str"),
        (dict(meta=[1]), TypeError, "meta must be a dict"),
        (dict(extra={"model": 1}), ValueError, "reserved"),
        (dict(extra={"thing": object()}), TypeError, r"\['thing'\]"),
        (dict(extra=[1]), TypeError, "extra must be a dict"),
        (dict(optimizer="adam"), TypeError, "optimizer"),
    ],
)
def test_save_bad_arguments(tmp_path, kw, exc, match):
    model, _ = trained()
    with pytest.raises(exc, match=match):
        save_checkpoint(tmp_path / "c.ckpt", model, **kw)
    assert not os.path.exists(tmp_path / "c.ckpt") and no_temp_files(tmp_path)


# ------------------------------------------------------------------------------- rebuilding
class LocalNet(torch.nn.Linear):
    """A user model outside the pyro_meta package."""


def test_rebuild_model_from_recorded_class_and_args(tmp_path):
    from pyro_meta.models import NeuralProcess

    torch.manual_seed(0)
    args = {"latent_dim": 3, "hidden": [8, 8]}
    model = NeuralProcess(**args)
    path = tmp_path / "np.ckpt"
    save_checkpoint(path, model, meta={"model_args": args})
    rebuilt = rebuild_model(path)
    assert type(rebuilt) is NeuralProcess and rebuilt is not model
    for k, v in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v), k

    user = tmp_path / "user.ckpt"
    save_checkpoint(user, LocalNet(3, 2), meta={"model_args": {"in_features": 3, "out_features": 2}})
    with pytest.raises(CheckpointError, match="outside the allowed packages.*allow="):
        rebuild_model(user)
    assert isinstance(rebuild_model(user, allow=["pyro_meta", LocalNet.__module__]), LocalNet)
    save_checkpoint(user, LocalNet(3, 2))
    with pytest.raises(CheckpointError, match="no constructor arguments"):
        rebuild_model(user, allow=[LocalNet.__module__])


def test_rebuild_refuses_before_importing(tmp_path):
    path = tmp_path / "crafted.ckpt"
    header = {
        "format": "pyro_meta.checkpoint",
        "format_version": 1,
        "step": None,
        "versions": {},
        "model_class": {"module": "antigravity", "qualname": "Thing"},
        "optimizer_class": None,
        "meta": {"model_args": {}},
    }
    write_raw(path, {"model": {}, "extra": {}}, header)
    sys.modules.pop("antigravity", None)
    with pytest.raises(CheckpointError, match="outside the allowed packages"):
        rebuild_model(path)
    assert "antigravity" not in sys.modules  # the module was never imported
    header["model_class"] = {"module": "pyro_meta_evil", "qualname": "X"}  # a prefix is not a package
    write_raw(path, {"model": {}, "extra": {}}, header)
    with pytest.raises(CheckpointError, match="outside the allowed packages"):
        rebuild_model(path)
    header["model_class"] = {"module": "pyro_meta.checkpoint", "qualname": "CheckpointError"}
    write_raw(path, {"model": {}, "extra": {}}, header)
    with pytest.raises(CheckpointError, match="not a torch.nn.Module"):
        rebuild_model(path)


# ------------------------------------------------------------------------------- writing: paths, atomicity
def test_check_writable(tmp_path):
    check_writable(tmp_path / "new" / "deeper" / "c.ckpt")  # folders are created
    assert os.path.isdir(tmp_path / "new" / "deeper") and no_temp_files(tmp_path / "new" / "deeper")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="cannot write checkpoint"):
        check_writable(blocker / "c.ckpt")
    with pytest.raises(CheckpointError, match="cannot write checkpoint"):
        save_checkpoint(blocker / "c.ckpt", trained()[0])
    with pytest.raises(CheckpointError, match="is a directory"):
        check_writable(tmp_path)
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        check_writable(blocker)
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        save_checkpoint(blocker, trained()[0])
    assert blocker.read_text() == "x"
    with pytest.raises(TypeError, match="path"):
        check_writable(3)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to read-only folders")
def test_check_writable_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="cannot write checkpoint"):
            check_writable(folder / "c.ckpt")
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_write_keeps_old_file_and_removes_temp(tmp_path, monkeypatch, exc):
    model, _ = trained()
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, model, extra={"step": 1})
    before = path.read_bytes()

    def fail(fd):
        raise exc

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(CheckpointError if isinstance(exc, OSError) else KeyboardInterrupt):
        save_checkpoint(path, model, extra={"step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before and no_temp_files(tmp_path)


def test_sigint_during_write_is_deferred_until_the_file_is_in_place(tmp_path, monkeypatch):
    model, _ = trained()
    path = tmp_path / "c.ckpt"
    real_save = torch.save

    def save_then_signal(obj, f):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the write
        time.sleep(0.01)
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", save_then_signal)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, extra={"step": 5})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 5 and no_temp_files(tmp_path)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored


CHILD = textwrap.dedent("""
    import glob, json, os, sys
    import torch
    from pyro_meta.checkpoint import load_checkpoint, save_checkpoint

    path, caught_max = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(500, 900), torch.nn.Linear(900, 500))  # 3.6 MB
    step = 0
    save_checkpoint(path, model, extra={"step": step})
    print("ready", flush=True)
    for _ in range(caught_max):
        try:
            while True:
                step += 1
                save_checkpoint(path, model, extra={"step": step})
        except KeyboardInterrupt:  # anything else escapes: traceback, exit status 1
            pass
        saved = load_checkpoint(path, model)["step"]
        temps = glob.glob(os.path.join(os.path.dirname(path), ".ckpt-*"))
        print(json.dumps({"saved": saved, "step": step, "temps": temps}), flush=True)
    while True:  # the last signal ends the process through an uncaught KeyboardInterrupt
        step += 1
        save_checkpoint(path, model, extra={"step": step})
""")


def _readline(proc: subprocess.Popen, timeout: float = 120.0) -> str:
    """The child's next stdout line; ``AssertionError`` (not a hang) when none comes within ``timeout`` seconds."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no line from the child in {timeout:.0f} s (a lost Ctrl-C?)"
    return proc.stdout.readline()


@pytest.mark.slow
def test_sigint_at_random_times_never_damages_the_checkpoint(tmp_path):
    """Bug on main: a Ctrl-C during torch.save escaped as RuntimeError (inline_container.cc) ~1 in 6 times."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rng = random.Random(0)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    signals = 0
    for run in range(2):
        folder = tmp_path / f"run{run}"
        folder.mkdir()
        path = folder / "c.ckpt"
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path), "10"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        try:
            assert _readline(proc).strip() == "ready"
            for k in range(11):
                time.sleep(rng.uniform(0.0, 0.06))  # a save of this model takes about 60 ms
                proc.send_signal(signal.SIGINT)
                signals += 1
                if k < 10:
                    line = _readline(proc)
                    assert line, f"child died: {proc.stderr.read()[-2000:]}"
                    report = json.loads(line)
                    assert report["saved"] in (report["step"] - 1, report["step"]) and report["temps"] == []
            proc.wait(timeout=60)
        finally:
            proc.kill()
        err = proc.stderr.read()
        assert proc.returncode == -signal.SIGINT, err[-2000:]  # how Python ends on an uncaught KeyboardInterrupt
        assert err.rstrip().endswith("KeyboardInterrupt") and "RuntimeError" not in err, err[-2000:]
        load_checkpoint(path)
        assert no_temp_files(folder)
    assert signals >= 20
