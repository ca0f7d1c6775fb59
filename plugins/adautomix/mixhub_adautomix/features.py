"""Model-agnostic access to a network's stage features, pooled features and heads (timm API).

Used by the plugin for both the student and the EMA teacher:

* ``stage_features(net, x, index)``: the stage-``index`` output ``[B, C, h, w]`` through timm's
  ``forward_intermediates(x, indices=[index])`` (ViTs return tokens reshaped to NCHW);
* ``one_hot_logits(net, x)``: ``forward_head(forward_features(x))``, the model's own classifier;
* ``mix_logits(net, head, x)``: ``head(forward_head(forward_features(x), pre_logits=True))``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mixhub import ConfigError

__all__ = ["unwrap", "stage_features", "one_hot_logits", "mix_logits", "probe_geometry"]


def unwrap(net: nn.Module) -> nn.Module:
    """The plain module behind a DDP / ``torch.compile`` wrapper."""
    for attr in ("module", "_orig_mod"):
        inner = getattr(net, attr, None)
        if isinstance(inner, nn.Module):
            return unwrap(inner)
    return net


def _require(net: nn.Module, *names: str) -> None:
    missing = [n for n in names if not callable(getattr(net, n, None))]
    if missing:
        raise ConfigError(
            f"adautomix: model {type(net).__name__} has no {', '.join(missing)}; AdAutoMix reads 4-D stage "
            "features and pooled features through timm's API (forward_intermediates, forward_features, "
            "forward_head); use a timm CNN/ViT or the core's smallcnn"
        )


def stage_features(net: nn.Module, x: Tensor, index: int) -> Tensor:
    """Stage ``index`` output of ``net`` on ``x`` as ``[B, C, h, w]`` (full forward, as the official code)."""
    _require(net, "forward_intermediates")
    out: Any = net.forward_intermediates(x, indices=[index])
    inter = out[1] if isinstance(out, tuple) else out
    feat = inter[0] if isinstance(inter, (list, tuple)) else inter
    if not isinstance(feat, Tensor) or feat.dim() != 4:
        shape = tuple(feat.shape) if isinstance(feat, Tensor) else type(feat).__name__
        raise ConfigError(
            f"adautomix: stage {index} of {type(net).__name__} is not a [B, C, h, w] feature map (got {shape}); "
            "choose another adautomix.feature_index"
        )
    return feat


def one_hot_logits(net: nn.Module, x: Tensor) -> Tensor:
    return net.forward_head(net.forward_features(x))


def mix_logits(net: nn.Module, head: nn.Module | None, x: Tensor) -> Tensor:
    """Logits of the mix head on pooled features (``head=None``: the model's own classifier)."""
    feats = net.forward_features(x)
    if head is None:
        return net.forward_head(feats)
    return head(net.forward_head(feats, pre_logits=True))


@torch.no_grad()
def probe_geometry(
    net: nn.Module, input_shape: tuple[int, ...], index: int, device: torch.device
) -> dict[str, int]:
    """Channels and size of stage ``index`` and the pooled-feature width, from a dry run in eval mode."""
    _require(net, "forward_intermediates", "forward_features", "forward_head")
    if len(input_shape) != 3:
        raise ConfigError(
            f"adautomix needs image inputs [C, H, W], the data has input shape {tuple(input_shape)}"
        )
    was_training = net.training
    net.eval()
    try:
        x = torch.zeros(2, *input_shape, device=device)
        feat = stage_features(net, x, index)
        pre = net.forward_head(net.forward_features(x), pre_logits=True)
    finally:
        net.train(was_training)
    _, c, h, w = feat.shape
    return {"channels": int(c), "height": int(h), "width": int(w), "pre_logits": int(pre.shape[-1])}
