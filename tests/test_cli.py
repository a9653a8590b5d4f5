"""The ``pyro-meta`` command: argument handling, the table writers and the smoke demo end to end."""

import csv
import subprocess
import sys

import numpy as np
import pytest

from pyro_meta import cli

ROWS = [
    {"context": 3, "method": "amortized", "nll": 3.3541, "mse": 0.59, "coverage_90": 0.6, "seconds": 5.21},
    {"context": 3, "method": "oracle", "nll": 0.195, "mse": 0.095, "coverage_90": 0.897, "seconds": None},
]


def test_format_table_text_and_markdown():
    text = cli.format_table(ROWS).splitlines()
    assert len(text) == 4 and "NLL/point" in text[0] and "3.354" in text[2] and text[3].rstrip().endswith("0.897")
    md = cli.format_table(ROWS, markdown=True).splitlines()
    assert len(md) == 4 and md[0].startswith("| context") and md[1].startswith("|---:")
    assert md[3].endswith("|  |"), "the oracle has no seconds: an empty cell"


def test_smoke_config_is_smaller_than_the_demo():
    full, smoke = cli.DemoConfig(), cli.DemoConfig().smoke()
    assert smoke.num_steps < full.num_steps and smoke.num_tasks < full.num_tasks
    assert full.num_tasks == 50 and full.contexts == (1, 3, 5, 10)
    assert set(full.method_options()) == set(cli.METHODS) and full.method_options()["nuts"]["jit_compile"] is True


@pytest.mark.parametrize("argv", [["demo", "--steps", "0"], ["demo", "--threads", "0"]])
def test_bad_arguments_exit(argv):
    with pytest.raises(SystemExit, match="positive"):
        cli.main(argv)


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as err:
        cli.main([])
    assert err.value.code == 2 and "demo" in capsys.readouterr().err


def test_python_m_pyro_meta_help():
    res = subprocess.run([sys.executable, "-m", "pyro_meta", "demo", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--smoke" in res.stdout and "noise_std" in res.stdout


@pytest.mark.slow
def test_smoke_demo_writes_every_output(tmp_path, capsys):
    """`pyro-meta demo --smoke` trains, evaluates every method and writes table, figure and NetCDF."""
    import arviz as az

    assert cli.main(["demo", "--smoke", "--out", str(tmp_path), "--no-progress", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    smoke = cli.DemoConfig().smoke()
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == list(cli.METHODS + ("oracle",)) * len(smoke.contexts)
    assert {int(r["context"]) for r in rows} == set(smoke.contexts)
    for r in rows:
        for key in ("nll", "mse", "coverage_90"):
            assert float(r[key]) == float(r[key]), f"{key} is NaN in {r}"
        assert 0.0 <= float(r["coverage_90"]) <= 1.0
    md = (tmp_path / "results.md").read_text().splitlines()
    assert len(md) == 2 + len(rows)
    assert (tmp_path / "predictive_bands.png").stat().st_size > 10_000
    idata = az.from_netcdf(tmp_path / "nuts_posterior.nc")
    z = idata.posterior["z"]
    assert z.dims[:3] == ("chain", "draw", "task") and z.sizes["chain"] == smoke.nuts_chains
    assert z.sizes["draw"] == smoke.nuts_samples and z.sizes["task"] == smoke.num_tasks
    # issue 3: az.summary of the file names the task and latent dims; az.loo over context points is finite
    summary = az.summary(idata, var_names=["z"], labeller=az.labels.DimCoordLabeller())
    assert len(summary) == smoke.num_tasks * smoke.latent_dim
    assert all("task: " in name and f"{z.dims[3]}: " in name for name in summary.index), list(summary.index)[:3]
    loo = az.loo(idata, var_name="y_context")
    assert np.isfinite(loo.elpd_loo)
    assert "NLL/point" in printed and "max r_hat" in printed and "min ESS" in printed
    assert ("NUTS mixed well on every task." in printed) != ("NUTS mixed badly on some tasks" in printed)
