"""TENT for mixhub: the functional API (the hooks live in ``mixhub_tent.plugin``)."""

from .functional import (
    Snapshot,
    collect_params,
    configure_model,
    restore,
    snapshot,
    softmax_entropy,
    tent_step,
)

__all__ = ["Snapshot", "collect_params", "configure_model", "restore", "snapshot", "softmax_entropy", "tent_step"]
