"""Build the Omniglot file shipped in ``pyro_meta/data/assets/omniglot/`` from the two public zips.

    python scripts/build_omniglot.py SRC_DIR pyro_meta/data/assets/omniglot/omniglot_small.npz

``SRC_DIR`` holds ``images_background_small1.zip`` and ``images_background_small2.zip`` from the public
repository ``brendenlake/omniglot`` (folder ``python/``; MIT License, Lake, Salakhutdinov & Tenenbaum,
Science 2015) and, optionally, their ``LICENSE``, copied beside the output. Greek and Latin are in both
zips with byte-identical files: they are kept once (a differing duplicate is an error). Every image goes
through :func:`pyro_meta.data.read_images` (``size=28``), the function users call on their own files.

The output is an ``.npz`` (a zip of ``.npy`` arrays, read by ``numpy.load(allow_pickle=False)``) written
deterministically: sorted files, fixed member order, a fixed 1980-01-01 date, deflate level 9. The script
prints the SHA-256 of the file and of its decoded content and compares both with the constants recorded
in ``pyro_meta.data.omniglot``; ``--check`` makes a mismatch an error (exit status 1). The file hash
depends on the zlib build (zlib-ng compresses differently); the content hash does not.

Members: ``images`` uint8 ``[N, 28, 28]`` (ink = value / 255), ``labels`` int16 ``[N]`` (character),
``drawers`` uint8 ``[N]`` (1-20), ``class_names`` str ``[C]`` (``"<Alphabet>/<character>"``),
``class_groups`` int16 ``[C]`` (alphabet), ``character_codes`` int16 ``[C]`` (the ``NNNN`` of the file
names ``NNNN_DD.png``), ``group_names`` str ``[G]``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np

from pyro_meta.data import images as image_io
from pyro_meta.data import omniglot

ZIPS = ("images_background_small1.zip", "images_background_small2.zip")
SIZE = 28
DATE = (1980, 1, 1, 0, 0, 0)
FILE_NAME = re.compile(r"^(\d{4})_(\d{2})\.png$")


def read_sources(src: Path) -> dict:
    """``{(alphabet, character, file): png bytes}`` over both zips, duplicates checked identical."""
    files = {}
    for name in ZIPS:
        path = src / name
        if not path.is_file():
            raise SystemExit(f"missing {path}: SRC_DIR must hold {', '.join(ZIPS)}")
        with zipfile.ZipFile(path) as z:
            for info in sorted(z.infolist(), key=lambda i: i.filename):
                if info.is_dir():
                    continue
                parts = info.filename.split("/")
                if len(parts) != 4 or not FILE_NAME.match(parts[3]):
                    raise SystemExit(
                        f"{name}: unexpected member {info.filename!r} (expected set/alphabet/character/NNNN_DD.png)"
                    )
                key, data = tuple(parts[1:]), z.read(info)
                if key in files and files[key] != data:
                    raise SystemExit(f"{name}: {'/'.join(key)} differs from the copy in another zip")
                files[key] = data
    return files


def build_arrays(files: dict) -> dict:
    keys = sorted(files)
    group_names = sorted({k[0] for k in keys})
    class_names = sorted({f"{k[0]}/{k[1]}" for k in keys})
    codes = {}
    labels, drawers = [], []
    for alphabet, character, fname in keys:
        code, drawer = (int(v) for v in FILE_NAME.match(fname).groups())
        cname = f"{alphabet}/{character}"
        if codes.setdefault(cname, code) != code:
            raise SystemExit(f"{cname}: files carry two character codes {codes[cname]} and {code}")
        labels.append(class_names.index(cname))
        drawers.append(drawer)
    x = image_io.read_images([io.BytesIO(files[k]) for k in keys], size=SIZE)
    levels = np.rint(x.numpy().astype(np.float64) * 255).astype(np.uint8)
    if not np.array_equal(image_io._levels_to_float(levels).numpy(), x.numpy()):
        raise SystemExit("internal error: read_images output is not exactly levels / 255")
    arrays = {
        "images": levels,
        "labels": np.asarray(labels, dtype="<i2"),
        "drawers": np.asarray(drawers, dtype="u1"),
        "class_names": np.asarray(class_names, dtype=f"<U{max(map(len, class_names))}"),
        "class_groups": np.asarray([group_names.index(c.split("/")[0]) for c in class_names], dtype="<i2"),
        "character_codes": np.asarray([codes[c] for c in class_names], dtype="<i2"),
        "group_names": np.asarray(group_names, dtype=f"<U{max(map(len, group_names))}"),
    }
    # the loader rebuilds each path from these arrays: check that it gives the source names back
    rebuilt = omniglot._paths(arrays)
    if list(rebuilt) != ["/".join(k) for k in keys]:
        raise SystemExit("internal error: paths rebuilt from the arrays differ from the source names")
    return arrays


def npz_bytes(arrays: dict) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), version=(1, 0), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=DATE)
            info.create_system = 3
            info.external_attr = 0o644 << 16
            z.writestr(info, member.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return out.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src_dir", type=Path, help="folder holding the two images_background_small zips")
    parser.add_argument(
        "out_file", type=Path, help="output .npz, e.g. pyro_meta/data/assets/omniglot/omniglot_small.npz"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 unless both checksums match the recorded ones")
    args = parser.parse_args(argv)

    files = read_sources(args.src_dir)
    arrays = build_arrays(files)
    data = npz_bytes(arrays)
    args.out_file.parent.mkdir(parents=True, exist_ok=True)
    args.out_file.write_bytes(data)
    license_file = args.src_dir / "LICENSE"
    if license_file.is_file():
        shutil.copyfile(license_file, args.out_file.parent / "LICENSE")

    file_sha = hashlib.sha256(data).hexdigest()
    content_sha = omniglot.content_sha256(np.load(io.BytesIO(data), allow_pickle=False))
    n, C, G = len(arrays["images"]), len(arrays["class_names"]), len(arrays["group_names"])
    print(f"{args.out_file}: {len(data)} bytes, {n} images, {C} characters, {G} alphabets")
    ok = True
    for what, got, want in (
        ("file", file_sha, omniglot.OMNIGLOT_SHA256),
        ("content", content_sha, omniglot.OMNIGLOT_CONTENT_SHA256),
    ):
        same = got == want
        ok &= same
        print(f"  {what} sha256 {got}  {'matches' if same else 'DIFFERS from'} the recorded {want}")
    if file_sha != omniglot.OMNIGLOT_SHA256 and content_sha == omniglot.OMNIGLOT_CONTENT_SHA256:
        print("  same arrays, different compressed bytes: this zlib build compresses differently")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
