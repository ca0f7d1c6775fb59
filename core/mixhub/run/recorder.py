"""The records part of a run: what a run logs, where it is written, and who receives it.

Every record a run produces goes through one ``RunLog``: it writes the run folder's metric
files (``metrics.jsonl`` for epoch records, ``steps.jsonl`` for step records), feeds the console,
and hands the record to every active plugin's ``mixhub_log(record, state)`` (trackers such as
TensorBoard, MLflow or W&B are plugins implementing that hook). Only the main process logs.

Record kinds, in the order a run emits them:

* ``config``: once at the start: ``data["config"]`` (the resolved config, less the sections of
  protocols the run does not use, see ``used_config``), ``data["plugins"]`` (active plugins and
  their versions), ``data["resumed"]``, ``data["run_dir"]``.
* ``step``: every ``train.log_every`` optimizer steps: the window's mean ``loss``,
  ``loss_main`` and aux losses, ``lr`` (one parameter group) or ``lr/<group>`` for each group
  (several groups), ``images_per_s``, ``data_wait_s`` (mean seconds per step waiting for data),
  ``step_time_s``, ``grad_norm`` (of the log step), ``eta_s`` and plugin scalars (``state.log``).
* ``epoch``: per epoch (or continual task) and split: the train means, validation metrics and
  the final ``final_<split>`` metrics, exactly as written to ``metrics.jsonl``.

Epoch numbers in every file and record are 1-based (``"epoch": 1`` is the first epoch; the final
records carry the last epoch); ``State.epoch`` counts the epochs done (0-based index of the epoch in
progress), so records made during an epoch say ``state.epoch + 1``.
* ``summary``: once, the run's summary (``data``) and its numbers flattened (``scalars``).
* ``artifact``: files the run wrote that are worth keeping (plots, ``export.pt``, ``summary.json``).

``StepMeter`` (``mixhub.run.step_meter``) accumulates the step scalars on the device and reads
them on the host only at log steps. ``RunRecords`` is the part a ``Run`` holds (``run.records``):
the ``RunLog``, the ``StepMeter``, the epoch's ``EpochTally`` and the step clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..records import RECORD_KINDS, LogRecord, TrackInfo, name_clash
from ..tracking import track_info, used_config
from .folder import EpochTally, to_jsonable
from .step_meter import StepMeter

if TYPE_CHECKING:
    import torch

    from ..checks import DeviceChecks
    from ..plugins import PluginHost
    from ..state import State
    from .folder import RunFolder

__all__ = ["LogRecord", "RECORD_KINDS", "RunLog", "RunRecords", "TrackInfo", "track_info", "flatten_numbers", "name_clash", "used_config"]

#: Keys of an epoch record that describe it rather than measure something.
_META_KEYS = ("epoch", "split", "step", "task")


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
    def config(self, config: Mapping[str, Any], plugins: Mapping[str, str], resumed: bool = False, protocol: str | None = None) -> LogRecord:
        """The config record; with ``protocol``, the config less other protocols' sections (``used_config``)."""
        if protocol is not None:
            config = used_config(config, protocol)
        run_dir = self.folder.path if self.folder is not None and self.folder.enabled else None
        record = LogRecord(
            "config",
            step=self.state.step,
            epoch=self.state.epoch + 1,
            data={"config": dict(config), "plugins": dict(plugins), "resumed": resumed, "run_dir": run_dir},
        )
        self.emit(record)
        return record

    def step(self, scalars: Mapping[str, float]) -> LogRecord:
        """A step record (``scalars`` from ``StepMeter.flush`` plus anything else to log)."""
        record = LogRecord("step", step=self.state.step, epoch=self.state.epoch + 1, scalars=dict(scalars))
        if self.writes:
            assert self.folder is not None
            self.folder.log_step({"step": record.step, "epoch": record.epoch, **dict(scalars)})
        if self.enabled and self.console is not None:
            continual = self.state.task_kind == "continual"
            epochs = None if continual else getattr(getattr(self.state.config, "train", None), "epochs", None)
            self.console.step(record, self.state.max_steps, epochs, "task" if continual else "epoch")
        self.emit(record)
        return record

    def epoch(self, values: Mapping[str, Any]) -> LogRecord:
        """An epoch record: written to ``metrics.jsonl`` as given (``epoch`` 1-based), dispatched with its numbers."""
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
            epoch=int(values["epoch"]) if "epoch" in values else self.state.epoch + 1,
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


class RunRecords:
    """The records part of a ``Run`` (``run.records``): it holds the ``RunLog`` (``log``), the
    ``StepMeter`` (``meter``), the epoch's ``EpochTally`` (``tally``) and the step clock.

    Interface (what the run's step and the protocols call):

    * ``restart()``: a new step window with no data wait pending (the start of ``fit``);
    * ``step_starts()``: a step begins; the time since the last step ended is data wait;
    * ``step_done(logs, images, norm)``: the step's logs (device tensors) join the window; at a
      log step the window goes out as one step record (``RunLog.step``);
    * ``pause_clock()``: after work outside the step loop (an evaluation), so the next step's wait
      is not counted as data wait.

    It reads the step's device-side checks (``checks``) every ``train.check_every`` steps and at
    the last, at a log step in the step record's own transfer (one read per log step).
    """

    def __init__(
        self,
        log: RunLog,
        meter: StepMeter,
        checks: DeviceChecks,
        optimizer: torch.optim.Optimizer,
        state: State,
        console: Any = None,
        world_size: int = 1,
    ) -> None:
        self.log = log
        self.meter = meter
        #: the epoch's step-log sums (device tensors), count and time: in every checkpoint, so a
        #: resumed epoch logs its means over all its steps, bitwise the uninterrupted run's
        self.tally = EpochTally()
        self.checks = checks
        self.optimizer = optimizer
        self.state = state
        self.console = console
        self.world_size = world_size
        self._step_end: float | None = None  # when the last step ended (data-wait time of the next)

    def restart(self) -> None:
        self.meter.reset()
        self._step_end = None

    def step_starts(self) -> None:
        if self._step_end is not None:
            self.meter.data_wait(time.perf_counter() - self._step_end)

    def step_done(self, logs: dict[str, Tensor], images: int, norm: Tensor | None) -> None:
        """The per-step record: the step's logs join the window, and every ``train.log_every``
        steps (and at the last) the window's means, lr per group, images/s, data wait and the
        gradient norm go out as one step record."""
        step = self.state.step
        self.meter.add(logs, images=images * self.world_size)
        checks = self.checks
        check_due = checks.due(step) or (len(checks) > 0 and step >= self.meter.max_steps)
        if self.meter.due(step):
            failed = checks.any_failed() if check_due else None
            record = self.meter.flush(step, self.optimizer, norm, also=failed)
            if failed is not None:
                checks.verify(failed=bool(self.meter.also_value))
            self.log.step(record)
            if "loss" in record and self.console is not None:
                self.console.postfix(loss=f"{record['loss']:.4f}")
        elif check_due:
            checks.verify()
        self._step_end = time.perf_counter()

    def pause_clock(self) -> None:
        self._step_end = None
