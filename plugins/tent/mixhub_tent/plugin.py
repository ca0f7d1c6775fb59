"""TENT's hooks (the math lives in ``mixhub_tent.functional``).

Active only in the core's test-time phase (``state.phase == "test-time"``): inert in training
and validation passes. ``tent.steps: 0`` is the test-batch BN arm (TBN).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from mixhub import Batch, PluginOptions, PluginSpec, State, hookimpl

from .functional import (
    collect_params,
    configure_model,
    load_values,
    restore,
    snapshot,
    softmax_entropy,
    tent_step,
)

NAME = "tent"


class TentOptions(PluginOptions):
    optimizer: Literal["adam", "sgd"] = Field("adam", description="TENT's optimiser over the norm affine parameters")
    lr: float = Field(1e-3, gt=0.0, description="learning rate (TENT's CIFAR-10-C recipe: Adam 1e-3 at batch 200)")
    lr_batch_ref: int | None = Field(None, ge=1, description="if set, lr is scaled by stream batch size / lr_batch_ref")
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.9, ge=0.0, description="SGD momentum")
    weight_decay: float = Field(0.0, ge=0.0)
    steps: int = Field(1, ge=0, description="adaptation steps per batch; 0: test-batch BN only (TBN)")
    episodic: bool = Field(False, description="reset parameters, buffers and optimiser before every batch")


PLUGIN = PluginSpec(
    name=NAME,
    options=TentOptions,
    slots=("eval_forward",),
    task_kinds=("classification", "test-time"),
    description="TENT: test-time entropy minimisation on norm affine parameters (steps=0: test-batch BN)",
)


def _optimizer(params: list[nn.Parameter], opts: TentOptions, batch_size: int) -> torch.optim.Optimizer | None:
    if not params or opts.steps == 0:
        return None
    lr = opts.lr * (batch_size / opts.lr_batch_ref if opts.lr_batch_ref else 1.0)
    if opts.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=opts.betas, weight_decay=opts.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=opts.momentum, weight_decay=opts.weight_decay)


def _setup(model: nn.Module, state: State) -> None:
    sc = state.scratch(NAME)
    opts = state.options(NAME)
    configure_model(model)
    sc.params = collect_params(model)
    sc.optimizer = _optimizer(sc.params, opts, state.batch_size)
    sc.initial = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()} if opts.episodic else None
    sc.entropy_sum, sc.count = 0.0, 0


@hookimpl(wrapper=True)
def mixhub_evaluate(model: nn.Module, state: State) -> Generator[None, Any, Any]:
    if state.phase != "test-time":
        return (yield)
    sc = state.scratch(NAME)
    snap = snapshot(model)
    sc.active = True
    try:
        _setup(model, state)
        return (yield)
    finally:
        restore(model, snap)
        sc.active, sc.params, sc.optimizer, sc.initial = False, [], None, None


@hookimpl
def mixhub_eval_forward(model: nn.Module, batch: Batch, state: State) -> dict[str, Any] | None:
    sc = state.scratch(NAME)
    if state.phase != "test-time" or not getattr(sc, "active", False):
        return None
    opts: TentOptions = state.options(NAME)
    if not sc.params:  # layers swapped in after our setup: collect again
        _setup(model, state)
    if opts.episodic and sc.initial is not None:
        load_values(model, sc.initial)
        sc.optimizer = _optimizer(sc.params, opts, state.batch_size)
    x = batch.inputs
    if sc.optimizer is None:
        logits = model(x)
    else:
        for _ in range(opts.steps):
            logits = tent_step(model, x, sc.optimizer)
    ent = softmax_entropy(logits)
    sc.entropy_sum += float(ent.sum())
    sc.count += int(ent.numel())
    return {"logits": logits}


@hookimpl
def mixhub_metrics(stage: str, state: State) -> dict[str, float] | None:
    sc = state.scratch(NAME)
    if stage != "test-time" or not getattr(sc, "count", 0):
        return None
    return {"tent/entropy": sc.entropy_sum / sc.count}
