"""DualMix (EnMix + AdpMix): mixup for online class-incremental replay, as a mixhub plugin."""

from .functional import (
    adapted_label_weight,
    adpmix,
    augment,
    beta_sample,
    classifier_norm_ratio,
    enmix,
    one_hot,
    pair_old_with_stream,
    soft_cross_entropy,
)

__all__ = [
    "adapted_label_weight",
    "adpmix",
    "augment",
    "beta_sample",
    "classifier_norm_ratio",
    "enmix",
    "one_hot",
    "pair_old_with_stream",
    "soft_cross_entropy",
]
