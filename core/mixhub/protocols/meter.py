"""``LogMeter``: step logs summed where they were computed, read on the host only on demand."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["LogMeter"]


class LogMeter:
    """Running sums of the step logs (detached tensors) and how many steps gave each key.

    ``add`` queues additions on the tensors' devices (no host sync); ``means`` reads them,
    averaged over processes when ``world_size > 1``.
    """

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.steps = 0

    def add(self, logs: dict[str, Tensor]) -> None:
        self.steps += 1
        for k, v in logs.items():
            v = v.detach().float()
            if k in self.sums:
                self.sums[k] = self.sums[k] + v
                self.counts[k] += 1
            else:
                self.sums[k] = v.clone()
                self.counts[k] = 1

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()
        self.steps = 0

    def means(self, world_size: int = 1, device: Any = None) -> dict[str, float]:
        """Mean of each key over the steps that logged it (and over processes)."""
        keys = sorted(self.sums)
        if world_size > 1:
            import torch.distributed as dist

            vals = [self.sums[k].to(device) for k in keys] + [torch.tensor(float(self.counts[k]), device=device) for k in keys]
            t = torch.stack(vals).double() if vals else torch.zeros(0, dtype=torch.float64, device=device)
            dist.all_reduce(t)
            n = len(keys)
            return {k: float(t[i]) / max(float(t[n + i]), 1.0) for i, k in enumerate(keys)}
        if not keys:
            return {}
        host = torch.stack([self.sums[k].cpu() for k in keys]).tolist()  # one read per device
        return {k: v / self.counts[k] for k, v in zip(keys, host)}
