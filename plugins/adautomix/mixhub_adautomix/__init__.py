"""Adversarial AutoMixup (AdAutoMix) for mixhub, with a pure functional API."""

from .features import mix_logits, one_hot_logits, stage_features
from .functional import (
    MaskGenerator,
    apply_lam_margin,
    cosine_consistency,
    ema_momentum,
    ema_update_,
    generator_objective,
    is_adversarial_step,
    mask_statistics,
    mix_ce,
    mix_with_masks,
    no_repeat_permutation,
    sample_mix_lambdas,
)

__all__ = [
    "MaskGenerator",
    "apply_lam_margin",
    "cosine_consistency",
    "ema_momentum",
    "ema_update_",
    "generator_objective",
    "is_adversarial_step",
    "mask_statistics",
    "mix_ce",
    "mix_logits",
    "mix_with_masks",
    "no_repeat_permutation",
    "one_hot_logits",
    "sample_mix_lambdas",
    "stage_features",
]
