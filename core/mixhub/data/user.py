"""Users' data: CSV tables and torchvision datasets from a local root (never downloaded); image
folders, tar and webdataset shards are in ``images``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from . import register_dataset
from .base import ArrayDataset, DataBundle, split_bundle, standardise, stratified_split
from .bundled import regression_bundle
from .images import build_image_csv, read_csv
from .lazy import to_rgb
from .transforms import build_augment

log = logging.getLogger("mixhub")


def _numeric_table(path: Path, header: list[str], body: list[list[str]]) -> np.ndarray:
    """The data rows as float64; a ragged row or a non-numeric cell is an error naming its row and column
    (data row r is line r + 1 of the file, after the header)."""
    values = np.empty((len(body), len(header)), dtype=np.float64)
    for r, row in enumerate(body, start=1):
        if len(row) != len(header):
            raise DataError(f"CSV file {str(path)!r}: data row {r} (line {r + 1}) has {len(row)} fields, the header has {len(header)}")
        for c, cell in enumerate(row):
            try:
                values[r - 1, c] = float(cell)
            except ValueError:
                raise DataError(f"CSV file {str(path)!r}: non-numeric value {cell!r} at data row {r} (line {r + 1}), column {header[c]!r}") from None
    return values


#: ``data.task=auto``: an integer target column with at most this many distinct values is classification.
MAX_AUTO_CLASSES = 50


def detect_task(y: np.ndarray, column: str, task: str = "auto") -> tuple[str, str]:
    """The task kind of a numeric target column and the reason, said in words.

    ``auto``: classification when every value is an integer and there are at most
    ``MAX_AUTO_CLASSES`` distinct values, else regression. Integer classes that look like a
    quantity (``looks_like_quantity``) are still classification, with a warning naming
    ``data.task=regression``.
    """
    if task != "auto":
        return task, f"data.task={task}"
    n_distinct = len(np.unique(y))
    if not np.all(y == np.round(y)):
        return "regression", f"data.task=auto: column {column!r} holds non-integer values"
    if n_distinct > MAX_AUTO_CLASSES:
        return "regression", f"data.task=auto: column {column!r} holds {n_distinct} distinct integers (more than {MAX_AUTO_CLASSES})"
    reason = f"data.task=auto: column {column!r} holds {n_distinct} distinct integers (at most {MAX_AUTO_CLASSES})"
    quantity = looks_like_quantity(y)
    if quantity:
        log.warning(
            "data.task=auto treats column %r as %d classes, but it looks like a quantity (%s); "
            "set data.task=regression to predict it as a number, or data.task=classification to keep classes",
            column, n_distinct, quantity,
        )
        reason += f"; it looks like a quantity ({quantity}): data.task=regression predicts it as a number"
    return "classification", reason


def looks_like_quantity(y: np.ndarray, min_classes: int = 10, max_per_class: float = 20.0) -> str:
    """Why integer labels ``y`` look like a measured quantity rather than class ids, or ``""``.

    All three must hold: many classes (at least ``min_classes``), few rows per class (fewer
    than ``max_per_class`` on average) and ordered integers that are not the ids ``0..K-1`` or
    ``1..K`` (an offset range such as ages 18..80, or values with gaps).
    """
    values = np.unique(y).astype(np.int64)
    k = len(values)
    if k < min_classes or len(y) / k >= max_per_class:
        return ""
    if values[0] in (0, 1) and values[-1] == values[0] + k - 1:
        return ""
    return f"{k} distinct integers from {values[0]} to {values[-1]}, {len(y) / k:.1f} rows per class on average"


@register_dataset("csv", prefix=True)
def build_csv(cfg: Any, seed: int, model: Any | None = None) -> DataBundle:
    """``csv:PATH``: a numeric table with a header; target column ``data.target`` (default: last).

    ``data.task=auto``: see ``detect_task`` (an integer target with at most 50 distinct values is
    classification); the reason is kept in ``info["task_reason"]`` and printed at the run's start.
    With ``data.image_column`` the table lists image files (loaded lazily) and numeric targets
    (see ``images.build_image_csv``).
    """
    path = Path(cfg.name.split(":", 1)[1]).expanduser()
    if not path.is_file():
        raise DataError(f"data.name: CSV file {str(path)!r} does not exist")
    header, body = read_csv(path)
    if cfg.image_column is not None:
        return build_image_csv(cfg, seed, model, path, header, body)
    if isinstance(cfg.target, list):
        if len(cfg.target) != 1:
            raise DataError(f"data.target: a numeric table takes one target column, got {cfg.target} (several targets need data.image_column)")
    target = (cfg.target[0] if isinstance(cfg.target, list) else cfg.target) or header[-1]
    if target not in header:
        raise DataError(f"data.target: column {target!r} is not in {str(path)!r} (columns: {', '.join(header)})")
    t_col = header.index(target)
    table = _numeric_table(path, header, body)
    if not np.isfinite(table).all():
        bad = np.argwhere(~np.isfinite(table))[0]
        raise DataError(f"CSV file {str(path)!r}: non-finite value at data row {bad[0] + 1}, column {header[bad[1]]!r}")
    y = table[:, t_col]
    x = np.delete(table, t_col, axis=1).astype(np.float32)
    task, reason = detect_task(y, target, cfg.task)
    if task == "regression":
        return regression_bundle(x, y, cfg, seed, {"source": str(path), "task_reason": reason})
    fractional = np.flatnonzero(y != np.round(y))
    if len(fractional):
        r = int(fractional[0])
        raise DataError(
            f"CSV file {str(path)!r}: data.task=classification needs integer class labels, but column {target!r} holds "
            f"{body[r][t_col]!r} at data row {r + 1} (line {r + 2}); use data.task=regression for real-valued targets"
        )
    y_int = y.astype(np.int64)
    classes = sorted(np.unique(y_int).tolist())
    remap = {c: i for i, c in enumerate(classes)}
    y_idx = np.asarray([remap[c] for c in y_int], dtype=np.int64)
    test_idx, val_idx, train_idx = stratified_split(y_idx, (cfg.test_frac, cfg.val_frac), seed)
    return split_bundle(
        standardise(x, train_idx), y_idx, test_idx, val_idx, train_idx,
        task="classification",
        num_classes=len(classes),
        input_shape=(x.shape[1],),
        info={"source": str(path), "classes": classes, "task_reason": reason},
    )


@register_dataset("torchvision", prefix=True)
def build_torchvision(cfg: Any, seed: int) -> DataBundle:
    """``torchvision:NAME`` from ``data.root`` (``download=False``): its train split is split into
    train/val by seed, its test split is the test set."""
    import torchvision.datasets as tvd

    name = cfg.name.split(":", 1)[1]
    cls = getattr(tvd, name, None)
    if cls is None:
        raise DataError(f"data.name: torchvision has no dataset {name!r}")
    if not cfg.root:
        raise DataError(f"data.root: torchvision dataset {name!r} needs a local root folder (mixhub never downloads)")

    def load(train: bool) -> tuple[np.ndarray, np.ndarray]:
        try:
            ds = cls(root=cfg.root, train=train, download=False)
        except (RuntimeError, FileNotFoundError) as exc:
            raise DataError(f"torchvision dataset {name!r} not found under data.root={cfg.root!r} (mixhub never downloads): {exc}") from exc
        xs, ys = [], []
        for img, label in ds:
            img = to_rgb(img).resize((cfg.image_size, cfg.image_size))
            xs.append(np.asarray(img, dtype=np.float32) / 255.0)
            ys.append(int(label))
        return np.stack(xs), np.asarray(ys, dtype=np.int64)

    x_tr, y_tr = load(True)
    x_te, y_te = load(False)
    val_idx, train_idx = stratified_split(y_tr, (cfg.val_frac,), seed)
    mean = tuple(float(m) for m in x_tr[train_idx].mean((0, 1, 2)))
    std = tuple(float(s) + 1e-6 for s in x_tr[train_idx].std((0, 1, 2)))
    kw: dict[str, Any] = dict(image=True, mean=mean, std=std)
    train = ArrayDataset(x_tr[train_idx], y_tr[train_idx], transform=build_augment(cfg.augment, cfg.image_size, seed), **kw)
    classes = int(max(y_tr.max(), y_te.max()) + 1)
    return DataBundle(
        train=train,
        val=ArrayDataset(x_tr[val_idx], y_tr[val_idx], **kw),
        test=ArrayDataset(x_te, y_te, **kw),
        task="classification",
        num_classes=classes,
        input_shape=(3, cfg.image_size, cfg.image_size),
        train_targets=train.target_tensor,
        info={"source": f"torchvision {name} at {cfg.root}"},
    )
