"""The run's records: what a run logs, where it is written, and who receives it.

Every record a run produces goes through one ``RunLog``: it writes the run folder's metric
files (``metrics.jsonl`` for epoch records, ``steps.jsonl`` for step records), feeds the console,
and hands the record to every active plugin's ``mixhub_log(record, state)`` (trackers such as
TensorBoard, MLflow or W&B are plugins implementing that hook). Only the main process logs.

Record kinds, in the order a run emits them:

* ``config``: once at the start: ``data["config"]`` (the resolved config), ``data["plugins"]``
  (active plugins and their versions), ``data["resumed"]``, ``data["run_dir"]``.
* ``step``: every ``train.log_every`` optimizer steps: the window's mean ``loss``,
  ``loss_main`` and aux losses, ``lr`` (and ``lr/<group>`` for each parameter group when there
  are several), ``images_per_s``, ``data_wait_s`` (mean seconds per step waiting for data),
  ``step_time_s``, ``grad_norm`` (of the log step), ``eta_s`` and plugin scalars (``state.log``).
* ``epoch``: per epoch (or continual task) and split: the train means, validation metrics and
  the final ``final_<split>`` metrics, exactly as written to ``metrics.jsonl``.
* ``summary``: once, the run's summary (``data``) and its numbers flattened (``scalars``).
* ``artifact``: files the run wrote that are worth keeping (plots, ``export.pt``, ``summary.json``).

``StepMeter`` accumulates the step scalars on the device and reads them on the host only at log
steps (one synchronisation per ``log_every`` steps).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .records import RECORD_KINDS, LogRecord, TrackInfo
from .runio import to_jsonable

if TYPE_CHECKING:
    from .plugins import PluginHost
    from .runio import RunFolder
    from .state import State

__all__ = ["LogRecord", "RECORD_KINDS", "RunLog", "StepMeter", "TrackInfo", "track_info", "grad_norm", "flatten_numbers"]

#: Keys of an epoch record that describe it rather than measure something.
_META_KEYS = ("epoch", "split", "step", "task")


def track_info(state: State, tool: str) -> TrackInfo:
    """The ``TrackInfo`` of ``state``'s run for the tracker ``tool`` (e.g. ``"mlflow"``)."""
    track = getattr(state.config, "track", None)
    run_dir = state.run_dir
    shared_dir = getattr(track, "dir", None)
    root = Path(shared_dir) / tool if shared_dir else (Path(run_dir) / tool if run_dir is not None else None)
    name = getattr(track, "name", None) or (Path(run_dir).name if run_dir is not None else "run")
    return TrackInfo(
        experiment=getattr(track, "experiment", None) or "mixhub",
        name=name,
        tags=dict(getattr(track, "tags", None) or {}),
        root=root,
        shared=bool(shared_dir),
        tool=tool,
    )


def flatten_numbers(tree: Mapping[str, Any], sep: str = "/", prefix: str = "") -> dict[str, float]:
    """``{"test": {"acc": .9}, "steps": 10}`` -> ``{"test/acc": .9, "steps": 10.0}`` (numbers only)."""
    out: dict[str, float] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_numbers(v, sep, key + sep))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


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
    """

    def __init__(
        self,
        log_every: int,
        max_steps: int,
        clock: Callable[[], float] = time.perf_counter,
        reduce: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if log_every < 1:
            raise ValueError(f"train.log_every must be >= 1, got {log_every}")
        self.log_every = log_every
        self.max_steps = max_steps
        self.clock = clock
        self.reduce = reduce
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
        """Whether ``step`` (steps done) is a log step: every ``log_every``, and the run's last."""
        return step % self.log_every == 0 or step == self.max_steps

    def due(self, step: int) -> bool:
        """A log step with steps in the window."""
        return self._steps > 0 and self.is_log_step(step)

    def flush(self, step: int, optimizer: torch.optim.Optimizer | None = None, grad_norm: Tensor | None = None) -> dict[str, float]:
        keys = sorted(self._sums)
        values = [self._sums[k] for k in keys]
        if self.reduce is not None and keys:
            device = next((v.device for v in values if isinstance(v, Tensor)), torch.device("cpu"))
            stacked = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values])
            values = list(self.reduce(stacked).unbind())
        if grad_norm is not None:
            values.append(grad_norm)
        host = _to_host(values)
        elapsed = max(self.clock() - self._t0, 1e-9)
        n = max(self._steps, 1)
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
    """``lr`` (first group) and, with several groups, ``lr/<name>`` for each (name or index)."""
    groups = optimizer.param_groups
    out = {"lr": float(groups[0]["lr"])}
    if len(groups) > 1:
        seen: set[str] = set()
        for i, g in enumerate(groups):
            name = str(g.get("name") or f"group{i}")
            if name in seen:
                name = f"{name}_{i}"
            seen.add(name)
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


