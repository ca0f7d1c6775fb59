"""The checkpointing part of a ``Run`` (``run.checkpoints``): the payload, saving, restoring,
resuming, exporting, and the kept best validation values.

A checkpoint holds the config, the model, the optimizer, schedule, scaler and EMA, the
``Session``'s plugin modules and plugin state, the RNG states, the counters, the best
validation value and core-owned extras (``register``): tensors and plain types only,
loaded with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from .. import checkpoint as ckpt
from .. import distributed as D
from ..config import RunConfig
from ..data import DataBundle
from ..engine import Session
from ..errors import CheckpointError, ConfigError
from ..schedule import GroupScheduler
from .folder import RunFolder
from .parallel import Parallel
from .startup import class_labels

__all__ = ["CheckpointKeeper", "Checkpointed"]

log = logging.getLogger("mixhub")


class Checkpointed(Protocol):
    """What the checkpointing part reads from (and, on loading, writes back to) its run."""

    config: RunConfig
    session: Session
    bundle: DataBundle
    folder: RunFolder
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: GroupScheduler
    scaler: Any  # torch.amp.GradScaler or None
    ema: Any  # timm's ModelEmaV3 or None
    #: the module the step calls before any DDP wrapper (model and plugin modules)
    train_forward: nn.Module
    world_size: int
    rank: int
    #: the run's position: the epoch a resume starts at and the batches done in it
    start_epoch: int
    batch_in_epoch: int

    def eval_model(self) -> nn.Module: ...


class CheckpointKeeper:
    """The run's checkpoints (``run.checkpoints``), as timm's ``CheckpointSaver`` is its loop's.

    Interface:

    * ``save(name) -> Path | None``: ``checkpoints/<name>.pt`` (``last``, ``best``, ``best-<m>``);
      ``payload()``: what it holds; ``write_export()``: ``checkpoints/export.pt``;
    * ``load(data, weights_only, allow_new_plugins)``: restore a checkpoint payload;
      ``resume()``: restore ``last.pt`` (or ``last.prev.pt``) of the run folder;
      ``load_weights(data)``: the weights only (the final test's best weights);
    * ``register(name, get, load)``: core-owned state in every checkpoint (``extra[name]``);
    * ``check_unfinished()``: refuse to resume a finished run;
    * ``best``: the kept best validation values (``value``, ``epoch``, ``kept`` per criterion),
      ``best_in_memory``: the best weights of a run without a folder, ``resumed``.

    ``run`` (a ``Checkpointed``) is what it saves and restores; ``write``: whether the run writes
    files at all; ``verify_checks`` reads the step's pending device checks before a save.
    """

    def __init__(self, run: Checkpointed, parallel: Parallel, *, write: bool, verify_checks: Callable[[], None]) -> None:
        self.run = run
        self.parallel = parallel
        self.write = write
        self.verify_checks = verify_checks
        self.resumed = False
        self.best: dict[str, Any] = {"value": None, "epoch": 0}  # epoch: 1-based; 0: none validated yet
        self.best_in_memory: dict[str, Any] | None = None
        self._extra_state: dict[str, tuple[Any, Any]] = {}
        self._pending_extra: dict[str, Any] = {}

    @property
    def state(self) -> Any:
        return self.run.session.state

    @property
    def host(self) -> Any:
        return self.run.session.host

    @property
    def writes(self) -> bool:
        """Whether this run writes checkpoint files (``write`` and ``train.checkpoint``)."""
        return self.write and bool(self.run.config.train.checkpoint)

    def payload(self) -> dict[str, Any]:
        """Everything a checkpoint holds. A sharded (FSDP2) run keeps model, plugin modules and
        optimizer in a ``torch.distributed.checkpoint`` folder instead (see ``save``)."""
        session = self.run.session.state_dict()
        if self.parallel.sharded:
            weights: dict[str, Any] = {"model": {}, "optimizer": {}, "modules": {}}
        else:
            weights = {"model": self.run.model.state_dict(), "optimizer": self.run.optimizer.state_dict(), "modules": session["modules"]}
        return {
            "config": self.run.config.to_dict(),
            **weights,
            "scheduler": self.run.scheduler.state_dict(),
            "scaler": self.run.scaler.state_dict() if self.run.scaler is not None else None,
            "ema": self.run.ema.module.state_dict() if self.run.ema is not None else None,
            "plugins": session["plugins"],
            "plugin_versions": session["plugin_versions"],
            "rng": ckpt.capture_rng(self.state.generator),
            "epoch": self.state.epoch,
            "step": self.state.step,
            "task": self.state.task,
            "batch_in_epoch": self.run.batch_in_epoch,
            "best": dict(self.best),
            "evaluated": self.export_module()[0],  # the network whose metrics `best` records
            "extra": {name: get() for name, (get, _) in self._extra_state.items()},
            "classes": class_labels(self.run.bundle),
        }

    def register(self, name: str, get: Any, load: Any) -> None:
        """Add core-owned state to every checkpoint (e.g. the continual protocol's replay buffer).

        ``get() -> dict`` of tensors and plain types is saved under ``extra[name]``; ``load(sd)``
        restores it, at once when a resumed checkpoint already holds ``name``.
        """
        self._extra_state[name] = (get, load)
        if name in self._pending_extra:
            load(self._pending_extra.pop(name))

    def save(self, name: str = "last") -> Path | None:
        """``checkpoints/<name>.pt`` (rank 0). Sharded runs: every process first writes its shards
        of the model, plugin modules and optimizer to ``checkpoints/<name>.dcp/`` (the previous
        one kept as ``<name>.prev.dcp/``); ``<name>.pt`` then holds the rest and names the folder.
        The step's pending device-side checks are read first: a failed one raises instead."""
        self.verify_checks()
        if not self.writes:
            return None
        if self.parallel.sharded:
            import shutil

            import torch.distributed as dist

            folder = self.run.folder.checkpoints / f"{name}.dcp"
            tmp = folder.with_name(f".{folder.name}.tmp")
            if self.run.rank == 0 and tmp.exists():
                shutil.rmtree(tmp)
            dist.barrier()
            D.save_sharded(tmp, self.run.train_forward, self.run.optimizer)
            dist.barrier()  # every shard written
            if self.run.rank == 0:
                prev = folder.with_name(f"{name}.prev.dcp")
                if folder.exists():
                    if prev.exists():
                        shutil.rmtree(prev)
                    os.replace(folder, prev)
                os.replace(tmp, folder)
            payload = {**self.payload(), "sharded": folder.name}
            dist.barrier()  # the folder is in place before anyone reads it
        else:
            payload = self.payload() if self.run.folder.enabled else {}
        if not self.run.folder.enabled:
            return None
        return ckpt.save_checkpoint(payload, self.run.folder.checkpoints / f"{name}.pt", keep_previous=name == "last")

    def _load_sharded(self, data: dict[str, Any], optimizer: bool) -> None:
        folder = self.run.folder.checkpoints / str(data["sharded"])
        if not self.parallel.sharded:
            raise CheckpointError(f"this checkpoint keeps its weights sharded in {str(folder)!r}; load it with train.strategy=fsdp under torchrun, or use export.pt")
        D.load_sharded(folder, self.run.train_forward, self.run.optimizer if optimizer else None)

    def load(self, data: dict[str, Any], weights_only: bool = False, allow_new_plugins: bool = False) -> None:
        """Restore a checkpoint; ``weights_only`` restores the model, modules and plugin state only.

        ``allow_new_plugins`` accepts active plugins the checkpoint lacks (their modules and
        state start fresh); plugins the checkpoint has must still all be active.
        """
        if "model" not in data:
            raise CheckpointError(f"this is an export file (module {data.get('module')!r}), not a training checkpoint; load last.pt or best.pt")
        saved = set(data.get("plugin_versions", {}))
        active = set(self.host.plugins)
        if saved != active and not (allow_new_plugins and saved <= active):
            raise CheckpointError(f"checkpoint was written with plugins {sorted(saved)}, this run activates {sorted(active)}")
        if not data.get("sharded"):
            self._check_outputs(data["model"], data.get("classes"))
        try:
            if data.get("sharded"):
                self._load_sharded(data, optimizer=not weights_only)
            else:
                self.run.model.load_state_dict(data["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint does not match the model {self.run.config.model.name!r}: {exc}") from exc
        self.run.session.load_modules(data.get("modules", {}), {})
        if self.run.ema is not None and data.get("ema") is not None:
            self.run.ema.module.load_state_dict(data["ema"])
        self.run.session.load_modules({}, data.get("plugins", {}))
        self.state.step = int(data.get("step", 0))
        self.state.epoch = int(data.get("epoch", 0))
        self.state.task = int(data.get("task", 0))
        if weights_only:
            return
        if not data.get("sharded"):
            self.run.optimizer.load_state_dict(data["optimizer"])
        self.run.scheduler.load_state_dict(data["scheduler"])
        if self.run.scaler is not None and data.get("scaler") is not None:
            self.run.scaler.load_state_dict(data["scaler"])
        self.best = dict(data.get("best", self.best))
        self.run.batch_in_epoch = int(data.get("batch_in_epoch", 0))
        self._pending_extra = dict(data.get("extra", {}))
        for name in list(self._pending_extra):
            if name in self._extra_state:
                self._extra_state[name][1](self._pending_extra.pop(name))
        self.run.start_epoch = self.state.epoch
        ckpt.restore_rng(data["rng"], self.state.generator)
        if self.run.world_size > 1:  # rank 0 saved its own generator: give the others their own stream back
            self.state.generator.manual_seed(self.run.config.seed + 12345 + 7919 * self.run.rank + self.state.step)

    def check_unfinished(self) -> None:
        """A resumed run must have something left to do: a finished run (every epoch trained and
        its summary written) resumed with the same ``train.epochs`` is refused, saying how to extend it."""
        epochs = self.run.config.train.epochs
        if (
            self.run.bundle.task == "continual"
            or not self.run.folder.enabled
            or not (self.run.folder.path / "summary.json").is_file()
            or self.state.epoch < epochs
            or self.run.batch_in_epoch
        ):
            return
        where = str(self.run.folder.path)
        raise ConfigError(
            f"--resume {where!r}: the run is finished (it trained all {epochs} epochs and wrote summary.json), so there is "
            f"nothing to resume; to train it longer run `mixhub train --resume {where} train.epochs={epochs + max(1, epochs // 2)}` "
            f"(any number above {epochs}), or evaluate it with `mixhub eval {where}/checkpoints/best.pt`"
        )

    def _check_outputs(self, saved: dict[str, Any], classes: list[Any] | None) -> None:
        """The checkpoint's classifier must have as many outputs as the data have classes (or
        targets): a mismatch names both counts rather than torch's size-mismatch text."""
        get = getattr(self.run.model, "get_classifier", None)
        head = get() if callable(get) else None
        weight = getattr(head, "weight", None)
        if weight is None:
            return
        key = next((k for k, v in self.run.model.named_parameters() if v is weight), None)
        if key is None or key not in saved or saved[key].dim() == 0 or saved[key].shape[0] == weight.shape[0]:
            return
        n_saved, n_data = int(saved[key].shape[0]), int(weight.shape[0])
        what = "classes" if self.run.bundle.task == "classification" else "targets"
        named = f" ({', '.join(map(str, classes[:10]))}{', ...' if len(classes) > 10 else ''})" if classes else ""
        raise CheckpointError(
            f"the checkpoint's model was trained for {n_saved} {what}{named}, but the data {self.run.config.data.name!r} "
            f"have {n_data} {what}; evaluate it on data with the same {what}"
            + (" (or map this data's labels to the model's with data.classes=[...])" if what == "classes" else "")
        )

    def resume(self) -> None:
        data, _ = ckpt.load_latest(self.run.folder.checkpoints, "last", warn=log.warning)
        self.load(data)
        self.run.folder.truncate_log(self.run.start_epoch)  # 0-based next epoch == epochs done: the records (1-based) of those
        self.run.folder.truncate_steps(self.state.step)
        self.resumed = True

    def export_module(self) -> tuple[str, nn.Module]:
        """The module a run exports: one registered with ``export=True``, else the (EMA) model."""
        for key, spec in self.state.modules.items():
            if spec.export:
                return key, spec.module
        return ("ema" if self.run.ema is not None else "model"), self.run.eval_model()

    def write_export(self) -> Path | None:
        """``checkpoints/export.pt``: the exported module's weights (``weights_only`` loadable)."""
        if not self.writes:
            return None
        if self.state.step == 0:
            log.warning("no optimizer step ran (train.epochs=%d): the run evaluates the initial, untrained weights and writes no export", self.run.config.train.epochs)
            return None
        name, module = self.export_module()
        state_dict = D.full_model_state_dict(module)  # a sharded module is gathered (every process takes part)
        if not self.run.folder.enabled:
            return None
        payload = {"module": name, "state_dict": state_dict, "config": self.run.config.to_dict(), "classes": class_labels(self.run.bundle)}
        return ckpt.save_checkpoint(payload, self.run.folder.checkpoints / "export.pt", keep_previous=False)

    def load_weights(self, data: dict[str, Any]) -> None:
        """Model, EMA, plugin modules and plugin state from a checkpoint payload."""
        if "sharded_state" in data:  # in-memory copy of a sharded run's own shards
            self.run.train_forward.load_state_dict(data["sharded_state"])
        elif data.get("sharded"):
            self._load_sharded(data, optimizer=False)
        else:
            self.run.model.load_state_dict(data["model"])
        if self.run.ema is not None and data.get("ema") is not None:
            self.run.ema.module.load_state_dict(data["ema"])
        self.run.session.load_modules(data.get("modules", {}), data.get("plugins", {}))
