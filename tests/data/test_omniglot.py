"""The shipped Omniglot file: checksum, contents, splits, episodes; the build script on synthetic zips."""

import hashlib
import importlib.util
import io
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

import pyro_meta.data.omniglot as omniglot_module
from pyro_meta.data import OMNIGLOT_SPLITS, OmniglotEpisodes, load_omniglot, read_images
from pyro_meta.data.omniglot import OMNIGLOT_CONTENT_SHA256, OMNIGLOT_SHA256, content_sha256
from pyro_meta.testing import assert_close

ROOT = Path(__file__).resolve().parents[2]
# characters per alphabet, from the data README (brendenlake/omniglot images_background_small1/2)
ALPHABETS = {
    "Balinese": 24,
    "Early_Aramaic": 22,
    "Greek": 24,
    "Japanese_(katakana)": 47,
    "Korean": 40,
    "Latin": 26,
    "Sanskrit": 42,
    "Tagalog": 17,
}


def _shipped_bytes():
    return resources.files("pyro_meta.data").joinpath("assets", "omniglot", "omniglot_small.npz").read_bytes()


def test_shipped_file_matches_the_recorded_checksums():
    data = _shipped_bytes()
    assert len(data) <= 1_000_000
    assert hashlib.sha256(data).hexdigest() == OMNIGLOT_SHA256
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        assert content_sha256(npz) == OMNIGLOT_CONTENT_SHA256
    license_text = resources.files("pyro_meta.data").joinpath("assets", "omniglot", "LICENSE").read_text()
    assert "MIT License" in license_text and "Brenden Lake" in license_text


def test_contents():
    d = load_omniglot()
    assert len(d) == 4840 and d.num_classes == 242 and d.num_groups == 8 and d.image_shape == (28, 28)
    assert d.group_names == tuple(sorted(ALPHABETS))
    per_alphabet = torch.bincount(d.class_groups, minlength=8).tolist()
    assert dict(zip(d.group_names, per_alphabet)) == ALPHABETS
    assert d.class_counts().tolist() == [20] * 242
    x = d.images
    assert x.dtype == torch.float32 and float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(torch.round(x * 255) / 255, x)  # 8-bit levels exactly
    assert 0.05 < float(x.mean()) < 0.2  # ink on a blank page
    assert d.class_names[0] == "Balinese/character01" and d.paths[0] == "Balinese/character01/0108_01.png"
    # one drawing per drawer and character, the file names NNNN_DD.png
    drawers = torch.tensor([int(p[-6:-4]) for p in d.paths]).view(242, 20)
    assert torch.equal(drawers.sort(-1).values, torch.arange(1, 21).expand(242, 20))
    for p, c in zip(d.paths[::97], d.labels[::97].tolist()):
        assert p.rsplit("/", 1)[0] == d.class_names[c]


def test_splits_are_disjoint_alphabets():
    names = [a for split in OMNIGLOT_SPLITS.values() for a in split]
    assert sorted(names) == sorted(ALPHABETS)
    sizes = {s: load_omniglot(s).num_classes for s in OMNIGLOT_SPLITS}
    assert sizes == {"train": 133, "val": 22, "test": 87}
    test = load_omniglot("test")
    assert {n.split("/")[0] for n in test.class_names} == set(OMNIGLOT_SPLITS["test"])
    with pytest.raises(ValueError, match="split must be"):
        load_omniglot("training")


def test_damaged_file_is_refused(monkeypatch):
    monkeypatch.setattr(omniglot_module, "OMNIGLOT_SHA256", "0" * 64)
    omniglot_module._load_arrays.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="damaged"):
            load_omniglot()
    finally:
        monkeypatch.undo()
        omniglot_module._load_arrays.cache_clear()


def test_omniglot_episodes(generator):
    train = OmniglotEpisodes("train")
    assert train.rotations and train.num_classes == 4 * 133 and train.image_shape == (28, 28)
    test = OmniglotEpisodes("test", way=20, shots=5, queries=5)
    assert not test.rotations and test.num_classes == 87
    b = test.sample(3, generator=generator)
    assert b.context_x.shape == (3, 100, 784) and b.target_y.shape == (3, 100)
    assert b.info["image_shape"] == (28, 28) and not bool(b.info["rotations"].any())
    names = {test.class_names[c].split("/")[0] for c in b.info["classes"].flatten().tolist()}
    assert names <= set(OMNIGLOT_SPLITS["test"])
    with pytest.raises(ValueError, match="exceeds the 20 examples"):
        OmniglotEpisodes("val", shots=10, queries=15)


def test_nearest_neighbour_beats_chance_and_needs_the_labels():
    """1-NN in pixel space on meta-test episodes: far above chance (measured 36% over 600 episodes, 5-way
    1-shot), chance once the query labels are shuffled: images and labels of an episode belong together."""
    b = OmniglotEpisodes("test", way=5, shots=1, queries=15).sample(100, generator=torch.Generator().manual_seed(0))
    pred = b.context_y.gather(1, torch.cdist(b.target_x, b.context_x).argmin(-1))
    acc = (pred == b.target_y).float().mean()
    shuffled = b.target_y[:, torch.randperm(75, generator=torch.Generator().manual_seed(1))]
    acc_shuffled = (pred == shuffled).float().mean()
    assert acc > 0.3 and abs(acc_shuffled - 0.2) < 0.03, (acc, acc_shuffled)


