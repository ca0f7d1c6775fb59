"""``rotdigits``: regress the rotation angle of digits images (an RCF-MNIST-like task).

Each of scikit-learn's 1,797 digits (``copies`` times, each copy with its own angle) is rotated
by an angle ``theta ~ U[0, 360)`` and the target is ``theta / 360`` in [0, 1), as in RCF-MNIST
(C-Mixup, NeurIPS 2022, official ``src/data/RCF_MNIST.py``). The data are generated once with
``data_seed``; the run's seed only permutes the train/val/test split.

With ``color: true`` (default) the digit is painted red/blue, ``red = v * c`` and
``blue = v * (1 - c)`` for gray level ``v``, with a colour ratio ``c`` that is a spurious cue:

* train and ``test`` (in-distribution): ``c = y`` for a share ``spurious_ratio`` of the samples
  and ``c = 1 - y`` for the rest;
* ``test_ood`` (the same test images): the reverse, ``c = 1 - y`` for ``spurious_ratio`` of them;
* val: ``c ~ U[0, 1]``, uninformative, as the official validation split.

Options (``data.options``): ``color`` (bool, true), ``spurious_ratio`` (0.9, official default
``--spurious_ratio``), ``copies`` (1), ``max_angle`` (360), ``data_seed`` (0).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from . import register_dataset
from .base import ArrayDataset, DataBundle, stratified_split

__all__ = ["rotate_images", "paint_red_blue", "build_rotdigits"]

OPTIONS = {"color": True, "spurious_ratio": 0.9, "copies": 1, "max_angle": 360.0, "data_seed": 0}


def rotate_images(images: np.ndarray, degrees: np.ndarray) -> np.ndarray:
    """Rotate ``[N, S, S]`` gray images by ``degrees`` about their centre (bilinear, zero fill)."""
    x = torch.as_tensor(images, dtype=torch.float32)[:, None]
    rad = torch.as_tensor(degrees, dtype=torch.float32) * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, 0].clamp(0, 1).numpy()


def paint_red_blue(gray: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """``[N, S, S]`` gray in [0, 1] -> ``[N, S, S, 3]`` with red = v * ratio, blue = v * (1 - ratio)."""
    r = np.asarray(ratio, dtype=np.float32)[:, None, None]
    out = np.zeros((*gray.shape, 3), dtype=np.float32)
    out[..., 0] = gray * r
    out[..., 2] = gray * (1.0 - r)
    return out


def _options(cfg: Any) -> dict[str, Any]:
    opts = dict(cfg.options)
    bad = set(opts) - set(OPTIONS)
    if bad:
        raise DataError(
            f"data.options: unknown option(s) {sorted(bad)} for rotdigits (known: {sorted(OPTIONS)})"
        )
    out = {**OPTIONS, **opts}
    if not 0.0 <= float(out["spurious_ratio"]) <= 1.0:
        raise DataError(f"data.options.spurious_ratio must lie in [0, 1], got {out['spurious_ratio']!r}")
    if int(out["copies"]) < 1:
        raise DataError(f"data.options.copies must be >= 1, got {out['copies']!r}")
    if not 0.0 < float(out["max_angle"]) <= 360.0:
        raise DataError(f"data.options.max_angle must lie in (0, 360], got {out['max_angle']!r}")
    return out


@register_dataset("rotdigits", options=None)
def build_rotdigits(cfg: Any, seed: int) -> DataBundle:
    """Rotation-angle regression on digits; extra split ``test_ood`` when ``color`` is on."""
    from sklearn.datasets import load_digits

    opts = _options(cfg)
    if cfg.val_frac + cfg.test_frac >= 1.0:
        raise DataError("data.val_frac + data.test_frac must be below 1")
    rng = np.random.default_rng(int(opts["data_seed"]))
    d = load_digits()
    raw = torch.as_tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    size = cfg.image_size
    base = (
        torch.nn.functional.interpolate(raw, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        .clamp(0, 1)
        .numpy()
    )
    copies = int(opts["copies"])
    gray_src = np.concatenate([base] * copies)
    degrees = rng.random(len(gray_src)) * float(opts["max_angle"])
    gray = rotate_images(gray_src, degrees)
    y = (degrees / 360.0).astype(np.float32)
    n = len(y)
    test_idx, val_idx, train_idx = stratified_split(y, (cfg.test_frac, cfg.val_frac), seed, stratify=False)
    info: dict[str, Any] = {
        "name": "rotdigits",
        **opts,
        "train": len(train_idx),
        "val": len(val_idx),
        "test": len(test_idx),
    }
    extra: dict[str, Any] = {}
    if opts["color"]:
        p = float(opts["spurious_ratio"])
        follows = rng.random(n) < p  # which samples follow the majority colour rule
        random_ratio = rng.random(n)
        ratio_id = np.where(follows, y, 1.0 - y)
        ratio_ood = np.where(follows, 1.0 - y, y)
        images = paint_red_blue(gray, ratio_id)
        val_images = paint_red_blue(gray[val_idx], random_ratio[val_idx])
        ood_images = paint_red_blue(gray[test_idx], ratio_ood[test_idx])
        mean = tuple(float(v) for v in images[train_idx].mean(axis=(0, 1, 2)))
        std = tuple(float(max(v, 1e-3)) for v in images[train_idx].std(axis=(0, 1, 2)))
        kw: dict[str, Any] = dict(image=True, mean=mean, std=std)
        extra["test_ood"] = ArrayDataset(ood_images, y[test_idx], **kw)
        val = ArrayDataset(val_images, y[val_idx], **kw)
    else:
        images = np.repeat(gray[..., None], 3, axis=-1)
        mean = (float(images[train_idx].mean()),) * 3
        std = (float(images[train_idx].std()),) * 3
        kw = dict(image=True, mean=mean, std=std)
        val = ArrayDataset(images[val_idx], y[val_idx], **kw)
    train = ArrayDataset(images[train_idx], y[train_idx], **kw)
    return DataBundle(
        train=train,
        val=val,
        test=ArrayDataset(images[test_idx], y[test_idx], **kw),
        task="regression",
        num_classes=None,
        input_shape=(3, size, size),
        train_targets=train.target_tensor,
        extra_splits=extra,
        info=info,
    )
