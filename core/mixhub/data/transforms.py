"""Image transforms: the bundled proxies' named albumentations pipelines, and timm's transforms
(or an albumentations pipeline from a file) for lazily loaded images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError

PIPELINES = ("none", "light", "flip-crop")


def build_augment(name: str, image_size: int, seed: int | None = None) -> Any | None:
    """An albumentations ``Compose`` for ``data.augment`` (``None`` for ``none``), seeded with ``seed``.

    ``ArrayDataset`` reseeds it per sample from ``(seed, epoch, index, role)``, so a sample's
    augmentation does not depend on what was drawn before it and a resumed run is exact.
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


# ============================================================================ lazily loaded images
def resolve_image_config(transform: Any, image_size: int, model: Any | None = None) -> dict[str, Any]:
    """timm's data config for ``data.transform``: ``timm.data.resolve_data_config`` with our options
    first and the model's pretrained config (when ``model.name`` is a timm model) for the rest.

    Returns ``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct`` and ``crop_mode``.
    """
    from timm.data import resolve_data_config

    pretrained: dict[str, Any] = {}
    name = getattr(model, "name", None)
    if name and name not in ("smallcnn", "mlp"):
        try:
            from timm.models import get_pretrained_cfg

            cfg = get_pretrained_cfg(name)
        except (RuntimeError, ValueError):  # not a timm model: timm's defaults
            cfg = None
        if cfg is not None:
            pretrained = cfg.to_dict()
    args = {
        "input_size": (3, image_size, image_size),
        "interpolation": transform.interpolation,
        "mean": transform.mean,
        "std": transform.std,
        "crop_pct": transform.crop_pct,
    }
    resolved = resolve_data_config({k: v for k, v in args.items() if v is not None}, pretrained_cfg=pretrained or {"input_size": (3, image_size, image_size)})
    resolved["input_size"] = (3, image_size, image_size)  # data.image_size decides, not the pretrained size
    return resolved


def timm_transform(transform: Any, resolved: dict[str, Any], training: bool) -> Any:
    """``timm.data.create_transform`` from ``data.transform`` and a resolved data config.

    Training: RandomResizedCrop (``scale``, ``ratio``), flips, colour jitter or ``auto_augment``,
    random erasing; eval: resize to ``size / crop_pct`` and centre-crop (timm's eval pipeline).
    """
    from timm.data import create_transform

    kwargs: dict[str, Any] = dict(
        input_size=resolved["input_size"],
        interpolation=resolved["interpolation"],
        mean=tuple(resolved["mean"]),
        std=tuple(resolved["std"]),
        crop_pct=resolved["crop_pct"],
        crop_mode=resolved.get("crop_mode"),
    )
    if training:
        kwargs.update(
            is_training=True,
            no_aug=transform.no_aug,
            scale=transform.scale,
            ratio=transform.ratio,
            hflip=transform.hflip,
            vflip=transform.vflip,
            color_jitter=transform.color_jitter if transform.color_jitter is not None else 0.0,
            auto_augment=transform.auto_augment,
            re_prob=transform.re_prob,
            re_mode=transform.re_mode,
            re_count=transform.re_count,
        )
    try:
        return create_transform(**kwargs)
    except (AssertionError, ValueError, KeyError) as exc:
        raise ConfigError(f"data.transform: timm rejected the options ({type(exc).__name__}: {exc})") from exc


class AlbumentationsTransform:
    """A PIL image through an albumentations pipeline loaded from a file, to a CHW float tensor.

    The pipeline's output may be a tensor (``ToTensorV2``), a float array (already normalised,
    e.g. ending in ``A.Normalize``) or a uint8 array (scaled to [0, 1] and normalised here with
    ``mean``/``std``). Its random draws come from ``reseed(seed)``, called per sample.
    """

    def __init__(self, path: str, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        import albumentations as A

        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(f"data.albumentations: pipeline file {str(p)!r} does not exist")
        fmt = "yaml" if p.suffix.lower() in (".yaml", ".yml") else "json"
        try:
            self.pipeline = A.load(str(p), data_format=fmt)
        except Exception as exc:  # noqa: BLE001 - albumentations raises many kinds for a bad file
            raise ConfigError(f"data.albumentations: {str(p)!r} is not an albumentations pipeline ({type(exc).__name__}: {exc})") from exc
        if not callable(self.pipeline):
            raise ConfigError(f"data.albumentations: {str(p)!r} does not hold a pipeline")
        self.path = str(p)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def reseed(self, seed: int) -> None:
        setter = getattr(self.pipeline, "set_random_seed", None)
        if setter is not None:
            setter(seed % (2**32))

    def __call__(self, image: Any) -> torch.Tensor:
        out = self.pipeline(image=np.asarray(image))["image"]
        if isinstance(out, torch.Tensor):
            return out.float()
        arr = np.asarray(out)
        if arr.dtype == np.uint8:
            arr = (arr.astype(np.float32) / 255.0 - self.mean) / self.std
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))


def image_transforms(data_cfg: Any, model: Any | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """``(train_transform, eval_transform, resolved)`` for a lazily loaded image dataset.

    The training transform is timm's (``data.transform``) unless ``data.albumentations`` names
    a pipeline file; evaluation always uses timm's eval pipeline (resize + centre crop).
    """
    if data_cfg.augment != "none":
        raise ConfigError(
            f"data.augment={data_cfg.augment!r} applies to the bundled in-memory proxies; lazily loaded images take "
            "`data.transform` (timm options) or `data.albumentations: PATH`"
        )
    resolved = resolve_image_config(data_cfg.transform, data_cfg.image_size, model)
    evaluate = timm_transform(data_cfg.transform, resolved, training=False)
    if data_cfg.albumentations:
        train: Any = AlbumentationsTransform(data_cfg.albumentations, tuple(resolved["mean"]), tuple(resolved["std"]))
    else:
        train = timm_transform(data_cfg.transform, resolved, training=True)
    return train, evaluate, resolved
