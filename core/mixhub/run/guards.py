"""The guards part of a ``Run`` (``run.guards``): batch checks, non-finite messages, stop signals."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import distributed as D
from ..batch import Batch
from ..checks import DeviceChecks
from ..config import RunConfig
from ..data import DataBundle
from ..distributed import DistContext
from ..errors import DataError, MixhubError
from ..state import State
from .startup import main_thread

__all__ = ["Guards", "NonFiniteError", "RunInterrupted"]

log = logging.getLogger("mixhub")


class RunInterrupted(MixhubError):
    """SIGTERM/SIGINT: the current step finished, a checkpoint was written, the run stopped."""


class NonFiniteError(MixhubError):
    """A non-finite loss (or input) stopped the run."""


def _raise_later(kind: type[Exception], message: Callable[..., str], *args: Any, suffix: str = "") -> Callable[[], Exception]:
    """An error builder for ``DeviceChecks``: the message (which may read device values) is made
    only when the check failed."""
    return lambda: kind(message(*args) + suffix)


class Guards:
    """What stops a bad batch or a signalled run (``run.guards``).

    Interface:

    * ``check_batch(batch) -> bool``: shape, range and finiteness read on the host now; ``False``:
      skip the batch (``train.nan_policy=skip``), else a ``NonFiniteError``/``DataError``;
    * ``guard_batch(batch, checks) -> Batch``: the same checks as failure flags in ``checks`` (no
      host read), out-of-range labels clamped meanwhile;
    * ``non_finite_message(what, batch)``, ``step_message(what, index, step, epoch)``: the text of a
      non-finite error (step, epoch, dataset indices, the last good checkpoint);
    * ``signals()``: a context in which SIGTERM/SIGINT set ``stop_signal`` instead of killing the
      process; ``stop_requested``: whether the run should checkpoint and stop after this step.

    It reads ``config`` (``train.nan_policy``, ``train.sync_every``, ``data.name``), the data's
    ``bundle`` (classes, input shape), the ``state`` (step, epoch), the process group (``dist``)
    and ``last_checkpoint`` (named in the messages).
    """

    def __init__(self, config: RunConfig, bundle: DataBundle, state: State, dist: DistContext, last_checkpoint: Path) -> None:
        self.config = config
        self.bundle = bundle
        self.state = state
        self.dist = dist
        self.last_checkpoint = last_checkpoint
        #: the signal that asked the run to stop (``None``: none yet)
        self.stop_signal: int | None = None
        self._stop_checked_at = 0

    def check_batch(self, batch: Batch) -> bool:
        """Shape, range and finiteness checks read on the host now; returns False when the batch
        must be skipped. (``guard_batch`` is the step's version, without a host read.)"""
        self.check_shape(batch)
        bad = None
        if not torch.isfinite(batch.inputs).all():
            bad = "inputs"
        elif batch.targets.is_floating_point() and not torch.isfinite(batch.targets).all():
            bad = "targets"
        if bad is not None:
            rows = (~torch.isfinite(getattr(batch, bad).reshape(batch.size, -1))).any(1)
            msg = self._bad_rows_message(f"non-finite {bad} in the training batch", batch.index, rows, self.state.step)
            if self.config.train.nan_policy == "skip":
                log.warning("%s; skipping the batch (train.nan_policy=skip)", msg)
                return False
            raise NonFiniteError(msg + "; set train.nan_policy=skip to drop such batches")
        if self.bundle.num_classes and not batch.targets.is_floating_point():
            t = batch.targets
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.bundle.num_classes):
                raise DataError(self._label_message(batch.index, (t < 0) | (t >= self.bundle.num_classes)))
        return True

    def guard_batch(self, batch: Batch, checks: DeviceChecks) -> Batch:
        """The batch checks of a step that does not wait for the device: the shape on the host, the
        values as failure flags in ``checks`` (read every ``train.check_every`` steps; the error then
        names the step and the dataset indices, as ``check_batch``'s). Out-of-range labels are
        clamped on the device until then, so no kernel indexes out of bounds meanwhile."""
        self.check_shape(batch)
        step, index = self.state.step, batch.index
        for bad, values in (("inputs", batch.inputs), ("targets", batch.targets if batch.targets.is_floating_point() else None)):
            if values is None:
                continue
            rows = ~torch.isfinite(values.reshape(batch.size, -1)).all(1)
            checks.fail_if(rows, _raise_later(NonFiniteError, self._bad_rows_message, f"non-finite {bad} in the training batch", index, rows, step,
                                              suffix="; set train.nan_policy=skip to drop such batches"), step)
        classes = self.bundle.num_classes
        if classes and not batch.targets.is_floating_point() and batch.targets.numel():
            t = batch.targets
            out = (t < 0) | (t >= classes)
            checks.fail_if(out, _raise_later(DataError, lambda idx, rows: self._label_message(idx, rows), index, out), step)
            batch = batch.replace(targets=t.clamp(0, classes - 1))
        return batch

    def check_shape(self, batch: Batch) -> None:
        shape = tuple(batch.inputs.shape[1:])
        expected = tuple(self.bundle.input_shape)
        if shape != expected:
            raise DataError(f"batch of dataset {self.config.data.name!r} has input shape {shape}, the model expects {expected}")

    def _bad_rows_message(self, what: str, index: Tensor, rows: Tensor, step: int) -> str:
        return f"{what} at dataset indices {index[rows].tolist()[:10]} (step {step})"

    def _label_message(self, index: Tensor, rows: Tensor) -> str:
        return f"labels out of range [0, {self.bundle.num_classes}) at dataset indices {index[rows].tolist()[:10]}"

    def non_finite_message(self, what: str, batch: Batch, step: int | None = None, epoch: int | None = None) -> str:
        return self.step_message(what, batch.index, self.state.step if step is None else step, self.state.epoch if epoch is None else epoch)

    def step_message(self, what: str, index: Tensor, step: int, epoch: int) -> str:
        last = self.last_checkpoint
        return (
            f"{what} at step {step} (epoch {epoch}), batch dataset indices "
            f"{index.tolist()[:16]}; last good checkpoint: {str(last) if last.exists() else 'none yet'}"
        )

    @property
    def stop_requested(self) -> bool:
        """True once SIGTERM/SIGINT arrived: finish the step, checkpoint, raise ``RunInterrupted``.

        With several processes they agree every ``train.sync_every`` optimizer steps (one small
        all-reduce then, none in between), so all of them stop after the same step.
        """
        if not self.dist.enabled:
            return self.stop_signal is not None
        if self.state.step - self._stop_checked_at < self.config.train.sync_every:
            return False
        self._stop_checked_at = self.state.step
        return D.any_rank(self.stop_signal is not None, self.dist)

    @contextmanager
    def signals(self) -> Iterator[None]:
        if not main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            self.stop_signal = signum

        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)
