"""The guards of a ``Run``: batch checks, non-finite messages, stop signals and the run's end."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from . import distributed as D
from .batch import Batch
from .errors import DataError, MixhubError
from .runsetup import main_thread

__all__ = ["GuardMixin", "NonFiniteError", "RunInterrupted"]

log = logging.getLogger("mixhub")


class RunInterrupted(MixhubError):
    """SIGTERM/SIGINT: the current step finished, a checkpoint was written, the run stopped."""


class NonFiniteError(MixhubError):
    """A non-finite loss (or input) stopped the run."""


class GuardMixin:
    """Guard methods of ``mixhub.run.Run`` (attributes are the run's)."""

    config: Any
    bundle: Any
    state: Any
    dist: Any
    folder: Any
    loader: Any
    _stop_signal: int | None
    _stop_checked_at: int

    def check_batch(self, batch: Batch) -> bool:
        """Shape, range and finiteness checks; returns False when the batch must be skipped."""
        shape = tuple(batch.inputs.shape[1:])
        expected = tuple(self.bundle.input_shape)
        if shape != expected:
            raise DataError(f"batch of dataset {self.config.data.name!r} has input shape {shape}, the model expects {expected}")
        bad = None
        if not torch.isfinite(batch.inputs).all():
            bad = "inputs"
        elif batch.targets.is_floating_point() and not torch.isfinite(batch.targets).all():
            bad = "targets"
        if bad is not None:
            rows = (~torch.isfinite(getattr(batch, bad).reshape(batch.size, -1))).any(1).nonzero().flatten()
            where = batch.index[rows].tolist()[:10]
            msg = f"non-finite {bad} in the training batch at dataset indices {where} (step {self.state.step})"
            if self.config.train.nan_policy == "skip":
                log.warning("%s; skipping the batch (train.nan_policy=skip)", msg)
                return False
            raise NonFiniteError(msg + "; set train.nan_policy=skip to drop such batches")
        if self.bundle.num_classes and not batch.targets.is_floating_point():
            t = batch.targets
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.bundle.num_classes):
                raise DataError(f"labels out of range [0, {self.bundle.num_classes}) at dataset indices {batch.index[(t < 0) | (t >= self.bundle.num_classes)].tolist()[:10]}")
        return True

    def _non_finite_message(self, what: str, batch: Batch) -> str:
        last = self.folder.checkpoints / "last.pt"
        return (
            f"{what} at step {self.state.step} (epoch {self.state.epoch}), batch dataset indices "
            f"{batch.index.tolist()[:16]}; last good checkpoint: {str(last) if last.exists() else 'none yet'}"
        )

    def close(self) -> None:
        """The run is over (or stopped): stop the training loader's worker processes, release the folder.

        Persistent workers are forked while the run folder is locked and share the lock file's
        descriptor; they live as long as the loader's iterator, which the run (often kept alive by
        a traceback after ``RunInterrupted``) holds. Shutting them down here lets a resumed run
        take the folder at once instead of when the garbage collector frees this run.
        """
        it = getattr(self.loader, "_iterator", None)
        shutdown = getattr(it, "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()
        if it is not None:
            self.loader._iterator = None
        self.folder.release()

    @property
    def stop_requested(self) -> bool:
        """True once SIGTERM/SIGINT arrived: finish the step, checkpoint, raise ``RunInterrupted``.

        With several processes they agree every ``train.sync_every`` optimizer steps (one small
        all-reduce then, none in between), so all of them stop after the same step.
        """
        if not self.dist.enabled:
            return self._stop_signal is not None
        if self.state.step - self._stop_checked_at < self.config.train.sync_every:
            return False
        self._stop_checked_at = self.state.step
        return D.any_rank(self._stop_signal is not None, self.dist)

    @contextmanager
    def _signals(self) -> Iterator[None]:
        if not main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            self._stop_signal = signum

        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)
