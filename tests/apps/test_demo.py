"""``pyro-meta demo``: a client of ``evaluate``; its outputs (table, figure, NetCDF, mixing report)."""

import csv
import types

import numpy as np
import pytest
import torch

from pyro_meta import cli
from pyro_meta.apps.demo import DEMO_COLUMNS, METHODS, DemoConfig, mixing_report


def test_smoke_config_is_smaller_than_the_demo():
    full, smoke = DemoConfig(), DemoConfig().smoke()
    assert smoke.num_steps < full.num_steps and smoke.num_tasks < full.num_tasks
    assert full.num_tasks == 50 and full.contexts == (1, 3, 5, 10)
    options = full.method_options()
    assert set(options) == set(METHODS) and options["nuts"]["jit_compile"] is True
    assert options["nuts"]["num_samples"] == full.nuts_samples and "num_samples" not in options["svi"]


def test_mixing_report_lists_the_badly_mixed_tasks():
    post = types.SimpleNamespace(
        method="nuts",
        num_chains=2,
        num_samples=50,
        diagnostics={
            "r_hat": torch.tensor([1.01, 1.2, 1.0]),
            "ess_bulk": torch.tensor([80.0, 9.0, 70.0]),
            "divergences": torch.tensor([1, 2]),
            "step_size": torch.tensor([0.25, 0.3]),
            "bad_tasks": [1],
        },
    )
    line, bad = mixing_report(post, 5)
    assert bad == [1]
    assert line.startswith("nuts, context size 5: max r_hat 1.200, min ESS 9 (over 3 tasks, 2 chains x 50 draws)")
    assert "divergences 3" in line and "step size 0.250, 0.300" in line and "WARNING: tasks [1] mixed badly" in line
    post.diagnostics["bad_tasks"] = []
    assert "all tasks mixed well" in mixing_report(post, 5)[0]


@pytest.mark.slow
def test_smoke_demo_writes_every_output(tmp_path, capsys):
    """`pyro-meta demo --smoke` trains, evaluates every method and writes table, figure and NetCDF."""
    import arviz as az

    assert cli.main(["demo", "--smoke", "--out", str(tmp_path), "--no-progress", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    smoke = DemoConfig().smoke()
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == list(("oracle",) + METHODS) * len(smoke.contexts)
    assert [int(r["num_context"]) for r in rows] == [c for c in smoke.contexts for _ in range(len(METHODS) + 1)]
    for r in rows:
        for key in ("nll", "mse", "coverage_90", "crps"):
            assert float(r[key]) == float(r[key]), f"{key} is NaN in {r}"
        assert 0.0 <= float(r["coverage_90"]) <= 1.0 and int(r["num_tasks"]) == smoke.num_tasks
        if r["method"] not in ("oracle",):
            assert r["nll_gap"] != "", "model rows carry the gap to the oracle"
    nuts = [r for r in rows if r["method"] == "nuts"]
    assert all(r["max_r_hat"] and r["min_ess"] and r["divergences"] for r in nuts)
    md = (tmp_path / "results.md").read_text().splitlines()
    assert len(md) == 2 + len(rows)
    assert (tmp_path / "predictive_bands.png").stat().st_size > 10_000
    idata = az.from_netcdf(tmp_path / "nuts_posterior.nc")
    z = idata.posterior["z"]
    assert z.dims[:3] == ("chain", "draw", "task") and z.sizes["chain"] == smoke.nuts_chains
    assert z.sizes["draw"] == smoke.nuts_samples and z.sizes["task"] == smoke.num_tasks
    summary = az.summary(idata, var_names=["z"], labeller=az.labels.DimCoordLabeller())
    assert len(summary) == smoke.num_tasks * smoke.latent_dim
    assert all("task: " in name and f"{z.dims[3]}: " in name for name in summary.index), list(summary.index)[:3]
    loo = az.loo(idata)  # no var_name: the log-likelihood group holds the context only
    assert np.isfinite(loo.elpd_loo) and "y_target" in idata.target_log_likelihood
    header = "| " + " | ".join(DEMO_COLUMNS) + " |"
    assert header in printed and "max r_hat" in printed and "min ESS" in printed
    assert printed.count("nuts, context size") == len(smoke.contexts)
    assert ("NUTS mixed well on every task." in printed) != ("NUTS mixed badly on some tasks" in printed)
