"""``pyro-meta train | evaluate | predict`` end to end, resume after a kill, exit codes and one-line errors."""

import csv
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch

import pyro_meta
from pyro_meta import cli
from pyro_meta.apps import ConfigError, check_config, load_config, preset_path
from pyro_meta.apps.build import build_tasks
from pyro_meta.apps.commands import reference_line

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "sine_np.toml"
TINY = """
[model]
name = "NeuralProcess"
[model.args]
latent_dim = 2
hidden = 8
num_layers = 1
[tasks]
name = "Sinusoid"
[tasks.args]
noise_std = 0.2
[train]
num_steps = {steps}
tasks_per_batch = 4
lr = 0.01
seed = 3
checkpoint_every = {every}
[evaluate]
methods = ["amortized"]
num_context = [3]
num_tasks = 4
num_target = 5
num_samples = 20
oracle = "SinusoidOracle"
"""


def _run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_train_evaluate_predict_on_the_shipped_example(tmp_path, capsys):
    """From the repo's example files: train writes a self-describing checkpoint, evaluate and predict rebuild it."""
    out = tmp_path / "run"
    code, printed, err = _run(["train", "--config", str(EXAMPLE), "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    ckpt = out / "checkpoint.ckpt"
    header = pyro_meta.read_checkpoint_meta(ckpt)
    assert header["model_class"] == {"module": "pyro_meta.models.neural_process", "qualname": "NeuralProcess"}
    assert header["meta"]["model_args"]["latent_dim"] == 4 and header["step"] == 300
    assert {"pyro_meta", "torch", "pyro"} <= set(header["versions"])
    recorded = header["meta"]["app"]["config"]
    assert recorded["data"]["path"] == str(ROOT / "examples" / "sine_tasks.csv")
    assert recorded == {k: v for k, v in recorded.items()} and recorded["train"]["num_steps"] == 300
    assert header["meta"]["app"]["labels"] is False
    # still a plain weights_only payload: load_checkpoint reads it without unpickling objects
    state = pyro_meta.load_checkpoint(ckpt)
    assert state["step"] == 300 and len(state["losses"]) == 300

    code, printed, err = _run(["evaluate", "--checkpoint", str(ckpt), "--no-progress"], capsys)
    assert code == 0, err
    rows = _rows(out / "results.csv")
    assert [(r["method"], r["num_context"]) for r in rows] == [
        ("amortized", "3"),
        ("importance", "3"),
        ("amortized", "5"),
        ("importance", "5"),
    ]
    assert all(r["num_tasks"] == "8" and float(r["nll"]) == float(r["nll"]) for r in rows)
    assert (out / "results.md").read_text().count("\n") == 2 + len(rows)
    assert "| NeuralProcess | importance | 5 |" in printed

    pred_path = tmp_path / "pred.csv"
    data = str(ROOT / "examples" / "sine_predict.csv")
    code, printed, err = _run(
        ["predict", "--checkpoint", str(ckpt), "--data", data, "--out", str(pred_path), "--no-progress"], capsys
    )
    assert code == 0, err
    preds = _rows(pred_path)
    with open(ROOT / "examples" / "sine_predict.csv") as f:
        source = list(csv.DictReader(f))
    wanted = [(r["task_id"], float(r["x"])) for r in source if r["y"] == ""]
    assert [(r["task_id"], float(r["x"])) for r in preds] == wanted, "one row per empty-y row, in file order"
    assert list(preds[0]) == ["task_id", "x", "y_mean", "y_q05", "y_q95"]
    for r in preds:
        assert float(r["y_q05"]) < float(r["y_mean"]) < float(r["y_q95"])
    # independent of the CLI: the same posterior from the library, the context being the observed rows
    model = pyro_meta.rebuild_model(ckpt)
    ctx = {
        t: [(float(r["x"]), float(r["y"])) for r in source if r["task_id"] == t and r["y"] != ""]
        for t in ("200", "201", "202")
    }
    tgt = {t: [float(r["x"]) for r in source if r["task_id"] == t and r["y"] == ""] for t in ctx}
    batch = pyro_meta.TaskBatch(
        context_x=torch.tensor([[[x] for x, _ in ctx[t]] for t in ctx]),
        context_y=torch.tensor([[[y] for _, y in ctx[t]] for t in ctx]),
        target_x=torch.tensor([[[x] for x in tgt[t]] for t in ctx]),
    )
    mean = pyro_meta.infer(model, batch, method="amortized", num_samples=100, seed=0).predict().mean
    ours = torch.tensor([float(r["y_mean"]) for r in preds]).reshape(3, 10)
    torch.testing.assert_close(ours, mean[..., 0], rtol=1e-5, atol=1e-5)


def test_resume_after_a_kill_gives_the_uninterrupted_run(tmp_path, capsys):
    """SIGKILL a training process after a checkpoint, resume it: the same losses and weights as one straight run."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY.format(steps=100000, every=10))
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyro_meta", "train", "--config", str(cfg), "--out", str(killed), "--no-progress"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ckpt = killed / "checkpoint.ckpt"
    try:
        deadline = time.time() + 120
        while not (ckpt.exists() and pyro_meta.read_checkpoint_meta(ckpt)["step"] >= 20):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    step = pyro_meta.read_checkpoint_meta(ckpt)["step"]
    assert step >= 20 and step % 10 == 0
    total = step + 15
    cfg.write_text(TINY.format(steps=total, every=10))  # num_steps may change on --resume

    code, _, err = _run(["train", "--config", str(cfg), "--out", str(killed), "--no-progress"], capsys)
    assert code == 2 and "--resume" in err and "\n" not in err.strip()
    code, _, err = _run(["train", "--config", str(cfg), "--out", str(killed), "--resume", "--no-progress"], capsys)
    assert code == 0, err
    straight = tmp_path / "straight"
    code, _, err = _run(["train", "--config", str(cfg), "--out", str(straight), "--no-progress"], capsys)
    assert code == 0, err
    a, b = pyro_meta.load_checkpoint(ckpt), pyro_meta.load_checkpoint(straight / "checkpoint.ckpt")
    assert a["step"] == b["step"] == total
    assert a["losses"] == b["losses"]
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    # a changed model on --resume is refused, naming the key
    cfg.write_text(TINY.format(steps=total, every=10).replace("hidden = 8", "hidden = 9"))
    code, _, err = _run(["train", "--config", str(cfg), "--out", str(killed), "--resume"], capsys)
    assert code == 2 and "model.args" in err


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(steps=3, every=0))
    return path


@pytest.mark.parametrize(
    "replace,words",
    [
        (("num_steps = 3", "num_stepz = 3"), ["train.num_stepz", "unknown key"]),
        (("lr = 0.01", 'lr = "fast"'), ["train.lr", "number"]),
        (('name = "NeuralProcess"', 'name = "NeuralProcesss"'), ["model.name", "NeuralProcesss"]),
        (('methods = ["amortized"]', 'methods = ["amortised"]'), ["evaluate.methods", "amortised", "registered"]),
        (('oracle = "SinusoidOracle"', 'oracle = "GPOracl"'), ["evaluate.oracle", "GPOracl"]),
        (
            ("[evaluate]", "[evaluate.options.nuts]\nnum_warmpu = 3\n[evaluate]"),
            ["evaluate.options.nuts", "num_warmpu"],
        ),
        (
            ('[tasks]\nname = "Sinusoid"\n[tasks.args]\nnoise_std = 0.2', '[data]\npath = "missing.csv"'),
            ["data.path", "missing.csv"],
        ),
    ],
)
def test_bad_configs_exit_2_with_one_line(tiny_config, tmp_path, capsys, replace, words):
    tiny_config.write_text(tiny_config.read_text().replace(*replace))
    code, out, err = _run(
        ["train", "--config", str(tiny_config), "--out", str(tmp_path / "o"), "--no-progress"], capsys
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and lines[0].startswith("pyro-meta train: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert not (tmp_path / "o" / "checkpoint.ckpt").exists(), "nothing is trained after a bad config"


@pytest.mark.parametrize(
    "argv,words",
    [
        (["train", "--config", "{tmp}/none.toml"], ["none.toml", "no such configuration file"]),
        (["train"], ["--config"]),
        (["train", "--preset", "nope"], ["--preset", "nope", "maml_sinusoid"]),
        (["evaluate", "--checkpoint", "{tmp}/none.ckpt"], ["--checkpoint", "no such file"]),
        (["evaluate", "--checkpoint", "{tiny}"], ["--checkpoint", "not a pyro_meta checkpoint"]),
        (["train", "--config", "{tiny}", "--out", "{tiny}/sub"], ["--out", "cannot write"]),
        (["evaluate", "--checkpoint", "{tmp}"], ["--checkpoint", "directory"]),
    ],
)
def test_bad_command_lines_exit_2_with_one_line(tiny_config, tmp_path, capsys, argv, words):
    argv = [a.format(tmp=tmp_path, tiny=tiny_config) for a in argv]
    code, _, err = _run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--threads", "100000"],
        ["demo", "--threads", "0"],
        ["train", "--threads", "x"],
        ["demo", "--seed", "-1"],
        ["demo", "--seed", str(2**32)],
        ["evaluate", "--checkpoint", "c", "--seed", "1.5"],
        ["demo", "--steps", "0"],
        ["predict", "--checkpoint", "c"],
    ],
)
def test_out_of_range_options_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(argv)
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert "usage: pyro-meta" in message and "Traceback" not in message


def test_threads_and_seed_bounds_accept_the_edges(capsys):
    parser = cli._parser()
    args = parser.parse_args(["demo", "--seed", str(2**32 - 1), "--threads", str(cli._max_threads())])
    assert args.seed == 2**32 - 1 and args.threads == cli._max_threads()


def test_a_runtime_failure_exits_1_with_one_line(tiny_config, tmp_path, capsys):
    """A failure while running (here a NaN loss from a huge learning rate) is not a usage error."""
    tiny_config.write_text(
        tiny_config.read_text().replace("lr = 0.01", "lr = 1e30").replace("num_steps = 3", "num_steps = 50")
    )
    code, _, err = _run(["train", "--config", str(tiny_config), "--out", str(tmp_path / "o"), "--no-progress"], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and lines[-1].startswith("pyro-meta train: failed: "), err
    assert "Traceback" not in err and "--traceback" in lines[-1]


def test_user_model_needs_allow_module_then_trains_evaluates_and_predicts_labels(tmp_path, capsys):
    """A ``package.module:Class`` model: refused without --allow-module; labels: class probabilities per point."""
    g = torch.Generator().manual_seed(0)
    rows, pred_rows = [], []
    for t in range(6):
        w = torch.randn(2, generator=g)
        x = torch.randn(12, 2, generator=g)
        y = (x @ w > 0).long()
        rows += [(t, float(a), float(b), int(c)) for (a, b), c in zip(x.tolist(), y.tolist())]
        if t < 2:
            pred_rows += [
                (t, float(a), float(b), int(c) if i < 6 else "")
                for i, ((a, b), c) in enumerate(zip(x.tolist(), y.tolist()))
            ]
    for name, table in (("labels.csv", rows), ("new.csv", pred_rows)):
        with open(tmp_path / name, "w", newline="") as f:
            csv.writer(f).writerows([("task", "x1", "x2", "label"), *table])
    cfg = tmp_path / "user.toml"
    cfg.write_text(
        '[model]\nname = "tests.apps.user_models:TinyClassifier"\n[model.args]\nx_dim = 2\n'
        '[data]\npath = "labels.csv"\ntask = "task"\nx = ["x1", "x2"]\ny = "label"\nnum_context = 6\n'
        "[train]\nnum_steps = 20\ntasks_per_batch = 3\nlr = 0.05\ncheckpoint_every = 0\n"
        "[evaluate]\nnum_context = [4]\nnum_samples = 50\n"
    )
    out = tmp_path / "run"
    code, _, err = _run(["train", "--config", str(cfg), "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and "--allow-module tests" in err
    allow = ["--allow-module", "tests", "--no-progress"]
    code, _, err = _run(["train", "--config", str(cfg), "--out", str(out), *allow], capsys)
    assert code == 0, err
    assert pyro_meta.read_checkpoint_meta(out / "checkpoint.ckpt")["meta"]["app"]["labels"] is True
    code, _, err = _run(["evaluate", "--checkpoint", str(out / "checkpoint.ckpt"), "--no-progress"], capsys)
    assert code == 2 and "allowed packages" in err, "rebuilding a user class needs --allow-module too"
    code, _, err = _run(["evaluate", "--checkpoint", str(out / "checkpoint.ckpt"), *allow], capsys)
    assert code == 0, err
    assert {"accuracy", "ece", "brier"} <= set(_rows(out / "results.csv")[0])
    code, _, err = _run(
        [
            "predict",
            "--checkpoint",
            str(out / "checkpoint.ckpt"),
            "--data",
            str(tmp_path / "new.csv"),
            "--out",
            str(tmp_path / "p.csv"),
            *allow,
        ],
        capsys,
    )
    assert code == 0, err
    preds = _rows(tmp_path / "p.csv")
    assert list(preds[0]) == ["task", "x1", "x2", "predicted", "p_0", "p_1"] and len(preds) == 12
    for r in preds:
        p = [float(r["p_0"]), float(r["p_1"])]
        assert abs(sum(p) - 1) < 1e-5 and int(r["predicted"]) == int(p[1] > p[0])


def test_reference_line_puts_the_published_number_beside_the_measured_one():
    table = pyro_meta.EvaluationTable(
        [
            {"model": "M", "method": "amortized", "num_context": 10, "num_tasks": 600, "mse": 0.123, "mse_se": 0.01},
            {"model": "M", "method": "amortized", "num_context": 5, "num_tasks": 600, "mse": 0.5, "mse_se": 0.02},
        ]
    )
    ref = {"metric": "mse", "value": 0.2, "method": "amortized", "num_context": 10, "source": "Paper, Table 1"}
    line = reference_line(ref, table, ["amortized"], [5, 10])
    assert line.startswith("published: mse 0.2 [Paper, Table 1] | measured here: mse 0.123 +- 0.01")
    assert "10 context points, 600 tasks" in line
    line = reference_line({"metric": "mse", "source": "Fig. 3", "note": "read it"}, table, ["amortized"], [5])
    assert "mse not recorded [Fig. 3]" in line and "mse 0.5" in line and "note: read it" in line


def test_evaluate_prints_a_presets_reference(tmp_path, capsys):
    """A config with a [reference] (as the presets have): evaluate prints it beside the measured number."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY.format(steps=5, every=0) + '[reference]\nmetric = "nll"\nvalue = 0.5\nsource = "X et al."\n')
    assert cli.main(["train", "--config", str(cfg), "--out", str(tmp_path), "--no-progress"]) == 0
    capsys.readouterr()
    code, out, err = _run(
        ["evaluate", "--checkpoint", str(tmp_path / "checkpoint.ckpt"), "--no-progress", "--out", str(tmp_path / "ev")],
        capsys,
    )
    assert code == 0, err
    assert "published: nll 0.5 [X et al.] | measured here: nll " in out
    methods = [r["method"] for r in _rows(tmp_path / "ev" / "results.csv")]
    assert methods == ["oracle", "amortized"]
    code, out, err = _run(["train", "--list-presets"], capsys)
    assert code == 0 and "maml_sinusoid" in out and "np_gp_curves" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(["--version"])
    assert err.value.code == 0 and capsys.readouterr().out.strip() == f"pyro-meta {pyro_meta.__version__}"


def test_unwritable_out_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = _run(["demo", "--smoke", "--out", str(blocker / "sub")], capsys)
    assert code == 2 and err.startswith("pyro-meta demo: error: --out: cannot write to"), err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, err = _run(["demo", "--smoke", "--out", str(locked)], capsys)
        assert code == 2 and "--out" in err


def test_the_maml_preset_trains_and_evaluates_with_its_reference(tmp_path, capsys):
    """``--preset maml_sinusoid --steps 2``: the published protocol runs end to end and names its reference."""
    code, out, err = _run(
        ["train", "--preset", "maml_sinusoid", "--steps", "2", "--out", str(tmp_path), "--no-progress"], capsys
    )
    assert code == 0, err
    header = pyro_meta.read_checkpoint_meta(tmp_path / "checkpoint.ckpt")
    assert header["step"] == 2 and header["meta"]["app"]["config"]["train"]["num_steps"] == 2
    assert header["meta"]["model_args"]["eval_inner_steps"] == 10 and header["meta"]["config"]["tasks_per_batch"] == 25
    code, out, err = _run(["evaluate", "--checkpoint", str(tmp_path / "checkpoint.ckpt"), "--no-progress"], capsys)
    assert code == 0, err
    (row,) = _rows(tmp_path / "results.csv")
    assert (row["method"], row["num_context"], row["num_tasks"]) == ("amortized", "10", "600")
    assert "published: mse not recorded [Finn, Abbeel & Levine 2017" in out
    assert f"measured here: mse {float(row['mse']):.4g}" in out


def test_the_omniglot_preset_evaluates_on_the_meta_test_alphabets(tmp_path, capsys):
    """``[evaluate.tasks]``: ProtoNet trains on the training alphabets and is scored on the meta-test split."""
    cfg = load_config(preset_path("omniglot"))
    assert cfg["tasks"]["args"]["split"] == "train" and cfg["evaluate"]["tasks"]["args"]["split"] == "test"
    assert type(build_tasks(cfg, "evaluate")).__name__ == "OmniglotEpisodes"
    assert build_tasks(cfg, "evaluate").split == "test" and build_tasks(cfg).split == "train"
    code, out, err = _run(
        ["train", "--preset", "omniglot", "--steps", "2", "--out", str(tmp_path), "--no-progress"], capsys
    )
    assert code == 0, err
    small = tmp_path / "small.toml"
    small.write_text(
        '[model]\nname = "ProtoNet"\n[model.args]\nimage_shape = [1, 28, 28]\n'
        '[tasks]\nname = "OmniglotEpisodes"\n[tasks.args]\nsplit = "train"\n'
        "[evaluate]\nnum_context = [1]\nnum_tasks = 3\nnum_samples = 1\n"
        '[evaluate.tasks]\nname = "OmniglotEpisodes"\n[evaluate.tasks.args]\nsplit = "test"\nway = 5\nshots = 1\n'
        "queries = 2\n"
    )
    code, out, err = _run(
        ["evaluate", "--checkpoint", str(tmp_path / "checkpoint.ckpt"), "--config", str(small), "--no-progress"], capsys
    )
    assert code == 0, err
    assert "split='test'" in out
    (row,) = _rows(tmp_path / "results.csv")
    assert row["num_tasks"] == "3" and 0 <= float(row["accuracy"]) <= 1
    with pytest.raises(ConfigError, match="evaluate.tasks.name: missing"):
        check_config({"model": {"name": "ProtoNet"}, "tasks": {"name": "Sinusoid"}, "evaluate": {"tasks": {}}})
