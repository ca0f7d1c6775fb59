"""Setting a run up: the data checks, the selection metric."""

from __future__ import annotations

import torch

from .data import DataBundle
from .errors import DataError

__all__ = ["selection", "check_bundle", "main_thread"]


def selection(select: str, select_mode: str, task_kind: str) -> tuple[str, bool]:
    """The validation metric that picks ``best.pt`` and whether higher is better."""
    if select == "auto":
        key, high = ("rmse", False) if task_kind == "regression" else ("acc", True)
    else:
        key, high = select, select.endswith("acc") or select in ("r", "top2")
    if select_mode != "auto":
        high = select_mode == "max"
    return key, high


def check_bundle(bundle: DataBundle) -> None:
    if bundle.task == "continual":
        return
    for split in ("train", "val", "test"):
        ds = getattr(bundle, split)
        if len(ds) == 0:  # type: ignore[arg-type]
            raise DataError(f"the {split} split of the dataset is empty")
    t = bundle.train_targets
    if t.is_floating_point():
        if not torch.isfinite(t).all():
            bad = (~torch.isfinite(t.reshape(len(t), -1))).any(1).nonzero().flatten().tolist()[:10]
            raise DataError(f"non-finite training targets at dataset indices {bad}")
    elif bundle.num_classes is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= bundle.num_classes):
        raise DataError(f"training labels out of range [0, {bundle.num_classes})")


def main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
