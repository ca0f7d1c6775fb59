"""The training and evaluation DataLoaders: workers, pinning, prefetch, extra indices, bad samples.

``train_loader`` wraps torch's ``DataLoader`` (what a timm ``create_loader`` user gets, minus the
CUDA prefetcher) with three things of mixhub's own:

* **keys, not indices.** The batch sampler yields ``(index, epoch, role)`` keys, so a lazily
  loaded sample's augmentation is seeded from the key alone (``lazy.sample_seed``): resuming
  mid-epoch, or changing the worker count, gives the same augmentations as an uninterrupted run.
* **extra indices.** ``extend(index, epoch, generator) -> {name: indices}`` runs in the batch
  sampler, before loading, so samples a plugin chooses from the anchors' dataset indices (and
  the labels it knows) are decoded in the workers with the anchors; each batch's generator is
  seeded from ``(seed, epoch, batch position, rank)``, so the draws survive resume too. They
  arrive as ``batch.extras["extended"][name]`` (a ``Batch`` with dataset indices).
* **bad samples.** Under ``data.on_bad_sample=skip`` an unreadable sample is dropped by the
  collate function (with the extra rows paired with it) and its file named in
  ``batch.extras["bad_samples"]``; ``BadSampleLog`` counts them per epoch.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ..batch import Batch
from ..errors import DataError
from .lazy import BadSample

__all__ = [
    "KeyedDataset",
    "BatchKeys",
    "Collate",
    "BadSampleLog",
    "default_num_workers",
    "resolve_num_workers",
    "train_loader",
    "eval_loader",
    "is_lazy",
]

log = logging.getLogger("mixhub")

Extend = Callable[[Tensor, int, torch.Generator], dict[str, Tensor]]


def is_lazy(dataset: Any) -> bool:
    """Whether a dataset decodes samples on access (and so wants loader workers)."""
    return bool(getattr(dataset, "lazy", False))


def default_num_workers(processes_per_node: int = 1) -> int:
    """The machine's usable cores shared by the processes of this node, at most 8 per process."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores // max(1, processes_per_node)))


def resolve_num_workers(data_cfg: Any, dataset: Any, world_size: int = 1) -> int:
    """``data.num_workers``, or the default: cores (<= 8) for lazy datasets, 0 for in-memory arrays."""
    if data_cfg.num_workers is not None:
        return int(data_cfg.num_workers)
    if not is_lazy(dataset):
        return 0
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    return default_num_workers(local)


class KeyedDataset(Dataset):
    """Items ``(x, y, index, role)`` by key ``(index, epoch, role)`` (a plain index means epoch
    ``dataset.epoch`` and role 0). Lazy datasets get the key's epoch and role for their seeds;
    in-memory datasets are indexed as before. A skipped bad sample comes back as ``(BadSample, None, index, role)``."""

    def __init__(self, base: Dataset) -> None:
        self.base = base
        self._load = getattr(base, "load", None)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> tuple[Any, Any, int, int]:
        if isinstance(key, tuple):
            i, epoch, role = int(key[0]), int(key[1]), int(key[2])
        else:
            i, epoch, role = int(key), int(getattr(self.base, "epoch", 0)), 0
        if self._load is not None:
            out = self._load(i, epoch, role)
            if isinstance(out, BadSample):
                return out, None, i, role
            x, y = out
        else:
            x, y = self.base[i]
        return x, torch.as_tensor(y), i, role


