"""Models by name: any timm model (adapted to small inputs), ``mlp`` and ``smallcnn``.

Every model built here exposes timm's interface: ``forward_features``, ``forward_head``,
``get_classifier()``, ``num_features`` and ``feature_info`` (for the core models too).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ConfigError

log = logging.getLogger("mixhub")

__all__ = ["MLP", "SmallCNN", "build_model", "num_params", "small_input_decision"]


class MLP(nn.Module):
    """Tabular MLP: ``in -> hidden -> ... -> out``; each block is Linear (+ BatchNorm1d) + activation.

    ``act``: ``leaky_relu`` (slope 0.1, default) or ``relu``; ``norm``: ``none`` or ``batchnorm``.
    ``blocks[0]`` is the first Linear + activation (the manifold-mixing point C-Mixup uses);
    ``forward_features`` runs every block, ``forward_head`` the final Linear.
    """

    def __init__(
        self,
        in_features: int,
        num_outputs: int,
        hidden: tuple[int, ...] = (128, 128),
        drop_rate: float = 0.0,
        act: str = "leaky_relu",
        norm: str = "none",
    ) -> None:
        super().__init__()
        if act not in ("leaky_relu", "relu"):
            raise ConfigError(f"model.kwargs.act: {act!r} is not one of leaky_relu, relu")
        if norm not in ("none", "batchnorm"):
            raise ConfigError(f"model.kwargs.norm: {norm!r} is not one of none, batchnorm")
        dims = (in_features, *hidden)

        def block(a: int, b: int) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Linear(a, b)]
            if norm == "batchnorm":
                layers.append(nn.BatchNorm1d(b))
            layers.append(nn.LeakyReLU(0.1) if act == "leaky_relu" else nn.ReLU())
            if drop_rate:
                layers.append(nn.Dropout(drop_rate))
            return nn.Sequential(*layers)

        self.blocks = nn.ModuleList(block(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.num_features = dims[-1]
        self.head = nn.Linear(self.num_features, num_outputs)
        self.num_classes = num_outputs
        self.feature_info = [{"num_chs": d, "reduction": 1, "module": f"blocks.{i}"} for i, d in enumerate(hidden)]

    def forward_features(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x if pre_logits else self.head(x)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x.flatten(1)))


class SmallCNN(nn.Module):
    """A small BatchNorm CNN for fast proxies: 3 stages of conv-BN-ReLU (x2) + pool, GAP, linear."""

    def __init__(self, in_chans: int = 3, num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 128), drop_rate: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        self.feature_info = []
        for i, w in enumerate(widths):
            stage = nn.Sequential(
                nn.Conv2d(c, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
            )
            if i < len(widths) - 1:
                stage.append(nn.MaxPool2d(2))
            layers.append(stage)
            self.feature_info.append({"num_chs": w, "reduction": 2 ** min(i + 1, len(widths) - 1), "module": f"stages.{i}"})
            c = w
        self.stages = nn.Sequential(*layers)
        self.num_features = c
        self.num_classes = num_classes
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(c, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(x)

    def forward_intermediates(self, x: Tensor, indices: list[int] | int | None = None) -> tuple[Tensor, list[Tensor]]:
        """timm-style: ``(final_features, [stage outputs at indices])``."""
        n = len(self.stages)
        if indices is None:
            want = list(range(n))
        elif isinstance(indices, int):
            want = list(range(n - indices, n))
        else:
            want = [i % n for i in indices]
        inter = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in want:
                inter.append(x)
        return x, inter

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.drop(x.mean((2, 3)))
        return x if pre_logits else self.head(x)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.head = nn.Linear(self.num_features, num_classes)
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _adapt_small_input(model: nn.Module, keep_stem: bool = False) -> bool:
    """Make a timm CNN's stem keep resolution on 32x32 inputs (stride 1, no max-pool).

    Without pretrained weights the stem conv becomes a new 3x3 stride-1 conv. With pretrained
    weights (``keep_stem``) the pretrained conv stays, weights and all, and only runs at stride 1:
    the pretrained stem is never silently replaced. Returns whether the stem changed.
    """
    conv1 = getattr(model, "conv1", None)
    if not isinstance(conv1, nn.Conv2d) or conv1.stride == (1, 1):
        return False
    if keep_stem:
        conv1.stride = (1, 1)
    else:
        model.conv1 = nn.Conv2d(conv1.in_channels, conv1.out_channels, 3, 1, 1, bias=conv1.bias is not None)
    if hasattr(model, "maxpool"):
        model.maxpool = nn.Identity()
    return True


#: ``model.small_input=auto`` adapts the stem for images of at most this side (px).
SMALL_INPUT_MAX = 64


def small_input_decision(setting: bool | str, input_shape: tuple[int, ...]) -> tuple[bool, str]:
    """Whether to adapt the stem (``model.small_input``) for ``input_shape``, and why, in words."""
    side = min(input_shape[1:]) if len(input_shape) == 3 else 0
    if setting == "auto":
        if side <= SMALL_INPUT_MAX:
            return True, f"model.small_input=auto: {side} px images are small (<= {SMALL_INPUT_MAX} px)"
        return False, f"model.small_input=auto: {side} px images are not small (> {SMALL_INPUT_MAX} px)"
    return bool(setting), f"model.small_input={str(bool(setting)).lower()}"


def build_model(cfg: Any, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """Build ``cfg.name`` for inputs of ``input_shape`` with ``num_outputs`` outputs."""
    name = cfg.name
    kwargs = dict(cfg.kwargs)
    if cfg.checkpoint and name in ("mlp", "smallcnn"):
        raise ConfigError(f"model.checkpoint loads pretrained weights of timm models through timm; {name!r} is a mixhub model (resume a mixhub run with --resume instead)")
    if name == "mlp":
        if len(input_shape) != 1:
            kwargs.setdefault("in_features", int(torch.tensor(input_shape).prod()))
        hidden = tuple(kwargs.pop("hidden", (128, 128)))
        in_features = kwargs.pop("in_features", input_shape[0])
        act = kwargs.pop("act", "leaky_relu")
        norm = kwargs.pop("norm", "none")
        if kwargs:
            raise ConfigError(f"model.kwargs: unknown option(s) {sorted(kwargs)} for mlp (known: hidden, in_features, act, norm)")
        return MLP(in_features, num_outputs, hidden, cfg.drop_rate, act=act, norm=norm)
    if name == "smallcnn":
        widths = tuple(kwargs.pop("widths", (32, 64, 128)))
        if kwargs:
            raise ConfigError(f"model.kwargs: unknown option(s) {sorted(kwargs)} for smallcnn (known: widths)")
        return SmallCNN(input_shape[0], num_outputs, widths, cfg.drop_rate)
    import timm

    if not timm.is_model(name):
        from ._util import did_you_mean

        raise ConfigError(f"model.name: unknown model {name!r}{did_you_mean(name, ['mlp', 'smallcnn', *timm.list_models()])}")
    if len(input_shape) != 3:
        raise ConfigError(f"model.name: timm model {name!r} needs image inputs, but the data has input shape {input_shape}")
    pretrained = bool(cfg.pretrained or cfg.checkpoint)
    if cfg.checkpoint:
        from pathlib import Path

        if not Path(cfg.checkpoint).is_file():
            raise ConfigError(f"model.checkpoint: {cfg.checkpoint!r} is not a file")
        kwargs["pretrained_cfg_overlay"] = {**kwargs.get("pretrained_cfg_overlay", {}), "file": str(cfg.checkpoint)}
    try:
        model = timm.create_model(
            name, pretrained=pretrained, num_classes=num_outputs, in_chans=input_shape[0], drop_rate=cfg.drop_rate, **_size_kwargs(name, input_shape, kwargs)
        )
    except Exception as exc:
        if cfg.checkpoint:
            raise ConfigError(f"model.checkpoint: could not load {cfg.checkpoint!r} into {name!r} ({type(exc).__name__}: {exc})") from exc
        if pretrained:
            raise ConfigError(
                f"model.pretrained: could not load pretrained weights for {name!r} ({type(exc).__name__}: {exc}); "
                "mixhub never downloads: place the weights in the local cache, give model.checkpoint=PATH, or set model.pretrained=false"
            ) from exc
        raise ConfigError(f"model: could not build timm model {name!r}: {exc}") from exc
    if cfg.checkpoint:
        _check_loaded(model, cfg.checkpoint)
    adapt, why = small_input_decision(cfg.small_input, input_shape)
    if adapt and _adapt_small_input(model, keep_stem=pretrained):
        how = "keeps its pretrained stem at stride 1" if pretrained else "gets a 3x3 stride-1 stem"
        note = f"{why}: {name} {how}, without max-pool (not timm's architecture; model.small_input=false keeps it)"
    elif adapt:
        note = f"{why}, but {name} has no conv1 stem to adapt: timm's architecture unchanged"
    else:
        note = f"{why}: {name} keeps timm's stem" + (" (model.small_input=true adapts it)" if cfg.small_input == "auto" else "")
    model.__dict__["mixhub_stem"] = note  # a plain attribute (not a parameter or buffer), printed at the start of a run
    return model


def _check_loaded(model: nn.Module, path: str) -> None:
    """timm loads pretrained files non-strictly; a file that lacks the model's weights must not
    leave them at their random initialisation silently. The classifier may differ (a new head)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"model.checkpoint: {path!r} is not a weights-only state dict ({type(exc).__name__}: {exc})") from exc
    for key in ("state_dict_ema", "state_dict", "model"):
        if isinstance(saved, dict) and isinstance(saved.get(key), dict):
            saved = saved[key]
            break
    saved = {k.removeprefix("module."): v for k, v in saved.items()} if isinstance(saved, dict) else {}
    head = str(getattr(model, "pretrained_cfg", {}).get("classifier") or "")
    missing = [k for k in model.state_dict() if k not in saved and not (head and k.startswith(head + "."))]
    if missing:
        raise ConfigError(
            f"model.checkpoint: could not load {path!r} into {type(model).__name__}: it lacks {len(missing)} of the model's "
            f"weights (e.g. {missing[:3]})"
        )


def _size_kwargs(name: str, input_shape: tuple[int, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    import timm

    out = dict(kwargs)
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is not None and "img_size" not in out and ("vit" in name or "deit" in name or "swin" in name):
        out["img_size"] = input_shape[1]
    return out


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
