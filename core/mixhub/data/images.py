"""Builders of lazily loaded image datasets: ``imagefolder:PATH``, ``tar:PATH``, ``webdataset:PATTERN``
and image-path CSV tables (``csv:PATH`` with ``data.image_column``).

Each lists its files (nothing is decoded), splits by seed (stratified for classes) unless the
data bring their own splits, and gives every split a ``LazyImageDataset`` with timm's training
or eval transform (``data.transform``), or an albumentations pipeline file for training
(``data.albumentations``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from . import register_dataset
from .base import DataBundle, stratified_split
from .bundled import keep_fraction, noisy_labels
from .lazy import FolderSource, LazyImageDataset, PathSource, TarSource, WebDatasetSource, _Source
from .transforms import image_transforms

__all__ = ["build_imagefolder", "build_tar", "build_webdataset", "build_image_csv", "lazy_bundle"]

VAL_NAMES = ("val", "validation")


def _check_split(cfg: Any) -> None:
    if cfg.val_frac + cfg.test_frac >= 1.0:
        raise DataError("data.val_frac + data.test_frac must be below 1")


def lazy_bundle(
    source: _Source,
    cfg: Any,
    seed: int,
    model: Any | None,
    info: dict[str, Any],
    *,
    task: str = "classification",
    targets: torch.Tensor | None = None,
    val_source: _Source | None = None,
    test_source: _Source | None = None,
) -> DataBundle:
    """Split ``source`` by seed into train/val/test (or take ``val_source``/``test_source`` as the
    fixed splits) and wrap each split lazily. ``data.train_frac`` and ``data.label_noise`` apply
    to the training split as for the bundled data."""
    train_tf, eval_tf, resolved = image_transforms(cfg, model)
    run_seed = int(seed)
    if targets is None:
        targets = torch.as_tensor(source.targets, dtype=torch.long)
    num_classes = len(source.classes or []) if task == "classification" else None
    y = targets.numpy()
    if val_source is None:
        _check_split(cfg)
        test_idx, val_idx, train_idx = stratified_split(y, (cfg.test_frac, cfg.val_frac), seed, stratify=task == "classification")
    else:
        train_idx = np.arange(len(source))
    if task == "classification":
        train_idx = keep_fraction(train_idx, y, cfg.train_frac, seed)
    elif cfg.train_frac < 1.0:
        keep, _ = stratified_split(y[train_idx], (cfg.train_frac,), seed + 7919, stratify=False)
        train_idx = train_idx[keep]
    train_targets = targets[torch.as_tensor(train_idx, dtype=torch.long)]
    if task == "classification" and cfg.label_noise > 0:
        assert num_classes is not None
        train_targets = torch.as_tensor(noisy_labels(train_targets.numpy(), cfg.label_noise, num_classes, seed))
    bad = cfg.on_bad_sample
    train = LazyImageDataset(source, train_idx, train_targets, train_tf, run_seed, bad)
    if val_source is None:
        val = LazyImageDataset(source, val_idx, targets[torch.as_tensor(val_idx, dtype=torch.long)], eval_tf, run_seed, bad)
        test = LazyImageDataset(source, test_idx, targets[torch.as_tensor(test_idx, dtype=torch.long)], eval_tf, run_seed, bad)
    else:
        val = LazyImageDataset(val_source, np.arange(len(val_source)), torch.as_tensor(val_source.targets, dtype=torch.long), eval_tf, run_seed, bad)
        ts = test_source if test_source is not None else val_source
        test = val if ts is val_source else LazyImageDataset(ts, np.arange(len(ts)), torch.as_tensor(ts.targets, dtype=torch.long), eval_tf, run_seed, bad)
    return DataBundle(
        train=train,
        val=val,
        test=test,
        task=task,
        num_classes=num_classes,
        input_shape=(3, cfg.image_size, cfg.image_size),
        train_targets=train.target_tensor,
        info={
            **info,
            "lazy": True,
            "train": len(train),
            "val": len(val),
            "test": len(test),
            "transform": {k: (list(v) if isinstance(v, tuple) else v) for k, v in resolved.items()},
            "albumentations": cfg.albumentations,
        },
    )


def _path_arg(cfg: Any, what: str) -> Path:
    arg = cfg.name.split(":", 1)[1]
    if not arg:
        raise DataError(f"data.name: {cfg.name!r} needs a path after the colon ({what})")
    return Path(arg).expanduser()


@register_dataset("imagefolder", prefix=True)
def build_imagefolder(cfg: Any, seed: int, model: Any | None = None) -> DataBundle:
    """``imagefolder:PATH``: one sub-folder per class, split by seed; or ``PATH/train`` +
    ``PATH/val`` (or ``validation``) folders of class folders, which give the validation split
    (and ``PATH/test`` the test split; without it the validation folder is also the test set)."""
    root = _path_arg(cfg, "a folder of class folders")
    if not root.is_dir():
        raise DataError(f"data.name: image folder {str(root)!r} does not exist")
    val_dir = next((root / n for n in VAL_NAMES if (root / n).is_dir()), None)
    if (root / "train").is_dir() and val_dir is not None:
        train = FolderSource(root / "train")
        val = FolderSource(val_dir, classes=train.classes)
        test = FolderSource(root / "test", classes=train.classes) if (root / "test").is_dir() else None
        info = {
            "source": f"image folder {str(root)!r} (train/ + {val_dir.name}/ layout)",
            "classes": train.classes,
            "test_split": "test/" if test is not None else f"{val_dir.name}/ (no test/ folder)",
        }
        return lazy_bundle(train, cfg, seed, model, info, val_source=val, test_source=test)
    source = FolderSource(root)
    return lazy_bundle(source, cfg, seed, model, {"source": f"image folder {str(root)!r}", "classes": source.classes})


@register_dataset("tar", prefix=True)
def build_tar(cfg: Any, seed: int, model: Any | None = None) -> DataBundle:
    """``tar:PATH``: image tar shards as timm reads them: one ``.tar`` holding a folder per class,
    or a folder of ``.tar`` files, one per class (the class is the tar's name); split by seed."""
    root = _path_arg(cfg, "a .tar file or a folder of .tar files")
    if not root.exists():
        raise DataError(f"data.name: tar path {str(root)!r} does not exist")
    source = TarSource(root)
    return lazy_bundle(source, cfg, seed, model, {"source": f"tar shards {str(root)!r}", "classes": source.classes})


@register_dataset("webdataset", prefix=True)
def build_webdataset(cfg: Any, seed: int, model: Any | None = None) -> DataBundle:
    """``webdataset:PATTERN``: webdataset shards (``shard-{000..009}.tar``, a glob or a folder),
    each sample an image member and a ``.cls`` integer label; read by offset, split by seed."""
    pattern = cfg.name.split(":", 1)[1]
    if not pattern:
        raise DataError("data.name: webdataset: needs a shard pattern, e.g. webdataset:/data/shard-{000..009}.tar")
    source = WebDatasetSource(pattern)
    return lazy_bundle(source, cfg, seed, model, {"source": f"webdataset shards {pattern!r} ({len(source.shards)} shards)", "classes": source.classes})


def build_image_csv(cfg: Any, seed: int, model: Any | None, path: Path, header: list[str], body: list[list[str]]) -> DataBundle:
    """A CSV of image paths (``data.image_column``, relative to the CSV's folder) and numeric targets.

    Targets: ``data.target`` (one column or a list), else every other column. Regression (the
    default; C-Mixup's setting) gives ``[N]`` or ``[N, d]`` float targets; ``data.task=classification``
    takes one integer column.
    """
    col = cfg.image_column
    if col not in header:
        raise DataError(f"data.image_column: column {col!r} is not in {str(path)!r} (columns: {', '.join(header)})")
    names = [cfg.target] if isinstance(cfg.target, str) else list(cfg.target or [h for h in header if h != col])
    if not names:
        raise DataError(f"CSV file {str(path)!r}: no target column besides the image column {col!r}")
    for n in names:
        if n not in header:
            raise DataError(f"data.target: column {n!r} is not in {str(path)!r} (columns: {', '.join(header)})")
        if n == col:
            raise DataError(f"data.target: {n!r} is the image column")
    i_col = header.index(col)
    t_cols = [header.index(n) for n in names]
    paths: list[str] = []
    rows: list[list[float]] = []
    for r_no, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"CSV file {str(path)!r}: line {r_no} has {len(row)} fields, the header {len(header)}")
        p = Path(row[i_col]).expanduser()
        p = p if p.is_absolute() else path.parent / p
        if not p.is_file():
            raise DataError(f"CSV file {str(path)!r}: line {r_no}: image file {str(p)!r} does not exist")
        paths.append(str(p))
        try:
            rows.append([float(row[c]) for c in t_cols])
        except ValueError:
            bad = next(header[c] for c in t_cols if not _is_float(row[c]))
            raise DataError(f"CSV file {str(path)!r}: line {r_no}: target column {bad!r} is not numeric ({row[header.index(bad)]!r})") from None
    table = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(table).all():
        r, c = np.argwhere(~np.isfinite(table))[0]
        raise DataError(f"CSV file {str(path)!r}: non-finite target at data row {r + 1}, column {names[c]!r}")
    info = {"source": f"image CSV {str(path)!r}", "image_column": col, "targets": names}
    if cfg.task == "classification":
        info["task_reason"] = "data.task=classification"
        if len(names) != 1 or not np.all(table == np.round(table)):
            raise DataError(f"data.task=classification: CSV file {str(path)!r} needs one integer target column (got {names})")
        y_int = table[:, 0].astype(np.int64)
        classes = sorted(np.unique(y_int).tolist())
        remap = {c: k for k, c in enumerate(classes)}
        y = np.asarray([remap[v] for v in y_int], dtype=np.int64)
        source = PathSource(paths, y)
        source.classes = [str(c) for c in classes]
        return lazy_bundle(source, cfg, seed, model, {**info, "classes": classes})
    info["task_reason"] = f"data.task={cfg.task}: the targets of an image CSV are regression unless data.task=classification"
    t = torch.as_tensor(table, dtype=torch.float32)
    t = t[:, 0] if len(names) == 1 else t
    source = PathSource(paths, t.numpy())
    return lazy_bundle(source, cfg, seed, model, info, task="regression", targets=t)


def _is_float(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 2:
        raise DataError(f"CSV file {str(path)!r} has no data rows")
    return rows[0], [r for r in rows[1:] if r]
