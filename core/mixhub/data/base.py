"""Dataset containers shared by the builders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError

__all__ = ["ArrayDataset", "IndexedDataset", "DataBundle", "TaskStream", "apply_class_order", "stratified_split", "standardise", "split_bundle"]


class ArrayDataset(Dataset):
    """In-memory samples. Images are stored HWC uint8/float (albumentations) or as ready tensors.

    Args:
        inputs: ``[N, ...]`` array; images as ``[N, H, W, C]`` float32 in [0, 1].
        targets: ``[N]`` ints (classification) or ``[N]``/``[N, d]`` floats (regression).
        transform: an albumentations ``Compose`` (or any ``fn(image=...) -> {"image": ...}``).
        image: whether inputs are HWC images to be returned CHW and normalised.
        mean, std: per-channel normalisation applied after the transform.
    """

    def __init__(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        transform: Callable[..., dict[str, Any]] | None = None,
        image: bool = False,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> None:
        if len(inputs) != len(targets):
            raise DataError(f"inputs ({len(inputs)}) and targets ({len(targets)}) differ in length")
        self.inputs = inputs
        self.targets = targets
        self.transform = transform
        self.image = image
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32)
        self.std = None if std is None else np.asarray(std, dtype=np.float32)
        is_cls = np.issubdtype(np.asarray(targets).dtype, np.integer)
        self._targets_t = torch.as_tensor(np.asarray(targets), dtype=torch.long if is_cls else torch.float32)

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def target_tensor(self) -> Tensor:
        return self._targets_t

    #: The epoch a plain ``dataset[i]`` augments for (``set_epoch``; the training loader passes it per key).
    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def load(self, i: int, epoch: int, role: int = 0) -> tuple[Tensor, Tensor]:
        """Sample ``i`` as augmented at ``epoch`` (``role`` tells apart extra copies of one sample in a step).

        A seeded albumentations pipeline (``Compose(seed=...)``, as ``build_augment`` makes) is
        reseeded per sample from ``(seed, epoch, i, role)``, so the augmentation of a sample is a
        function of those alone: a run resumed mid-epoch, in any order or worker count,
        augments exactly as the uninterrupted run (nothing to checkpoint).
        """
        x = self.inputs[i]
        if self.transform is not None:
            seed = getattr(self.transform, "seed", None)
            set_state = getattr(self.transform, "set_random_state", None)
            if seed is not None and set_state is not None:
                import random

                from .lazy import sample_seed

                s = sample_seed(int(seed), int(epoch), int(i), int(role))
                set_state(np.random.default_rng(s), random.Random(s))  # keeps ``transform.seed``, the base
            x = self.transform(image=x)["image"]
        return self._finish(x, i)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.load(i, self.epoch)

    def remap_targets(self, table: Tensor) -> None:
        """Class ids ``c`` become ``table[c]`` (``apply_class_order``)."""
        self._targets_t = table[self._targets_t]
        self.targets = self._targets_t.numpy()

    def _finish(self, x: Any, i: int) -> tuple[Tensor, Tensor]:
        x = np.asarray(x, dtype=np.float32)
        if self.image:
            if self.mean is not None and self.std is not None:
                x = (x - self.mean) / self.std
            xt = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
        else:
            xt = torch.from_numpy(np.ascontiguousarray(x))
        return xt, self._targets_t[i]


class IndexedDataset(Dataset):
    """Wraps a dataset so items are ``(x, y, index)``."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        x, y = self.base[i]
        return x, torch.as_tensor(y), i


@dataclass
class TaskStream:
    """A continual-learning stream: per task, its training set and its classes.

    ``tasks[t]`` is a dataset of task t; ``task_classes[t]`` its classes; ``test[t]`` the test
    set of task t's classes.
    """

    tasks: list[Dataset]
    task_classes: list[list[int]]
    test: list[Dataset]
    val: list[Dataset] | None = None


