"""``DeviceChecks``: checks whose values live on the device, read on the host every few steps.

A check such as "every lam lies in [0, 1]" or "the loss is finite" needs a device value; reading
it on the host at once (``if not torch.isfinite(loss):``) stalls the host until the device has
caught up, on every step. Instead the step records a 0-d bool *failure flag* on the device
together with a function that builds the error, and the loop reads all pending flags in one
transfer every ``train.check_every`` steps (``verify``), or hands the combined flag to a read it
makes anyway (the step record's, at log steps). A failure raises the error of the earliest failed
check, so a bad batch or plan still stops the run with the same message, at most
``check_every`` steps later; the error builder may read device values (only on that path).

Checks that need no device value (shapes, dtypes, the number of sources) stay on the host and
raise at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DeviceChecks"]


@dataclass
class _Pending:
    failed: Tensor  # 0-d bool on the device
    error: Callable[[], BaseException]
    step: int


class DeviceChecks:
    """Pending device-side checks of a training loop (see the module docstring).

    Args:
        every: read the flags every ``every`` steps (``due(step)``); 1 reads them each step.
    """

    def __init__(self, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"train.check_every must be >= 1, got {every}")
        self.every = every
        self._pending: list[_Pending] = []

    def __len__(self) -> int:
        return len(self._pending)

    def fail_if(self, failed: Tensor, error: Callable[[], BaseException], step: int = 0) -> None:
        """Record a failure flag (any bool tensor; failed where any element is true)."""
        flag = failed if failed.dim() == 0 else failed.any()
        self._pending.append(_Pending(flag.detach(), error, step))

    def due(self, step: int) -> bool:
        """Whether ``step`` (steps done) is a step at which the pending flags are read."""
        return bool(self._pending) and step % self.every == 0

    def any_failed(self) -> Tensor | None:
        """The pending flags combined into one 0-d bool tensor (no read); ``None`` when none is pending."""
        if not self._pending:
            return None
        if len(self._pending) == 1:
            return self._pending[0].failed
        return torch.stack([p.failed.to(self._pending[0].failed.device) for p in self._pending]).any()

    def verify(self, failed: bool | None = None) -> None:
        """Read the pending flags (one transfer, unless ``failed`` is the already-read value of
        ``any_failed()``), forget them, and raise the earliest failure's error."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        if failed is None:
            combined = torch.stack([p.failed.to(pending[0].failed.device) for p in pending]).any() if len(pending) > 1 else pending[0].failed
            failed = bool(combined)
        if not failed:
            return
        for p in pending:  # the error path: reading each flag is fine here
            if bool(p.failed):
                raise p.error()

    def clear(self) -> None:
        self._pending.clear()
