"""Omniglot "background small" sets, shipped with the package: 8 alphabets, 242 characters, 4,840 images.

The Omniglot data set is by Brenden M. Lake, Ruslan Salakhutdinov and Joshua B. Tenenbaum,
*Human-level concept learning through probabilistic program induction*, Science 350(6266):1332-1338
(2015), distributed under the MIT License (``pyro_meta/data/assets/omniglot/LICENSE``) from the public
repository ``brendenlake/omniglot``. Cite that paper when you use these data.

What ships is the union of ``images_background_small1`` and ``images_background_small2`` (the "minimal"
background sets of the Omniglot challenge; Greek and Latin are in both and kept once), each 105 x 105
drawing reduced to 28 x 28 by :func:`pyro_meta.data.read_images` and stored as 8-bit ink levels (about
0.6 MB). ``scripts/build_omniglot.py`` rebuilds the file byte for byte from the two zips; its SHA-256 is
:data:`OMNIGLOT_SHA256` and is checked on load.

Splits are by alphabet, never by image, so that meta-test characters are never seen in meta-training
(:data:`OMNIGLOT_SPLITS`).
"""

from __future__ import annotations

import functools
import hashlib
import io
from importlib import resources
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from .episodes import Episodes, SizeArg
from .images import _levels_to_float
from .labelled import LabelledImages

__all__ = [
    "OMNIGLOT_CITATION",
    "OMNIGLOT_CONTENT_SHA256",
    "OMNIGLOT_SHA256",
    "OMNIGLOT_SPLITS",
    "OmniglotEpisodes",
    "load_omniglot",
]

#: Package-relative location of the shipped file (read with ``importlib.resources``).
OMNIGLOT_RESOURCE = ("assets", "omniglot", "omniglot_small.npz")
#: SHA-256 of the shipped ``omniglot_small.npz`` (what ``scripts/build_omniglot.py`` writes).
OMNIGLOT_SHA256 = "47c7d88157d1ed0d744ecbf28af90249af301a282f01a4466793f79173259b1b"
#: SHA-256 of its decoded arrays (:func:`content_sha256`): independent of the zlib build that compressed it.
OMNIGLOT_CONTENT_SHA256 = "48d02711535aa86c0dc8833095090be9c2180b2c507226c9575d5fd96eb2a5a1"

OMNIGLOT_CITATION = (
    "Lake, B. M., Salakhutdinov, R. and Tenenbaum, J. B. (2015). Human-level concept learning through "
    "probabilistic program induction. Science, 350(6266), 1332-1338."
)

#: Default class-disjoint split of the 8 shipped alphabets (characters: 133 / 22 / 87). Greek and Latin
#: share letter shapes, so they sit on the same side; meta-validation has 22 characters (20-way possible).
OMNIGLOT_SPLITS: Dict[str, Tuple[str, ...]] = {
    "train": ("Balinese", "Greek", "Latin", "Sanskrit", "Tagalog"),
    "val": ("Early_Aramaic",),
    "test": ("Japanese_(katakana)", "Korean"),
}


def content_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the arrays' names, dtypes, shapes and bytes, in sorted name order."""
    names = sorted(arrays.files if hasattr(arrays, "files") else arrays)
    digest = hashlib.sha256()
    for name in names:
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _paths(arrays: Mapping[str, np.ndarray]) -> Tuple[str, ...]:
    """``"<Alphabet>/<character>/NNNN_DD.png"`` of each image, rebuilt from the stored codes and drawers."""
    names, codes = arrays["class_names"].tolist(), arrays["character_codes"].tolist()
    return tuple(
        f"{names[c]}/{codes[c]:04d}_{d:02d}.png" for c, d in zip(arrays["labels"].tolist(), arrays["drawers"].tolist())
    )


@functools.lru_cache(maxsize=1)
def _load_arrays() -> Dict[str, np.ndarray]:
    data = resources.files("pyro_meta.data").joinpath(*OMNIGLOT_RESOURCE).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != OMNIGLOT_SHA256:
        raise RuntimeError(
            f"the shipped Omniglot file {'/'.join(OMNIGLOT_RESOURCE)} is damaged: SHA-256 {digest}, "
            f"expected {OMNIGLOT_SHA256} (reinstall pyro-meta)"
        )
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def load_omniglot(split: Optional[str] = None) -> LabelledImages:
    """The shipped Omniglot images (no network, no file outside the package).

    Parameters
    ----------
    split : None, "train", "val" or "test"
        None (default) for all 8 alphabets; otherwise the alphabets of :data:`OMNIGLOT_SPLITS`.

    Returns
    -------
    LabelledImages
        ``images`` float32 ``[N, 28, 28]`` (ink = 1, multiples of 1/255), ``labels`` long ``[N]``
        (character), ``class_names`` (``"Greek/character01"``, ...), ``class_groups`` long ``[C]``
        (alphabet of each character), ``group_names`` (alphabets), ``paths`` (source file of each
        image, e.g. ``"Greek/character01/0394_01.png"``). All: N = 4840, C = 242, G = 8, 20 images
        per character (one per drawer).
    """
    if split is not None and split not in OMNIGLOT_SPLITS:
        raise ValueError(f"split must be None or one of {sorted(OMNIGLOT_SPLITS)}, got {split!r}")
    a = _load_arrays()
    data = LabelledImages(
        images=_levels_to_float(a["images"]),
        labels=torch.from_numpy(a["labels"].astype(np.int64)),
        class_names=tuple(a["class_names"].tolist()),
        class_groups=torch.from_numpy(a["class_groups"].astype(np.int64)),
        group_names=tuple(a["group_names"].tolist()),
        paths=_paths(a),
    )
    return data if split is None else data.select_groups(OMNIGLOT_SPLITS[split])


class OmniglotEpisodes(Episodes):
    """N-way K-shot episodes from the shipped Omniglot alphabets of one split.

    Parameters
    ----------
    split : "train", "val" or "test"
        Alphabets of :data:`OMNIGLOT_SPLITS` (class-disjoint: no character is in two splits).
    way, shots, queries : int
        Classes per episode ``N``, context images per class ``K`` and target images per class ``Q``
        (``shots + queries <= 20``, the drawings per character).
    rotations : bool, optional
        Rotations by 90, 180 and 270 degrees as new classes (the MAML protocol's augmentation:
        4 x the characters). Default: on for ``"train"``, off for ``"val"`` and ``"test"``.
    shift : int
        Random translations of up to ``shift`` pixels per drawn image (:class:`~pyro_meta.data.Episodes`), a
        training augmentation; 0 (default) for none.

    Notes
    -----
    ``sample`` and the batch layout are those of :class:`pyro_meta.data.Episodes`.
    """

    def __init__(
        self,
        split: str = "train",
        way: int = 5,
        shots: SizeArg = 1,
        queries: SizeArg = 15,
        rotations: Optional[bool] = None,
        shift: int = 0,
    ) -> None:
        if split not in OMNIGLOT_SPLITS:
            raise ValueError(f"split must be one of {sorted(OMNIGLOT_SPLITS)}, got {split!r}")
        self.split = split
        rotations = (split == "train") if rotations is None else rotations
        data = load_omniglot(split)
        super().__init__(
            data.images,
            data.labels,
            way=way,
            shots=shots,
            queries=queries,
            rotations=rotations,
            class_names=data.class_names,
            shift=shift,
        )

    def __repr__(self) -> str:
        return (
            f"OmniglotEpisodes(split={self.split!r}, way={self.way}, shots={self.shots}, "
            f"queries={self.queries}, rotations={self.rotations}, shift={self.shift})"
        )
