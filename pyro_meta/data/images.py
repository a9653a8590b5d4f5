"""Read image files into the input space of the shipped Omniglot set.

:func:`read_images` is the one preprocessing step, applied to any image file:

1. decode with Pillow (first frame), composite any transparency over white, convert to 8-bit
   grayscale ``L`` (Pillow's ITU-R 601-2 luma for colour; a 1-bit PNG gives 0 and 255);
2. ink ``= 255 - L`` (dark ink on a light background becomes 1; ``invert=False`` keeps ``L``);
3. pad to a square with background (ink 0), centred;
4. area-average to ``size x size`` (each output pixel is the mean of the input area it covers, the
   rule of OpenCV's ``INTER_AREA``), computed in integers and rounded half up to 8 bits;
5. return ``float32`` ink ``q / 255``.

Step 4 is exact integer arithmetic, so a file gives the same numbers on every machine; the shipped
set (``load_omniglot``) was built by this function, so a user's 105 x 105 Omniglot PNGs read with
:func:`read_images` or :func:`read_omniglot` land on exactly the shipped values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, List, Sequence, Tuple, Union

import numpy as np
import torch

from .labelled import LabelledImages

__all__ = ["IMAGE_EXTENSIONS", "read_image_folder", "read_images", "read_omniglot"]

#: File extensions ``read_image_folder`` accepts (lower case; matched case-insensitively).
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".pbm", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")

ImageSource = Union[str, os.PathLike, BinaryIO]


def _area_overlaps(n_in: int, n_out: int) -> np.ndarray:
    """Integer overlaps ``[n_out, n_in]`` of output cells with input pixels, in units of ``1 / n_out`` pixel.

    Input pixel ``i`` spans ``[i n_out, (i+1) n_out)`` and output cell ``o`` spans ``[o n_in, (o+1) n_in)``
    on a common grid, so every row sums to ``n_in``.
    """
    i = np.arange(n_in, dtype=np.int64)
    o = np.arange(n_out, dtype=np.int64)[:, None]
    lo = np.maximum(o * n_in, i * n_out)
    hi = np.minimum((o + 1) * n_in, (i + 1) * n_out)
    return np.maximum(hi - lo, 0)


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int (output images are size x size), got {size!r}")
    return int(size)


def _gray8(image) -> np.ndarray:
    """8-bit grayscale ``[H, W]`` of a Pillow image, transparency composited over white."""
    from PIL import Image

    if image.mode.startswith("I;16"):
        wide = np.asarray(image, dtype=np.int64)
        return ((wide * 255 + 32767) // 65535).astype(np.uint8)
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def _preprocess(gray: np.ndarray, size: int, invert: bool) -> np.ndarray:
    """Steps 2-4: ink, square padding, exact area average; uint8 ``[size, size]``."""
    ink = (255 - gray.astype(np.int64)) if invert else gray.astype(np.int64)
    h, w = ink.shape
    n = max(h, w)
    if h != w:
        top, left = (n - h) // 2, (n - w) // 2
        square = np.zeros((n, n), dtype=np.int64)
        square[top : top + h, left : left + w] = ink
        ink = square
    overlaps = _area_overlaps(n, size).astype(np.float64)
    # integer-weighted sums (each output cell's weights sum to n^2); every partial sum is an integer below
    # 255 n^2 < 2^53, so float64 (BLAS) computes them exactly in any summation order
    total = np.rint(overlaps @ ink.astype(np.float64) @ overlaps.T).astype(np.int64)
    denom = n * n
    return ((2 * total + denom) // (2 * denom)).astype(np.uint8)  # round(total / n^2), half up


def _read_one(source: ImageSource, size: int, invert: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    name = source if isinstance(source, (str, os.PathLike)) else getattr(source, "name", repr(source))
    if isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
        raise FileNotFoundError(f"image file not found: {os.fspath(source)!r}")
    try:
        with Image.open(source) as image:
            image.seek(0)
            gray = _gray8(image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ValueError(
            f"cannot read image {os.fspath(name) if isinstance(name, os.PathLike) else name!r}: "
            f"{type(err).__name__}: {err}"
        ) from err
    if gray.ndim != 2 or gray.size == 0:
        raise ValueError(f"image {name!r} decoded to shape {gray.shape}, expected a non-empty 2-D grayscale image")
    return _preprocess(gray, size, invert)


def read_images(paths: Sequence[ImageSource], size: int = 28, invert: bool = True) -> torch.Tensor:
    """Read image files into ``float32 [N, size, size]`` ink images, the shipped Omniglot set's preprocessing.

    Parameters
    ----------
    paths : sequence of paths or binary file objects
        Any format Pillow decodes (PNG, JPEG, BMP, GIF, TIFF, WebP, ...), any size and mode.
    size : int
        Output side; the shipped set uses 28.
    invert : bool
        True (default) for dark ink on a light background, as Omniglot; False for light ink on dark.

    Returns
    -------
    Tensor ``[N, size, size]`` float32
        ``x = round(255 * area_mean(ink)) / 255``, ink = 1, background = 0 (steps in the module docstring).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for one Pillow
    cannot decode.
    """
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise TypeError(f"paths must be a list of image files, got a single {type(paths).__name__}: wrap it in a list")
    paths = list(paths)
    if not paths:
        raise ValueError("paths is empty: pass at least one image file")
    size = _check_size(size)
    levels = np.stack([_read_one(p, size, bool(invert)) for p in paths])
    return _levels_to_float(levels)


def _levels_to_float(levels: np.ndarray) -> torch.Tensor:
    """uint8 levels ``[N, H, W]`` -> float32 ink ``levels / 255`` (the one conversion, shared with the shipped set)."""
    return torch.from_numpy(levels.astype(np.float32) / np.float32(255.0))


# --------------------------------------------------------------------------- folders
def _visible(entries) -> List[Path]:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda p: p.name)


def _check_dir(root: Union[str, os.PathLike], name: str) -> Path:
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"{name} must be a folder path, got {type(root).__name__}")
    path = Path(root)
    if not path.is_dir():
        raise ValueError(f"{name} must be an existing folder, got {os.fspath(root)!r}")
    return path


def _class_files(folder: Path, extensions: Tuple[str, ...], layout: str) -> List[Path]:
    files = []
    for entry in _visible(folder.iterdir()):
        if entry.is_dir():
            raise ValueError(f"unexpected folder {str(entry)!r}: expected the layout {layout}")
        if entry.suffix.lower() not in extensions:
            raise ValueError(
                f"{str(entry)!r} is not an image file (extensions accepted: {', '.join(extensions)}); "
                f"expected the layout {layout}"
            )
        files.append(entry)
    if not files:
        raise ValueError(f"folder {str(folder)!r} holds no image: expected the layout {layout}")
    return files


def _subfolders(folder: Path, layout: str, what: str) -> List[Path]:
    entries = _visible(folder.iterdir())
    stray = [e for e in entries if not e.is_dir()]
    if stray:
        raise ValueError(f"unexpected file {str(stray[0])!r} where {what} folders belong: expected the layout {layout}")
    if not entries:
        raise ValueError(f"folder {str(folder)!r} is empty: expected the layout {layout}")
    return entries


def _collect(
    root: Path, groups: List[Tuple[str, List[Tuple[str, List[Path]]]]], size: int, invert: bool
) -> LabelledImages:
    class_names, class_groups, files, labels = [], [], [], []
    for g, (_, classes) in enumerate(groups):
        for class_name, class_files in classes:
            labels.extend([len(class_names)] * len(class_files))
            class_names.append(class_name)
            class_groups.append(g)
            files.extend(class_files)
    images = read_images(files, size=size, invert=invert)
    return LabelledImages(
        images=images,
        labels=torch.as_tensor(labels, dtype=torch.long),
        class_names=tuple(class_names),
        class_groups=torch.as_tensor(class_groups, dtype=torch.long),
        group_names=tuple(name for name, _ in groups),
        paths=tuple(f.relative_to(root).as_posix() for f in files),
    )


def read_omniglot(root: Union[str, os.PathLike], size: int = 28) -> LabelledImages:
    """Read a folder in the Omniglot layout ``<root>/<Alphabet>/<character>/*.png``.

    E.g. the full releases ``images_background/`` (30 alphabets) and ``images_evaluation/`` (20), or the
    ``images_background_small1/2`` sets. Groups are alphabets, classes ``"<Alphabet>/<character>"``,
    both in sorted order; images go through :func:`read_images` (so they match :func:`load_omniglot`).
    Hidden entries (names starting with ``.``) are skipped; anything else out of layout raises ``ValueError``.

    Returns
    -------
    LabelledImages
        ``images [N, size, size]`` float32, ``labels [N]``, ``class_groups [C]`` (alphabet of each character).
    """
    layout = "<root>/<Alphabet>/<character>/*.png"
    path = _check_dir(root, "root")
    size = _check_size(size)
    groups = []
    for alphabet in _subfolders(path, layout, "alphabet"):
        classes = [
            (f"{alphabet.name}/{character.name}", _class_files(character, (".png",), layout))
            for character in _subfolders(alphabet, layout, "character")
        ]
        groups.append((alphabet.name, classes))
    return _collect(path, groups, size, invert=True)


def read_image_folder(
    root: Union[str, os.PathLike],
    size: int = 28,
    invert: bool = True,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> LabelledImages:
    """Read a labelled folder ``<root>/<class>/*.<png|jpg|...>``: one subfolder per class.

    Classes are the sorted subfolder names, all in one group named after ``root``. Images go through
    :func:`read_images` (``size``, ``invert``). Hidden entries are skipped; a file whose extension is
    not in ``extensions``, a nested folder, an empty class folder or an unreadable image raises ``ValueError``.

    Returns
    -------
    LabelledImages
        ``images [N, size, size]`` float32 ink, ``labels [N]`` in ``0 .. C-1``.
    """
    exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    if not exts:
        raise ValueError("extensions is empty: name at least one image file extension")
    layout = "<root>/<class>/*.<" + "|".join(e[1:] for e in exts) + ">"
    path = _check_dir(root, "root")
    size = _check_size(size)
    classes = [(folder.name, _class_files(folder, exts, layout)) for folder in _subfolders(path, layout, "class")]
    return _collect(path, [(path.resolve().name, classes)], size, invert)
