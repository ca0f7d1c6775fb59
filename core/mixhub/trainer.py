"""The training loop, structured by the hooks (see ``hookspecs`` for the loop as pseudocode).

``Trainer`` runs supervised classification and regression; continual task streams go to
``mixhub.continual``, test-time streams to ``mixhub.testtime``. ``train(raw_config)`` is the
one-call API used by the CLI, the bench harness and tests.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from . import checkpoint as ckpt
from . import distributed as D
from .batch import Batch
from .config import RunConfig, load_config, plugin_names
from .console import Console
from .data import DataBundle, IndexedDataset, build_data
from .data.loader import BadSampleLog, eval_loader, train_loader
from .errors import CheckpointError, ConfigError, DataError, MixhubError
from .metrics import classification_metrics, fit_temperature, regression_metrics, reliability_bins
from .models import build_model
from .plan import MixPlan
from .plugins import PluginHost, check_compatibility, resolve_plugins
from .runio import EpochTally, RunFolder, open_run_folder, plot_curves, plot_reliability
from .runlog import RunLog, StepMeter, grad_norm
from .schedule import GroupScheduler
from .state import State

__all__ = ["Trainer", "train", "RunResult", "RunInterrupted", "NonFiniteError", "seed_everything"]

log = logging.getLogger("mixhub")


class RunInterrupted(MixhubError):
    """SIGTERM/SIGINT: the current step finished, a checkpoint was written, the run stopped."""


class NonFiniteError(MixhubError):
    """A non-finite loss (or input) stopped the run."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def collate(items: list[tuple[Tensor, Tensor, int]]) -> Batch:
    xs, ys, idx = zip(*items)
    return Batch(inputs=torch.stack(xs), targets=torch.stack([torch.as_tensor(y) for y in ys]), index=torch.as_tensor(idx, dtype=torch.long))


