"""``digits-c``: digits test images under corruptions made with albumentations.

A CIFAR-10-C-like test bed for test-time adaptation that is generated, never downloaded.
The train/val/test split is the ``digits`` split (same seed, same indices), so a model
trained on ``digits`` has never seen these test images. Each corruption at each severity
(1-5) is an extra evaluation split named ``<corruption>-<severity>`` (e.g.
``gaussian_noise-5``), generated deterministically from the split seed.

Options (``data.options``):
    corruptions: list of names (default: all of ``CORRUPTIONS``, in that order).
    severities: list of ints in 1..5 (default ``[5]``).
    corruption_seed: seed of the corruption draws (default: the split seed).
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from .._util import did_you_mean
from ..errors import DataError
from . import register_dataset
from .base import ArrayDataset, DataBundle, stratified_split
from .bundled import DIGITS_MEAN, DIGITS_STD, _check_split, build_digits, digits_images

__all__ = ["CORRUPTIONS", "corrupt_images", "build_digits_c"]

#: Corruptions in the CIFAR-10-C order of the families they mimic (noise, blur, weather, digital).
CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "motion_blur",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)


def _transform(name: str, severity: int, size: int) -> Any:
    """The albumentations transform of one corruption at one severity (fixed parameters)."""
    import albumentations as A
    import cv2

    s = severity - 1
    if name == "gaussian_noise":
        std = (0.08, 0.12, 0.18, 0.26, 0.38)[s]
        return A.GaussNoise(std_range=(std, std), per_channel=False, p=1.0)
    if name == "shot_noise":
        scale = (0.03, 0.06, 0.12, 0.25, 0.5)[s]
        return A.ShotNoise(scale_range=(scale, scale), p=1.0)
    if name == "impulse_noise":
        amount = (0.03, 0.06, 0.09, 0.17, 0.27)[s]
        return A.SaltAndPepper(amount=(amount, amount), salt_vs_pepper=(0.5, 0.5), p=1.0)
    if name == "defocus_blur":
        radius = (1, 2, 2, 3, 4)[s]
        alias = (0.1, 0.2, 0.4, 0.5, 0.6)[s]
        return A.Defocus(radius=(radius, radius), alias_blur=(alias, alias), p=1.0)
    if name == "motion_blur":
        k = (5, 7, 9, 11, 15)[s]
        return A.MotionBlur(blur_limit=(k, k), allow_shifted=False, p=1.0)
    if name == "fog":
        # On 32x32 images the haze strength follows alpha_coef; fog_coef barely matters.
        alpha = (0.05, 0.1, 0.15, 0.22, 0.3)[s]
        return A.RandomFog(fog_coef_range=(0.6, 0.6), alpha_coef=alpha, p=1.0)
    if name == "brightness":
        b = (0.15, 0.25, 0.35, 0.45, 0.55)[s]
        return A.RandomBrightnessContrast(brightness_limit=(b, b), contrast_limit=(0.0, 0.0), p=1.0)
    if name == "contrast":
        c = (0.5, 0.6, 0.7, 0.8, 0.88)[s]
        return A.RandomBrightnessContrast(brightness_limit=(0.0, 0.0), contrast_limit=(-c, -c), p=1.0)
    if name == "elastic_transform":
        alpha = (20, 30, 40, 55, 70)[s] * size / 32
        sigma = (4.0, 4.0, 3.5, 3.5, 3.0)[s] * size / 32
        return A.ElasticTransform(alpha=alpha, sigma=sigma, p=1.0)
    if name == "pixelate":
        scale = (0.6, 0.5, 0.4, 0.3, 0.22)[s]
        return A.Downscale(scale_range=(scale, scale), interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_NEAREST}, p=1.0)
    if name == "jpeg_compression":
        q = (30, 20, 12, 8, 5)[s]
        return A.ImageCompression(quality_range=(q, q), p=1.0)
    raise DataError(f"digits-c: unknown corruption {name!r}{did_you_mean(name, CORRUPTIONS)} (known: {', '.join(CORRUPTIONS)})")


def corrupt_images(images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """Corrupt ``[N, H, W, 3]`` float images in [0, 1]; deterministic in (name, severity, seed).

    Images pass through uint8 (as the ImageNet-C/CIFAR-10-C files are stored) and come back
    as float32 in [0, 1].
    """
    import albumentations as A

    if not 1 <= severity <= 5:
        raise DataError(f"digits-c: severity must be in 1..5, got {severity}")
    offset = CORRUPTIONS.index(name) if name in CORRUPTIONS else 0
    pipe = A.Compose([_transform(name, severity, images.shape[1])], seed=int(seed) * 1000 + offset * 10 + severity)
    u8 = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
    out = np.stack([pipe(image=img)["image"] for img in u8])
    return (out.astype(np.float32) / 255.0).clip(0.0, 1.0)


@lru_cache(maxsize=8)
def _cached(image_size: int, split_seed: int, test_frac: float, val_frac: float, key: tuple[tuple[str, int], ...],
            corruption_seed: int) -> dict[str, np.ndarray]:
    x, y = digits_images(image_size)
    test_idx, _, _ = stratified_split(y, (test_frac, val_frac), split_seed)
    return {f"{n}-{s}": corrupt_images(x[test_idx], n, s, corruption_seed) for n, s in key}


@register_dataset("digits-c", options=None)
def build_digits_c(cfg: Any, seed: int) -> DataBundle:
    """Digits with clean train/val/test (the ``digits`` split) plus corrupted test splits."""
    _check_split(cfg)
    opts = dict(cfg.options)
    allowed = {"corruptions", "severities", "corruption_seed"}
    bad = set(opts) - allowed
    if bad:
        raise DataError(f"data.options: unknown option(s) {sorted(bad)} for digits-c (known: {sorted(allowed)})")
    names = opts.get("corruptions") or list(CORRUPTIONS)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    for n in names:
        if n not in CORRUPTIONS:
            raise DataError(f"data.options.corruptions: unknown corruption {n!r}{did_you_mean(n, CORRUPTIONS)}")
    sevs = opts.get("severities") or [5]
    if isinstance(sevs, int):
        sevs = [sevs]
    for s in sevs:
        if not isinstance(s, int) or not 1 <= s <= 5:
            raise DataError(f"data.options.severities: severities are ints in 1..5, got {s!r}")
    cseed = int(opts.get("corruption_seed", seed))
    base = build_digits(cfg, seed)  # the same train/val/test split as `digits`; corruptions apply to its test images
    key = tuple((n, int(s)) for s in sevs for n in names)
    corrupted = _cached(cfg.image_size, seed, cfg.test_frac, cfg.val_frac, key, cseed)
    kw: dict[str, Any] = dict(image=True, mean=DIGITS_MEAN, std=DIGITS_STD)
    test_y = base.test.targets  # type: ignore[attr-defined]
    extra: dict[str, Dataset] = {name: ArrayDataset(imgs, test_y, **kw) for name, imgs in corrupted.items()}
    info = {**base.info, "corruptions": list(names), "severities": list(sevs), "corruption_seed": cseed}
    return replace(base, extra_splits=extra, info=info)