@dataclass
class DataBundle:
    """What a dataset builder returns.

    Attributes:
        train, val, test: datasets whose items are ``(x, y)`` tensors.
        task: ``"classification"``, ``"regression"`` or ``"continual"``.
        num_classes: classes of a classification task (``None`` for regression).
        input_shape: shape of one input (``(C, H, W)`` or ``(F,)``).
        train_targets: every training target by training-set index (label bank).
        extra_splits: further evaluation splits by name (e.g. ``"test_ood"``).
        stream: the task stream of a continual dataset.
        info: free-form description (sizes, options) written to the run folder.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    task: str
    num_classes: int | None
    input_shape: tuple[int, ...]
    train_targets: Tensor
    extra_splits: dict[str, Dataset] = field(default_factory=dict)
    stream: TaskStream | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def target_dim(self) -> int:
        t = self.train_targets
        return 1 if t.dim() == 1 else int(t.shape[1])


def apply_class_order(bundle: DataBundle, classes: list[Any]) -> DataBundle:
    """Map a classification bundle's class ids to the order of ``classes`` (``data.classes``).

    The bundle's own labels are ``info["classes"]`` (id ``i`` is label ``classes_found[i]``; ids
    ``0..K-1`` when the dataset names none); labels compare as text, so ``7`` matches ``"7"``.
    A label that ``classes`` lacks is an error naming it; ``num_classes`` becomes ``len(classes)``.
    """
    if bundle.task != "classification" or bundle.num_classes is None:
        raise DataError(f"data.classes applies to classification data; this dataset is {bundle.task}")
    wanted = [str(c) for c in classes]
    if len(set(wanted)) != len(wanted):
        raise DataError(f"data.classes lists a label twice: {classes}")
    found = list(bundle.info.get("classes") or range(bundle.num_classes))
    missing = [c for c in found if str(c) not in wanted]
    if missing:
        raise DataError(
            f"the data hold labels {missing[:10]} that data.classes lacks (the data have {len(found)} classes; "
            f"data.classes, the model's outputs, has {len(classes)}: "
            f"{classes[:20]}{' ...' if len(classes) > 20 else ''})"
        )
    if [str(c) for c in found] == wanted:  # already in this order (e.g. mixhub eval on the training data)
        bundle.info["classes"] = list(classes)
        return bundle
    table = torch.as_tensor([wanted.index(str(c)) for c in found], dtype=torch.long)
    splits = [bundle.train, bundle.val, bundle.test, *bundle.extra_splits.values()]
    for ds in {id(d): d for d in splits}.values():
        remap = getattr(ds, "remap_targets", None)
        if remap is None:
            raise DataError(f"data.classes: the {type(ds).__name__} datasets of this data cannot be relabelled")
        remap(table)
    bundle.train_targets = bundle.train.target_tensor  # type: ignore[attr-defined]
    bundle.num_classes = len(classes)
    bundle.info["classes"] = list(classes)
    return bundle


def stratified_split(
    targets: np.ndarray, fractions: tuple[float, ...], seed: int, stratify: bool = True
) -> list[np.ndarray]:
    """Split indices into parts of the given fractions (the last part takes the rest).

    Classification targets are split per class (stratified); others uniformly.
    """
    rng = np.random.default_rng(seed)
    n = len(targets)
    targets = np.asarray(targets)
    groups = [np.arange(n)]
    if stratify and np.issubdtype(targets.dtype, np.integer) and targets.ndim == 1:
        groups = [np.flatnonzero(targets == c) for c in np.unique(targets)]
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for g in groups:
        g = rng.permutation(g)
        start = 0
        for k, frac in enumerate(fractions):
            cnt = int(round(frac * len(g)))
            parts[k].append(g[start : start + cnt])
            start += cnt
        parts[-1].append(g[start:])
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in parts]


def standardise(x: np.ndarray, train_idx: np.ndarray) -> np.ndarray:
    """Standardise columns with the training rows' mean and std (float32)."""
    mu = x[train_idx].mean(0)
    sd = x[train_idx].std(0) + 1e-8
    return ((x - mu) / sd).astype(np.float32)


def split_bundle(
    x: np.ndarray,
    y: np.ndarray,
    test_idx: np.ndarray,
    val_idx: np.ndarray,
    train_idx: np.ndarray,
    *,
    task: str,
    num_classes: int | None,
    input_shape: tuple[int, ...],
    y_train: np.ndarray | None = None,
    train_transform: Callable[..., dict[str, Any]] | None = None,
    dataset_kwargs: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
) -> DataBundle:
    """The bundle of one table/image array split by index (``y_train`` replaces the training labels,
    e.g. with label noise; ``train_transform`` augments the training split only)."""
    kw = dataset_kwargs or {}
    train = ArrayDataset(x[train_idx], y[train_idx] if y_train is None else y_train, transform=train_transform, **kw)
    return DataBundle(
        train=train,
        val=ArrayDataset(x[val_idx], y[val_idx], **kw),
        test=ArrayDataset(x[test_idx], y[test_idx], **kw),
        task=task,
        num_classes=num_classes,
        input_shape=input_shape,
        train_targets=train.target_tensor,
        info={**(info or {}), "train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
    )