class EpochSampler(torch.utils.data.Sampler[int]):
    """Data order from (seed, epoch) alone, sharded per rank; ``skip`` batches for mid-epoch resume."""

    def __init__(self, n: int, seed: int, shuffle: str, batch_size: int, drop_last: bool, rank: int = 0, world: int = 1) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.batch_size, self.drop_last = batch_size, drop_last
        self.rank, self.world = rank, world
        self.epoch = 0
        self.skip_batches = 0

    def order(self) -> Tensor:
        if self.shuffle == "none":
            perm = torch.arange(self.n)
        else:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + (self.epoch if self.shuffle == "epoch" else 0))
            perm = torch.randperm(self.n, generator=g)
        if self.world > 1:
            usable = (self.n // self.world) * self.world
            perm = perm[:usable][self.rank :: self.world]
        return perm

    def __iter__(self) -> Iterator[int]:
        perm = self.order()
        start = self.skip_batches * self.batch_size
        return iter(perm[start:].tolist())

    def __len__(self) -> int:
        return max(0, len(self.order()) - self.skip_batches * self.batch_size)


class TrainForward(nn.Module):
    """The model and every plugin-registered module; ``forward(batch)`` is the whole training
    forward (``Trainer.training_forward``), the one module DDP wraps."""

    def __init__(self, trainer: Trainer) -> None:
        super().__init__()
        self.model = trainer.model
        self.plugin_modules = nn.ModuleDict({key.replace(".", "__"): spec.module for key, spec in trainer.state.modules.items()})
        object.__setattr__(self, "_trainer", trainer)  # not a submodule

    def forward(self, batch: Batch) -> dict[str, Any]:
        trainer: Trainer = self.__dict__["_trainer"]
        return trainer.training_forward(batch)


@dataclass
class RunResult:
    summary: dict[str, Any]
    out: Path
    trainer: Trainer


def _build_host(raw: dict[str, Any], task_kind: str, extra_plugins: dict[str, Any] | None) -> tuple[RunConfig, PluginHost]:
    from .registry import load_registry

    names = plugin_names(raw)
    plugins = resolve_plugins(names, extra_plugins, load_registry())
    run = load_config(raw, {p.name: p.spec for p in plugins})
    owners = check_compatibility(plugins, run.options, task_kind, run.core.slots)
    for p in plugins:
        if p.spec.validate is not None:
            for warning in p.spec.validate(run.options[p.name], run) or []:
                log.warning("%s: %s", p.name, warning)
    return run, PluginHost(plugins, owners)


class Trainer:
    """One run: data, model, plugins, optimizer, loop, evaluation, checkpoints."""

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
        _check_bundle(self.bundle)
        task_kind = self.bundle.task
        self.config, self.host = _build_host(raw, task_kind, extra_plugins)
        cfg = self.config
        self.device = self.dist.device
        self.folder = open_run_folder(out or cfg.out, _default_out(cfg), enabled=write and self.rank == 0)
        if self.dist.enabled:  # every process uses rank 0's folder (a fresh numbered one is picked there)
            path = [str(self.folder.path)]
            dist.broadcast_object_list(path, 0)
            if self.rank != 0:
                self.folder = RunFolder(path[0], enabled=False)
        self.console = Console(quiet=quiet, enabled=self.rank == 0)
        num_outputs = self.bundle.num_classes if self.bundle.num_classes else self.bundle.target_dim
        self.model: nn.Module = build_model(cfg.model, self.bundle.input_shape, num_outputs).to(self.device)
        if cfg.data.channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
        gen = torch.Generator().manual_seed(seed + 12345 + 7919 * self.rank)
        self.state = State(
            config=cfg,
            device=self.device,
            task_kind=task_kind,
            model=self.model,
            num_classes=self.bundle.num_classes,
            train_targets=self.bundle.train_targets.to(self.device),
            train_dataset_size=len(self.bundle.train),  # type: ignore[arg-type]
            generator=gen,
            world_size=self.world_size,
            rank=self.rank,
            batch_size=cfg.train.batch_size,
            data=self.bundle,
            run_dir=self.folder.path if self.folder.enabled else None,
        )
        self.runlog = RunLog(self.folder, self.host, self.state, self.console)
        self.state._options = dict(cfg.options)
        self.host.collect("mixhub_configure_model", model=self.model, state=self.state)
        self.model.to(self.device)
        self.sharded = self._prepare_distributed()
        self.optimizer = self.host.slot(
            "create_optimizer", expected=torch.optim.Optimizer, param_groups=self._param_groups(), config=cfg, state=self.state
        )
        self.state.optimizer = self.optimizer
        self.amp_dtype = _amp_dtype(cfg.train.amp, self.device)
        self.state.amp_dtype = self.amp_dtype
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.ema = None
        if cfg.train.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=cfg.train.ema_decay)
        self.net: nn.Module = self.model
        if cfg.train.compile:
            self.net = torch.compile(self.model)  # type: ignore[assignment]
        # The whole training forward runs in ``train_forward``; under DDP it is wrapped, so DDP
        # sees one forward per backward whatever the plugins compute (see ``hookspecs``).
        self.train_forward = TrainForward(self)
        self.train_module: nn.Module = self.train_forward
        if self.dist.enabled and not self.sharded:
            find_unused = cfg.train.find_unused_parameters
            if find_unused == "auto":
                find_unused = D.needs_unused_parameter_detection(self.host, self.state.modules)
            self.train_module = D.wrap_ddp(self.train_forward, self.dist, find_unused_parameters=bool(find_unused))
        # data
        per_rank = D.per_rank_batch(cfg.train.batch_size, self.world_size)
        self.train_set = IndexedDataset(self.bundle.train)
        n_train = len(self.train_set)
        self.sampler = EpochSampler(n_train, seed, cfg.train.shuffle, per_rank, cfg.train.drop_last, self.rank, self.world_size)
        self.loader = self._train_loader(self.bundle.train, self.sampler, per_rank, seed)
        self.bad_samples = BadSampleLog()
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
        self.meter = StepMeter(cfg.train.log_every, self.state.max_steps, reduce=self._mean_over_ranks if self.dist.enabled else None)
        self._step_end: float | None = None  # when the last step ended (data-wait time of the next)
        self._resumed = False
        self.start_epoch = 0
        self.batch_in_epoch = 0
        self.best: dict[str, Any] = {"value": None, "epoch": -1}
        self._best_in_memory: dict[str, Any] | None = None
        self._extra_state: dict[str, tuple[Any, Any]] = {}
        self._pending_extra: dict[str, Any] = {}
        self.register_state("data", *self._data_state)  # the sampler position and the data's identity
        self.tally = EpochTally()
        self.register_state("epoch_tally", self.tally.state_dict, self.tally.load_state_dict)
        self.select_key, self.select_high = _selection(cfg.train.select, task_kind)
        if cfg.train.select_mode != "auto":
            self.select_high = cfg.train.select_mode == "max"

    # ------------------------------------------------------------------ construction helpers
    def _train_loader(self, dataset: Dataset, sampler: EpochSampler, per_rank: int, seed: int) -> DataLoader:
        """The training loader (``data.loader.train_loader``): workers, pinning, prefetch, and the
        extra indices plugins ask for (``mixhub_extend_indices``), loaded with the anchors."""
        names = [n for n, p in self.host.plugins.items() if hasattr(getattr(p.obj, "mixhub_extend_indices", None), "mixhub_impl")]

        def extend(index: Tensor, epoch: int, generator: torch.Generator) -> dict[str, Tensor]:
            return self.host.per_plugin("mixhub_extend_indices", index=index, epoch=epoch, generator=generator, state=self.state)

        loader = train_loader(
            dataset, sampler, per_rank, self.config.data, seed=seed, device=self.device,
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
        return loader

    def _prepare_distributed(self) -> bool:
        """SyncBatchNorm and FSDP2 sharding, before the optimizer sees the parameters; returns
        whether the model is sharded."""
        cfg = self.config.train
        if cfg.sync_bn and self.dist.enabled:
            self.model = self.state.model = D.convert_sync_bn(self.model)
            for spec in self.state.modules.values():
                spec.module = D.convert_sync_bn(spec.module)
        if cfg.strategy != "fsdp" or not self.dist.enabled:
            return False
        if cfg.ema:
            raise ConfigError("train.ema: the weight EMA is not available with train.strategy=fsdp (it would copy sharded weights); use strategy=ddp")
        # every process shards the same weights: rank 0's
        for module in [self.model, *(spec.module for spec in self.state.modules.values())]:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, 0)
        D.apply_fsdp(self.model, self.dist)
        for spec in self.state.modules.values():
            if spec.trainable and any(p.requires_grad for p in spec.module.parameters()):
                D.apply_fsdp(spec.module, self.dist, blocks=[])
        return True

    def _param_groups(self) -> list[dict[str, Any]]:
        from timm.optim import param_groups_weight_decay

        wd = self.config.train.weight_decay
        groups = param_groups_weight_decay(self.model, wd) if wd > 0 else [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        for spec in self.state.modules.values():
            params = [p for p in spec.module.parameters() if p.requires_grad]
            if spec.trainable and params:
                groups.append({"params": params, "name": f"{spec.owner}.{spec.name}", **spec.group})
        for extra in self.host.collect("mixhub_param_groups", model=self.model, state=self.state):
            groups.extend(extra)
        for g in groups:
            g["params"] = list(g["params"])  # a generator would be used up by the check below
        return [g for g in groups if g["params"]]

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
    ) -> Trainer:
        """Rebuild a trained run from a checkpoint (its saved config plus ``overrides``).

        ``allow_new_plugins`` lets ``overrides`` activate plugins the training run did not
        have (test-time methods); plugins active in both runs get their saved state back.
        """
        from .config import apply_overrides

        data = ckpt.load_checkpoint(path)
        raw = apply_overrides(data["config"], overrides or {})
        trainer = cls(raw, extra_plugins=extra_plugins, write=write, out=out or Path(path).parent.parent)
        try:
            trainer.load_state(data, weights_only=True, allow_new_plugins=allow_new_plugins)
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint {str(path)!r}: {exc}") from exc
        return trainer

    # ------------------------------------------------------------------ the step
    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def fetch(self, index: Tensor) -> Batch:
        """Samples of the training set by dataset index (same transforms), on the device."""
        items = [self.train_set[int(i)] for i in index.tolist()]
        return collate(items).to(self.device)  # type: ignore[arg-type]

    def _set_train_mode(self, training: bool) -> None:
        self.model.train(training)
        for spec in self.state.modules.values():
            spec.module.train(training if spec.train_mode is None else spec.train_mode)

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

    def aux_weight(self, name: str) -> float:
        if name in self.config.losses:
            return float(self.config.losses[name])
        for p in self.host.plugins.values():
            if name in p.spec.aux_loss_weights:
                return float(p.spec.aux_loss_weights[name])
        return 1.0

    def training_forward(self, batch: Batch) -> dict[str, Any]:
        """The whole training forward (sample -> mix -> forward -> loss + aux): ``TrainForward.forward``.

        Returns ``{"loss": total, "logged": {name: detached tensor}}``.
        """
        state, host = self.state, self.host
        plan = host.slot("sample_pairs", expected=MixPlan, batch=batch, state=state)
        try:
            plan.validate(batch.size, state.train_dataset_size, owner=f"{host.owner('sample_pairs')} (mixhub_sample_pairs)")
        except (ValueError, TypeError) as exc:
            from .errors import PluginHookError

            raise PluginHookError(str(exc), plugin=host.owner("sample_pairs"), hook="mixhub_sample_pairs") from exc
        if plan.partner_source == "dataset" and plan.partner is None:  # not loaded with the batch
            plan.partner = self.fetch(plan.index)
        plan.resolve(batch)
        mixed = host.slot("mix_batch", expected=Batch, batch=batch, plan=plan, state=state)
        with self.autocast():
            outputs = host.slot("forward", expected=dict, model=self.net, batch=mixed, plan=plan, state=state)
            loss = host.slot("compute_loss", expected=Tensor, outputs=outputs, batch=mixed, plan=plan, state=state)
            logged: dict[str, Tensor] = {"loss_main": loss.detach()}
            total = loss
            for terms in host.collect("mixhub_aux_losses", outputs=outputs, batch=mixed, plan=plan, state=state):
                for name, value in terms.items():
                    total = total + self.aux_weight(name) * value
                    logged[name] = value.detach()
        if state.step == 0 and self.config.losses:
            self._check_loss_names(set(logged) - {"loss_main"})
        if total.dim() != 0:
            raise MixhubError(f"the loss must be a scalar, got shape {tuple(total.shape)} (slot owner: {host.owner('compute_loss')})")
        return {"loss": total, "logged": logged}

    def _non_finite_message(self, what: str, batch: Batch) -> str:
        last = self.folder.checkpoints / "last.pt"
        return (
            f"{what} at step {self.state.step} (epoch {self.state.epoch}), batch dataset indices "
            f"{batch.index.tolist()[:16]}; last good checkpoint: {str(last) if last.exists() else 'none yet'}"
        )

    def train_step(self, batch: Batch) -> dict[str, float] | None:
        """One optimizer step through the hooks; returns the logged scalars (None if skipped).
        Every ``train.log_every`` steps (and at the last step) it also emits the step record.

        Under DDP no collective besides the gradient buckets: a process whose batch or loss is
        non-finite still runs forward and backward, with a NaN loss, so the averaged gradient is
        non-finite on every process and all of them skip (or stop at) the same step.
        """
        if self._step_end is not None:
            self.meter.data_wait(time.perf_counter() - self._step_end)
        state = self.state
        batch = batch.to(self.device)
        multi = self.dist.enabled
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
        self._set_train_mode(True)
        state.phase = state.stage = "train"
        out = self.train_module(batch)
        total, logged = out["loss"], out["logged"]
        finite = bool(torch.isfinite(total))
        if not finite and not multi:
            msg = self._non_finite_message(f"non-finite loss ({float(total.detach())})", batch)
            if self.config.train.nan_policy == "skip":
                log.warning("%s; skipping the batch", msg)
                self.optimizer.zero_grad(set_to_none=True)
                return None
            raise NonFiniteError(msg)
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
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        state.step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=state.step)
        self.host.collect("mixhub_after_step", state=state)
        logged["loss"] = total.detach()
        out = {k: float(v) for k, v in logged.items()}
        out.update({k: float(v) for k, v in state.log.items()})
        state.log.clear()
        self.meter.add(out, images=batch.size * self.world_size)
        if self.meter.due(state.step):
            self.runlog.step(self.meter.flush(state.step, self.optimizer, norm if log_step else None))
        self._step_end = time.perf_counter()
        return out

    def _mean_over_ranks(self, values: Tensor) -> Tensor:
        """The mean over processes of a 1-D tensor (the step records' window sums, at log steps)."""
        t = values.to(self.device)
        dist.all_reduce(t)
        return t / self.world_size

    def pause_step_clock(self) -> None:
        """After work outside the step loop (evaluation): the next step's wait is not data wait."""
        self._step_end = None

    def _check_loss_names(self, emitted: set[str]) -> None:
        """``losses.<name>`` must name an aux loss a plugin emits or declares (no silent weight 1 for a typo)."""
        known = emitted | {n for p in self.host.plugins.values() for n in p.spec.aux_loss_weights}
        unknown = sorted(set(self.config.losses) - known)
        if unknown:
            from ._util import did_you_mean

            raise ConfigError(
                f"losses.{unknown[0]}: no active plugin produces an aux loss of that name"
                f"{did_you_mean(unknown[0], known)} (known: {', '.join(sorted(known)) or 'none'})"
            )

    def _gradients_finite(self) -> bool:
        """Whether every gradient is finite. Under DDP the gradients are the same averaged values
        on every process, so every process decides alike without a collective; FSDP2 shards
        them, so there the processes agree through one all-reduce."""
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return True
        if self.sharded:
            from torch.distributed.tensor import DTensor

            local = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
            ok = torch.stack([torch.isfinite(g).all() for g in local]).all()
            return not D.any_rank(not bool(ok), self.dist)
        return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())

    def _sync_buffers(self) -> None:
        """``train.dist_bn`` before an evaluation: BatchNorm statistics of the model, the EMA
        copy and the plugin modules averaged (``reduce``) or copied from rank 0 (``broadcast``)."""
        if self.dist.enabled:
            modules = [self.model, *(spec.module for spec in self.state.modules.values())]
            if self.ema is not None:
                modules.append(self.ema.module)
            D.distribute_bn(modules, self.dist, self.config.train.dist_bn)

    # ------------------------------------------------------------------ evaluation
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    @torch.no_grad()
    def predict(self, dataset: Dataset, stage: str, batch_size: int | None = None) -> tuple[dict[str, Tensor], Tensor]:
        """Outputs (every tensor output key) and targets over a dataset, through the eval hooks.

        With several processes each predicts its share of the batches (``distributed.ShardedEval``)
        and every process gets all rows back in dataset order, so metrics equal one process's.
        BatchNorm statistics are first agreed as ``train.dist_bn`` says.
        """
        state, host = self.state, self.host
        self._sync_buffers()
        model = self.eval_model()
        state.phase, state.stage = "eval", stage
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise DataError(f"the {stage} split is empty")
        shard = D.ShardedEval(n, batch_size or max(self.config.train.batch_size, 128), self.dist)
        loader = eval_loader(dataset, shard.batch_size, self.config.data, device=self.device, world_size=self.world_size, indices=shard.indices())
        skipped = BadSampleLog()
        outs: dict[str, list[Tensor]] = {}
        targets = []
        was_training = model.training
        model.eval()  # before the wrappers, so a wrapper's own mode choice stands

        sizes: list[int] = []

        def forward(batch: Batch) -> dict[str, Any]:
            batch = batch.to(self.device)
            with self.autocast():
                return host.slot("eval_forward", expected=dict, model=model, batch=batch, state=state)  # type: ignore[no-any-return]

        try:
            with host.wrap("mixhub_evaluate", model=model, state=state):
                for batch in loader:
                    skipped.add(batch)
                    o = forward(batch)
                    sizes.append(len(batch.targets))
                    for k, v in o.items():
                        if isinstance(v, Tensor) and k.startswith("logits"):
                            outs.setdefault(k, []).append(v.float().cpu())
                    targets.append(batch.targets.cpu())
                if self.sharded:  # every FSDP forward is a collective: match rank 0's number of calls
                    for _ in range(shard.missing_batches()):
                        forward(next(iter(eval_loader(dataset, shard.batch_size, self.config.data, indices=list(shard.batch_rows(0))))))
        finally:
            model.train(was_training)
            state.phase = "train"
        skipped.report(f"{stage} split")
        local = {k: torch.cat(v) for k, v in outs.items()}
        local["__targets"] = torch.cat(targets) if targets else torch.empty(0)
        full = shard.gather(local, sizes)
        full_targets = full.pop("__targets")
        if full_targets.shape[0] == 0:
            raise DataError(f"the {stage} split is empty")
        return full, full_targets

    def evaluate(self, dataset: Dataset, stage: str, temperature: float | None = None, batch_size: int | None = None) -> dict[str, float]:
        """Metrics of the eval model on ``dataset`` (outputs kept in ``self.last_outputs``)."""
        outs, targets = self.predict(dataset, stage, batch_size)
        self.last_outputs = (outs, targets)
        metrics = self.metrics_from(outs, targets, temperature)
        for extra in self.host.collect("mixhub_metrics", stage=stage, state=self.state):
            metrics.update({k: float(v) for k, v in extra.items()})
        return metrics

    def metrics_from(self, outs: dict[str, Tensor], targets: Tensor, temperature: float | None = None) -> dict[str, float]:
        logits = outs["logits"]
        if self.state.task_kind == "regression":
            m = regression_metrics(logits, targets)
            m["loss"] = m["mse"]
            return m
        m = classification_metrics(logits, targets, temperature=temperature)
        m["loss"] = m["nll"]
        for k, v in outs.items():
            if k != "logits":
                m[f"acc_{k.removeprefix('logits_')}"] = float((v.argmax(1) == targets).float().mean())
        return m

    # ------------------------------------------------------------------ checkpoints
    def state_payload(self) -> dict[str, Any]:
        """Everything a checkpoint holds. A sharded (FSDP2) run keeps model, plugin modules and
        optimizer in a ``torch.distributed.checkpoint`` folder instead (see ``save_checkpoint``)."""
        if self.sharded:
            weights: dict[str, Any] = {"model": {}, "optimizer": {}, "modules": {}}
        else:
            weights = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "modules": {k: spec.module.state_dict() for k, spec in self.state.modules.items()},
            }
        return {
            "config": self.config.to_dict(),
            **weights,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "plugins": self.host.per_plugin("mixhub_state_dict", state=self.state),
            "plugin_versions": {n: p.version for n, p in self.host.plugins.items()},
            "rng": ckpt.capture_rng(self.state.generator),
            "epoch": self.state.epoch,
            "step": self.state.step,
            "task": self.state.task,
            "batch_in_epoch": self.batch_in_epoch,
            "best": dict(self.best),
            "extra": {name: get() for name, (get, _) in self._extra_state.items()},
        }

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
        one kept as ``<name>.prev.dcp/``); ``<name>.pt`` then holds the rest and names the folder."""
        if not self._write or not self.config.train.checkpoint:
            return None
        if self.sharded:
            folder = self.folder.checkpoints / f"{name}.dcp"
            tmp = folder.with_name(f".{folder.name}.tmp")
            if self.rank == 0 and tmp.exists():
                import shutil

                shutil.rmtree(tmp)
            dist.barrier()
            D.save_sharded(tmp, self.train_forward, self.optimizer)
            dist.barrier()  # every shard written
            if self.rank == 0:
                import shutil

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
        try:
            if data.get("sharded"):
                self._load_sharded(data, optimizer=not weights_only)
            else:
                self.model.load_state_dict(data["model"])
            for key, sd in data.get("modules", {}).items():
                if key not in self.state.modules:
                    raise CheckpointError(f"checkpoint holds plugin module {key!r}, which this run does not register")
                self.state.modules[key].module.load_state_dict(sd)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint does not match the model {self.config.model.name!r}: {exc}") from exc
        if self.ema is not None and data.get("ema") is not None:
            self.ema.module.load_state_dict(data["ema"])
        for name, sd in data.get("plugins", {}).items():
            self.host.call_plugin(name, "mixhub_load_state_dict", state_dict=sd, state=self.state)
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

    def resume(self) -> None:
        data, _ = ckpt.load_latest(self.folder.checkpoints, "last", warn=log.warning)
        self.load_state(data)
        self.folder.truncate_log(self.start_epoch)
        self.folder.truncate_steps(self.state.step)
        self._resumed = True

    # ------------------------------------------------------------------ the loop
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
        if not _main_thread():
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

    def fit(self) -> dict[str, Any]:
        self.folder.write_config(self.config.to_dict())
        t0 = time.time()
        plugins = {n: p.version for n, p in self.host.plugins.items()}
        with self._signals(), self.host.wrap("mixhub_fit", state=self.state):
            self.runlog.config(self.config.to_dict(), plugins, resumed=self._resumed)
            self.meter.reset()
            self._step_end = None
            if self.bundle.task == "continual":
                from .continual import fit_continual

                summary = fit_continual(self)
            else:
                summary = self._fit_supervised()
            summary.setdefault("time_s", time.time() - t0)
            summary["config"] = self.config.to_dict()
            summary["plugins"] = plugins
            self.folder.write_summary(summary)
            self.folder.write_csv()
            if self.config.train.plots and self.folder.enabled:
                plot_curves(self.folder.records(), self.folder.path, self.runlog.steps())
            self.runlog.summary(summary)
            self._log_artifacts()
        self.folder.release()  # the run is over: the folder may be resumed (extended) by another process
        return summary

    def _log_artifacts(self) -> None:
        """Artifact records: the run's plots, ``summary.json`` and ``export.pt``."""
        if not self.folder.enabled:
            return
        for path in sorted(self.folder.path.glob("*.png")):
            self.runlog.artifact(path)
        self.runlog.artifact(self.folder.path / "summary.json")
        self.runlog.artifact(self.folder.checkpoints / "export.pt")

    def _epoch_batches(self, epoch: int) -> Iterator[Batch]:
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

    def _fit_supervised(self) -> dict[str, Any]:
        cfg = self.config
        epochs = range(self.start_epoch, cfg.train.epochs)
        for epoch in self.console.progress(epochs, total=len(epochs), desc="epochs"):
            self.state.epoch = epoch
            if self.batch_in_epoch == 0:
                self.host.collect("mixhub_epoch_start", state=self.state)
                self.tally.reset()  # a resumed epoch keeps the sums and time of its first part
            inner = self.console.progress(self._epoch_batches(epoch), total=self.state.steps_per_epoch, desc=f"epoch {epoch}")
            for batch in inner:
                out = self.train_step(batch)
                self.batch_in_epoch += 1
                if out is not None:
                    self.tally.add(out)
                    self.console.postfix(loss=f"{out['loss']:.4f}")
                if self.stop_requested:
                    self.tally.reduce_ranks()  # the interrupted epoch's sums of every rank go into the checkpoint
                    self.save_checkpoint("last")
                    raise RunInterrupted(f"stopped by signal {self._stop_signal} at step {self.state.step}; resume with `mixhub train --resume {self.folder.path}`")
            self.batch_in_epoch = 0
            self.host.collect("mixhub_epoch_end", state=self.state)
            means = self._reduce_means(self.tally.sums, self.tally.count)
            train_rec = {"epoch": epoch, "split": "train", "step": self.state.step, **means, "time_s": self.tally.seconds()}
            skipped = self.bad_samples.report(f"epoch {epoch}" + (f" (rank {self.rank})" if self.world_size > 1 else ""))
            if self.world_size > 1:  # every rank's skipped files count
                n_bad = torch.tensor([float(skipped)], device=self.device if self.device.type == "cuda" else "cpu")
                dist.all_reduce(n_bad)
                skipped = int(n_bad.item())
            if skipped or self.config.data.on_bad_sample == "skip":
                train_rec["bad_samples"] = skipped
            for extra in self.host.collect("mixhub_metrics", stage="train", state=self.state):
                train_rec.update({k: float(v) for k, v in extra.items()})
            self.runlog.epoch(train_rec)
            if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
                val = self.evaluate(self.bundle.val, "val")
                self.runlog.epoch({"epoch": epoch, "split": "val", **val})
                self._maybe_best(val, epoch)
                msg = f"epoch {epoch + 1}/{cfg.train.epochs} train loss {train_rec.get('loss', float('nan')):.4f} " + " ".join(f"val {k} {val[k]:.4f}" for k in ("acc", "nll", "ece", "rmse") if k in val)
                self.console.message(msg)
            self.state.epoch = epoch + 1
            self.save_checkpoint("last")
            self.pause_step_clock()
        return self.final_evaluation()

    def _reduce_means(self, sums: dict[str, float], count: int) -> dict[str, float]:
        """Epoch means of the step scalars, averaged over ranks under DDP."""
        keys = sorted(sums)
        if self.dist.enabled:
            t = torch.tensor([sums[k] for k in keys] + [float(count)], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(t)
            vals, total = t[:-1].tolist(), float(t[-1])
            return {k: v / max(total, 1.0) for k, v in zip(keys, vals)}
        return {k: sums[k] / max(count, 1) for k in keys}

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
        payload = {"module": name, "state_dict": state_dict, "config": self.config.to_dict()}
        return ckpt.save_checkpoint(payload, self.folder.checkpoints / "export.pt", keep_previous=False)

    def _load_weights(self, data: dict[str, Any]) -> None:
        """Model, EMA, plugin modules and plugin state from a checkpoint payload."""
        if "sharded_state" in data:  # in-memory copy of a sharded run's own shards
            self.train_forward.load_state_dict(data["sharded_state"])
        elif data.get("sharded"):
            self._load_sharded(data, optimizer=False)
        else:
            self.model.load_state_dict(data["model"])
        if self.ema is not None and data.get("ema") is not None:
            self.ema.module.load_state_dict(data["ema"])
        for key, sd in data.get("modules", {}).items():
            self.state.modules[key].module.load_state_dict(sd)
        for name, sd in data.get("plugins", {}).items():
            self.host.call_plugin(name, "mixhub_load_state_dict", state_dict=sd, state=self.state)

    def _maybe_best(self, val: dict[str, float], epoch: int) -> None:
        key = self.select_key
        if key not in val:
            raise ConfigError(f"train.select: validation metric {key!r} does not exist (have: {', '.join(sorted(val))})")
        value = val[key]
        best = self.best["value"]
        if best is None or (value > best if self.select_high else value < best):
            self.best = {"value": value, "epoch": epoch, "metric": key}
            if self._write and self.config.train.checkpoint:
                self.save_checkpoint("best")
            else:  # no run folder: keep the best weights in memory for the final test
                import copy

                self._best_in_memory = copy.deepcopy({k: v for k, v in self.state_payload().items() if k in ("model", "ema", "modules", "plugins")})
                if self.sharded:
                    self._best_in_memory["sharded_state"] = copy.deepcopy(self.train_forward.state_dict())

    def final_evaluation(self) -> dict[str, Any]:
        """Test metrics of the best-validation checkpoint (temperature fitted on validation)."""
        best_path = self.folder.checkpoints / "best.pt"
        if self.dist.enabled and self._write:
            dist.barrier()  # rank 0 has finished writing best.pt before anyone reads it
        if self._write and best_path.exists() and self.config.train.checkpoint:
            self._load_weights(ckpt.load_checkpoint(best_path))
        elif self._best_in_memory is not None:
            self._load_weights(self._best_in_memory)
        self.write_export()
        summary: dict[str, Any] = {"best_epoch": self.best["epoch"], "select": self.select_key, "steps": self.state.step}
        temperature = None
        val_outs, val_t = self.predict(self.bundle.val, "val")
        if self.state.task_kind == "classification":
            temperature = fit_temperature(val_outs["logits"], val_t)
        summary["val"] = self.metrics_from(val_outs, val_t, temperature)
        summary["test"] = self.evaluate(self.bundle.test, "test", temperature)
        self.last_outputs_test = self.last_outputs
        for name, ds in self.bundle.extra_splits.items():
            summary[name] = self.evaluate(ds, name, temperature)
        if self.state.task_kind == "classification" and self.folder.enabled and self.config.train.plots:
            outs, t = self.last_outputs_test
            conf, acc, counts = reliability_bins(outs["logits"], t)
            plot_reliability(conf, acc, counts, self.folder.path / "reliability.png", "test reliability", ece=summary["test"].get("ece"))
            (self.folder.path / "reliability.json").write_text(json.dumps({"conf": conf.tolist(), "acc": acc.tolist(), "counts": counts.tolist()}))
        for k in ("val", "test", *self.bundle.extra_splits):
            self.runlog.epoch({"epoch": self.config.train.epochs, "split": f"final_{k}", **summary[k]})
        return summary


def _selection(select: str, task_kind: str) -> tuple[str, bool]:
    if select == "auto":
        return ("rmse", False) if task_kind == "regression" else ("acc", True)
    high = select.endswith("acc") or select in ("r", "top2")
    return select, high


def _check_bundle(bundle: DataBundle) -> None:
    if bundle.task == "continual":
        return
    for split in ("train", "val", "test"):
        ds = getattr(bundle, split)
        if len(ds) == 0:  # type: ignore[arg-type]
            raise DataError(f"the {split} split of the dataset is empty")
    t = bundle.train_targets
    if t.is_floating_point():
        if not torch.isfinite(t).all():
            bad = (~torch.isfinite(t.reshape(len(t), -1))).any(1).nonzero().flatten().tolist()[:10]
            raise DataError(f"non-finite training targets at dataset indices {bad}")
    elif bundle.num_classes is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= bundle.num_classes):
        raise DataError(f"training labels out of range [0, {bundle.num_classes})")


def _amp_dtype(amp: bool, device: torch.device) -> torch.dtype | None:
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _default_out(cfg: RunConfig) -> str:
    """``runs/<data>-<model>-<plugins>-s<seed>``; ``open_run_folder`` numbers it (``-1``, ``-2``, ...) when taken."""
    plugins = "-".join(cfg.plugins) or "erm"
    return str(Path("runs") / f"{cfg.data.name.replace(':', '_').replace('/', '_')}-{cfg.model.name}-{plugins}-s{cfg.seed}")


def _agreed(trainer: Trainer, check: Any) -> None:
    """Run a run-folder check (it looks only on rank 0) and raise its error on every process."""
    error = None
    try:
        check()
    except ConfigError as exc:
        error = str(exc)
    if trainer.dist.enabled:
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
        else:
            _agreed(trainer, trainer.folder.check_new)
        summary = trainer.fit()
    finally:
        trainer.folder.release()
    return RunResult(summary, trainer.folder.path, trainer)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `mixhub train`")