class BatchKeys(Sampler[list[tuple[int, int, int]]]):
    """Batches of keys from an index sampler (``EpochSampler``: ``epoch`` and ``skip_batches``).

    ``extend`` adds each plugin's extra indices to a batch (role ``1 + position of the plugin in
    names``); its generator is seeded from ``(seed, epoch, batch position, rank)``.
    """

    def __init__(
        self,
        sampler: Sampler[int] | Sequence[int],
        batch_size: int,
        drop_last: bool,
        *,
        extend: Extend | None = None,
        names: Sequence[str] = (),
        seed: int = 0,
        rank: int = 0,
        dataset_size: int | None = None,
    ) -> None:
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.drop_last = drop_last
        self.extend = extend
        self.names = list(names)
        self.seed = int(seed)
        self.rank = int(rank)
        self.dataset_size = dataset_size

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        epoch = int(getattr(self.sampler, "epoch", 0))
        position = int(getattr(self.sampler, "skip_batches", 0))
        batch: list[int] = []
        for i in self.sampler:
            batch.append(int(i))
            if len(batch) == self.batch_size:
                yield self.keys(batch, epoch, position)
                position += 1
                batch = []
        if batch and not self.drop_last:
            yield self.keys(batch, epoch, position)

    def generator(self, epoch: int, position: int) -> torch.Generator:
        words = np.random.SeedSequence([self.seed % (2**63), epoch, position, self.rank, 0x5EED]).generate_state(1, np.uint64)
        return torch.Generator().manual_seed(int(words[0]) % (2**63))

    def keys(self, batch: list[int], epoch: int, position: int) -> list[tuple[int, int, int]]:
        keys = [(i, epoch, 0) for i in batch]
        if self.extend is None:
            return keys
        extra = self.extend(torch.as_tensor(batch, dtype=torch.long), epoch, self.generator(epoch, position))
        for name, idx in extra.items():
            if name not in self.names:
                raise DataError(f"extra indices from {name!r}, which is not a registered extender ({self.names})")
            if not isinstance(idx, Tensor) or idx.dim() != 1 or idx.is_floating_point():
                raise DataError(f"plugin {name!r} (mixhub_extend_indices) must return a 1-D integer tensor, got {type(idx).__name__} {tuple(getattr(idx, 'shape', ()))}")
            if idx.numel() and self.dataset_size is not None and (int(idx.min()) < 0 or int(idx.max()) >= self.dataset_size):
                raise DataError(f"plugin {name!r} (mixhub_extend_indices) returned dataset indices outside [0, {self.dataset_size})")
            role = 1 + self.names.index(name)
            keys.extend((int(j), epoch, role) for j in idx.tolist())
        return keys


class Collate:
    """Items ``(x, y, index, role)`` to a ``Batch`` of the anchors (role 0), with each extender's
    rows as ``extras["extended"][name]``. Skipped bad samples are dropped; an extender's rows
    that pair one to one with the anchors are dropped together with their anchor."""

    def __init__(self, names: Sequence[str] = (), channels_last: bool = False) -> None:
        self.names = list(names)
        self.channels_last = channels_last

    def _stack(self, items: list[tuple[Any, Any, int, int]]) -> Batch:
        x = torch.stack([it[0] for it in items])
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return Batch(
            inputs=x,
            targets=torch.stack([it[1] for it in items]),
            index=torch.as_tensor([it[2] for it in items], dtype=torch.long),
        )

    def __call__(self, items: list[tuple[Any, Any, int, int]]) -> Batch:
        groups: dict[int, list[tuple[Any, Any, int, int]]] = {}
        for it in items:
            groups.setdefault(it[3], []).append(it)
        anchors = groups.get(0, [])
        keep = [not isinstance(it[0], BadSample) for it in anchors]
        bad = [it[0].name for it in items if isinstance(it[0], BadSample)]
        for role, group in groups.items():
            if role and len(group) == len(anchors):
                keep = [k and not isinstance(it[0], BadSample) for k, it in zip(keep, group)]
        good = [it for it, k in zip(anchors, keep) if k]
        if not good:
            # every anchor of this batch was unreadable: an empty batch the trainer skips
            raise DataError(f"every sample of a batch was unreadable (first: {bad[0] if bad else '?'})")
        batch = self._stack(good)
        extended: dict[str, Batch] = {}
        for role, group in sorted(groups.items()):
            if not role:
                continue
            rows = [it for it, k in zip(group, keep) if k] if len(group) == len(anchors) else [it for it in group if not isinstance(it[0], BadSample)]
            if rows:
                extended[self.names[role - 1]] = self._stack(rows)
        if extended:
            batch.extras["extended"] = extended
        if bad:
            batch.extras["bad_samples"] = bad
        return batch


