"""The ``pyro-meta`` entry point: argparse wiring, ``python -m pyro_meta``, ``--help`` of every command."""

import subprocess
import sys

import pytest

from pyro_meta import cli


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as err:
        cli.main([])
    message = capsys.readouterr().err
    assert err.value.code == 2 and "COMMAND" in message


@pytest.mark.parametrize("command,words", [
    ("train", ["--config", "--preset", "--list-presets", "--resume", "--out", "--seed", "--threads"]),
    ("evaluate", ["--checkpoint", "--config", "--preset", "--out"]),
    ("predict", ["--checkpoint", "--data", "--out", "--method", "--num-samples"]),
    ("demo", ["--smoke", "--steps", "--task", "noise_std"]),
])
def test_every_command_has_help(command, words, capsys):
    with pytest.raises(SystemExit) as err:
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert err.value.code == 0
    for w in words:
        assert w in out, (command, w)


def test_python_m_pyro_meta_runs_the_cli():
    res = subprocess.run([sys.executable, "-m", "pyro_meta", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert all(c in res.stdout for c in ("train", "evaluate", "predict", "demo", "--version"))
