"""mixup and CutMix for mixhub (the baseline plugin), with a pure functional API."""

from .functional import (
    cutmix_batch,
    cutmix_box,
    cutmix_plan,
    mixup_batch,
    mixup_plan,
    mixup_target,
    sample_lam,
)

__all__ = ["cutmix_batch", "cutmix_box", "cutmix_plan", "mixup_batch", "mixup_plan", "mixup_target", "sample_lam"]
