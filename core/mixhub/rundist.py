"""Multi-process parts of a ``Run``: SyncBatchNorm and FSDP2 before the optimizer, the
gradient check that replaces per-step collectives, BatchNorm statistics before evaluation."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from . import distributed as D
from .errors import ConfigError

__all__ = ["DistributedMixin"]


class DistributedMixin:
    """Distributed methods of ``mixhub.run.Run`` (attributes are the run's)."""

    config: Any
    dist: Any
    model: nn.Module
    state: Any
    session: Any
    host: Any
    ema: Any
    optimizer: Any
    sharded: bool

    def _prepare_distributed(self) -> bool:
        """SyncBatchNorm and FSDP2 sharding, before the optimizer sees the parameters; returns
        whether the model is sharded."""
        cfg = self.config.train
        if cfg.sync_bn and self.dist.enabled:
            self.model = D.convert_sync_bn(self.model)
            for spec in self.state.modules.values():
                spec.module = D.convert_sync_bn(spec.module)
            self.session.replace_model(self.model)
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
