"""Image readers: the preprocessing against independent references, folder layouts, clear errors."""

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from pyro_meta.data import read_image_folder, read_images, read_omniglot


def _omniglot_like(seed, size=105):
    """A 1-bit drawing: white background (True) with a few black strokes, as the Omniglot PNGs."""
    rng = np.random.default_rng(seed)
    img = np.ones((size, size), dtype=bool)
    for _ in range(4):
        r, c = rng.integers(5, size - 20, 2)
        if rng.random() < 0.5:
            img[r : r + 3, c : c + rng.integers(5, 15)] = False
        else:
            img[r : r + rng.integers(5, 15), c : c + 3] = False
    return img


def _area_reference(ink, size):
    """Area average on the lcm grid: repeat each pixel ``size/g`` times, average blocks of ``n/g`` (g = gcd)."""
    n = ink.shape[0]
    g = math.gcd(n, size)
    up, block = size // g, n // g
    fine = np.repeat(np.repeat(ink.astype(np.float64), up, 0), up, 1)  # [lcm, lcm]
    return fine.reshape(size, block, size, block).mean(axis=(1, 3))


@pytest.mark.parametrize("size", [28, 20, 105, 140])
def test_omniglot_png_matches_an_exact_area_average(tmp_path, write_png, size):
    """1-bit 105 x 105 drawing -> round(255 * area mean of ink) / 255, ink = 1 on black pixels."""
    drawing = _omniglot_like(0)
    path = write_png(tmp_path / "0001_01.png", drawing)
    assert Image.open(path).mode == "1"
    x = read_images([path], size=size)
    assert x.dtype == torch.float32 and x.shape == (1, size, size)
    ref = np.rint(255 * _area_reference(~drawing, size)) / 255  # no ties: 255 S / 105^2 is never k + 1/2
    np.testing.assert_array_equal(x[0].numpy(), ref.astype(np.float32))
    assert float(x.max()) > 0.5 and float(x.min()) == 0.0
    if size == 105:  # same size: the 1-bit ink itself
        np.testing.assert_array_equal(x[0].numpy(), (~drawing).astype(np.float32))


def test_integer_factor_matches_pillow_reduce(tmp_path, write_png):
    """For an integer factor the area average is Pillow's ``Image.reduce`` (box mean, rounded half up)."""
    gray = np.random.default_rng(1).integers(0, 256, (112, 112)).astype(np.uint8)
    path = write_png(tmp_path / "g.png", gray)
    expected = np.asarray(ImageOps.invert(Image.fromarray(gray)).reduce(4), dtype=np.float32) / np.float32(255)
    np.testing.assert_array_equal(read_images([path], size=28)[0].numpy(), expected)
    kept = np.asarray(Image.fromarray(gray).reduce(4), dtype=np.float32) / np.float32(255)
    np.testing.assert_array_equal(read_images([path], size=28, invert=False)[0].numpy(), kept)


def test_non_square_images_are_padded_with_background(tmp_path, write_png):
    gray = np.random.default_rng(2).integers(0, 256, (10, 20)).astype(np.uint8)
    padded = np.full((20, 20), 255, dtype=np.uint8)  # white = background, 5 rows above and below
    padded[5:15] = gray
    a = read_images([write_png(tmp_path / "wide.png", gray)], size=8)
    b = read_images([write_png(tmp_path / "square.png", padded)], size=8)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_colour_alpha_and_file_objects(tmp_path):
    rgb = np.zeros((30, 30, 3), dtype=np.uint8)
    rgb[:, :15] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    gray = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.uint8)  # Pillow's ITU-R 601-2 luma
    Image.fromarray(gray).save(tmp_path / "g.png")
    torch.testing.assert_close(read_images([tmp_path / "c.png"], 10), read_images([tmp_path / "g.png"], 10))
    # fully transparent black = white paper: no ink at all
    rgba = np.zeros((30, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "t.png")
    assert float(read_images([tmp_path / "t.png"], 10).abs().max()) == 0.0
    # a JPEG read from a binary file object
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    buf.seek(0)
    x = read_images([buf, str(tmp_path / "c.png")], 10)
    assert x.shape == (2, 10, 10) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_read_images_errors(tmp_path, write_png):
    good = write_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="paths is empty"):
        read_images([])
    with pytest.raises(TypeError, match="wrap it in a list"):
        read_images(str(good))
    with pytest.raises(ValueError, match="size"):
        read_images([good], size=0)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_images([good, tmp_path / "missing.png"])
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read image .*bad.png"):
        read_images([good, tmp_path / "bad.png"])
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:30])  # a truncated PNG
    with pytest.raises(ValueError, match="cannot read image .*cut.png"):
        read_images([tmp_path / "cut.png"])


