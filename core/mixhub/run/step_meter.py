"""``StepMeter``: a run's step scalars summed on the device between log steps, read on the host
at log steps (one transfer each); ``grad_norm`` and ``group_lrs``, what a step record adds.

Log steps: every ``train.log_every`` steps, the first step, the last, and often enough that a step
line comes at least every ``train.log_seconds`` (30 s) of training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["StepMeter", "grad_norm", "group_lrs"]


def grad_norm(parameters: Any) -> Tensor | None:
    """The global L2 norm of the gradients of ``parameters``, as a device tensor (no host read).

    Uses ``torch.nn.utils.get_total_norm`` (the norm ``clip_grad_norm_`` computes). ``None``
    when no parameter has a gradient.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    return torch.nn.utils.get_total_norm(grads, 2.0)


class StepMeter:
    """Per-step scalars summed on the device between log steps; read on the host at log steps.

    The protocol calls ``data_wait(seconds)`` with the time it waited for each batch,
    ``add(scalars, images)`` after each optimizer step, and, when ``due(step)``,
    ``flush(step, optimizer, grad_norm)`` which returns the step record's scalars: window means
    of every added scalar, the learning rate of each group, images/s, data-wait and step time,
    the gradient norm of the log step and the ETA. ``flush`` reads all device values with one
    transfer. Under DDP, ``reduce`` (an all-reduce mean over processes of a 1-D tensor, called on
    every process at the same log steps) makes the window means those of the global batch.

    Log steps: every ``log_every`` steps, the last step, the first step the meter sees, and
    after each flush the step that ``log_seconds`` of the window's mean step time away (so a step
    line comes at least about every ``log_seconds``, however large ``log_every`` is;
    ``log_seconds=0``: only ``log_every`` and the last step). The timed
    step is computed from the window's step time (averaged over processes under DDP), so every
    process picks the same log steps.
    """

    def __init__(
        self,
        log_every: int,
        max_steps: int,
        clock: Callable[[], float] = time.perf_counter,
        reduce: Callable[[Tensor], Tensor] | None = None,
        log_seconds: float = 30.0,
    ) -> None:
        if log_every < 1:
            raise ValueError(f"train.log_every must be >= 1, got {log_every}")
        self.log_every = log_every
        self.max_steps = max_steps
        self.clock = clock
        self.reduce = reduce
        self.log_seconds = log_seconds
        #: the next timed log step; 0: the first step the meter sees is a log step (never, when log_seconds is 0)
        self._next_timed: float = 0 if log_seconds > 0 else math.inf
        self.also_value: float | None = None
        self.reset()

    def reset(self) -> None:
        """Start a new window (also after a pause such as an evaluation pass)."""
        self._sums: dict[str, Tensor | float] = {}
        self._steps = 0
        self._images = 0
        self._wait = 0.0
        self._t0 = self.clock()

    def data_wait(self, seconds: float) -> None:
        self._wait += seconds

    def add(self, scalars: Mapping[str, Tensor | float], images: int) -> None:
        for k, v in scalars.items():
            v = v.detach() if isinstance(v, Tensor) else float(v)
            prev = self._sums.get(k)
            self._sums[k] = v if prev is None else prev + v
        self._steps += 1
        self._images += images

    def is_log_step(self, step: int) -> bool:
        """Whether ``step`` (steps done) is a log step: every ``log_every``, the run's last, the
        first, and the timed one (see the class docstring)."""
        return step % self.log_every == 0 or step == self.max_steps or step >= self._next_timed

    def due(self, step: int) -> bool:
        """A log step with steps in the window."""
        return self._steps > 0 and self.is_log_step(step)

    def flush(
        self, step: int, optimizer: torch.optim.Optimizer | None = None, grad_norm: Tensor | None = None, also: Tensor | None = None
    ) -> dict[str, float]:
        """The record's scalars (see the class docstring); ``also``, a device scalar the caller needs
        on the host (e.g. the step checks' failure flag), is read in the same transfer into ``also_value``."""
        keys = sorted(self._sums)
        values = [self._sums[k] for k in keys]
        elapsed = max(self.clock() - self._t0, 1e-9)
        if self.reduce is not None:  # the window's time joins the reduce: every process times alike
            device = next((v.device for v in values if isinstance(v, Tensor)), torch.device("cpu"))
            stacked = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in [*values, elapsed]])
            values = list(self.reduce(stacked).unbind())
        if grad_norm is not None:
            values.append(grad_norm)
        if also is not None:
            values.append(also)
        host = _to_host(values)
        self.also_value = host.pop() if also is not None else None
        if self.reduce is not None:
            elapsed = max(host.pop(len(keys)), 1e-9)
        n = max(self._steps, 1)
        if self.log_seconds > 0:
            self._next_timed = step + max(1, int(self.log_seconds * n / elapsed))
        out = {k: v / n for k, v in zip(keys, host)}
        if grad_norm is not None:
            out["grad_norm"] = host[-1]
        if optimizer is not None:
            out.update(group_lrs(optimizer))
        out["images_per_s"] = self._images / elapsed
        out["step_time_s"] = elapsed / n
        out["data_wait_s"] = self._wait / n
        out["eta_s"] = max(self.max_steps - step, 0) * elapsed / n
        self.reset()
        return out


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``lr`` for one parameter group; with several, ``lr/<name>`` for each (its ``name``, else
    ``group<i>``) and no bare ``lr``, so that no metric name is also the folder of others."""
    groups = optimizer.param_groups
    if len(groups) == 1:
        return {"lr": float(groups[0]["lr"])}
    out: dict[str, float] = {}
    for i, g in enumerate(groups):
        name = str(g.get("name") or f"group{i}").replace("/", "_")
        if f"lr/{name}" in out:
            name = f"{name}_{i}"
        out[f"lr/{name}"] = float(g["lr"])
    return out


def _to_host(values: list[Tensor | float]) -> list[float]:
    """Device scalars and floats to floats, with one transfer per device."""
    out: list[float] = [0.0] * len(values)
    by_device: dict[torch.device, list[int]] = {}
    for i, v in enumerate(values):
        if isinstance(v, Tensor):
            by_device.setdefault(v.device, []).append(i)
        else:
            out[i] = float(v)
    for idx in by_device.values():
        stacked = torch.stack([values[i].float().reshape(()) for i in idx]).cpu().tolist()  # type: ignore[union-attr]
        for i, v in zip(idx, stacked):
            out[i] = float(v)
    return out
