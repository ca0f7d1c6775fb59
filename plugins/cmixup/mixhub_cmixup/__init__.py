"""C-Mixup for mixhub: label-similarity partner sampling for regression mixup.

The functional API works in any training loop; ``mixhub_cmixup.plugin`` adapts it to mixhub's hooks.
"""

from .functional import (
    KERNELS,
    SortedLabelBank,
    as_label_matrix,
    cmixup_batch,
    effective_bandwidth,
    pair_log_probabilities,
    pair_probabilities,
    pool_partners,
    sample_lam,
    sample_partners,
)

__all__ = [
    "KERNELS",
    "SortedLabelBank",
    "as_label_matrix",
    "cmixup_batch",
    "effective_bandwidth",
    "pair_log_probabilities",
    "pair_probabilities",
    "pool_partners",
    "sample_lam",
    "sample_partners",
]
