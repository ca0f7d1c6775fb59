"""RankMixup for mixhub: cross-entropy on the raw batch plus a ranking loss on mixed copies.

The functional API works in any PyTorch loop; ``mixhub_rankmixup.plugin`` wires it into mixhub.
"""

from .functional import (
    make_mixed_views,
    masked_cross_entropy,
    mix_at_layer,
    mix_copies,
    mixed_copy_targets,
    mndcg_loss,
    mndcg_per_sample,
    mrl_loss,
    ranking_rows,
    rankmixup_loss,
    same_class_rows,
    sample_lams,
)

__all__ = [
    "make_mixed_views",
    "masked_cross_entropy",
    "mix_at_layer",
    "mix_copies",
    "mixed_copy_targets",
    "mndcg_loss",
    "mndcg_per_sample",
    "mrl_loss",
    "rankmixup_loss",
    "ranking_rows",
    "same_class_rows",
    "sample_lams",
]