# --------------------------------------------------------------------------- build script
def _build_module():
    spec = importlib.util.spec_from_file_location("build_omniglot", ROOT / "scripts" / "build_omniglot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _png(seed):
    rng = np.random.default_rng(seed)
    img = np.ones((105, 105), dtype=bool)
    r, c = rng.integers(10, 80, 2)
    img[r : r + 20, c : c + 3] = False
    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _zips(src, shared_differs=False):
    src.mkdir()
    layout = {1: {"Greek": 2, "Balinese": 1}, 2: {"Greek": 2, "Tagalog": 2}}
    for k, alphabets in layout.items():
        with zipfile.ZipFile(src / f"images_background_small{k}.zip", "w") as z:
            for alphabet, chars in sorted(alphabets.items()):
                for c in range(chars):
                    for d in range(3):
                        seed = (
                            sum(map(ord, alphabet)) + 10 * c + d + (k if shared_differs and alphabet == "Greek" else 0)
                        )
                        name = f"images_background_small{k}/{alphabet}/character{c + 1:02d}/{len(alphabet):02d}{c:02d}_{d + 1:02d}.png"
                        z.writestr(name, _png(seed))
    (src / "LICENSE").write_text("MIT License (test copy)")


def test_build_script_is_deterministic_and_uses_read_images(tmp_path, capsys):
    build = _build_module()
    _zips(tmp_path / "src")
    out1, out2 = tmp_path / "a" / "o.npz", tmp_path / "b" / "o.npz"
    assert build.main([str(tmp_path / "src"), str(out1)]) == 0
    assert build.main([str(tmp_path / "src"), str(out2)]) == 0
    assert out1.read_bytes() == out2.read_bytes()
    assert (tmp_path / "a" / "LICENSE").read_text() == "MIT License (test copy)"
    printed = capsys.readouterr().out
    assert hashlib.sha256(out1.read_bytes()).hexdigest() in printed and "DIFFERS" in printed  # not the shipped set
    assert build.main([str(tmp_path / "src"), str(out1), "--check"]) == 1
    with zipfile.ZipFile(out1) as z:
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    with np.load(out1, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    assert arrays["group_names"].tolist() == ["Balinese", "Greek", "Tagalog"]  # Greek kept once
    assert arrays["class_names"].tolist() == [
        "Balinese/character01",
        "Greek/character01",
        "Greek/character02",
        "Tagalog/character01",
        "Tagalog/character02",
    ]
    assert arrays["images"].shape == (15, 28, 28) and arrays["images"].dtype == np.uint8
    # the stored levels are exactly read_images of the source PNGs, in sorted path order
    paths = omniglot_module._paths(arrays)
    with zipfile.ZipFile(tmp_path / "src" / "images_background_small2.zip") as z:
        greek = [io.BytesIO(z.read(f"images_background_small2/{p}")) for p in paths if p.startswith("Greek")]
    np.testing.assert_array_equal(arrays["images"][3:9] / np.float32(255), read_images(greek).numpy())


def test_build_script_refuses_differing_duplicates(tmp_path):
    build = _build_module()
    _zips(tmp_path / "src", shared_differs=True)
    with pytest.raises(SystemExit, match="differs from the copy in another zip"):
        build.main([str(tmp_path / "src"), str(tmp_path / "o.npz")])


def test_omniglot_episodes_pass_shift_on():
    """``shift`` reaches Episodes: the same draws (classes, labels) as without it, images moved; a 2-pixel
    shift keeps all the ink of an image with none in its 2-pixel border, and never adds ink."""
    plain = OmniglotEpisodes("val", way=5, shots=1, queries=2).sample(8, generator=torch.Generator().manual_seed(0))
    eps = OmniglotEpisodes("val", way=5, shots=1, queries=2, shift=2)
    moved = eps.sample(8, generator=torch.Generator().manual_seed(0))
    assert "shift=2" in repr(eps)
    assert torch.equal(plain.info["classes"], moved.info["classes"]) and torch.equal(plain.target_y, moved.target_y)
    assert not torch.equal(plain.context_x, moved.context_x)
    before, after = plain.context_x.sum(-1), moved.context_x.sum(-1)
    img = plain.context_x.view(*plain.context_x.shape[:2], 28, 28)
    inner = img[..., 2:-2, 2:-2].sum((-1, -2))
    clear = (before - inner).abs() < 1e-6  # no ink in the border
    assert int(clear.sum()) >= 5
    assert_close(after[clear], before[clear], atol=1e-4, what="ink of images with a clear border")
    assert bool((after <= before + 1e-4).all())
