"""Public marker class for test-time normalisation layers."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["TestTimeNorm"]


class TestTimeNorm(nn.Module):
    """Base class of norm layers that adapt at test time (e.g. UnMix-TNS).

    Subclasses keep an affine ``weight`` and ``bias`` (``nn.Parameter`` or ``None``) so that
    other plugins (e.g. TENT) can find and train them without importing the defining plugin.
    """

    __test__ = False  # not a pytest test class, despite its name

    weight: Tensor | None
    bias: Tensor | None

    def affine_parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.weight, self.bias) if isinstance(p, nn.Parameter)]
