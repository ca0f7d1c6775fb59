"""``Run``: what every protocol shares: data, model, a ``Session``, optimizer, schedule, the
guarded optimizer step, evaluation and checkpoints (``runckpt.CheckpointMixin``).

The protocols (``mixhub.protocols``: supervised epochs, continual task streams, test-time
streams) drive a ``Run``; ``mixhub.trainer.Trainer`` picks the protocol. The training forward
itself is ``Session.step`` (``mixhub.engine``): the same code a user's own loop or timm's
``train.py`` runs. What ``Run.train_step`` adds around it is the loop's own part: batch checks,
the non-finite guard, the learning rate, backward (with the AMP scaler), the gradient
all-reduce, clipping, the optimizer step and the weight EMA.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from . import distributed as D
from .batch import Batch
from .config import RunConfig, load_config
from .console import Console
from .data import DataBundle, IndexedDataset, build_data
from .data.loader import BadSampleLog, train_loader
from .engine import Session
from .errors import CheckpointError, DataError
from .models import build_model
from .runckpt import CheckpointMixin
from .rundist import DistributedMixin
from .runeval import EvaluationMixin
from .runguard import GuardMixin, NonFiniteError, RunInterrupted
from .runio import EpochTally, RunFolder, open_run_folder
from .runlog import RunLog, StepMeter, grad_norm
from .runsetup import check_bundle, selection
from .sampling import EpochSampler, collate
from .schedule import GroupScheduler

__all__ = ["Run", "RunInterrupted", "NonFiniteError", "seed_everything", "collate", "EpochSampler"]

log = logging.getLogger("mixhub")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class Run(CheckpointMixin, EvaluationMixin, DistributedMixin, GuardMixin):
    """One run's shared parts (see the module docstring); ``Trainer`` adds ``fit()``."""

    def __init__(
        self,
        raw: dict[str, Any],
        *,
        extra_plugins: dict[str, Any] | None = None,
        quiet: bool = True,
        write: bool = True,
        out: str | Path | None = None,
    ) -> None:
        self.raw = raw
        self.quiet = quiet
        self._stop_signal: int | None = None
        self._stop_checked_at = 0
        pre = load_config({k: v for k, v in raw.items() if k in ("seed", "data", "train", "model", "optimizer", "out")})
        self.dist = D.init_distributed(pre.train.device)
        self.world_size, self.rank = self.dist.world_size, self.dist.rank
        self._write = write
        seed = pre.seed
        seed_everything(seed)
        self.bundle: DataBundle = build_data(pre.data, pre.data.split_seed if pre.data.split_seed is not None else seed, model=pre.model)
        check_bundle(self.bundle)
        task_kind = self.bundle.task
        self.device = self.dist.device
        num_outputs = self.bundle.num_classes if self.bundle.num_classes else self.bundle.target_dim
        model = build_model(pre.model, self.bundle.input_shape, num_outputs)
        if pre.data.channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
        self.train_set = IndexedDataset(self.bundle.train)
        self.session = Session(
            raw,
            model=model,
            num_classes=self.bundle.num_classes,
            task_kind=task_kind,
            train_targets=self.bundle.train_targets,
            dataset_size=len(self.train_set),
            fetch=self.fetch,
            device=self.device,
            extra_plugins=extra_plugins,
            data=self.bundle,
            world_size=self.world_size,
            rank=self.rank,
        )
        self.config: RunConfig = self.session.config
        self.session.verify_in_after_step = False  # log_step_record reads the checks with the step record
        self.host = self.session.host
        self.state = self.session.state
        self.model: nn.Module = self.session.model
        cfg = self.config
        self.folder = open_run_folder(out or cfg.out, _default_out(cfg), enabled=write and self.rank == 0)
        if self.dist.enabled:  # every process uses rank 0's folder (a fresh numbered one is picked there)
            path = [str(self.folder.path)]
            dist.broadcast_object_list(path, 0)
            if self.rank != 0:
                self.folder = RunFolder(path[0], enabled=False)
        self.console = Console(quiet=quiet, enabled=self.rank == 0)
        self.state.run_dir = self.folder.path if self.folder.enabled else None
        #: every record of the run (metric files, console, the plugins' ``mixhub_log``) goes through it
        self.runlog = RunLog(self.folder, self.host, self.state, self.console)
        self.sharded = self._prepare_distributed()
        self.optimizer = self.session.create_optimizer()
        self.amp_dtype = self.session.amp_dtype
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        self.ema = None
        if cfg.train.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=cfg.train.ema_decay)
        if cfg.train.compile:
            self.session.compile()
        # The whole training forward runs in the Session's task module; under DDP it is wrapped,
        # so DDP sees one forward per backward whatever the plugins compute (see ``hookspecs``).
        self.train_forward = self.session.task_module
        if self.dist.enabled and not self.sharded:
            find_unused = cfg.train.find_unused_parameters
            if find_unused == "auto":
                find_unused = D.needs_unused_parameter_detection(self.host, self.state.modules)
            self.session.train_module = D.wrap_ddp(self.train_forward, self.dist, find_unused_parameters=bool(find_unused))
        per_rank = D.per_rank_batch(cfg.train.batch_size, self.world_size)
        self.sampler, self.loader = self.build_loader(per_rank)
        self.bad_samples = BadSampleLog()
        n_train = len(self.train_set)
        steps = len(self.sampler) // per_rank if cfg.train.drop_last else math.ceil(len(self.sampler) / per_rank)
        if cfg.train.max_steps_per_epoch:
            steps = min(steps, cfg.train.max_steps_per_epoch)
        if steps == 0 and task_kind != "continual" and cfg.train.epochs > 0:
            raise DataError(f"data {cfg.data.name!r}: the training split ({n_train} samples) is smaller than one batch ({per_rank}); lower train.batch_size or set train.drop_last=false")
        self.state.steps_per_epoch = steps
        self.state.max_steps = steps * cfg.train.epochs
        self.scheduler = GroupScheduler(
            self.optimizer,
            self.state.max_steps,
            kind=cfg.train.sched,
            warmup_steps=cfg.train.warmup_epochs * steps,
            min_lr=cfg.train.min_lr,
            step_every=cfg.train.step_decay_epochs * max(1, steps),
            step_rate=cfg.train.step_decay_rate,
            milestones=[m * steps for m in cfg.train.milestones],
        )
        self.state.scheduler = self.scheduler
        self.meter = StepMeter(cfg.train.log_every, self.state.max_steps, reduce=self._mean_over_ranks if self.dist.enabled else None, log_seconds=cfg.train.log_seconds)
        self._step_end: float | None = None  # when the last step ended (data-wait time of the next)
        self._resumed = False
        self.start_epoch = 0
        self.batch_in_epoch = 0
        self.best: dict[str, Any] = {"value": None, "epoch": 0}  # epoch: 1-based; 0: none validated yet
        self._best_in_memory: dict[str, Any] | None = None
        self._extra_state: dict[str, tuple[Any, Any]] = {}
        self._pending_extra: dict[str, Any] = {}
        self.register_state("data", *self._data_state)  # the sampler position and the data's identity
        #: the epoch's step-log sums (device tensors), count and time: in every checkpoint, so a
        #: resumed epoch logs its means over all its steps, bitwise the uninterrupted run's
        self.tally = EpochTally()
        self.register_state("epoch_tally", self.tally.state_dict, self.tally.load_state_dict)
        self.select_key, self.select_high = selection(cfg.train.select, cfg.train.select_mode, task_kind)

    @property
    def train_module(self) -> nn.Module:
        """The module each step calls: the task module, or its DDP wrapper."""
        return self.session.train_module

    @property
    def net(self) -> nn.Module:
        """The model the forward slot calls (compiled when ``train.compile``)."""
        return self.session.task_module.net

    # ------------------------------------------------------------------ data
    def build_loader(self, per_rank: int) -> tuple[EpochSampler, DataLoader]:
        """The training sampler and loader: the one place training batches are built.

        The order comes from (seed, epoch) alone (``EpochSampler``), so a resumed run sees the
        same batches; ``data.loader.train_loader`` adds workers, pinning, prefetch and the extra
        indices plugins ask for (``mixhub_extend_indices``), loaded with the anchors.
        """
        cfg = self.config
        seed = cfg.seed
        dataset = self.bundle.train
        sampler = EpochSampler(len(self.train_set), seed, cfg.train.shuffle, per_rank, cfg.train.drop_last, self.rank, self.world_size)
        names = [n for n, p in self.host.plugins.items() if hasattr(getattr(p.obj, "mixhub_extend_indices", None), "mixhub_impl")]

        def extend(index: Tensor, epoch: int, generator: torch.Generator) -> dict[str, Tensor]:
            return self.host.per_plugin("mixhub_extend_indices", index=index, epoch=epoch, generator=generator, state=self.state)

        loader = train_loader(
            dataset, sampler, per_rank, cfg.data, seed=seed, device=self.device,
            rank=self.rank, world_size=self.world_size, extend=extend, extend_names=names,
        )
        n_train = len(dataset)  # type: ignore[arg-type]

        def data_state() -> dict[str, Any]:
            return {"train_size": n_train, "seed": seed, "epoch": int(sampler.epoch), "batch_in_epoch": self.batch_in_epoch}

        def load_data_state(sd: dict[str, Any]) -> None:
            if int(sd.get("train_size", n_train)) != n_train:
                raise CheckpointError(
                    f"the training split has {n_train} samples, the checkpoint's had {sd['train_size']}: the data changed and the run cannot resume exactly"
                )

        self._data_state = (data_state, load_data_state)
        return sampler, loader

    def epoch_batches(self, epoch: int) -> Iterator[Batch]:
        """The batches of ``epoch``, from ``batch_in_epoch`` on (mid-epoch resume), capped by ``train.max_steps_per_epoch``."""
        self.sampler.epoch = epoch
        self.sampler.skip_batches = self.batch_in_epoch
        set_epoch = getattr(self.bundle.train, "set_epoch", None)
        if set_epoch is not None:  # augmentation seeds of partners fetched in this process
            set_epoch(epoch)
        limit = self.config.train.max_steps_per_epoch
        for i, batch in enumerate(self.loader, start=self.batch_in_epoch):
            if limit is not None and i >= limit:
                break
            self.bad_samples.add(batch)
            yield batch

    _epoch_batches = epoch_batches

    def fetch(self, index: Tensor) -> Batch:
        """Samples of the training set by dataset index (same transforms), on the device."""
        items = [self.train_set[int(i)] for i in index.tolist()]
        return collate(items).to(self.device)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ the step
    def autocast(self) -> Any:
        return self.session.autocast()

    def aux_weight(self, name: str) -> float:
        return self.session.aux_weight(name)

    def train_step(self, batch: Batch) -> dict[str, Tensor] | None:
        """One optimizer step: ``Session.step`` plus the loop's part. Returns the step's logs
        (detached tensors, read them on the host only when logging), ``None`` if skipped.

        Under DDP no collective besides the gradient buckets: a process whose batch or loss is
        non-finite still runs forward and backward, with a NaN loss, so the averaged gradient is
        non-finite on every process and all of them skip (or stop at) the same step.
        """
        if self._step_end is not None:
            self.meter.data_wait(time.perf_counter() - self._step_end)
        state = self.state
        batch = batch.to(self.device, non_blocking=True)
        multi = self.dist.enabled
        checks = self.session.checks
        # nan_policy=skip (and DDP's agreement) must decide before the optimizer step: a host read
        # per step. Otherwise the checks are device flags read every train.check_every steps.
        deferred = not multi and self.config.train.nan_policy == "stop"
        good_batch = True
        if deferred:
            batch = self.guard_batch(batch, checks)
        else:
            try:
                good_batch = self.check_batch(batch)
            except NonFiniteError:
                if not multi:
                    raise
                good_batch = False  # every process stops together after the backward below
            if not good_batch:
                if not multi:
                    return None
                batch = batch.replace(inputs=torch.nan_to_num(batch.inputs), targets=torch.nan_to_num(batch.targets) if batch.targets.is_floating_point() else batch.targets)
        out = self.session.step(batch)
        total, logs = out["loss"], out["logs"]
        if deferred:
            loss = total.detach()
            index, step, epoch = batch.index, state.step, state.epoch
            checks.fail_if(~torch.isfinite(loss), lambda: NonFiniteError(self._step_message(f"non-finite loss ({float(loss)})", index, step, epoch)), step)
        else:
            finite = bool(torch.isfinite(total))
            if not finite and not multi:
                msg = self._non_finite_message(f"non-finite loss ({float(total.detach())})", batch)
                log.warning("%s; skipping the batch", msg)
                self.optimizer.zero_grad(set_to_none=True)
                return None
            if multi and not (finite and good_batch):
                if finite:  # a skipped batch: poison this rank's loss so every rank skips the step
                    total = total * float("nan")
                log.warning("%s", self._non_finite_message("non-finite loss" if good_batch else "skipped batch", batch))
        self.scheduler.step(state.step)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
        else:
            total.backward()
        if multi and self.scaler is None and not self._gradients_finite():
            msg = f"non-finite averaged gradient at step {state.step} (epoch {state.epoch}): a process had a non-finite loss or a skipped batch"
            if self.config.train.nan_policy == "skip":
                log.warning("%s; every process skips the step", msg)
                self.optimizer.zero_grad(set_to_none=True)
                return None
            raise NonFiniteError(msg + "; set train.nan_policy=skip to drop such batches")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = None
        self.meter.max_steps = state.max_steps  # the continual protocol sets it after construction
        log_step = self.meter.is_log_step(state.step + 1)  # the gradient norm is read at log steps only
        if self.config.train.clip_grad_norm is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, self.config.train.clip_grad_norm)  # the norm before clipping
        elif log_step:
            norm = grad_norm(p for g in self.optimizer.param_groups for p in g["params"])
        if log_step and norm is not None and self.sharded:
            from torch.distributed.tensor import DTensor

            if isinstance(norm, DTensor):  # FSDP2: the norm of sharded gradients (every process takes part)
                norm = norm.full_tensor()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model, step=state.step + 1)
        logs.update(self.session.after_step())
        self.log_step_record(logs, batch.size, norm if log_step else None)
        return logs

    def log_step_record(self, logs: dict[str, Tensor], images: int, norm: Tensor | None) -> None:
        """The per-step record: the step's logs (device tensors) join the window, and every
        ``train.log_every`` steps (and at the last) the window's means, lr per group, images/s,
        data wait and the gradient norm go out as one step record (``RunLog.step``).

        The step's device-side checks (``Session.checks``) are read every ``train.check_every``
        steps and at the last; at a log step in the record's own transfer (one read per log step).
        """
        step = self.state.step
        self.meter.add(logs, images=images * self.world_size)
        checks = self.session.checks
        check_due = checks.due(step) or (len(checks) > 0 and step >= self.meter.max_steps)
        if self.meter.due(step):
            failed = checks.any_failed() if check_due else None
            record = self.meter.flush(step, self.optimizer, norm, also=failed)
            if failed is not None:
                checks.verify(failed=bool(self.meter.also_value))
            self.runlog.step(record)
            if "loss" in record:
                self.console.postfix(loss=f"{record['loss']:.4f}")
        elif check_due:
            checks.verify()
        self._step_end = time.perf_counter()

    def verify_checks(self) -> None:
        """Read the step's pending device-side checks now (before a checkpoint: never save a state
        that a failed check has already condemned)."""
        self.session.checks.verify()

    def _mean_over_ranks(self, values: Tensor) -> Tensor:
        """The mean over processes of a 1-D tensor (the step records' window sums, at log steps)."""
        t = values.to(self.device)
        dist.all_reduce(t)
        return t / self.world_size

    def pause_step_clock(self) -> None:
        """After work outside the step loop (evaluation): the next step's wait is not data wait."""
        self._step_end = None


def _default_out(cfg: RunConfig) -> str:
    """``runs/<data>-<model>-<plugins>-s<seed>``; ``open_run_folder`` numbers it (``-1``, ``-2``, ...) when taken."""
    plugins = "-".join(cfg.plugins) or "erm"
    return str(Path("runs") / f"{cfg.data.name.replace(':', '_').replace('/', '_')}-{cfg.model.name}-{plugins}-s{cfg.seed}")
