"""``split-digits``: the digits classes as a stream of disjoint two-class tasks.

The online class-incremental (OCI) benchmark on bundled data: scikit-learn's digits are split
(stratified, by the split seed) into train/val/test; the ten classes are put in a random order
fixed by the run seed and cut into ``tasks`` groups. The stream shows each task's training images
once. ``replicas > 1`` lengthens the stream for a realistic number of online steps: every
training image is streamed ``replicas`` times, each copy shifted by a random offset of at most
``shift`` pixels and with Gaussian noise of std ``noise`` (in [0, 1] pixel units), still one pass.
The replicas are drawn once, at build time, from the seed, so every configuration of a paired
benchmark sees the same stream.

Options (``data.options``): ``tasks`` (5), ``replicas`` (1), ``shift`` (1), ``noise`` (0.03),
``class_order`` (``"random"`` or an explicit list of the ten classes).

The loader never augments the stream (``data.augment`` must be ``none``): methods that augment
do it on the device inside the step, on memory samples only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from . import register_dataset
from .base import ArrayDataset, DataBundle, TaskStream, stratified_split
from .bundled import DIGITS_MEAN, DIGITS_STD, digits_images

__all__ = ["build_split_digits", "class_order", "shifted_replicas"]

OPTIONS: dict[str, Any] = {"tasks": 5, "replicas": 1, "shift": 1, "noise": 0.03, "class_order": "random"}


def class_order(num_classes: int, seed: int, order: Any = "random") -> list[int]:
    """The class order of the stream: a permutation of ``range(num_classes)`` fixed by ``seed``."""
    if order == "random":
        return [int(c) for c in np.random.default_rng(seed + 7_777).permutation(num_classes)]
    order = [int(c) for c in order]
    if sorted(order) != list(range(num_classes)):
        raise DataError(
            f"data.options.class_order must be 'random' or a permutation of 0..{num_classes - 1}, got {order}"
        )
    return order


def shifted_replicas(x: np.ndarray, replicas: int, shift: int, noise: float, seed: int) -> np.ndarray:
    """``replicas`` copies of HWC images ``x`` (``[N, H, W, C]`` in [0, 1]), stacked copy-major.

    With ``replicas == 1`` the images are returned unchanged. Otherwise each copy of each image is
    translated by integers ``(dy, dx)`` drawn uniformly from ``[-shift, shift]`` (zero fill) and
    gets i.i.d. Gaussian noise of std ``noise``, clipped to [0, 1].
    """
    if replicas <= 1:
        return x
    rng = np.random.default_rng(seed + 31_337)
    n, h, w, _ = x.shape
    out = np.zeros((replicas * n, *x.shape[1:]), dtype=np.float32)
    for r in range(replicas):
        offsets = rng.integers(-shift, shift + 1, size=(n, 2))
        for i in range(n):
            dy, dx = int(offsets[i, 0]), int(offsets[i, 1])
            src = x[i, max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
            out[r * n + i, max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = (
                src
            )
        if noise > 0:
            block = out[r * n : (r + 1) * n]
            block += rng.normal(0.0, noise, size=block.shape).astype(np.float32)
            np.clip(block, 0.0, 1.0, out=block)
    return out


def _options(cfg: Any) -> dict[str, Any]:
    opts = dict(OPTIONS)
    bad = set(cfg.options) - set(OPTIONS)
    if bad:
        raise DataError(
            f"data.options: unknown option(s) {sorted(bad)} for split-digits (known: {sorted(OPTIONS)})"
        )
    opts.update(cfg.options)
    if int(opts["tasks"]) < 1 or 10 % int(opts["tasks"]):
        raise DataError(
            f"data.options.tasks must divide the 10 digits classes (1, 2, 5 or 10), got {opts['tasks']}"
        )
    if int(opts["replicas"]) < 1 or int(opts["shift"]) < 0 or float(opts["noise"]) < 0:
        raise DataError("data.options: replicas must be >= 1, shift and noise >= 0")
    return opts


@register_dataset("split-digits", options=None)
def build_split_digits(cfg: Any, seed: int) -> DataBundle:
    """Digits as ``tasks`` disjoint tasks of ``10 / tasks`` classes, for online class-incremental runs.

    ``seed`` fixes both the train/val/test split and the class order; the trainer passes
    ``data.split_seed`` (default: the run seed).
    """
    if cfg.augment != "none":
        raise DataError(
            "data.augment must be 'none' for split-digits: continual streams are not augmented by the loader"
        )
    if cfg.val_frac + cfg.test_frac >= 1.0:
        raise DataError("data.val_frac + data.test_frac must be below 1")
    opts = _options(cfg)
    n_tasks = int(opts["tasks"])
    x, y = digits_images(cfg.image_size)
    test_idx, val_idx, train_idx = stratified_split(y, (cfg.test_frac, cfg.val_frac), seed)
    order = class_order(10, seed, opts["class_order"])
    per = 10 // n_tasks
    task_classes = [order[t * per : (t + 1) * per] for t in range(n_tasks)]
    kw: dict[str, Any] = dict(image=True, mean=DIGITS_MEAN, std=DIGITS_STD)

    def subset(idx: np.ndarray, classes: list[int]) -> np.ndarray:
        return idx[np.isin(y[idx], classes)]

    task_x, task_y = [], []
    for t, classes in enumerate(task_classes):
        idx = subset(train_idx, classes)
        xr = shifted_replicas(
            x[idx], int(opts["replicas"]), int(opts["shift"]), float(opts["noise"]), seed * 101 + t
        )
        task_x.append(xr)
        task_y.append(np.tile(y[idx], int(opts["replicas"])))
    tasks: list[Dataset] = [ArrayDataset(tx, ty, **kw) for tx, ty in zip(task_x, task_y)]
    train = ArrayDataset(np.concatenate(task_x), np.concatenate(task_y), **kw)
    tests: list[Dataset] = [
        ArrayDataset(x[subset(test_idx, c)], y[subset(test_idx, c)], **kw) for c in task_classes
    ]
    vals: list[Dataset] = [
        ArrayDataset(x[subset(val_idx, c)], y[subset(val_idx, c)], **kw) for c in task_classes
    ]
    stream = TaskStream(tasks=tasks, task_classes=task_classes, test=tests, val=vals)
    return DataBundle(
        train=train,
        val=ArrayDataset(x[val_idx], y[val_idx], **kw),
        test=ArrayDataset(x[test_idx], y[test_idx], **kw),
        task="continual",
        num_classes=10,
        input_shape=(3, cfg.image_size, cfg.image_size),
        train_targets=torch.as_tensor(np.concatenate(task_y), dtype=torch.long),
        stream=stream,
        info={
            "name": "split-digits",
            "class_order": order,
            "task_classes": task_classes,
            "replicas": int(opts["replicas"]),
            "shift": int(opts["shift"]),
            "noise": float(opts["noise"]),
            "train_per_task": [len(ty) for ty in task_y],
            "val": len(val_idx),
            "test": len(test_idx),
        },
    )
