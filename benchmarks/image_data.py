"""Generated image data for the data benchmarks: real encoded JPEG/PNG files (never downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_image_folder(root: Path, n: int, classes: int = 10, size: int = 128, seed: int = 0, png_every: int = 10) -> Path:
    """``n`` images of ``size`` px in ``classes`` class folders (every ``png_every``-th a PNG, the
    rest JPEG): smooth random colour fields (upsampled 8x8 noise) plus fine noise, so the files
    compress like photographs rather than white noise."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c:03d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = i % classes
        coarse = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        arr = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (size, size, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        stem = root / f"class{c:03d}" / f"img{i:06d}"
        if png_every and i % png_every == 0:
            img.save(stem.with_suffix(".png"))
        else:
            img.save(stem.with_suffix(".jpg"), quality=90)
    return root


def make_train_val(root: Path, n_train: int, n_val: int, classes: int = 10, size: int = 128, seed: int = 0) -> Path:
    """An ImageNet-style ``train/`` + ``val/`` folder."""
    make_image_folder(root / "train", n_train, classes, size, seed)
    make_image_folder(root / "val", n_val, classes, size, seed + 1)
    return root


def make_regression_csv(folder: Path, path: Path, seed: int = 0) -> Path:
    """A CSV of every image under ``folder`` (paths relative to the CSV) with a continuous target
    (class index plus uniform noise): an image-regression table over the same files."""
    rng = np.random.default_rng(seed)
    rows = ["file,y"]
    for f in sorted(folder.rglob("*")):
        if f.suffix in (".jpg", ".png"):
            c = int(f.parent.name.removeprefix("class"))
            rows.append(f"{f.relative_to(path.parent)},{c + rng.random():.6f}")
    path.write_text("\n".join(rows) + "\n")
    return path
