"""The distribution part of a ``Run`` (``run.parallel``): how one run spreads over processes.

Chosen once at setup from the process group (``mixhub.distributed.init_distributed``) and
``train.strategy``; the loop asks it to prepare the model (SyncBatchNorm, FSDP2 sharding) before
the optimizer exists, to wrap the training forward in DDP, to check the averaged gradients, to
agree BatchNorm statistics before an evaluation, and to average a tensor over processes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import distributed as D
from ..distributed import DistContext
from ..errors import ConfigError

__all__ = ["Parallel"]


class Parallel:
    """The run's process layout and what it does with it.

    Interface:

    * ``prepare(session) -> bool``: SyncBatchNorm (``train.sync_bn``) and FSDP2 sharding
      (``train.strategy=fsdp``) of the session's model and plugin modules, before the optimizer
      sees the parameters; sets and returns ``sharded``;
    * ``wrap(session, host, state)``: under DDP, ``session.train_module`` becomes the DDP wrapper of
      the session's task module (``train.find_unused_parameters``);
    * ``gradients_finite(optimizer) -> bool``: whether every gradient is finite, agreed by all;
    * ``sync_buffers(modules)``: ``train.dist_bn`` before an evaluation;
    * ``mean(values)``: the mean over processes of a 1-D tensor (the step records' window sums).

    ``ctx`` is the process group (``enabled``, ``world_size``, ``rank``, ``device``); ``train`` the
    config's ``train`` section.
    """

    def __init__(self, ctx: DistContext, train: Any) -> None:
        self.ctx = ctx
        self.train = train
        #: the model's weights are FSDP2 shards (set by ``prepare``)
        self.sharded = False

    @property
    def enabled(self) -> bool:
        return self.ctx.enabled

    def prepare(self, session: Any) -> bool:
        """SyncBatchNorm and FSDP2 sharding, before the optimizer sees the parameters; returns
        whether the model is sharded."""
        cfg, state = self.train, session.state
        if cfg.sync_bn and self.enabled:
            model = D.convert_sync_bn(session.model)
            for spec in state.modules.values():
                spec.module = D.convert_sync_bn(spec.module)
            session.replace_model(model)
        if cfg.strategy != "fsdp" or not self.enabled:
            return False
        if cfg.ema:
            raise ConfigError("train.ema: the weight EMA is not available with train.strategy=fsdp (it would copy sharded weights); use strategy=ddp")
        # every process shards the same weights: rank 0's
        for module in [session.model, *(spec.module for spec in state.modules.values())]:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, 0)
        D.apply_fsdp(session.model, self.ctx)
        for spec in state.modules.values():
            if spec.trainable and any(p.requires_grad for p in spec.module.parameters()):
                D.apply_fsdp(spec.module, self.ctx, blocks=[])
        self.sharded = True
        return True

    def wrap(self, session: Any, host: Any, state: Any) -> None:
        """Under DDP (not sharded), the step calls the DDP wrapper of the session's task module:
        the whole training forward, so DDP sees one forward per backward whatever plugins compute."""
        if not self.enabled or self.sharded:
            return
        find_unused = self.train.find_unused_parameters
        if find_unused == "auto":
            find_unused = D.needs_unused_parameter_detection(host, state.modules)
        session.train_module = D.wrap_ddp(session.task_module, self.ctx, find_unused_parameters=bool(find_unused))

    def gradients_finite(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether every gradient is finite. Under DDP the gradients are the same averaged values
        on every process, so every process decides alike without a collective; FSDP2 shards
        them, so there the processes agree through one all-reduce."""
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return True
        if self.sharded:
            from torch.distributed.tensor import DTensor

            local = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
            ok = torch.stack([torch.isfinite(g).all() for g in local]).all()
            return not D.any_rank(not bool(ok), self.ctx)
        return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())

    def sync_buffers(self, modules: Iterable[nn.Module]) -> None:
        """``train.dist_bn`` before an evaluation: BatchNorm statistics of ``modules`` (the model, the
        EMA copy, the plugin modules) averaged (``reduce``) or copied from rank 0 (``broadcast``)."""
        if self.enabled:
            D.distribute_bn(list(modules), self.ctx, self.train.dist_bn)

    def mean(self, values: Tensor) -> Tensor:
        """The mean over processes of a 1-D tensor (the step records' window sums, at log steps)."""
        t = values.to(self.ctx.device)
        dist.all_reduce(t)
        return t / self.ctx.world_size
