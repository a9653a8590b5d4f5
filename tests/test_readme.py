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
    want = {
        (m, meth, n)
        for n in (2, 5)
        for m, meth in (("SinusoidOracle", "oracle"), ("TinyNP", "amortized"), ("TinyNP", "importance"))
    }
    assert len(table.rows) == 6 and got == want, got
    assert all(r["nll"] == r["nll"] for r in table.rows), "NaN NLL in the README's evaluate table"


def test_readme_omniglot_block_runs(capsys):
    block = next(b for b in python_blocks() if "OmniglotEpisodes" in b)
    exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "nearest neighbour, 5-way 1-shot: 0.363" in out, out


@pytest.mark.slow
def test_readme_hierarchical_and_flow_blocks_run(capsys):
    """The eight schools block (AutoNormal, NUTS with sampled globals) and the flow-guide block run as written."""
    blocks = python_blocks()
    namespace = {"__name__": "readme"}
    # TinyNP, tasks and batch from the first block (its fit and NUTS run in test_readme_example_runs)
    setup = blocks[0].split("model = TinyNP()")[0]
    setup += next(line for line in blocks[0].splitlines() if line.startswith("batch = tasks.sample("))
    exec(compile(setup, str(README), "exec"), namespace)
    hier = next(b for b in blocks if "EightSchools" in b)
    exec(compile(hier, str(README), "exec"), namespace)
    hmc = namespace["hmc"]
    assert hmc.samples["tau"].shape == (2, 500) and hmc.samples["eta"].shape == (2, 500, 8)
    assert namespace["idata"].posterior["tau"].dims == ("chain", "draw")
    assert "tau:" in capsys.readouterr().out
    flow = next(b for b in blocks if "AmortizedGuide" in b)
    assert len(flow.strip().splitlines()) <= 18  # the guide itself is one line of the class
    exec(compile(flow, str(README), "exec"), namespace)
    assert namespace["post"].diagnostics["proposal"] == "guide"
    assert "importance ESS per task" in capsys.readouterr().out


def _strokes(seed):
    """A 105 x 105 Omniglot-style drawing: dark random strokes on white (uint8, mode L)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    image = Image.new("L", (105, 105), 255)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        draw.line([tuple(rng.integers(15, 90, 2).tolist()) for _ in range(3)], fill=0, width=4)
    return np.asarray(image)


def test_readme_own_images_block_runs(tmp_path, write_png):
    """The outside-check path: read_images on 105 x 105 PNGs -> TaskBatch.from_tasks -> fit -> amortized -> class_probs."""
    import torch

    block = next(b for b in python_blocks() if "def classify(" in b)
    block = block.replace("num_steps=1500", "num_steps=2").replace(
        "ProtoNet(image_shape=(1, 28, 28))", "ProtoNet(image_shape=(1, 28, 28), channels=4)"
    )
    namespace = {"__name__": "readme"}
    exec(compile(block, str(README), "exec"), namespace)
    support = [write_png(tmp_path / f"s{k:02d}.png", _strokes(k)) for k in range(20)]
    queries = [write_png(tmp_path / f"q{k:02d}.png", _strokes(k)) for k in (3, 7, 19)]  # copies of supports
    probs = namespace["classify"](support, queries)
    assert probs.shape == (3, 20) and torch.allclose(probs.sum(-1), torch.ones(3), atol=1e-5)
    # a query identical to a support image sits on its prototype: that class is the most probable
    assert probs.argmax(-1).tolist() == [3, 7, 19]


def test_readme_np_family_block_runs(capsys):
    block = next(b for b in python_blocks() if "BNPGPCurves" in b)
    namespace = {"__name__": "readme"}
    exec(compile(block, str(README), "exec"), namespace)
    pred, nuts, batch = namespace["pred"], namespace["nuts"], namespace["batch"]
    assert tuple(pred.samples.shape) == (1, 50, 4, batch.target_x.shape[1], 1)
    assert tuple(nuts.samples["z"].shape) == (2, 50, 4, 4) and "r_hat" in nuts.diagnostics
    assert "torch.Size([1, 50, 4" in capsys.readouterr().out
