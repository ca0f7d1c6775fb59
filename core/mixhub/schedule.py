"""Per-step learning-rate schedule with per-group floors.

Every parameter group follows the same shape (linear warm-up, then cosine, step or multi-step decay)
from its own base ``lr`` down to its own ``min_lr`` (the run's ``train.min_lr`` unless the
group sets one), so plugin modules (e.g. a mask generator) can keep their own floor. A group's ``lr_scale`` (set
by timm's ``param_groups_layer_decay`` for ``train.layer_decay``) multiplies the scheduled value,
floor included, as timm's own schedulers do.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["GroupScheduler"]


class GroupScheduler:
    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        *,
        kind: str = "cosine",
        warmup_steps: int = 0,
        min_lr: float = 0.0,
        step_every: int = 1,
        step_rate: float = 0.1,
        milestones: list[int] | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.total_steps = max(1, total_steps)
        self.kind = kind
        self.warmup_steps = warmup_steps
        self.step_every = max(1, step_every)
        self.step_rate = step_rate
        self.milestones = sorted(milestones or [])
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
            g.setdefault("min_lr", min_lr)
        self.last_step = 0
        self.step(0)

    def lr_at(self, step: int, base: float, floor: float) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return floor + (base - floor) * (step + 1) / (self.warmup_steps + 1)
        if self.kind == "none":
            return base
        if self.kind == "step":
            return max(floor, base * self.step_rate ** (step // self.step_every))
        if self.kind == "multistep":
            return max(floor, base * self.step_rate ** sum(step >= m for m in self.milestones))
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * t))

    def curve(self, steps: int) -> list[list[float]]:
        """Each group's learning rate for the optimizer steps ``0 .. steps - 1`` (what ``step``
        sets), in ``optimizer.param_groups`` order: the schedule a run follows, step by step."""
        return [[self.lr_at(s, g["initial_lr"], g["min_lr"]) * g.get("lr_scale", 1.0) for s in range(steps)] for g in self.optimizer.param_groups]

    def step(self, step: int) -> None:
        """Set every group's lr for the upcoming optimizer step ``step`` (0-based)."""
        self.last_step = step
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr_at(step, g["initial_lr"], g["min_lr"]) * g.get("lr_scale", 1.0)

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.step(int(sd["last_step"]))
