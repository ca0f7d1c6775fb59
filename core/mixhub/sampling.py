"""Training batches: ``collate`` into ``Batch`` and ``EpochSampler``, the data order of a run."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .batch import Batch

__all__ = ["collate", "EpochSampler"]


def collate(items: list[tuple[Tensor, Tensor, int]]) -> Batch:
    xs, ys, idx = zip(*items)
    return Batch(inputs=torch.stack(xs), targets=torch.stack([torch.as_tensor(y) for y in ys]), index=torch.as_tensor(idx, dtype=torch.long))


class EpochSampler(torch.utils.data.Sampler[int]):
    """Data order from (seed, epoch) alone, sharded per rank; ``skip`` batches for mid-epoch resume."""

    def __init__(self, n: int, seed: int, shuffle: str, batch_size: int, drop_last: bool, rank: int = 0, world: int = 1) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.batch_size, self.drop_last = batch_size, drop_last
        self.rank, self.world = rank, world
        self.epoch = 0
        self.skip_batches = 0

    def order(self) -> Tensor:
        if self.shuffle == "none":
            perm = torch.arange(self.n)
        else:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + (self.epoch if self.shuffle == "epoch" else 0))
            perm = torch.randperm(self.n, generator=g)
        if self.world > 1:
            usable = (self.n // self.world) * self.world
            perm = perm[:usable][self.rank :: self.world]
        return perm

    def __iter__(self) -> Iterator[int]:
        perm = self.order()
        start = self.skip_batches * self.batch_size
        return iter(perm[start:].tolist())

    def __len__(self) -> int:
        return max(0, len(self.order()) - self.skip_batches * self.batch_size)
