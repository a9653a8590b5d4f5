"""The ``pyro-meta`` entry point: argparse wiring and the ``--help`` of every command."""

import pytest

from pyro_meta import cli


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as err:
        cli.main([])
    message = capsys.readouterr().err
    assert err.value.code == 2 and "COMMAND" in message


@pytest.mark.parametrize(
    "command,words",
    [
        ("train", ["--config", "--preset", "--list-presets", "--resume", "--steps", "--out", "--seed", "--threads"]),
        ("evaluate", ["--checkpoint", "--config", "--preset", "--out"]),
        ("predict", ["--checkpoint", "--data", "--out", "--method", "--num-samples"]),
        ("demo", ["--smoke", "--steps", "--task", "noise_std"]),
    ],
)
def test_every_command_has_help(command, words, capsys):
    with pytest.raises(SystemExit) as err:
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert err.value.code == 0
    for w in words:
        assert w in out, (command, w)


# ``python -m pyro_meta --help`` runs in a fresh interpreter in tests/test_layering.py (with the zoo check)
