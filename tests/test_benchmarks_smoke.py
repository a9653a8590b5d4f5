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
    for heading in ("## Acceptance checks", "### Sinusoid (MAML protocol", "### GP curves, RBF kernel",
                    "### Line or sine", "### NeuralProcess vs the exact GP oracle", "### NeuralProcess training step",
                    "### Joint NUTS"):
        assert heading in text, heading
    # every family table has a header row and rows with numbers; the oracle rows are present
    assert len(re.findall(r"^\| model \| method \| num_context \|", text, flags=re.M)) == len(run_all.FAMILY_ORDER)
    for oracle in ("SinusoidOracle", "GPOracle", "LineOrSineOracle"):
        assert f"| {oracle} | oracle |" in text
    assert re.search(r"\| NeuralProcess training step / plain PyTorch step \| <= 1.25 \| [0-9.]+ \|", text)
    assert "evaluate` identical twice" in text and "NO" not in text.split("## Accuracy")[0]
    assert re.search(r"^\| NeuralProcess \| amortized \| 5 \| -?[0-9]+\.[0-9]{3} \|", text, flags=re.M)


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


@pytest.mark.slow
def test_fewshot_omniglot_script_smoke(tmp_path, monkeypatch):
    """``benchmarks/fewshot_omniglot.py --smoke``: every arm and baseline in every setting, NUTS diagnostics, checks."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("fewshot_omniglot", None)
    import fewshot_omniglot

    figure, markdown = tmp_path / "rel.png", tmp_path / "fewshot.md"
    out = fewshot_omniglot.main(["--smoke", "--figure", str(figure), "--markdown", str(markdown)])
    rows, text = out["rows"], markdown.read_text()
    for way, shots, _ in fewshot_omniglot.SETTINGS:
        setting = f"{way}-way {shots}-shot"
        assert f"### {setting}" in text
        models = {r["model"] for r in rows if r["setting"] == setting}
        expected = {a.name for a in fewshot_omniglot.ARMS if (way, shots, _) in a.settings()}
        assert expected | {"pixel nearest neighbour", "MLP from scratch on the support set"} == models, setting
        assert any(r["method"] == "nuts" for r in rows if r["setting"] == setting)
    assert len(out["checks"]) >= 3 and "Acceptance checks" in text
    assert re.search(r"R-hat per task \[[0-9., na]+\]", text)
    assert figure.stat().st_size > 1000
