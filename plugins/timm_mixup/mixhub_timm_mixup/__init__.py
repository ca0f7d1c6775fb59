"""mixhub-timm-mixup: timm's Mixup/CutMix recipe, reproduced exactly, with its pairing as a MixPlan."""

from __future__ import annotations

from .functional import MixDraw, MixupConfig, mix_inputs, partner_index, sample, soft_targets, to_plan

__version__ = "0.1.0"

__all__ = ["MixDraw", "MixupConfig", "mix_inputs", "partner_index", "sample", "soft_targets", "to_plan"]
