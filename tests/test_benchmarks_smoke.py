"""``make bench`` in smoke mode: the whole docs generator runs and writes every table and figure."""

import re
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_docs_generator_smoke(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("run_all", None)
    import run_all

    path = run_all.main(["--smoke", "--out", str(tmp_path)])
    text = path.read_text()
    assert path == tmp_path / "benchmarks.md" and "SMOKE RUN" in text
    for family in run_all.FAMILY_ORDER:
        assert (tmp_path / "figures" / f"accuracy_{family}.png").stat().st_size > 1000, family
        assert f"figures/accuracy_{family}.png" in text
    for heading in (
        "## Checks against stated targets",
        "### Sinusoid (MAML protocol",
        "### GP curves, RBF kernel",
        "### Line or sine",
        "### NeuralProcess vs the exact GP oracle",
        "### NeuralProcess training step",
        "### Joint NUTS",
        "### Exact per-task posteriors",
    ):
        assert heading in text, heading
    # every family table has a header row and rows with numbers; the oracle rows are present
    assert len(re.findall(r"^\| model \| method \| num_context \|", text, flags=re.M)) == len(run_all.FAMILY_ORDER)
    for oracle in ("SinusoidOracle", "GPOracle", "LineOrSineOracle"):
        assert f"| {oracle} | oracle |" in text
    assert re.search(r"\| NeuralProcess training step / plain PyTorch step \| <= 1.25 \| [0-9.]+ \|", text)
    assert "evaluate` identical twice" in text and "NO" not in text.split("## Accuracy")[0]
    assert re.search(r"^\| NeuralProcess \| amortized \| 5 \| -?[0-9]+\.[0-9]{3} \|", text, flags=re.M)
    # few-shot Omniglot (benchmarks/fewshot_omniglot.py): its section, tables, checks and reliability figure
    assert "## Few-shot classification on Omniglot" in text and "### 5-way 1-shot (15 queries" in text
    assert "best 5-way 1-shot accuracy" in text
    assert (tmp_path / "figures" / "fewshot_omniglot_bench_reliability.png").stat().st_size > 1000
    # (this run is also the smoke test of fewshot_omniglot.py: every arm and baseline in every setting, NUTS rows,
    # per-task diagnostics, the checks)
    fewshot = text.split("## Few-shot classification on Omniglot")[1].split("\n## ")[0]
    sys.modules.pop("fewshot_omniglot", None)
    import fewshot_omniglot

    for way, shots, queries in fewshot_omniglot.SETTINGS:
        setting = f"{way}-way {shots}-shot"
        table = fewshot.split(f"### {setting} ({queries} queries")[1].split("###")[0]
        rows = re.findall(r"^\| ([^|]+) \| (amortized|nuts|-) \| \d+ \| [0-9.]+ \+- [0-9.]+ \|", table, flags=re.M)
        arms = [a for a in fewshot_omniglot.ARMS if (way, shots, queries) in a.settings()]
        expected = (
            {a.name for a in arms}
            | {a.name + " (cold posterior)" for a in arms if a.nuts_cold}
            | {f"{a.name} (test shifts {a.test_shifts})" for a in arms if a.test_shifts}
        )
        assert "ProtoNet (test shifts 2)" in expected, "the benchmark's ProtoNet is also scored with test shifts"
        assert {m for m, _ in rows} == expected | {"pixel nearest neighbour", "MLP from scratch on the support set"}
        assert ("BayesianLastLayer", "nuts") in rows and ("BayesianLastLayer (cold posterior)", "nuts") in rows, setting
    assert re.search(r"R-hat per task \[[0-9., na]+\]", fewshot)
    assert len(re.findall(r"^\* .*: (PASS|FAIL)", fewshot, flags=re.M)) >= 3
    # the Neural Process family (benchmarks/np_gp.py): its fragment, figure, tables and checks
    assert (tmp_path / "np_family.md").exists() and (tmp_path / "figures" / "np_family_bands.png").stat().st_size > 1000
    for heading in (
        "## The Neural Process family on GP curves",
        "### A. DeepMind protocol",
        "### B. BNP/TNP protocol",
        "### C. The latent path",
        "figures/np_family_bands.png",
    ):
        assert heading in text, heading
    for name in (
        "NeuralProcess",
        "ConditionalNP",
        "AttentiveNP",
        "AttentiveNP (conditional)",
        "TransformerNP",
        "GPOracle",
    ):
        assert re.search(rf"^\| {re.escape(name)} \| 10 \| -?[0-9.]+ \|", text, flags=re.M), name  # part A
        assert re.search(rf"^\| {re.escape(name)} \| -?[0-9.]+ ± [0-9.]+ \| -?[0-9.]+ ± ", text, flags=re.M), name
    for method in ("amortized", "importance", "nuts", "prior"):  # part C
        assert re.search(rf"^\| AttentiveNP \| {method} \| -?[0-9.]+ \|", text, flags=re.M), method
    assert "closes >= half the NeuralProcess's gap" in text and "KL(q(z | C) || p(z))" in text
    # non-Gaussian guides (benchmarks/guide_families.py, two processes merged): parts A, B, D, SBC, checks, figures
    assert "## Non-Gaussian amortized guides" in text
    for family, stage in (("line_or_sine", "A joint"), ("line_or_sine", "B same model"), ("noisy_sinusoid", "A joint")):
        assert re.search(rf"^\| {family} \| {stage} \| flow \|", text, flags=re.M), (family, stage)
    for check in (
        "closes >= half the Normal guide's NLL gap",
        "median per-task ESS",
        "SBC (Bonferroni",
        "both families",
    ):
        assert check in text, check
    assert re.search(r"^\| overconfident \(Normal x 0.5\) \| [0-9.e+-]+ \| False \|$", text, flags=re.M)
    assert re.search(r"^\| 2 \| MixturePLATIPUS \(K=2\) \| [0-9.]+ \|", text, flags=re.M)
    for figure in ("guide_families_posterior.png", "guide_families_line_or_sine.png"):
        assert (tmp_path / "figures" / figure).stat().st_size > 1000, figure
    # mcmc_speed.py (its smoke test too): every arm on the same 3 tasks, gradients counted, the checks table
    for arm in ("nuts jit", "nuts inductor", "batched", "batched compiled"):
        grads = re.findall(
            rf"^\| [^|]+ \| 3 \| {arm} \| [0-9.]+ \| [0-9.]+ \| ([0-9]+) \| [0-9.]+ \|", text, flags=re.M
        )
        assert grads and all(int(g) > 0 for g in grads), arm
    assert "| check | target | measured |" in text.split("### Exact per-task posteriors")[1]


@pytest.mark.slow
def test_maml_family_script_smoke(tmp_path, monkeypatch, capsys):
    """``benchmarks/maml_sinusoid.py --smoke``: every part runs, prints its table and writes the part-C figure."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("maml_sinusoid", None)
    import maml_sinusoid

    figure = tmp_path / "los.png"
    maml_sinusoid.main(["--smoke", "--figure", str(figure)])
    out = capsys.readouterr().out
    assert "SMOKE run" in out and figure.stat().st_size > 1000
    assert re.search(r"MAML MSE after 10 steps: [0-9.]+ \+- [0-9.]+", out)
    for name in ("ABML", "BMAML", "PLATIPUS"):  # part B rows carry a verdict
        assert re.search(rf"^{name} .*(PASS|FAIL)$", out, flags=re.M), name
    for label in ("ABML model, NUTS", "PLATIPUS model, NUTS", "NeuralProcess, NUTS", "oracle (Bayes optimal)"):
        assert re.search(rf"^{re.escape(label)} +(nan|-?[0-9.]+) +-?[0-9.]+", out, flags=re.M), label


def test_conv4_speed_script_smoke(monkeypatch, capsys):
    """``benchmarks/conv4_speed.py --smoke``: the three arms agree (checked by the script) and every row is printed."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("conv4_speed", None)
    import conv4_speed

    conv4_speed.main(["--smoke"])
    out = capsys.readouterr().out
    assert "SMOKE" in out and "MAML meta-step" in out
    for arm in ("grouped conv (FunctionalConv4)", "torch.func.vmap", "per-task loop"):
        assert len(re.findall(rf"^\| {re.escape(arm)} \| 2 \| .* \| [0-9.]+ \|$", out, flags=re.M)) == 2, arm
        assert re.search(rf"^\| {re.escape(arm)} \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|$", out, flags=re.M), arm


def test_omniglot_readme_model_script_smoke(monkeypatch, capsys):
    """``benchmarks/omniglot_readme_model.py --smoke``: the README block's training, both settings scored, the timing check."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("omniglot_readme_model", None)
    import omniglot_readme_model

    out = omniglot_readme_model.main(["--smoke"])
    text = capsys.readouterr().out
    assert [(r["setting"], r["test_shifts"]) for r in out["rows"]] == [
        ("20-way 1-shot", 2),
        ("5-way 1-shot", 2),
        ("20-way 1-shot", 0),
        ("5-way 1-shot", 0),
    ]
    assert all(0 <= r["accuracy"] <= 1 and r["num_tasks"] == 4 for r in out["rows"])
    assert re.search(r"^\| 20-way 1-shot \| 2 \| 4 \| [0-9.]+ \+- [0-9.]+ \|", text, flags=re.M)
    assert re.search(r"meta-training \(2 steps\): [0-9.]+ min: (PASS|FAIL)", text)


def test_fewshot_calibration_bootstrap_script_smoke(monkeypatch):
    """``benchmarks/fewshot_calibration_bootstrap.py --smoke``: both arms retrained, rows and the bootstrap table."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("fewshot_calibration_bootstrap", None)
    import fewshot_calibration_bootstrap as fcb

    text = fcb.main(["--smoke"])
    for arm in ("MAML 5-way", "PLATIPUS 5-way"):
        for setting in ("5-way 1-shot", "5-way 5-shot"):
            assert re.search(rf"^\| {arm} \| {setting} \| [0-9.]+ \| [0-9.]+ \|$", text, flags=re.M), (arm, setting)
    assert len(re.findall(r"^\| 5-way [15]-shot \| [0-9.]+ \(.*\| [0-9]+% \| [0-9]+% \|$", text, flags=re.M)) == 2
    with pytest.raises(ValueError, match="--arms"):
        fcb.main(["--smoke", "--arms", "MAML 5-way,MAML 20-way"])


def test_paired_bootstrap_known_answers(monkeypatch):
    """The episode bootstrap: an arm against itself differs by exactly 0; swapping the arms negates the differences;
    the point ECE is ``metrics.expected_calibration_error``'s; episodes that differ are refused."""
    import torch

    from pyro_meta.metrics import expected_calibration_error

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("fewshot_calibration_bootstrap", None)
    import fewshot_calibration_bootstrap as fcb

    g = torch.Generator().manual_seed(0)
    y = torch.randint(5, (40, 15), generator=g)
    mask = torch.ones(40, 15, dtype=torch.bool)
    mask[:, -2:] = False
    a = {"probs": torch.softmax(torch.randn(40, 15, 5, generator=g) * 2, -1), "y": y, "mask": mask}
    b = {"probs": torch.softmax(torch.randn(40, 15, 5, generator=g), -1), "y": y, "mask": mask}
    same = fcb.paired_bootstrap(a, a, resamples=30)
    assert same["d_ece_ci"] == [0.0, 0.0] and same["d_acc_ci"] == [0.0, 0.0]
    assert same["share_lower_ece"] == 0.0 and same["share_line_holds"] == 0.0
    ab, ba = fcb.paired_bootstrap(a, b, resamples=30), fcb.paired_bootstrap(b, a, resamples=30)
    assert ab["ece_ref"] == pytest.approx(float(expected_calibration_error(a["probs"], y, mask, bins=15)[0]))
    assert ab["d_ece_ci"][0] == pytest.approx(-ba["d_ece_ci"][1]) and ab["d_acc_ci"][1] == pytest.approx(
        -ba["d_acc_ci"][0]
    )
    assert ab["share_lower_ece"] + ba["share_lower_ece"] == pytest.approx(1.0)  # no ties between these two arms
    with pytest.raises(ValueError, match="same episodes"):
        fcb.paired_bootstrap(a, dict(b, y=(y + 1) % 5), resamples=2)


def test_np_gp_scoring_matches_evaluate(monkeypatch):
    """``benchmarks/np_gp.py`` scores per task in chunks; pooled, its rows equal ``evaluate``'s on the same tasks."""
    import torch

    import pyro_meta
    from pyro_meta.data import GPCurves
    from pyro_meta.models import ConditionalNP
    from pyro_meta.oracles import GPOracle

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("np_gp", None)
    import np_gp

    torch.manual_seed(0)
    model = ConditionalNP(hidden=8)
    table = pyro_meta.evaluate(
        {"m": model},
        GPCurves("rbf"),
        num_tasks=7,
        num_context=4,
        num_target=6,
        seed=0,
        oracle=GPOracle(),
        num_samples=30,
    )
    batch = GPCurves("rbf").sample(7, 4, 6, generator=torch.Generator().manual_seed(0))  # evaluate's tasks
    ref = np_gp.score_oracle(batch)
    rows = [
        np_gp.make_row("GPOracle", "oracle", ref),
        np_gp.make_row("m", "amortized", np_gp.score_model(model, batch, num_samples=30, chunk=3), ref),
    ]
    # the log densities are exact (a conditional model's draws share one predictive); the model's MSE uses the mean
    # of its draws, which differ between chunked and whole-batch runs, so only the oracle's MSE is compared
    keys = {"GPOracle": ("nll", "nll_se", "mse"), "m": ("nll", "nll_se", "nll_gap", "nll_gap_se")}
    for ours, theirs in zip(rows, table.rows):
        for key in keys[ours["model"]]:
            assert abs(ours[key] - theirs[key]) < 1e-5, (ours["model"], key, ours[key], theirs[key])
    assert abs(rows[0]["coverage_90"] - table.rows[0]["coverage_90"]) < 0.1  # exact interval vs 30 draws
    diff = np_gp.paired_difference(ref, ref)
    assert diff["mean"] == 0.0 and diff["se"] == 0.0


def test_gpu_check_script_smoke(monkeypatch, capsys):
    """``benchmarks/gpu_check.py --smoke``: some device tests pass, every workload has a row; no CUDA is said so."""
    import torch

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("gpu_check", None)
    import gpu_check

    text = gpu_check.main(["--smoke"])
    assert re.search(r"device tests \(tests/test_devices.py\): PASS: \d+ passed", text), text
    for method in ("amortized", "svi", "importance", "nuts"):
        assert re.search(rf"^\| infer {method} \(3 tasks\), seconds \| [0-9.]+ \|", text, flags=re.M), method
    assert re.search(r"^\| MAML meta-training, steps / s \| [0-9.]+ \|", text, flags=re.M)
    if not torch.cuda.is_available():
        assert "CUDA is not available on this machine" in text and "| n/a |" in text


@pytest.mark.slow
def test_scaling_script_smoke(monkeypatch):
    """``benchmarks/scaling.py --smoke``: 1 and 2 processes run both parts; draws equal, parameters within 1e-5."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("scaling", None)
    import scaling

    text = scaling.main(["--smoke"])
    assert "equal draws (1 vs 2 processes): yes" in text
    assert re.search(r"wall-time ratio 2/1: [0-9.]+ \(target <= 0.65\)", text)
    assert re.search(r"relative difference [0-9.e+-]+ \(<= 1e-5: yes\)", text)
    for w in (1, 2):
        cpu = r"[0-9.]+" + r" \+ [0-9.]+" * (w - 1)
        assert re.search(rf"^\| {w} \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| {cpu} \| [0-9.]+ \|$", text, flags=re.M), w


def test_mcmc_speed_acceptance_plan_feeds_every_check(monkeypatch):
    """``--plan acceptance`` runs exactly what the acceptance checks read: rows for its arms fill every check but
    NumPyro at 1,000 tasks, left out on purpose (eager ``batched``, not run, gets no rows); removing an arm empties one."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("mcmc_speed", None)
    import mcmc_speed

    def rows_of(plan):
        out = []
        for arm, Ts in plan["mlp"].items():
            for T in Ts:
                for a in ("numpyro first", "numpyro warm") if arm == "numpyro" else (arm,):
                    out.append(
                        {"model": "mlp", "T": T, "arm": a, "grads_per_s": 1.0, "ess_per_s": 1.0, "ms_per_task": 1.0}
                    )
        return out

    checks = mcmc_speed.checks(rows_of(mcmc_speed.ACCEPTANCE_PLAN))
    missing = [c[0] for c in checks if c[2] == "n/a"]
    assert all("1000 tasks" in m for m in missing), missing
    # the eager ``batched`` arm is not in the plan: its figures are left out, not printed as n/a
    assert not any(c[0].startswith(("batched /", "batched:")) for c in checks), checks
    assert not any("nuts inductor" in m or "200 tasks" in m for m in missing), missing
    thinned = {"mlp": {k: v for k, v in mcmc_speed.ACCEPTANCE_PLAN["mlp"].items() if k != "nuts inductor"}}
    assert "n/a" in dict((c[0], c[2]) for c in mcmc_speed.checks(rows_of(thinned))).values()


def test_line_fraction_and_calibration_on_known_draws(monkeypatch):
    """``benchmarks/_ambiguity.py``: lines and sinusoids (the family's forms, any coefficients) are told apart, and
    the calibration MAE and the both-families count are those of hand-made fractions."""
    import torch

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("_ambiguity", None)
    from _ambiguity import GRID, calibration, line_fraction

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 30, 1, generator=g) * 6 - 3  # slope, intercept ~ U[-3, 3]
    amp, phase = torch.rand(2, 30, 1, generator=g) * torch.tensor([[[5.0]], [[3.14]]])
    lines, sines = a * GRID + b, (amp + 0.1) * torch.sin(GRID - phase)
    # task 0: all lines; task 1: all sines; task 2: 10 lines of 30
    draws = torch.stack([lines, sines, torch.cat([lines[:10], sines[10:]])], 1)  # [S=30, T=3, G]
    frac = line_fraction(draws)
    assert torch.allclose(frac, torch.tensor([1.0, 0.0, 1 / 3]))
    cal = calibration(frac, torch.tensor([0.9, 0.3, 0.5]))
    assert abs(cal["mae"] - (0.1 + 0.3 + 1 / 6) / 3) < 1e-6  # frac in float32
    assert cal["num_ambiguous"] == 2 and cal["both_families"] == 0.5  # task 1 shows sines only, task 2 both


