"""mixhub hooks of ``timm-mixup``: timm's Mixup/CutMix recipe as a sampler whose pairing is a ``MixPlan``.

Owns ``sample_pairs`` (timm's draws, as a plan: partner ``B-1-i``, lam per sample, a mask when
boxes are pasted) and ``mix_batch`` (timm's arithmetic, so the mixed inputs are bitwise those of
``timm.data.Mixup``). The loss is left to the core (cross-entropy weighted by the plan, with
``train.label_smoothing``: equal to timm's soft-target cross-entropy on its smoothed mixed
targets) or to a loss plugin such as ``decoupled``. The math is in ``functional``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from mixhub import Batch, ConfigError, MixPlan, PluginOptions, PluginSpec, State, hookimpl

from .functional import MixupConfig, mix_inputs, sample, soft_targets, to_plan

NAME = "timm-mixup"


class TimmMixupOptions(PluginOptions):
    """timm's ``Mixup`` arguments (``--mixup``, ``--cutmix``, ... of timm's train.py)."""

    mixup_alpha: float = Field(1.0, ge=0.0, description="mixup Beta(alpha, alpha); mixup is active when > 0")
    cutmix_alpha: float = Field(0.0, ge=0.0, description="CutMix Beta(alpha, alpha); CutMix is active when > 0")
    cutmix_minmax: tuple[float, float] | None = Field(
        None, description="CutMix box sides as uniform fractions [min, max) of the image (forces cutmix_alpha=1)"
    )
    prob: float = Field(1.0, ge=0.0, le=1.0, description="probability of mixing a batch, pair or sample")
    switch_prob: float = Field(0.5, ge=0.0, le=1.0, description="probability of CutMix when both are active")
    mode: Literal["batch", "pair", "elem"] = Field("batch", description="one draw per batch, per pair (i, B-1-i) or per sample")
    correct_lam: bool = Field(True, description="lam = the anchor's visible area when the box is clipped")
    off_epoch: int = Field(0, ge=0, description="stop mixing from this epoch on (timm's --mixup-off-epoch; 0: never)")

    @model_validator(mode="after")
    def _active(self) -> TimmMixupOptions:
        if self.mixup_alpha == 0 and self.cutmix_alpha == 0 and self.cutmix_minmax is None:
            raise ValueError("timm-mixup: one of mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax must be set")
        return self

    @property
    def lam_mode(self) -> str:
        """One lam per batch or per sample, under the name loss plugins read (``decoupled``)."""
        return self.mode

    def to_config(self) -> MixupConfig:
        return MixupConfig(
            mixup_alpha=self.mixup_alpha,
            cutmix_alpha=self.cutmix_alpha,
            cutmix_minmax=self.cutmix_minmax,
            prob=self.prob,
            switch_prob=self.switch_prob,
            mode=self.mode,
            correct_lam=self.correct_lam,
        )


def _validate(options: TimmMixupOptions, config: object) -> list[str]:
    batch_size = getattr(getattr(config, "train", None), "batch_size", 2)
    if batch_size % 2:
        raise ConfigError(f"timm-mixup pairs sample i with B-1-i: train.batch_size must be even, got {batch_size}")
    return []


PLUGIN = PluginSpec(
    name=NAME,
    options=TimmMixupOptions,
    slots=("sample_pairs", "mix_batch"),
    task_kinds=("classification",),
    description="timm's Mixup/CutMix recipe (switch_prob, cutmix_minmax, batch/pair/elem) with its pairing as a MixPlan",
    validate=_validate,
    example={"timm-mixup": {"cutmix_alpha": 1.0, "mode": "pair"}},
)


def _rng(state: State) -> np.random.RandomState:
    """A numpy stream for this step, seeded from the run's generator (so runs and resumes repeat)."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=state.generator))
    return np.random.RandomState(seed)


@hookimpl
def mixhub_sample_pairs(batch: Batch, state: State) -> MixPlan:
    opts: TimmMixupOptions = state.options(NAME)
    x = batch.inputs
    if opts.off_epoch and state.epoch >= opts.off_epoch:
        return MixPlan.identity(batch.size, device=x.device)
    if batch.size % 2:
        raise ValueError(f"timm-mixup: the batch has {batch.size} samples; pairing i with B-1-i needs an even batch")
    image_hw = tuple(x.shape[-2:]) if x.dim() == 4 else None
    cfg = opts.to_config()
    if cfg.cutmix_alpha > 0 and image_hw is None:
        raise ValueError(f"timm-mixup: CutMix needs image inputs [B, C, H, W], got shape {tuple(x.shape)}")
    draw = sample(cfg, batch.size, image_hw, _rng(state))  # type: ignore[arg-type]
    plan = to_plan(draw, image_hw, device=x.device)  # type: ignore[arg-type]
    if state.num_classes:
        smoothing = float(state.config.train.label_smoothing)
        plan.extras["soft_targets"] = soft_targets(batch.targets, state.num_classes, draw, smoothing, dtype=x.dtype)
    return plan


@hookimpl
def mixhub_mix_batch(batch: Batch, plan: MixPlan, state: State) -> Batch:
    draw = plan.extras.get("timm_mixup")
    if draw is None:  # identity plan (off_epoch)
        return batch
    return batch.replace(inputs=mix_inputs(batch.inputs, draw))
