"""Manifold Mixup as pure functions.

Manifold Mixup (Verma et al., "Manifold Mixup: Better Representations by Interpolating Hidden
States", ICML 2019) interpolates the hidden states of two samples at a layer k drawn at random
for each batch (k = 0 is the input), then trains on the interpolated labels:

    h_k = lam * h_k + (1 - lam) * h_k[index]
    loss = lam * CE(logits, y) + (1 - lam) * CE(logits, y[index])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mixhub import MixPlan


def mix_hidden(hidden: Tensor, plan: MixPlan) -> Tensor:
    """``lam * h + (1 - lam) * h[index]`` with per-sample ``lam`` broadcast over feature dims."""
    lam = plan.lam_as(hidden)
    return lam * hidden + (1 - lam) * hidden[plan.index]


def manifold_forward(model: nn.Module, x: Tensor, plan: MixPlan, layer: str) -> Tensor:
    """Run ``model(x)`` mixing the output of submodule ``layer`` (``""`` mixes the input).

    The mixing is done by a forward hook on that module, removed afterwards even on error.
    """
    if layer == "":
        return model(mix_hidden(x, plan))
    module = dict(model.named_modules()).get(layer)
    if module is None:
        raise ValueError(f"manifold: model has no submodule {layer!r}")

    def hook(_m: nn.Module, _inp: Any, out: Tensor) -> Tensor:
        return mix_hidden(out, plan)

    handle = module.register_forward_hook(hook)
    try:
        return model(x)
    finally:
        handle.remove()


def default_layers(model: nn.Module) -> list[str]:
    """The input and the model's stages/blocks, as timm and the core models name them."""
    for attr in ("stages", "blocks", "layers"):
        seq = getattr(model, attr, None)
        if isinstance(seq, (nn.Sequential, nn.ModuleList)) and len(seq) > 1:
            return [""] + [f"{attr}.{i}" for i in range(len(seq) - 1)]
    names = [n for n in ("layer1", "layer2", "layer3") if hasattr(model, n)]
    return [""] + names


def draw_layer(layers: list[str], generator: torch.Generator | None = None) -> str:
    return layers[int(torch.randint(len(layers), (1,), generator=generator))]
