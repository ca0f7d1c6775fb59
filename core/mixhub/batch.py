"""`Batch`: the unit of data passed between hooks."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from .errors import DataError

__all__ = ["Batch", "check_class_targets"]


def _move(value: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, Batch):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, dict):  # keys named host_* are host copies kept for bookkeeping: they stay
        return {k: v if isinstance(k, str) and k.startswith("host_") else _move(v, device, non_blocking) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_move(v, device, non_blocking) for v in value)
    return value


@dataclass
class Batch:
    """A batch of samples.

    Attributes:
        inputs: model inputs, ``[B, ...]`` (images ``[B, C, H, W]``, tables ``[B, F]``).
        targets: class ids ``[B]`` (long) for classification, ``[B]`` or ``[B, d]`` (float) for regression.
        index: dataset indices of the samples, ``[B]`` (long).
        task_id: task of each sample ``[B]`` in continual runs, else ``None``.
        extras: anything else a hook wants to pass on (e.g. ``extras["memory"]``, a replay ``Batch``);
            ``Batch.to`` moves them, except entries named ``host_*`` (host copies, e.g. the replay
            buffer's ``host_targets``, read for bookkeeping without a device read).
    """

    inputs: Tensor
    targets: Tensor
    index: Tensor
    task_id: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.inputs, Tensor) or not isinstance(self.targets, Tensor):
            raise TypeError("Batch.inputs and Batch.targets must be tensors")
        b = self.inputs.shape[0] if self.inputs.dim() > 0 else None
        if b is None or self.targets.shape[0] != b or self.index.shape[0] != b:
            raise ValueError(
                "Batch: inputs, targets and index must share the batch dimension, got "
                f"inputs {tuple(self.inputs.shape)}, targets {tuple(self.targets.shape)}, "
                f"index {tuple(self.index.shape)}"
            )

    @property
    def size(self) -> int:
        return int(self.inputs.shape[0])

    def __len__(self) -> int:
        return self.size

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            inputs=self.inputs.to(device, non_blocking=non_blocking),
            targets=self.targets.to(device, non_blocking=non_blocking),
            index=self.index.to(device, non_blocking=non_blocking),
            task_id=None if self.task_id is None else self.task_id.to(device, non_blocking=non_blocking),
            extras=_move(self.extras, device, non_blocking),
        )

    def replace(self, **changes: Any) -> Batch:
        """A copy with some fields replaced (``extras`` is copied shallowly)."""
        changes.setdefault("extras", dict(self.extras))
        return replace(self, **changes)

    def select(self, rows: Tensor) -> Batch:
        """The sub-batch of the given rows (a bool mask or positions)."""
        return Batch(
            inputs=self.inputs[rows],
            targets=self.targets[rows],
            index=self.index[rows],
            task_id=None if self.task_id is None else self.task_id[rows],
            extras={},
        )

    @staticmethod
    def cat(batches: list[Batch]) -> Batch:
        """Concatenate batches row-wise (extras are dropped)."""
        if not batches:
            raise ValueError("Batch.cat needs at least one batch")
        tids = [b.task_id for b in batches]
        return Batch(
            inputs=torch.cat([b.inputs for b in batches]),
            targets=torch.cat([b.targets for b in batches]),
            index=torch.cat([b.index for b in batches]),
            task_id=None if any(t is None for t in tids) else torch.cat(tids),  # type: ignore[arg-type]
        )


def check_class_targets(targets: Tensor, task_kind: str, soft_targets: bool = False, door: str = "mixhub.Session") -> None:
    """Refuse soft ``[B, C]`` (or floating) targets of a classification step unless
    ``soft_targets`` (``train.soft_targets``) says they are the user's own: such targets usually
    mean timm's Mixup/CutMix has already mixed the batch, and the plugins would mix it a second
    time. Reads shape and dtype only (no device sync)."""
    if task_kind != "classification" or soft_targets:
        return
    if targets.dim() != 1 or targets.is_floating_point():
        raise DataError(
            f"{door} got targets of shape {tuple(targets.shape)} and dtype {targets.dtype}: timm has already mixed this "
            "batch (its Mixup/CutMix or FastCollateMixup makes soft [B, C] targets). Turn timm's mixing off "
            "(--mixup 0 --cutmix 0) and let the mixhub plugins mix; they need class indices [B]. Soft labels of your "
            "own (no mixing before mixhub) are accepted with train.soft_targets=true."
        )
