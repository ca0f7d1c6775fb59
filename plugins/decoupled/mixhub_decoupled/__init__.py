"""Decoupled Mixup (DM) for mixhub: the functional API.

``decoupled_mixup_loss(logits, y_a, y_b, lam, ...)`` is usable in any training loop; the
``mixhub_decoupled.plugin`` module adapts it to mixhub's ``compute_loss`` slot.
"""

from .functional import (
    decoupled_log_softmax,
    decoupled_mixup_loss,
    decoupled_multimix_loss,
    decoupled_regularizer,
    eta_weights,
    lambda_adjust,
    mixup_soft_cross_entropy,
    multi_eta_weights,
    official_skip_reason,
)
from .mechanism import fixed_test_mixes, mixed_top2_rate

__version__ = "0.1.0"

__all__ = [
    "decoupled_log_softmax",
    "decoupled_mixup_loss",
    "decoupled_multimix_loss",
    "lambda_adjust",
    "multi_eta_weights",
    "decoupled_regularizer",
    "eta_weights",
    "fixed_test_mixes",
    "mixed_top2_rate",
    "mixup_soft_cross_entropy",
    "official_skip_reason",
]
