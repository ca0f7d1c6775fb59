"""Manifold Mixup (Verma et al., ICML 2019) for mixhub: mix hidden states at a random layer."""

from .functional import manifold_forward, mix_hidden

__all__ = ["manifold_forward", "mix_hidden"]
