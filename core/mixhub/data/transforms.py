"""Named albumentations pipelines for image datasets."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

PIPELINES = ("none", "light", "flip-crop")


def build_augment(name: str, image_size: int, seed: int | None = None) -> Any | None:
    """An albumentations ``Compose`` for ``data.augment`` (``None`` for ``none``), seeded with ``seed``.

    albumentations keeps its own random generator: a seed makes runs reproducible; its state is
    not part of checkpoints, so a resumed run with augmentation continues with a re-seeded stream.
    """
    if name == "none":
        return None
    import albumentations as A

    if name == "light":
        return A.Compose([A.Affine(translate_percent=(-0.0625, 0.0625), scale=(0.9, 1.1), rotate=(-10, 10), p=0.5)], seed=seed)
    if name == "flip-crop":
        pad = image_size // 8
        return A.Compose(
            [
                A.PadIfNeeded(image_size + 2 * pad, image_size + 2 * pad, border_mode=0),
                A.RandomCrop(image_size, image_size),
                A.HorizontalFlip(p=0.5),
            ],
            seed=seed,
        )
    raise ConfigError(f"data.augment: unknown pipeline {name!r} (known: {', '.join(PIPELINES)})")
