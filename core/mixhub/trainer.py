"""``Trainer`` and ``train()``: one run, dispatched to its protocol.

``Trainer`` is a ``mixhub.run.Run`` (data, model, ``Session``, optimizer and the parts it holds) whose
``fit()`` picks the protocol from the data: a task stream goes to
``mixhub.protocols.continual``, everything else to ``mixhub.protocols.supervised``; test-time
streams (``mixhub eval --stream``) are ``mixhub.protocols.testtime``. ``train(raw_config)`` is
the one-call API used by the CLI, the bench harness and tests.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .run import EpochSampler, NonFiniteError, Run, RunInterrupted, collate, seed_everything
from .run.plots import plot_curves
from .run.startup import start_lines
from .run.step_meter import group_lrs

__all__ = ["Trainer", "train", "RunResult", "RunInterrupted", "NonFiniteError", "seed_everything", "collate", "EpochSampler"]


@dataclass
class RunResult:
    summary: dict[str, Any]
    out: Path
    trainer: Trainer


class Trainer(Run):
    """One run: ``Run`` plus ``fit()``, which runs the protocol the data calls for."""

    def fit(self) -> dict[str, Any]:
        self.folder.write_config(self.config.to_dict())
        t0 = time.time()
        plugins = {n: p.version for n, p in self.host.plugins.items()}
        runlog = self.records.log
        with self.guards.signals(), self.host.wrap("mixhub_fit", state=self.state):
            runlog.config(self.config.to_dict(), plugins, resumed=self.checkpoints.resumed, protocol="continual" if self.bundle.task == "continual" else "supervised")
            for line in start_lines(self):
                self.console.message(line)
            self.records.restart()
            if self.bundle.task == "continual":
                from .protocols.continual import ContinualProtocol

                summary = ContinualProtocol(self).run_all()
            else:
                from .protocols.supervised import SupervisedProtocol

                summary = SupervisedProtocol(self).run_all()
            summary.setdefault("time_s", time.time() - t0)
            summary["config"] = self.config.to_dict()
            summary["plugins"] = plugins
            self.folder.write_summary(summary)
            self.folder.write_csv()
            if self.config.train.plots and self.folder.enabled:
                plot_curves(self.folder.records(), self.folder.path, runlog.steps(), self.lr_schedule(), self.state.steps_per_epoch)
            runlog.summary(summary)
            self._log_artifacts()
        self.folder.release()  # the run is over: the folder may be resumed (extended) by another process
        return summary

    def lr_schedule(self) -> dict[str, list[float]]:
        """The learning rate of every optimizer step done, per parameter group, named as in the
        step records (``lr``, or ``lr/<group>``): what ``lr.png`` draws."""
        return dict(zip(group_lrs(self.optimizer), self.scheduler.curve(self.state.step)))

    def _log_artifacts(self) -> None:
        """Artifact records: the run's plots, ``summary.json`` and ``export.pt``."""
        if not self.folder.enabled:
            return
        runlog = self.records.log
        for path in sorted(self.folder.path.glob("*.png")):
            runlog.artifact(path)
        runlog.artifact(self.folder.path / "summary.json")
        runlog.artifact(self.folder.checkpoints / "export.pt")


def _agreed(trainer: Trainer, check: Any) -> None:
    """Run a run-folder check (it looks only on rank 0) and raise its error on every process."""
    error = None
    try:
        check()
    except ConfigError as exc:
        error = str(exc)
    if trainer.dist.enabled:
        import torch.distributed as dist

        box = [error]
        dist.broadcast_object_list(box, 0)
        error = box[0]
    if error is not None:
        raise ConfigError(error)


def train(
    raw: dict[str, Any],
    extra_plugins: dict[str, Any] | None = None,
    *,
    quiet: bool = True,
    out: str | Path | None = None,
    resume: bool = False,
    write: bool = True,
) -> RunResult:
    """Train from a raw config dict (as loaded from YAML); returns the summary and run folder."""
    trainer = Trainer(raw, extra_plugins=extra_plugins, quiet=quiet, out=out, write=write)
    try:
        if resume:
            _agreed(trainer, trainer.folder.check_resume)
            trainer.resume()
            _agreed(trainer, trainer.checkpoints.check_unfinished)
        else:
            _agreed(trainer, trainer.folder.check_new)
        summary = trainer.fit()
    finally:
        trainer.close()
    return RunResult(summary, trainer.folder.path, trainer)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `mixhub train`")