def test_fewshot_omniglot_calibration_check_reads_each_setting(monkeypatch):
    """The calibration line compares each setting's Bayesian rows with that setting's MAML row, under both readings."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("fewshot_omniglot", None)
    import fewshot_omniglot

    def row(setting, model, accuracy, ece, method="amortized", num_tasks=600):
        return dict(
            setting=setting,
            model=model,
            method=method,
            accuracy=accuracy,
            ece=ece,
            accuracy_se=0.004,
            num_tasks=num_tasks,
        )

    five, twenty = "5-way 1-shot", "20-way 1-shot"
    rows = [
        row(five, "MAML 5-way", 0.79, 0.023),
        row(five, "BayesianLastLayer", 0.93, 0.011),  # better calibrated, 14 points above MAML
        row(five, "BayesianLastLayer", 0.785, 0.001, method="nuts", num_tasks=100),  # fewer episodes: not compared
        row(five, "pixel nearest neighbour", 0.36, 0.07),
        row(twenty, "MAML 20-way", 0.70, 0.157),
        row(twenty, "PLATIPUS 20-way", 0.705, 0.15),  # within a point, lower ECE
        row(twenty, "ProtoNet", 0.705, 0.01),  # not a Bayesian member
    ]
    checks = {
        c.split(": a Bayesian")[0] + (" within" if "within" in c else " below"): c
        for c in fewshot_omniglot.acceptance(rows)
        if "Bayesian member" in c
    }
    assert checks[f"{five} within"].endswith("FAIL")
    assert "PASS (BayesianLastLayer amortized)" in checks[f"{five} below"]
    assert "PASS (PLATIPUS 20-way amortized)" in checks[f"{twenty} within"]
    rows[5] = row(twenty, "PLATIPUS 20-way", 0.715, 0.15)  # 1.5 points above: only the lenient reading
    checks = [c for c in fewshot_omniglot.acceptance(rows) if c.startswith(twenty)]
    assert checks[0].endswith("FAIL") and checks[1].endswith("PASS (PLATIPUS 20-way amortized)")
