"""Checkpoints of a ``Run``: the payload, saving, restoring, resuming, exporting.

A checkpoint holds the config, the model, the optimizer, schedule, scaler and EMA, the
``Session``'s plugin modules and plugin state, the RNG states, the counters, the best
validation value and core-owned extras (``register_state``): tensors and plain types only,
loaded with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from . import checkpoint as ckpt
from . import distributed as D
from .errors import CheckpointError, ConfigError

__all__ = ["CheckpointMixin"]

log = logging.getLogger("mixhub")


class CheckpointMixin:
    """Checkpoint methods of ``mixhub.run.Run`` (attributes are the run's)."""

    config: Any
    model: nn.Module
    optimizer: Any
    scheduler: Any
    scaler: Any
    ema: Any
    session: Any
    host: Any
    state: Any
    folder: Any
    bundle: Any
    best: dict[str, Any]
    batch_in_epoch: int
    start_epoch: int
    world_size: int
    rank: int
    sharded: bool
    train_forward: nn.Module
    _write: bool
    _resumed: bool
    _extra_state: dict[str, tuple[Any, Any]]
    _pending_extra: dict[str, Any]

    if TYPE_CHECKING:  # defined by Run

        def __init__(self, raw: dict[str, Any], **kwargs: Any) -> None: ...

        def eval_model(self) -> nn.Module: ...

        def verify_checks(self) -> None: ...

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        overrides: dict[str, Any] | None = None,
        *,
        extra_plugins: dict[str, Any] | None = None,
        write: bool = False,
        out: str | Path | None = None,
        allow_new_plugins: bool = False,
    ) -> Any:
        """Rebuild a trained run from a checkpoint (its saved config plus ``overrides``).

        ``allow_new_plugins`` lets ``overrides`` activate plugins the training run did not
        have (test-time methods); plugins active in both runs get their saved state back.
        """
        from .config import apply_overrides

        data = ckpt.load_checkpoint(path)
        raw = apply_overrides(data["config"], overrides or {})
        saved_classes = data.get("classes")
        if saved_classes and (raw.get("data") or {}).get("classes") is None:
            # the model's outputs are the training run's labels: the data (another CSV, a test folder)
            # are mapped to them, not to their own sorted labels
            raw = apply_overrides(raw, {"data": {"classes": list(saved_classes)}})
        run = cls(raw, extra_plugins=extra_plugins, write=write, out=out or Path(path).parent.parent)
        try:
            run.load_state(data, weights_only=True, allow_new_plugins=allow_new_plugins)
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint {str(path)!r}: {exc}") from exc
        return run

    def state_payload(self) -> dict[str, Any]:
        """Everything a checkpoint holds. A sharded (FSDP2) run keeps model, plugin modules and
        optimizer in a ``torch.distributed.checkpoint`` folder instead (see ``save_checkpoint``)."""
        session = self.session.state_dict()
        if self.sharded:
            weights: dict[str, Any] = {"model": {}, "optimizer": {}, "modules": {}}
        else:
            weights = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "modules": session["modules"]}
        return {
            "config": self.config.to_dict(),
            **weights,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "plugins": session["plugins"],
            "plugin_versions": session["plugin_versions"],
            "rng": ckpt.capture_rng(self.state.generator),
            "epoch": self.state.epoch,
            "step": self.state.step,
            "task": self.state.task,
            "batch_in_epoch": self.batch_in_epoch,
            "best": dict(self.best),
            "evaluated": self.export_module()[0],  # the network whose metrics `best` records
            "extra": {name: get() for name, (get, _) in self._extra_state.items()},
            "classes": self.class_labels(),
        }

    def class_labels(self) -> list[Any] | None:
        """The label of each model output (``data.classes``, or the labels the data were remapped
        from, e.g. ``[-1, 7]``), as ints and strings; ``None`` without named classes."""
        found = self.bundle.info.get("classes") if self.bundle.task == "classification" else None
        if not found:
            return None
        return [c if isinstance(c, (int, str)) and not isinstance(c, bool) else str(c) for c in found]

    def register_state(self, name: str, get: Any, load: Any) -> None:
        """Add core-owned state to every checkpoint (e.g. the continual protocol's replay buffer).

        ``get() -> dict`` of tensors and plain types is saved under ``extra[name]``; ``load(sd)``
        restores it, at once when a resumed checkpoint already holds ``name``.
        """
        self._extra_state[name] = (get, load)
        if name in self._pending_extra:
            load(self._pending_extra.pop(name))

    def save_checkpoint(self, name: str = "last") -> Path | None:
        """``checkpoints/<name>.pt`` (rank 0). Sharded runs: every process first writes its shards
        of the model, plugin modules and optimizer to ``checkpoints/<name>.dcp/`` (the previous
        one kept as ``<name>.prev.dcp/``); ``<name>.pt`` then holds the rest and names the folder.
        The step's pending device-side checks are read first: a failed one raises instead."""
        self.verify_checks()
        if not self._write or not self.config.train.checkpoint:
            return None
        if self.sharded:
            import shutil

            import torch.distributed as dist

            folder = self.folder.checkpoints / f"{name}.dcp"
            tmp = folder.with_name(f".{folder.name}.tmp")
            if self.rank == 0 and tmp.exists():
                shutil.rmtree(tmp)
            dist.barrier()
            D.save_sharded(tmp, self.train_forward, self.optimizer)
            dist.barrier()  # every shard written
            if self.rank == 0:
                prev = folder.with_name(f"{name}.prev.dcp")
                if folder.exists():
                    if prev.exists():
                        shutil.rmtree(prev)
                    os.replace(folder, prev)
                os.replace(tmp, folder)
            payload = {**self.state_payload(), "sharded": folder.name}
            dist.barrier()  # the folder is in place before anyone reads it
        else:
            payload = self.state_payload() if self.folder.enabled else {}
        if not self.folder.enabled:
            return None
        return ckpt.save_checkpoint(payload, self.folder.checkpoints / f"{name}.pt", keep_previous=name == "last")

    def _load_sharded(self, data: dict[str, Any], optimizer: bool) -> None:
        folder = self.folder.checkpoints / str(data["sharded"])
        if not self.sharded:
            raise CheckpointError(f"this checkpoint keeps its weights sharded in {str(folder)!r}; load it with train.strategy=fsdp under torchrun, or use export.pt")
        D.load_sharded(folder, self.train_forward, self.optimizer if optimizer else None)

    def load_state(self, data: dict[str, Any], weights_only: bool = False, allow_new_plugins: bool = False) -> None:
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
                self.model.load_state_dict(data["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint does not match the model {self.config.model.name!r}: {exc}") from exc
        self.session.load_modules(data.get("modules", {}), {})
        if self.ema is not None and data.get("ema") is not None:
            self.ema.module.load_state_dict(data["ema"])
        self.session.load_modules({}, data.get("plugins", {}))
        self.state.step = int(data.get("step", 0))
        self.state.epoch = int(data.get("epoch", 0))
        self.state.task = int(data.get("task", 0))
        if weights_only:
            return
        if not data.get("sharded"):
            self.optimizer.load_state_dict(data["optimizer"])
        self.scheduler.load_state_dict(data["scheduler"])
        if self.scaler is not None and data.get("scaler") is not None:
            self.scaler.load_state_dict(data["scaler"])
        self.best = dict(data.get("best", self.best))
        self.batch_in_epoch = int(data.get("batch_in_epoch", 0))
        self._pending_extra = dict(data.get("extra", {}))
        for name in list(self._pending_extra):
            if name in self._extra_state:
                self._extra_state[name][1](self._pending_extra.pop(name))
        self.start_epoch = self.state.epoch
        ckpt.restore_rng(data["rng"], self.state.generator)
        if self.world_size > 1:  # rank 0 saved its own generator: give the others their own stream back
            self.state.generator.manual_seed(self.config.seed + 12345 + 7919 * self.rank + self.state.step)

    def check_unfinished(self) -> None:
        """A resumed run must have something left to do: a finished run (every epoch trained and
        its summary written) resumed with the same ``train.epochs`` is refused, saying how to extend it."""
        epochs = self.config.train.epochs
        if (
            self.bundle.task == "continual"
            or not self.folder.enabled
            or not (self.folder.path / "summary.json").is_file()
            or self.state.epoch < epochs
            or self.batch_in_epoch
        ):
            return
        where = str(self.folder.path)
        raise ConfigError(
            f"--resume {where!r}: the run is finished (it trained all {epochs} epochs and wrote summary.json), so there is "
            f"nothing to resume; to train it longer run `mixhub train --resume {where} train.epochs={epochs + max(1, epochs // 2)}` "
            f"(any number above {epochs}), or evaluate it with `mixhub eval {where}/checkpoints/best.pt`"
        )

    def _check_outputs(self, saved: dict[str, Any], classes: list[Any] | None) -> None:
        """The checkpoint's classifier must have as many outputs as the data have classes (or
        targets): a mismatch names both counts rather than torch's size-mismatch text."""
        get = getattr(self.model, "get_classifier", None)
        head = get() if callable(get) else None
        weight = getattr(head, "weight", None)
        if weight is None:
            return
        key = next((k for k, v in self.model.named_parameters() if v is weight), None)
        if key is None or key not in saved or saved[key].dim() == 0 or saved[key].shape[0] == weight.shape[0]:
            return
        n_saved, n_data = int(saved[key].shape[0]), int(weight.shape[0])
        what = "classes" if self.bundle.task == "classification" else "targets"
        named = f" ({', '.join(map(str, classes[:10]))}{', ...' if len(classes) > 10 else ''})" if classes else ""
        raise CheckpointError(
            f"the checkpoint's model was trained for {n_saved} {what}{named}, but the data {self.config.data.name!r} "
            f"have {n_data} {what}; evaluate it on data with the same {what}"
            + (" (or map this data's labels to the model's with data.classes=[...])" if what == "classes" else "")
        )

    def resume(self) -> None:
        data, _ = ckpt.load_latest(self.folder.checkpoints, "last", warn=log.warning)
        self.load_state(data)
        self.folder.truncate_log(self.start_epoch)  # 0-based next epoch == epochs done: the records (1-based) of those
        self.folder.truncate_steps(self.state.step)
        self._resumed = True

    def export_module(self) -> tuple[str, nn.Module]:
        """The module a run exports: one registered with ``export=True``, else the (EMA) model."""
        for key, spec in self.state.modules.items():
            if spec.export:
                return key, spec.module
        return ("ema" if self.ema is not None else "model"), self.eval_model()

    def write_export(self) -> Path | None:
        """``checkpoints/export.pt``: the exported module's weights (``weights_only`` loadable)."""
        if not self._write or not self.config.train.checkpoint:
            return None
        if self.state.step == 0:
            log.warning("no optimizer step ran (train.epochs=%d): the run evaluates the initial, untrained weights and writes no export", self.config.train.epochs)
            return None
        name, module = self.export_module()
        state_dict = D.full_model_state_dict(module)  # a sharded module is gathered (every process takes part)
        if not self.folder.enabled:
            return None
        payload = {"module": name, "state_dict": state_dict, "config": self.config.to_dict(), "classes": self.class_labels()}
        return ckpt.save_checkpoint(payload, self.folder.checkpoints / "export.pt", keep_previous=False)

    def load_weights(self, data: dict[str, Any]) -> None:
        """Model, EMA, plugin modules and plugin state from a checkpoint payload."""
        if "sharded_state" in data:  # in-memory copy of a sharded run's own shards
            self.train_forward.load_state_dict(data["sharded_state"])
        elif data.get("sharded"):
            self._load_sharded(data, optimizer=False)
        else:
            self.model.load_state_dict(data["model"])
        if self.ema is not None and data.get("ema") is not None:
            self.ema.module.load_state_dict(data["ema"])
        self.session.load_modules(data.get("modules", {}), data.get("plugins", {}))
