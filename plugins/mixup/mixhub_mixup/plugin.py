"""mixup / CutMix plugin: hooks only (the math is in ``functional``).

It owns the sampling slot only: the core's default mixer already interpolates with
``plan.lam`` and pastes with ``plan.mask``, and the default loss weighs CE by the plan.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from mixhub import Batch, MixPlan, PluginOptions, PluginSpec, State, hookimpl

from .functional import cutmix_plan, mixup_plan


class MixupOptions(PluginOptions):
    mode: Literal["mixup", "cutmix"] = Field("mixup", description="linear interpolation (mixup) or box pasting (cutmix)")
    alpha: float = Field(1.0, ge=0.0, description="Beta(alpha, alpha) for lam; 0 disables mixing")
    lam_mode: Literal["batch", "sample"] = Field("batch", description="one lam per batch or one per sample")
    prob: float = Field(1.0, ge=0.0, le=1.0, description="probability of mixing a batch")


PLUGIN = PluginSpec(
    name="mixup",
    options=MixupOptions,
    slots=("sample_pairs",),
    task_kinds=("classification", "regression"),
    description="mixup and CutMix: random in-batch partners, lam ~ Beta(alpha, alpha)",
)


@hookimpl
def mixhub_sample_pairs(batch: Batch, state: State) -> MixPlan:
    opts = state.options("mixup")
    g = state.generator
    device = batch.inputs.device
    if opts.prob < 1.0 and float(torch.rand((), generator=g)) >= opts.prob:
        return MixPlan.identity(batch.size, device=device)
    per_sample = opts.lam_mode == "sample"
    if opts.mode == "cutmix":
        if batch.inputs.dim() != 4:
            raise ValueError(f"mixup.mode=cutmix needs image inputs [B, C, H, W], got shape {tuple(batch.inputs.shape)}")
        _, _, h, w = batch.inputs.shape
        return cutmix_plan(batch.size, h, w, opts.alpha, per_sample=per_sample, generator=g, device=device)
    return mixup_plan(batch.size, opts.alpha, per_sample=per_sample, generator=g, device=device)
