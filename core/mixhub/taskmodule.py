"""``TaskModule``: the model and every plugin-registered module, with the training forward.

The one ``nn.Module`` a distributed wrapper (DDP, FSDP) or ``torch.compile`` wraps: its
``forward(batch)`` is ``Session._forward``, every trainable computation of a step (see
``mixhub.engine``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .batch import Batch

__all__ = ["TaskModule"]


class TaskModule(nn.Module):
    """The model and every plugin-registered module, with the training forward in ``forward``.

    ``forward(batch)`` returns ``{"loss": total, "output": logits, "outputs": {...}, "logs":
    {...}}``. Parameter names carry a ``model.`` prefix; ``no_weight_decay`` and
    ``group_matcher`` pass the model's own on (prefixed), so timm's optimizer factory builds
    the same weight-decay and layer-decay groups from this module as from the model (plugin
    modules join the last layer).
    """

    _session: Any  # the owning mixhub.Session (not a submodule)
    net: nn.Module

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.model = session.model
        self.plugin_modules = nn.ModuleDict({key.replace(".", "__"): spec.module for key, spec in session.state.modules.items()})
        object.__setattr__(self, "_session", session)  # not a submodule
        object.__setattr__(self, "net", session.model)  # what the forward slot calls (compiled model, if any)

    def forward(self, batch: Batch) -> dict[str, Any]:
        return self._session._forward(batch, self.net)

    def train(self, mode: bool = True) -> TaskModule:
        """Train mode for the model; plugin modules keep the mode they asked for (``train_mode``)."""
        self.training = mode
        self.model.train(mode)
        for spec in self._session.state.modules.values():
            spec.module.train(mode if spec.train_mode is None else spec.train_mode)
        return self

    def no_weight_decay(self) -> set[str]:
        own = getattr(self.model, "no_weight_decay", None)
        return {f"model.{n}" for n in own()} if callable(own) else set()

    def group_matcher(self, coarse: bool = False) -> Any:
        from timm.models import group_parameters

        own = getattr(self.model, "group_matcher", None)
        if not callable(own):
            return {}
        layer_of = group_parameters(self.model, own(coarse=coarse), reverse=True)
        last = max(layer_of.values(), default=0)

        def matcher(name: str) -> int:
            if name.startswith("model."):
                return layer_of.get(name[len("model.") :], last)
            return last

        return matcher