class RunLog:
    """Dispatches a run's records: metric files, console, and every plugin's ``mixhub_log``.

    ``host`` may be ``None`` (records are then only written). Nothing is logged on processes
    other than the main one.
    """

    def __init__(self, folder: RunFolder | None, host: PluginHost | None, state: State, console: Any = None) -> None:
        self.folder = folder
        self.host = host
        self.state = state
        self.console = console
        self.enabled = state.is_main_process

    @property
    def writes(self) -> bool:
        return self.enabled and self.folder is not None and self.folder.enabled

    def emit(self, record: LogRecord) -> None:
        """Hand ``record`` to every active plugin's ``mixhub_log`` (main process only)."""
        if self.enabled and self.host is not None:
            self.host.collect("mixhub_log", record=record, state=self.state)

    # ------------------------------------------------------------------ kinds
    def config(self, config: Mapping[str, Any], plugins: Mapping[str, str], resumed: bool = False) -> LogRecord:
        run_dir = self.folder.path if self.folder is not None and self.folder.enabled else None
        record = LogRecord(
            "config",
            step=self.state.step,
            epoch=self.state.epoch,
            data={"config": dict(config), "plugins": dict(plugins), "resumed": resumed, "run_dir": run_dir},
        )
        self.emit(record)
        return record

    def step(self, scalars: Mapping[str, float]) -> LogRecord:
        """A step record (``scalars`` from ``StepMeter.flush`` plus anything else to log)."""
        record = LogRecord("step", step=self.state.step, epoch=self.state.epoch, scalars=dict(scalars))
        if self.writes:
            assert self.folder is not None
            self.folder.log_step({"step": record.step, "epoch": record.epoch, **dict(scalars)})
        if self.enabled and self.console is not None:
            self.console.step(record, self.state.max_steps)
        self.emit(record)
        return record

    def epoch(self, values: Mapping[str, Any]) -> LogRecord:
        """An epoch record: written to ``metrics.jsonl`` as given, dispatched with its numbers."""
        if self.writes:
            assert self.folder is not None
            self.folder.log(dict(values))
        scalars = {
            k: float(v)
            for k, v in to_jsonable(dict(values)).items()
            if k not in _META_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        record = LogRecord(
            "epoch",
            step=int(values.get("step", self.state.step)),
            epoch=int(values["epoch"]) if "epoch" in values else self.state.epoch,
            split=str(values.get("split", "train")),
            scalars=scalars,
        )
        self.emit(record)
        return record

    def summary(self, summary: Mapping[str, Any]) -> LogRecord:
        numbers = {k: v for k, v in summary.items() if k not in ("config", "plugins")}
        scalars = {k: v for k, v in flatten_numbers(numbers).items() if math.isfinite(v)}
        record = LogRecord("summary", step=self.state.step, epoch=self.state.epoch, scalars=scalars, data=dict(summary))
        self.emit(record)
        return record

    def artifact(self, path: str | Path | None, name: str | None = None) -> LogRecord | None:
        """An artifact record for an existing file (``None`` and missing files are skipped)."""
        if path is None or not Path(path).is_file():
            return None
        path = Path(path)
        record = LogRecord("artifact", step=self.state.step, epoch=self.state.epoch, path=path, name=name or path.name)
        self.emit(record)
        return record

    def steps(self) -> list[dict[str, Any]]:
        """The step records written so far (``steps.jsonl``)."""
        return self.folder.steps() if self.folder is not None else []


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (``[]`` when it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
