"""Bundled datasets: scikit-learn's digits and diabetes, and generated regression sets."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import DataError
from . import register_dataset
from .base import DataBundle, split_bundle, standardise, stratified_split
from .transforms import build_augment


def digits_images(image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as ``[N, S, S, 3]`` float32 images in [0, 1], and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    t = torch.as_tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    t = torch.nn.functional.interpolate(t, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = t.clamp(0, 1).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).contiguous().numpy()
    return x, d.target.astype(np.int64)


DIGITS_MEAN = (0.19, 0.19, 0.19)
DIGITS_STD = (0.31, 0.31, 0.31)


def _check_split(cfg: Any) -> None:
    if cfg.val_frac + cfg.test_frac >= 1.0:
        raise DataError("data.val_frac + data.test_frac must be below 1")


def keep_fraction(idx: np.ndarray, targets: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """A stratified share ``frac`` of ``idx`` (low-data runs)."""
    if frac >= 1.0:
        return idx
    keep, _ = stratified_split(targets[idx], (frac,), seed + 7919)
    return idx[keep]


def noisy_labels(y: np.ndarray, rate: float, num_classes: int, seed: int) -> np.ndarray:
    """Replace a share ``rate`` of labels with uniformly drawn other classes."""
    if rate <= 0:
        return y
    rng = np.random.default_rng(seed + 104729)
    y = y.copy()
    flip = rng.random(len(y)) < rate
    shift = rng.integers(1, num_classes, size=int(flip.sum()))
    y[flip] = (y[flip] + shift) % num_classes
    return y


@register_dataset("digits")
def build_digits(cfg: Any, seed: int) -> DataBundle:
    """Digits (1,797 images, 10 classes) at ``image_size``, stratified train/val/test by seed."""
    _check_split(cfg)
    x, y = digits_images(cfg.image_size)
    test_idx, val_idx, train_idx = stratified_split(y, (cfg.test_frac, cfg.val_frac), seed)
    train_idx = keep_fraction(train_idx, y, cfg.train_frac, seed)
    y_train = noisy_labels(y[train_idx], cfg.label_noise, 10, seed)
    return split_bundle(
        x, y, test_idx, val_idx, train_idx,
        task="classification",
        num_classes=10,
        input_shape=(3, cfg.image_size, cfg.image_size),
        y_train=y_train,
        train_transform=build_augment(cfg.augment, cfg.image_size, seed),
        dataset_kwargs=dict(image=True, mean=DIGITS_MEAN, std=DIGITS_STD),
    )


def regression_bundle(x: np.ndarray, y: np.ndarray, cfg: Any, seed: int, info: dict[str, Any]) -> DataBundle:
    """Split a table into train/val/test by seed, standardising inputs with training statistics."""
    _check_split(cfg)
    test_idx, val_idx, train_idx = stratified_split(y, (cfg.test_frac, cfg.val_frac), seed, stratify=False)
    return split_bundle(
        standardise(x, train_idx), y.astype(np.float32), test_idx, val_idx, train_idx,
        task="regression", num_classes=None, input_shape=(x.shape[1],), info=info,
    )


@register_dataset("diabetes")
def build_diabetes(cfg: Any, seed: int) -> DataBundle:
    """scikit-learn's diabetes regression (442 x 10); standardised inputs, raw targets."""
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    return regression_bundle(d.data, d.target, cfg, seed, {"name": "diabetes"})


def synthetic_regression(kind: str = "tanh", n: int = 1000, dims: int = 5, noise: float = 0.05, data_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x ~ U[0,1]^dims; ``tanh``: y = tanh(8(x0 - 0.5)) + 0.2 x1 + noise*eps; ``sin``: y = sin(4 pi x0) + 0.2 x1 + noise*eps."""
    rng = np.random.default_rng(data_seed)
    x = rng.random((n, dims))
    eps = rng.standard_normal(n)
    if kind == "tanh":
        y = np.tanh(8 * (x[:, 0] - 0.5)) + 0.2 * x[:, 1] + noise * eps
    elif kind == "sin":
        y = np.sin(4 * np.pi * x[:, 0]) + 0.2 * x[:, 1] + noise * eps
    else:
        raise DataError(f"data.options.kind: unknown synthetic target {kind!r} (tanh or sin)")
    return x.astype(np.float32), y.astype(np.float32)


@register_dataset("synthetic-regression", options=None)
def build_synthetic(cfg: Any, seed: int) -> DataBundle:
    """Generated monotone (``tanh``) or periodic (``sin``) regression; options: kind, n, dims, noise, data_seed.

    The data are generated once with ``data_seed`` (default 0); the run's seed only permutes the split.
    Inputs are kept in [0, 1] (not standardised), as generated.
    """
    opts = dict(cfg.options)
    allowed = {"kind", "n", "dims", "noise", "data_seed"}
    bad = set(opts) - allowed
    if bad:
        raise DataError(f"data.options: unknown option(s) {sorted(bad)} for synthetic-regression (known: {sorted(allowed)})")
    x, y = synthetic_regression(**opts)
    _check_split(cfg)
    test_idx, val_idx, train_idx = stratified_split(y, (cfg.test_frac, cfg.val_frac), seed, stratify=False)
    return split_bundle(
        x, y, test_idx, val_idx, train_idx,
        task="regression", num_classes=None, input_shape=(x.shape[1],), info={"kind": opts.get("kind", "tanh")},
    )
