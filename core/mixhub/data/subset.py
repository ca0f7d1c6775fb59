"""``data.subset``: train on a seeded random part of the training split (cheap screening runs)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from ..errors import DataError
from .base import DataBundle

__all__ = ["subset_indices", "apply_subset"]


def subset_indices(n: int, subset: float | int, seed: int) -> np.ndarray:
    """Sorted indices of the kept training samples: a share (float in (0, 1]) or a count (int).

    The draw depends only on ``n``, ``subset`` and ``seed`` (the split seed), so every arm of
    one seed trains on the same samples.
    """
    if isinstance(subset, bool) or subset <= 0:
        raise DataError(f"data.subset: must be a share in (0, 1] or a number of samples >= 1, got {subset!r}")
    if isinstance(subset, float):
        if subset > 1.0:
            raise DataError(f"data.subset: a share must lie in (0, 1], got {subset} (give a count as an integer)")
        k = max(1, int(round(subset * n)))
    else:
        if subset > n:
            raise DataError(f"data.subset: {subset} samples asked for, but the training split holds {n}")
        k = int(subset)
    rng = np.random.default_rng(seed + 2_147_483)
    return np.sort(rng.permutation(n)[:k])


def apply_subset(bundle: DataBundle, subset: Any, seed: int) -> DataBundle:
    """``bundle`` with its training split (and label bank) cut to ``data.subset``; unchanged when ``None``."""
    if subset is None:
        return bundle
    if bundle.task == "continual":
        raise DataError("data.subset: task streams (continual datasets) are not cut; leave it unset")
    n = len(bundle.train)  # type: ignore[arg-type]
    idx = subset_indices(n, subset, seed)
    bundle.train = Subset(bundle.train, idx.tolist())
    bundle.train_targets = bundle.train_targets[torch.as_tensor(idx, dtype=torch.long)]
    bundle.info = {**bundle.info, "subset": {"kept": len(idx), "of": n}}
    return bundle
