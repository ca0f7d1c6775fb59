"""UnMix-TNS for mixhub: the functional API (the hooks live in ``mixhub_unmixtns.plugin``)."""

from .functional import (
    UnMixTNS1d,
    UnMixTNS2d,
    instance_stats,
    replace_batchnorm,
    restore_batchnorm,
    unmix_layers,
    unmix_momentum,
    unmix_statistics,
)

__all__ = [
    "UnMixTNS1d",
    "UnMixTNS2d",
    "instance_stats",
    "replace_batchnorm",
    "restore_batchnorm",
    "unmix_layers",
    "unmix_momentum",
    "unmix_statistics",
]