class BadSampleLog:
    """Counts the files skipped under ``data.on_bad_sample=skip`` and reports them per epoch."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add(self, batch: Batch) -> None:
        self.names.extend(batch.extras.pop("bad_samples", []))

    def report(self, where: str) -> int:
        """Log the epoch's skipped files (the first ten named) and reset; returns the count."""
        n = len(self.names)
        if n:
            shown = ", ".join(repr(x) for x in sorted(set(self.names))[:10])
            log.warning("%s: skipped %d unreadable sample(s) (data.on_bad_sample=skip): %s", where, n, shown)
        self.names = []
        return n


class WorkerInit:
    """Seeds a worker's Python, NumPy and torch generators from ``(seed, rank, worker id)`` and keeps
    it to one intra-op thread (the workers share the machine's cores)."""

    def __init__(self, seed: int, rank: int) -> None:
        self.seed, self.rank = int(seed), int(rank)

    def __call__(self, worker_id: int) -> None:
        s = int(np.random.SeedSequence([self.seed % (2**63), self.rank, worker_id]).generate_state(1, np.uint64)[0]) % (2**63)
        random.seed(s)
        np.random.seed(s % (2**32))
        torch.manual_seed(s)
        torch.set_num_threads(1)


def _loader(dataset: Dataset, batch_sampler: BatchKeys, collate: Collate, data_cfg: Any, workers: int, device: torch.device | None, seed: int, rank: int, persistent: bool) -> DataLoader:
    pin = data_cfg.pin_memory if data_cfg.pin_memory is not None else (device is not None and device.type == "cuda")
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(
            persistent_workers=persistent,
            prefetch_factor=data_cfg.prefetch_factor,
            worker_init_fn=WorkerInit(seed, rank),
        )
    return DataLoader(
        KeyedDataset(dataset),
        batch_sampler=batch_sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=bool(pin),
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


def train_loader(
    dataset: Dataset,
    sampler: Sampler[int],
    batch_size: int,
    data_cfg: Any,
    *,
    seed: int,
    device: torch.device | None = None,
    rank: int = 0,
    world_size: int = 1,
    extend: Extend | None = None,
    extend_names: Sequence[str] = (),
) -> DataLoader:
    """The training loader over ``dataset`` in ``sampler``'s order (see the module docstring).

    Lazily loaded datasets get ``seed`` as their augmentation seed.
    """
    if is_lazy(dataset) and hasattr(dataset, "seed"):
        dataset.seed = int(seed)  # type: ignore[attr-defined]
    workers = resolve_num_workers(data_cfg, dataset, world_size)
    keys = BatchKeys(
        sampler, batch_size, drop_last=bool(getattr(sampler, "drop_last", True)),
        extend=extend if extend_names else None, names=extend_names, seed=seed, rank=rank,
        dataset_size=len(dataset),  # type: ignore[arg-type]
    )
    collate = Collate(extend_names, channels_last=data_cfg.channels_last)
    return _loader(dataset, keys, collate, data_cfg, workers, device, seed, rank, persistent=data_cfg.persistent_workers and workers > 0)


def eval_loader(
    dataset: Dataset, batch_size: int, data_cfg: Any | None = None, *, device: torch.device | None = None, world_size: int = 1, indices: Sequence[int] | None = None
) -> DataLoader:
    """An evaluation loader in dataset order (no extra indices, workers only for lazy datasets).

    ``indices``: only these rows, in this order (a process's share under sharded evaluation).
    """
    from types import SimpleNamespace

    cfg = data_cfg if data_cfg is not None else SimpleNamespace(num_workers=0, pin_memory=False, prefetch_factor=2, channels_last=False)
    workers = resolve_num_workers(cfg, dataset, world_size)
    keys = BatchKeys(range(len(dataset)) if indices is None else list(indices), batch_size, drop_last=False)  # type: ignore[arg-type]
    return _loader(dataset, keys, Collate((), channels_last=cfg.channels_last), cfg, workers, device, 0, 0, persistent=False)
