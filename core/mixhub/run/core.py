"""``Run``: what every protocol shares: data, model, a ``Session``, optimizer, schedule and the
guarded optimizer step, with the parts it holds.

The protocols (``mixhub.protocols``: supervised epochs, continual task streams, test-time
streams) drive a ``Run``; ``mixhub.trainer.Trainer`` picks the protocol. The training forward
itself is ``Session.step`` (``mixhub.engine``): the same code a user's own loop or timm's
``train.py`` runs. What ``Run.train_step`` adds around it is the loop's own part: batch checks,
the non-finite guard, the learning rate, backward (with the AMP scaler), clipping, the optimizer
step and the weight EMA.

The parts a ``Run`` holds are listed in ``Run``'s docstring and in ``mixhub.run``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .. import checkpoint as ckpt
from .. import distributed as D
from ..batch import Batch
from ..config import RunConfig, load_config
from ..console import Console
from ..data import DataBundle, IndexedDataset, build_data
from ..data.loader import BadSampleLog, train_loader
from ..engine import Session
from ..errors import CheckpointError, DataError
from ..models import build_model
from ..sampling import EpochSampler, collate
from ..schedule import GroupScheduler
from .evaluation import Evaluation
from .folder import RunFolder, open_run_folder
from .guards import Guards, NonFiniteError
from .keeper import CheckpointKeeper
from .parallel import Parallel
from .recorder import RunLog, RunRecords
from .startup import check_bundle, class_labels, default_out, seed_everything
from .step_meter import StepMeter, grad_norm

__all__ = ["Run"]

log = logging.getLogger("mixhub")


class Run:
    """One run (see the module docstring); ``Trainer`` adds ``fit()``. The parts it holds, each an
    object with its own small interface: ``parallel`` (processes), ``records`` (step and epoch
    records), ``guards`` (bad batches, stop signals), ``evaluation`` and ``checkpoints``. It keeps
    one-line delegations for what users and plugins call on a run: ``save_checkpoint``,
    ``resume``, ``register_state``, ``eval_model``, ``predict``, ``evaluate``."""

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
        pre = load_config({k: v for k, v in raw.items() if k in ("seed", "data", "train", "model", "optimizer", "out")})
        self.dist = D.init_distributed(pre.train.device)
        self.world_size, self.rank = self.dist.world_size, self.dist.rank
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
        self.session.verify_in_after_step = False  # the records part reads the checks with the step record
        self.host = self.session.host
        self.state = self.session.state
        cfg = self.config
        self.folder = open_run_folder(out or cfg.out, default_out(cfg), enabled=write and self.rank == 0)
        if self.dist.enabled:  # every process uses rank 0's folder (a fresh numbered one is picked there)
            path = [str(self.folder.path)]
            dist.broadcast_object_list(path, 0)
            if self.rank != 0:
                self.folder = RunFolder(path[0], enabled=False)
        self.console = Console(quiet=quiet, enabled=self.rank == 0)
        self.state.run_dir = self.folder.path if self.folder.enabled else None
        #: processes: SyncBatchNorm and FSDP2 before the optimizer, DDP after it
        self.parallel = Parallel(self.dist, cfg.train)
        self.parallel.prepare(self.session)
        self.model: nn.Module = self.session.model
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
        self.train_forward: nn.Module = self.session.task_module
        self.parallel.wrap(self.session, self.host, self.state)
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
        self.start_epoch = 0
        self.batch_in_epoch = 0
        #: every record of the run (metric files, console, the plugins' ``mixhub_log``) goes through it
        meter = StepMeter(cfg.train.log_every, self.state.max_steps, reduce=self.parallel.mean if self.dist.enabled else None, log_seconds=cfg.train.log_seconds)
        runlog = RunLog(self.folder, self.host, self.state, self.console)
        self.records = RunRecords(runlog, meter, self.session.checks, self.optimizer, self.state, self.console, self.world_size)
        self.guards = Guards(cfg, self.bundle, self.state, self.dist, self.folder.checkpoints / "last.pt")
        self.evaluation = Evaluation(self.session, cfg, self.parallel, self.ema, class_labels=lambda: class_labels(self.bundle))
        self.checkpoints = CheckpointKeeper(self, self.parallel, write=write, verify_checks=self.session.checks.verify)
        self.checkpoints.register("data", *self._data_state)  # the sampler position and the data's identity
        tally = self.records.tally
        self.checkpoints.register("epoch_tally", tally.state_dict, tally.load_state_dict)

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
        from ..config import apply_overrides

        data = ckpt.load_checkpoint(path)
        raw = apply_overrides(data["config"], overrides or {})
        saved_classes = data.get("classes")
        if saved_classes and (raw.get("data") or {}).get("classes") is None:
            # the model's outputs are the training run's labels: the data (another CSV, a test folder)
            # are mapped to them, not to their own sorted labels
            raw = apply_overrides(raw, {"data": {"classes": list(saved_classes)}})
        run = cls(raw, extra_plugins=extra_plugins, write=write, out=out or Path(path).parent.parent)
        try:
            run.checkpoints.load(data, weights_only=True, allow_new_plugins=allow_new_plugins)
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint {str(path)!r}: {exc}") from exc
        return run

    # ------------------------------------------------------------------ what users call on a run
    def save_checkpoint(self, name: str = "last") -> Path | None:
        """``checkpoints/<name>.pt`` (``CheckpointKeeper.save``)."""
        return self.checkpoints.save(name)

    def resume(self) -> None:
        """Continue from the run folder's ``last.pt`` (``CheckpointKeeper.resume``)."""
        self.checkpoints.resume()

    def register_state(self, name: str, get: Any, load: Any) -> None:
        """Core-owned state in every checkpoint (``CheckpointKeeper.register``)."""
        self.checkpoints.register(name, get, load)

    def eval_model(self) -> nn.Module:
        """The network evaluated and saved as the model (``Evaluation.eval_model``)."""
        return self.evaluation.eval_model()

    def predict(self, dataset: Dataset, stage: str, batch_size: int | None = None) -> tuple[dict[str, Tensor], Tensor]:
        """Outputs and targets over ``dataset`` (``Evaluation.predict``)."""
        return self.evaluation.predict(dataset, stage, batch_size)

    def evaluate(self, dataset: Dataset, stage: str, temperature: float | None = None, batch_size: int | None = None) -> dict[str, float]:
        """Metrics of the eval model on ``dataset`` (``Evaluation.evaluate``)."""
        return self.evaluation.evaluate(dataset, stage, temperature, batch_size)

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
    def sharded(self) -> bool:
        """The model's weights are FSDP2 shards (``Parallel.sharded``)."""
        return self.parallel.sharded

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
        self.records.step_starts()
        state = self.state
        batch = batch.to(self.device, non_blocking=True)
        multi = self.dist.enabled
        checks = self.session.checks
        # nan_policy=skip (and DDP's agreement) must decide before the optimizer step: a host read
        # per step. Otherwise the checks are device flags read every train.check_every steps.
        deferred = not multi and self.config.train.nan_policy == "stop"
        good_batch = True
        if deferred:
            batch = self.guards.guard_batch(batch, checks)
        else:
            try:
                good_batch = self.guards.check_batch(batch)
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
            checks.fail_if(~torch.isfinite(loss), lambda: NonFiniteError(self.guards.step_message(f"non-finite loss ({float(loss)})", index, step, epoch)), step)
        else:
            finite = bool(torch.isfinite(total))
            if not finite and not multi:
                msg = self.guards.non_finite_message(f"non-finite loss ({float(total.detach())})", batch)
                log.warning("%s; skipping the batch", msg)
                self.optimizer.zero_grad(set_to_none=True)
                return None
            if multi and not (finite and good_batch):
                if finite:  # a skipped batch: poison this rank's loss so every rank skips the step
                    total = total * float("nan")
                log.warning("%s", self.guards.non_finite_message("non-finite loss" if good_batch else "skipped batch", batch))
        self.scheduler.step(state.step)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
        else:
            total.backward()
        if multi and self.scaler is None and not self.parallel.gradients_finite(self.optimizer):
            msg = f"non-finite averaged gradient at step {state.step} (epoch {state.epoch}): a process had a non-finite loss or a skipped batch"
            if self.config.train.nan_policy == "skip":
                log.warning("%s; every process skips the step", msg)
                self.optimizer.zero_grad(set_to_none=True)
                return None
            raise NonFiniteError(msg + "; set train.nan_policy=skip to drop such batches")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = None
        meter = self.records.meter
        meter.max_steps = state.max_steps  # the continual protocol sets it after construction
        log_step = meter.is_log_step(state.step + 1)  # the gradient norm is read at log steps only
        if self.config.train.clip_grad_norm is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, self.config.train.clip_grad_norm)  # the norm before clipping
        elif log_step:
            norm = grad_norm(p for g in self.optimizer.param_groups for p in g["params"])
        if log_step and norm is not None and self.parallel.sharded:
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
        self.records.step_done(logs, batch.size, norm if log_step else None)
        return logs
