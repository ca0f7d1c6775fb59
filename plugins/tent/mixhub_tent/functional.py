"""TENT: fully test-time adaptation by entropy minimisation.

Paper: D. Wang, E. Shelhamer, S. Liu, B. Olshausen, T. Darrell, "Tent: Fully Test-Time
Adaptation by Entropy Minimization", ICLR 2021 (arXiv 2006.10726). Official code:
``DequanWang/tent`` ``tent.py`` (``configure_model``, ``collect_params``,
``softmax_entropy``, ``forward_and_adapt``, ``copy_model_and_optimizer``).

Usable in any loop::

    snap = snapshot(model)                 # everything teardown must put back
    configure_model(model)                 # batch statistics, only norm affine trainable
    opt = torch.optim.Adam(collect_params(model), lr=1e-3, betas=(0.9, 0.999))
    for x in stream:
        logits = tent_step(model, x, opt)  # predict, then adapt on the same batch
    restore(model, snap)

Norm layers are ``nn.BatchNorm2d`` (and subclasses) plus any ``mixhub.TestTimeNorm`` (e.g.
UnMix-TNS), whose statistics are left to the layer itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mixhub import TestTimeNorm

__all__ = ["softmax_entropy", "configure_model", "collect_params", "snapshot", "restore", "tent_step", "Snapshot"]


def softmax_entropy(logits: Tensor) -> Tensor:
    """Per-sample entropy ``H_b = -sum_c softmax(z_b)_c log_softmax(z_b)_c`` (official ``softmax_entropy``)."""
    logits = logits.float()
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def configure_model(model: nn.Module) -> nn.Module:
    """TENT's configuration (official ``configure_model``), in place.

    ``model.train()``; ``requires_grad_(False)`` everywhere; every ``BatchNorm2d``: affine
    trainable, ``track_running_stats=False`` and running statistics ``None`` (batch statistics
    in train and eval mode); every ``TestTimeNorm``: train mode, affine trainable, statistics
    untouched.
    """
    model.train()
    model.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            if m.weight is not None:
                m.weight.requires_grad_(True)
                m.bias.requires_grad_(True)
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
        elif isinstance(m, TestTimeNorm):
            m.train()
            for p in m.affine_parameters():
                p.requires_grad_(True)
    return model


def collect_params(model: nn.Module) -> list[nn.Parameter]:
    """The affine parameters TENT trains: of every ``BatchNorm2d`` and every ``TestTimeNorm``."""
    params: list[nn.Parameter] = []
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            params.extend(p for p in (m.weight, m.bias) if isinstance(p, nn.Parameter))
        elif isinstance(m, TestTimeNorm):
            params.extend(m.affine_parameters())
    return params


@dataclass
class Snapshot:
    """What ``restore`` puts back: flags, the BN buffer objects, and every tensor's values."""

    training: dict[nn.Module, bool] = field(default_factory=dict)
    bn: dict[nn.Module, tuple[bool, Any, Any]] = field(default_factory=dict)
    requires_grad: dict[nn.Parameter, bool] = field(default_factory=dict)
    values: dict[str, Tensor] = field(default_factory=dict)


def snapshot(model: nn.Module) -> Snapshot:
    """Record the model's modes, BN flags and buffers, ``requires_grad`` and every tensor's value."""
    snap = Snapshot()
    for m in model.modules():
        snap.training[m] = m.training
        if isinstance(m, nn.BatchNorm2d):
            snap.bn[m] = (m.track_running_stats, m.running_mean, m.running_var)
    for p in model.parameters():
        snap.requires_grad[p] = p.requires_grad
    snap.values = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    return snap


@torch.no_grad()
def load_values(model: nn.Module, values: dict[str, Tensor]) -> None:
    """Copy saved values into the model's tensors in place (identity kept: optimisers stay valid)."""
    for k, v in model.state_dict(keep_vars=True).items():
        if k in values and v is not None:
            v.data.copy_(values[k])


def restore(model: nn.Module, snap: Snapshot) -> nn.Module:
    """Undo ``configure_model`` and the adaptation: bitwise the state of ``snapshot``."""
    for m, (track, mean, var) in snap.bn.items():
        m.track_running_stats = track
        m.running_mean = mean
        m.running_var = var
    load_values(model, snap.values)
    for p, flag in snap.requires_grad.items():
        p.requires_grad_(flag)
        p.grad = None
    for m, flag in snap.training.items():
        m.training = flag
    return model


def tent_step(model: nn.Module, x: Tensor, optimizer: torch.optim.Optimizer) -> Tensor:
    """One TENT step (official ``forward_and_adapt``): forward, mean entropy, backward, step.

    Returns the logits of this forward, computed **before** the update (TENT's prediction).
    Runs under ``torch.enable_grad()`` whatever the caller's grad mode.
    """
    with torch.enable_grad():
        logits = model(x)
        loss = softmax_entropy(logits).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return logits.detach()
