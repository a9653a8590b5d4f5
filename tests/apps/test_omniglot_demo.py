"""The Omniglot demo runs end to end at smoke sizes and writes its table and figures."""

import dataclasses

import pytest

from pyro_meta.apps import OmniglotDemoConfig, omniglot_training_episodes, run_omniglot_demo
from pyro_meta.data import OMNIGLOT_SPLITS


@pytest.mark.slow
def test_smoke_demo_writes_table_and_figures(tmp_path, capsys):
    config = OmniglotDemoConfig().smoke()
    result = run_omniglot_demo(config, tmp_path, progress=False)
    out = capsys.readouterr().out
    rows = {(r["model"], r["method"], r["num_tasks"]) for r in result["table"]}
    assert rows == {
        ("ProtoNet", "amortized", 6),
        ("BayesianLastLayer", "amortized", 6),
        ("ProtoNet", "amortized", 2),
        ("BayesianLastLayer", "amortized", 2),
        ("BayesianLastLayer", "nuts", 2),
    }
    for r in result["table"]:
        assert 0 <= r["accuracy"] <= 1 and r["nll"] > 0 and 0 <= r["ece"] <= 1 and r["accuracy_se"] >= 0
    assert "accuracy (95% CI)" in out and "NUTS per task" in out
    assert result["nuts"].diagnostics["r_hat"].shape == (2,)
    for key in ("markdown", "csv", "reliability", "episode"):
        assert (tmp_path / result["paths"][key].split("/")[-1]).stat().st_size > 100, key


@pytest.mark.slow
def test_cli_runs_the_omniglot_demo(tmp_path, capsys):
    from pyro_meta import cli

    out = tmp_path / "demo"
    assert cli.main(["demo", "--task", "omniglot", "--smoke", "--out", str(out), "--no-progress", "--steps", "2"]) == 0
    text = capsys.readouterr().out
    assert "5-way 1-shot" in text and "BayesianLastLayer" in text and "NUTS per task" in text
    assert (out / "results.md").stat().st_size > 100 and (out / "reliability.png").stat().st_size > 100


def test_config_and_training_alphabets():
    full, smoke = OmniglotDemoConfig(), OmniglotDemoConfig().smoke()
    assert smoke.channels < full.channels and dataclasses.replace(smoke, channels=64).channels == 64
    eps = omniglot_training_episodes(5, 1, 2)
    assert eps.num_classes == 4 * (133 + 22)  # train + val alphabets, rotations as new classes
    with pytest.raises(ValueError, match="meta-test"):
        omniglot_training_episodes(5, 1, 2, alphabets=OMNIGLOT_SPLITS["test"])
