"""What a run prints: progress bars on a terminal, plain lines everywhere else.

* On a terminal (and not quiet): tqdm bars (epochs, batches) with the last loss.
* In a pipe or a file (and not quiet): no bar and no carriage return; the start lines, one line
  per step record (the first step, every ``train.log_every`` steps and at least every 30 s) with
  step, epoch, loss, lr, images/s and ETA, and one per epoch.

Epochs are counted from 1 on every line (``epoch 1/3`` is the first of three), as on the plots.
* Quiet: the same lines through the ``mixhub`` logger at INFO (shown by ``mixhub train --quiet``,
  silent in library use unless logging is configured).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

__all__ = ["Console", "format_step", "format_duration"]

log = logging.getLogger("mixhub")
T = TypeVar("T")


def format_duration(seconds: float) -> str:
    """``3725`` -> ``1:02:05``; ``65`` -> ``0:01:05``."""
    s = max(int(round(seconds)), 0)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_step(record: Any, max_steps: int, epochs: int | None = None, unit: str = "epoch") -> str:
    """One plain line for a step record: step, epoch (1-based, ``/epochs`` when given; ``unit``
    ``task`` for a task stream), loss, lr (the first parameter group's), images/s, data wait, ETA."""
    sc = record.scalars
    width = len(str(max_steps)) if max_steps else 0
    parts = [f"step {record.step:>{width}d}/{max_steps}" if max_steps else f"step {record.step}"]
    if record.epoch is not None:
        parts.append(f"{unit} {record.epoch}" + (f"/{epochs}" if epochs else ""))
    if "loss" in sc:
        parts.append(f"loss {sc['loss']:.4f}")
    lr = sc.get("lr", next((v for k, v in sc.items() if k.startswith("lr/")), None))
    if lr is not None:
        parts.append(f"lr {lr:.3e}")
    if "grad_norm" in sc:
        parts.append(f"grad {sc['grad_norm']:.3g}")
    if "images_per_s" in sc:
        parts.append(f"img/s {sc['images_per_s']:.0f}")
    if "data_wait_s" in sc:
        parts.append(f"data {1000 * sc['data_wait_s']:.1f}ms")
    if "eta_s" in sc:
        parts.append(f"eta {format_duration(sc['eta_s'])}")
    return "  ".join(parts)


class Console:
    """The run's console output; ``mode`` is ``"bars"``, ``"lines"`` or ``"log"`` (quiet).

    ``stream`` defaults to ``sys.stderr`` (where tqdm draws); the mode is chosen from whether it
    is a terminal. Only the main process (``enabled``) prints.
    """

    def __init__(self, quiet: bool = True, enabled: bool = True, stream: IO[str] | None = None) -> None:
        self._stream = stream
        self.enabled = enabled
        if quiet:
            self.mode = "log"
        else:
            self.mode = "bars" if _isatty(self.stream) else "lines"
        self._bars: list[Any] = []

    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stderr

    def progress(self, iterable: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
        """A tqdm bar over ``iterable`` on a terminal; the plain iterable otherwise."""
        if self.mode != "bars" or not self.enabled:
            yield from iterable
            return
        from tqdm.auto import tqdm

        bar = tqdm(iterable, total=total, desc=desc, leave=False, file=self.stream)
        self._bars.append(bar)
        try:
            yield from bar
        finally:
            self._bars.remove(bar)
            bar.close()

    def postfix(self, **values: Any) -> None:
        """Values shown next to the innermost bar (terminal only)."""
        if self._bars:
            self._bars[-1].set_postfix(**values, refresh=False)

    def step(self, record: Any, max_steps: int, epochs: int | None = None, unit: str = "epoch") -> None:
        if self.mode == "bars" or not self.enabled:
            if self._bars and "loss" in record.scalars:
                self.postfix(loss=f"{record.scalars['loss']:.4f}")
            return
        self.message(format_step(record, max_steps, epochs, unit))

    def message(self, text: str) -> None:
        """A line that stays: written above the bars, printed in a pipe, logged when quiet."""
        if not self.enabled:
            return
        if self.mode == "log":
            log.info(text)
        elif self.mode == "bars" and self._bars:
            from tqdm.auto import tqdm

            tqdm.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
