"""RankMixup for mixhub: cross-entropy on the raw batch plus a ranking loss on mixed copies.

The functional API works in any PyTorch loop; ``mixhub_rankmixup.plugin`` wires it into mixhub.
"""

from .functional import (
    SAME_CLASS_TOL,
    make_mixed_views,
    mndcg_loss,
    mndcg_per_sample,
    mrl_loss,
    rankmixup_loss,
    same_class_rows,
    sample_lams,
)

__all__ = [
    "SAME_CLASS_TOL",
    "make_mixed_views",
    "mndcg_loss",
    "mndcg_per_sample",
    "mrl_loss",
    "rankmixup_loss",
    "same_class_rows",
    "sample_lams",
]
