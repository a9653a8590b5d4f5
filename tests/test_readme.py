"""The README's meta-learner runs as written (amortized and NUTS on a user-written model)."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_opens_with_the_two_commands():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
    assert "make test" in first_block and "make demo" in first_block
    assert text.index("make test") < text.index("## ")


@pytest.mark.slow
def test_readme_example_runs(capsys):
    blocks = python_blocks()
    assert blocks, "README has no python example"
    namespace = {"__name__": "readme"}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "amortized: target log-lik/point" in out and "nuts: target log-lik/point" in out
    nuts = namespace["nuts"]
    assert nuts.samples["z"].shape == (2, 200, 4, 4)
    assert namespace["idata"].posterior["z"].dims[:3] == ("chain", "draw", "task")
    # the evaluate block continues the example
    assert len(blocks) >= 2, "README lost its evaluate example"
    exec(compile(blocks[1], str(README), "exec"), namespace)
    table = namespace["table"]
    got = {(r["model"], r["method"], r["num_context"]) for r in table.rows}
    want = {(m, meth, n) for n in (2, 5) for m, meth in (("SinusoidOracle", "oracle"), ("TinyNP", "amortized"),
                                                         ("TinyNP", "importance"))}
    assert len(table.rows) == 6 and got == want, got
    assert all(r["nll"] == r["nll"] for r in table.rows), "NaN NLL in the README's evaluate table"


def test_readme_omniglot_block_runs(capsys):
    block = next(b for b in python_blocks() if "OmniglotEpisodes" in b)
    exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "nearest neighbour, 5-way 1-shot: 0.363" in out, out


@pytest.mark.slow
def test_readme_np_family_block_runs(capsys):
    block = next(b for b in python_blocks() if "BNPGPCurves" in b)
    namespace = {"__name__": "readme"}
    exec(compile(block, str(README), "exec"), namespace)
    pred, nuts, batch = namespace["pred"], namespace["nuts"], namespace["batch"]
    assert tuple(pred.samples.shape) == (1, 50, 4, batch.target_x.shape[1], 1)
    assert tuple(nuts.samples["z"].shape) == (2, 50, 4, 4) and "r_hat" in nuts.diagnostics
    assert "torch.Size([1, 50, 4" in capsys.readouterr().out