def _omniglot_tree(root, write_png):
    files = {}
    for a, alphabet in enumerate(["Beta", "Alpha"]):
        for c in range(2):
            for d in range(3):
                path = root / alphabet / f"character{c + 1:02d}" / f"{a}{c}00_{d + 1:02d}.png"
                files[path] = write_png(path, _omniglot_like(10 * a + 3 * c + d))
    return files


def test_read_omniglot_layout(tmp_path, write_png):
    root = tmp_path / "images_background"
    _omniglot_tree(root, write_png)
    (root / "Alpha" / ".DS_Store").write_text("hidden entries are skipped")
    data = read_omniglot(root)
    assert data.group_names == ("Alpha", "Beta")
    assert data.class_names == ("Alpha/character01", "Alpha/character02", "Beta/character01", "Beta/character02")
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert data.class_groups.tolist() == [0, 0, 1, 1]
    assert data.groups.tolist() == [0] * 6 + [1] * 6
    assert data.paths[0] == "Alpha/character01/1000_01.png" and data.paths[-1] == "Beta/character02/0100_03.png"
    expected = read_images([root / p for p in data.paths])
    torch.testing.assert_close(data.images, expected, rtol=0, atol=0)


def test_read_omniglot_errors(tmp_path, write_png):
    with pytest.raises(ValueError, match="existing folder"):
        read_omniglot(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is empty"):
        read_omniglot(tmp_path / "empty")
    root = tmp_path / "parent" / "o"
    _omniglot_tree(root, write_png)
    with pytest.raises(ValueError, match="unexpected folder .*Alphabet>/<character>/"):  # one level too high
        read_omniglot(tmp_path / "parent")
    (root / "Alpha" / "character01" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="notes.txt' is not an image file"):
        read_omniglot(root)
    (root / "Alpha" / "character01" / "notes.txt").unlink()
    (root / "README").write_text("x")
    with pytest.raises(ValueError, match="unexpected file .*README"):
        read_omniglot(root)


def test_read_image_folder(tmp_path, write_png):
    root = tmp_path / "letters"
    write_png(root / "b" / "1.png", np.full((8, 8), 255, np.uint8))
    (root / "a").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "a" / "x.JPG")
    write_png(root / "a" / "y.png", np.zeros((8, 8), np.uint8))
    (root / "a" / ".hidden").write_text("skipped")
    data = read_image_folder(root, size=4)
    assert data.class_names == ("a", "b") and data.group_names == ("letters",)
    assert data.labels.tolist() == [0, 0, 1] and data.paths == ("a/x.JPG", "a/y.png", "b/1.png")
    assert data.images.shape == (3, 4, 4)
    assert float(data.images[1].min()) == 1.0 and float(data.images[2].max()) == 0.0  # black = ink, white = none
    assert float(read_image_folder(root, size=4, invert=False).images[2].min()) == 1.0


def test_read_image_folder_errors(tmp_path, write_png):
    root = tmp_path / "r"
    write_png(root / "a" / "1.png", np.zeros((8, 8), np.uint8))
    (root / "b").mkdir()
    with pytest.raises(ValueError, match="holds no image"):
        read_image_folder(root)
    write_png(root / "b" / "1.png", np.zeros((8, 8), np.uint8))
    (root / "b" / "labels.csv").write_text("a,b")
    with pytest.raises(ValueError, match="labels.csv' is not an image file"):
        read_image_folder(root)
    (root / "b" / "labels.csv").unlink()
    (root / "b" / "2.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="cannot read image .*2.png"):
        read_image_folder(root)
    with pytest.raises(ValueError, match="extensions is empty"):
        read_image_folder(root, extensions=())
    with pytest.raises(TypeError, match="folder path"):
        read_image_folder(3)
