"""mixhub-adamp: AdamP and SGDP (Heo et al., ICLR 2021), faithful to clovaai/AdamP, with a
fused CPU step and a branch-free multi-tensor step, usable in any PyTorch/timm loop."""

from __future__ import annotations

from . import functional
from .functional import projection, projection_branchless
from .native import available as fused_available
from .optim import IMPLS, SGDP, AdamP
from .registry import TIMM_NAMES, register_timm

__version__ = "0.1.0"

__all__ = [
    "AdamP",
    "SGDP",
    "IMPLS",
    "TIMM_NAMES",
    "functional",
    "fused_available",
    "projection",
    "projection_branchless",
    "register_timm",
]
