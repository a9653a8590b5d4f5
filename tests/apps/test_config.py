"""TOML configurations: the schema, one-line errors naming the file and key, the shipped presets."""

import pathlib

import pytest

from pyro_meta.apps import ConfigError, check_config, list_presets, load_config, preset_path
from pyro_meta.apps.build import build_model, build_oracle, build_tasks

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOOD = """
[model]
name = "NeuralProcess"
[model.args]
latent_dim = 2
hidden = 8
[tasks]
name = "Sinusoid"
[tasks.args]
noise_std = 0.1
[train]
num_steps = 3
tasks_per_batch = 2
num_context = [2, 4]
lr = 1e-2
[evaluate]
methods = ["amortized"]
num_context = 3
num_tasks = 2
"""


def _write(tmp_path, text, name="c.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_good_config_is_normalised(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg["train"]["num_context"] == (2, 4) and cfg["train"]["lr"] == 0.01
    assert cfg["evaluate"]["num_context"] == [3] and cfg["evaluate"]["methods"] == ["amortized"]
    model = build_model(cfg)
    assert type(model).__name__ == "NeuralProcess" and model.init_args["latent_dim"] == 2
    assert build_tasks(cfg).noise_std == 0.1


BAD = [
    # (TOML text appended to / replacing GOOD, words the one-line message must contain)
    (GOOD + "\n[trian]\nx = 1\n", ["trian", "unknown key"]),
    (GOOD.replace("num_steps = 3", "num_stepz = 3"), ["train.num_stepz", "unknown key", "num_steps"]),
    (GOOD.replace("num_steps = 3", 'num_steps = "3"'), ["train.num_steps", "int"]),
    (GOOD.replace("num_steps = 3", "num_steps = -1"), ["train.num_steps", ">= 0"]),
    (GOOD.replace("lr = 1e-2", "lr = 0"), ["train.lr", "> 0"]),
    (GOOD.replace("lr = 1e-2", "lr = true"), ["train.lr", "number"]),
    (GOOD.replace("num_context = [2, 4]", "num_context = [4, 2]"), ["train.num_context", "[min, max]"]),
    (GOOD.replace("num_context = 3", "num_context = [0]"), ["evaluate.num_context", "positive"]),
    (GOOD.replace('methods = ["amortized"]', "methods = 3"), ["evaluate.methods", "string"]),
    (GOOD + "\n[train.extra]\n", ["train.extra", "unknown key"]),
    (GOOD.replace("[train]", "[train]\nseed = 4294967296"), ["train.seed", "4294967295"]),
    (GOOD.replace('name = "NeuralProcess"', "name = 7"), ["model.name", "string"]),
    (GOOD.replace('name = "NeuralProcess"\n', ""), ["model.name", "missing"]),
    (
        GOOD.replace('[model]\nname = "NeuralProcess"\n[model.args]\nlatent_dim = 2\nhidden = 8\n', ""),
        ["model", "missing"],
    ),
    (GOOD + '\n[data]\npath = "x.csv"\n', ["tasks/data", "exactly one"]),
    (
        GOOD.replace('[tasks]\nname = "Sinusoid"\n[tasks.args]\nnoise_std = 0.1\n', '[data]\npath = "nope.csv"\n'),
        ["data.path", "nope.csv", "no such file"],
    ),
    (GOOD.replace("[train]\n", "[train]\nmodel = 3\n"), ["train.model", "unknown key"]),
    ("model = 3\n", ["model", "table"]),
    ("[model\nname = 1", ["not valid TOML"]),
]


@pytest.mark.parametrize("text,words", BAD)
def test_bad_configs_give_one_line_naming_file_and_key(tmp_path, text, words):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(path), message
    for w in words:
        assert w in message, (w, message)


def test_missing_and_directory_config_files(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(str(tmp_path / "none.toml"))
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(str(tmp_path))


@pytest.mark.parametrize(
    "change,words",
    [
        (('name = "NeuralProcess"', 'name = "NeuralProces"'), ["model.name", "NeuralProces", "zoo models"]),
        (("hidden = 8", "hiddden = 8"), ["model.args.hiddden", "unknown argument", "latent_dim"]),
        (("latent_dim = 2", "latent_dim = 0"), ["model.args", "latent_dim"]),
        (('name = "Sinusoid"', 'name = "Sinusoidal"'), ["tasks.name", "Sinusoidal", "GPCurves"]),
        (("noise_std = 0.1", "noise_stdd = 0.1"), ["tasks.args.noise_stdd", "unknown argument"]),
        (('name = "NeuralProcess"', 'name = "os:system"'), ["model.name", "not allowed", "--allow-module os"]),
        (('name = "NeuralProcess"', 'name = "pyro_meta.data:Sinusoid"'), ["model.name", "not a pyro_meta.MetaModel"]),
        (('name = "NeuralProcess"', 'name = "pyro_meta.nope:X"'), ["model.name", "cannot import"]),
    ],
)
def test_model_and_task_problems_name_the_key(tmp_path, change, words):
    cfg = load_config(_write(tmp_path, GOOD.replace(*change)))
    with pytest.raises(ConfigError) as err:
        build_model(cfg)
        build_tasks(cfg)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_oracles_by_name(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD))
    tasks = build_tasks(cfg)
    assert type(build_oracle("SinusoidOracle", tasks)).__name__ == "SinusoidOracle"
    assert build_oracle(None, tasks) is None and build_oracle("none", tasks) is None
    with pytest.raises(ConfigError, match="evaluate.oracle: unknown oracle 'Oracle'"):
        build_oracle("Oracle", tasks)
    with pytest.raises(ConfigError, match="evaluate.oracle: .*Sinusoid"):
        build_oracle("LineOrSineOracle", tasks)


def test_data_paths_are_relative_to_the_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.csv").write_text("task_id,x,y\n0,0.0,1.0\n")
    text = '[model]\nname = "NeuralProcess"\n[data]\npath = "d.csv"\nnum_context = 1\n'
    cfg = load_config(_write(tmp_path / "sub", text))
    assert cfg["data"]["path"] == str(tmp_path / "sub" / "d.csv")
    assert cfg["data"]["task"] == "task_id" and cfg["data"]["x"] == ["x"] and cfg["data"]["y"] == ["y"]
    with pytest.raises(ConfigError, match="data: give one split rule"):
        check_config({"model": {"name": "MAML"}, "data": {"path": cfg["data"]["path"], "split": "s", "num_context": 2}})


def test_presets_are_listed_and_build():
    presets = list_presets()
    assert {"maml_sinusoid", "np_gp_curves", "omniglot"} <= set(presets)
    assert all(presets.values()), "every preset has a description"
    maml = load_config(preset_path("maml_sinusoid"))
    assert maml["train"]["num_steps"] == 70000 and maml["train"]["tasks_per_batch"] == 25
    assert maml["train"]["num_context"] == 10 and maml["model"]["args"]["eval_inner_steps"] == 10
    assert maml["reference"]["metric"] == "mse" and "Finn" in maml["reference"]["source"]
    np_ = load_config(preset_path("np_gp_curves"))
    assert np_["evaluate"]["oracle"] == "GPOracle" and "Kim" in np_["reference"]["source"]
    for cfg in (maml, np_):
        model, tasks = build_model(cfg), build_tasks(cfg)
        assert type(model).__name__ == cfg["model"]["name"] and type(tasks).__name__ == cfg["tasks"]["name"]
        build_oracle(cfg["evaluate"].get("oracle"), tasks)
    with pytest.raises(ConfigError, match="no preset named 'mamll'.*maml_sinusoid"):
        preset_path("mamll")


def test_the_shipped_example_config_loads():
    cfg = load_config(str(ROOT / "examples" / "sine_np.toml"))
    assert cfg["data"]["path"].endswith("sine_tasks.csv") and cfg["data"]["num_context"] == 5
    batch = build_tasks(cfg)
    assert batch.num_tasks == 24 and int(batch.context_mask.sum(-1).min()) == 5
    assert build_tasks(cfg, "evaluate").info["task_id"] == list(range(100, 108))


def test_the_readme_config_block_is_a_valid_config():
    """The README's annotated TOML example passes the schema and names real models, tasks and methods."""
    import re

    import pyro_meta
    from pyro_meta.apps.config import _toml

    text = (ROOT / "README.md").read_text()
    block = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    cfg = check_config(_toml().loads(block), source="README.md")
    assert set(cfg) == {"description", "model", "tasks", "train", "evaluate", "reference"}
    assert set(cfg["evaluate"]["methods"]) <= set(pyro_meta.available_methods())
    assert type(build_model(cfg)).__name__ == "NeuralProcess" and build_tasks(cfg).noise_std == 0.2
    from pyro_meta.apps.commands import _evaluation_settings

    assert _evaluation_settings(cfg)["method_options"]["nuts"]["num_warmup"] == 200
