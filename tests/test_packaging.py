"""Packaging: the zoo is installed as pyro_meta.models, never as a top-level ``models`` package."""

import importlib.metadata
import pathlib

import pyro_meta
import pyro_meta.models


def test_zoo_is_a_subpackage_of_pyro_meta():
    assert pyro_meta.models.__name__ == "pyro_meta.models"
    # the files come from the repo's models/ folder, mapped by setup.cfg package_dir
    assert pathlib.Path(pyro_meta.models.__file__).parent.name in ("models",)


def test_distribution_declares_only_pyro_meta_at_top_level():
    dist = importlib.metadata.distribution("pyro-meta")
    top = (dist.read_text("top_level.txt") or "").split()
    assert top == ["pyro_meta"], top
    requires = " ".join(dist.requires or [])
    for name in ("pyro-ppl", "torch", "numpy", "arviz", "matplotlib", "pillow", "tqdm"):
        assert name in requires, name


def test_public_api_is_sorted_and_importable():
    assert pyro_meta.__all__ == sorted(pyro_meta.__all__)
    for name in pyro_meta.__all__:
        assert getattr(pyro_meta, name) is not None
    for name in pyro_meta.models.__all__:
        assert isinstance(getattr(pyro_meta.models, name)(), pyro_meta.MetaModel), name


def test_every_task_distribution_constructs_with_defaults():
    import torch

    from pyro_meta.data import TaskDistribution

    names = [n for n in pyro_meta.data.__all__ if isinstance(getattr(pyro_meta.data, n), type)]
    classes = [getattr(pyro_meta.data, n) for n in names]
    dists = [c for c in classes if issubclass(c, TaskDistribution) and c is not TaskDistribution]
    assert len(dists) >= 2
    for cls in dists:
        batch = cls().sample(2, 3, 4, generator=torch.Generator().manual_seed(0))
        assert batch.num_tasks == 2, cls


def test_package_data_ships_the_omniglot_file_and_its_license():
    """setup.cfg's package_data names the shipped files, and they exist (``pip wheel`` puts them in the wheel)."""
    import configparser

    root = pathlib.Path(__file__).resolve().parents[1]
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    listed = cfg["options.package_data"]["pyro_meta.data"].split()
    assert sorted(listed) == ["assets/omniglot/LICENSE", "assets/omniglot/omniglot_small.npz"]
    for rel in listed:
        assert (root / "pyro_meta" / "data" / rel).is_file(), rel


def test_package_data_ships_the_presets():
    """The app layer is a package and its presets are package data (``pyro-meta train --preset NAME``)."""
    import configparser

    root = pathlib.Path(__file__).resolve().parents[1]
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    assert "pyro_meta.apps" in cfg["options"]["packages"].split()
    assert cfg["options.package_data"]["pyro_meta.apps"].split() == ["presets/*.toml"]
    presets = sorted(p.stem for p in (root / "pyro_meta" / "apps" / "presets").glob("*.toml"))
    assert {"maml_sinusoid", "np_gp_curves", "omniglot"} <= set(presets)
