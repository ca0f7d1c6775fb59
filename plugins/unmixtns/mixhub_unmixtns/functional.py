"""UnMix-TNS: test-time normalisation from K online statistics components.

Paper: D. Tomar, G. Vray, J.-P. Thiran, B. Bozorgtabar, "Un-Mixing Test-Time Normalization
Statistics: Combatting Label Temporal Correlation", ICLR 2024 (arXiv 2401.08328).
Official layer: ``devavratTomar/unmixtns`` ``tta_experiments/unmixtns.py`` (init, forward,
update) and ``replace_bn_layers`` (momentum formula).

This module is the pure functional API, usable in any loop::

    model = replace_batchnorm(model, num_components=16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for x, y in stream:
            logits = model(x)            # every forward also updates the components (official)
    restore_batchnorm(model)

The forward uses closed forms over ``[B, K] x [K, C]`` matmuls instead of the official
``[B, K, C]`` temporaries, and a two-pass variance instead of ``torch.var`` (equal up to
rounding; see the plugin README).
"""

from __future__ import annotations

import math
import warnings
from contextlib import nullcontext
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixhub import TestTimeNorm

__all__ = [
    "UnMixTNS2d",
    "UnMixTNS1d",
    "unmix_momentum",
    "instance_stats",
    "unmix_statistics",
    "replace_batchnorm",
    "restore_batchnorm",
    "unmix_layers",
]

UpdatePolicy = Literal["always", "train", "never"]
_UPDATE = ("always", "train", "never")


def unmix_momentum(bn_momentum: float, batch_size: int, batch_size_max: int) -> float:
    """Component momentum ``1 - (1 - m) ** (B / B_max)`` (official ``replace_bn_layers``).

    Keeps the per-sample decay of the components constant across batch sizes; evaluated in
    Python floats in this order, so ``(0.1, 64, 64)`` gives ``0.09999999999999998``.
    """
    if batch_size < 1 or batch_size_max < 1:
        raise ValueError(f"batch sizes must be positive, got batch_size={batch_size}, batch_size_max={batch_size_max}")
    return 1 - (1 - float(bn_momentum)) ** (batch_size / batch_size_max)


def instance_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-instance channel mean and population variance over all but the first two dims.

    Two passes (the mean, then the mean of squared deviations): ``torch.var`` over (H, W) is
    very slow on CPU at small spatial sizes, and ``E[x^2] - E[x]^2`` cancels. Gradients flow.
    """
    dims = tuple(range(2, x.dim()))
    mu = x.mean(dims)
    shape = (*mu.shape, *([1] * len(dims)))
    var = (x - mu.reshape(shape)).square().mean(dims)
    return mu, var


def unmix_statistics(
    mu: Tensor, var: Tensor, means: Tensor, variances: Tensor, temperature: float = 0.07
) -> tuple[Tensor, Tensor, Tensor]:
    """Pooled per-instance statistics of paper Eqs. 5-7 (mixing then law of total variance).

    Args:
        mu, var: instance mean and variance, ``[B, C]`` (gradients flow through both).
        means, variances: component statistics ``M``, ``V``, ``[K, C]`` (constants).
        temperature: softmax temperature of the cosine assignment.

    Returns:
        ``(mu_bar, var_bar, p)``: ``[B, C]``, ``[B, C]`` and the assignment ``[B, K]``
        (computed without grad). Closed forms centred at ``m_bar = mean_k M_k``; no
        ``[B, K, C]`` tensor is built.
    """
    k = means.shape[0]
    with torch.no_grad():
        s = F.normalize(mu.detach(), dim=1) @ F.normalize(means, dim=1).t()
        p = torch.softmax(s / temperature, dim=1)
        q = 1 - p
        m_bar = means.mean(0)
        d = means - m_bar
        pd = p @ d
        pqd = (p * q) @ d
        qqdd = (q * q) @ (d * d)
        pv = variances.sum(0) - p @ variances
        psq = p.square().sum(1, keepdim=True)
    delta = mu - m_bar
    mu_c = (delta - pd) / k  # mu_bar - m_bar
    mean_var = (pv + var) / k
    mean_sq = (qqdd + 2 * delta * pqd + delta.square() * psq) / k
    var_bar = mean_var + mean_sq - mu_c.square()
    return m_bar + mu_c, var_bar, p


class _UnMixBase(TestTimeNorm):
    """Buffers, affine copies and the kept source BN shared by the 2-D and 1-D layers."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, num_components: int, generator: torch.Generator | None,
                 alpha: float) -> None:
        super().__init__()
        name = type(bn).__name__
        if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
            raise ValueError(
                f"{name} has track_running_stats=False: no source statistics to start UnMix-TNS components from"
            )
        if num_components < 1:
            raise ValueError(f"num_components must be >= 1, got {num_components}")
        c = bn.num_features
        mu_src = bn.running_mean.detach().clone()
        var_src = bn.running_var.detach().clone()
        self.num_features = c
        self.num_components = num_components
        self.eps = bn.eps
        if num_components == 1:  # alpha taken as 0, no RNG draw
            means = mu_src[None].clone()
            variances = var_src[None].clone()
        else:
            noise = torch.randn((num_components, c), generator=generator, device=mu_src.device, dtype=mu_src.dtype)
            scale = math.sqrt(alpha * num_components / (num_components - 1))
            means = mu_src + scale * var_src.sqrt() * noise
            variances = ((1 - alpha) * var_src)[None].expand(num_components, c).clone()
        self.register_buffer("component_means", means)
        self.register_buffer("component_vars", variances)
        self.register_buffer("source_mean", mu_src)
        self.register_buffer("source_var", var_src)
        if bn.affine:
            self.weight = nn.Parameter(bn.weight.detach().clone())
            self.bias = nn.Parameter(bn.bias.detach().clone())
        else:
            self.weight = None
            self.bias = None
        # The original layer stays outside the module tree: absent from parameters() and state_dict().
        object.__setattr__(self, "source_bn", bn)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_components={self.num_components}, eps={self.eps}"


class UnMixTNS2d(_UnMixBase):
    """UnMix-TNS replacement of a ``BatchNorm2d`` (paper §3; official ``UnMixTNS2d``).

    Buffers: ``component_means`` / ``component_vars`` ``[K, C]`` (official ``running_means_mat`` /
    ``running_vars_mat``), ``source_mean`` / ``source_var`` ``[C]``. Parameters: ``weight``,
    ``bias`` (copies of the BN affine; ``None`` when ``affine=False``). Submodules ``drop`` and
    ``act`` carry a timm ``BatchNormAct2d``'s dropout and activation (``Identity`` otherwise).
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, num_components: int = 16,
                 generator: torch.Generator | None = None, *, batch_size: int = 64, batch_size_max: int = 64,
                 momentum: float | None = None, temperature: float = 0.07, alpha: float = 0.5,
                 update: UpdatePolicy = "always", bn_momentum_fallback: float = 0.1,
                 momentum_from_actual_batch: bool = False) -> None:
        super().__init__(bn, num_components, generator, alpha)
        if update not in _UPDATE:
            raise ValueError(f"update must be one of {_UPDATE}, got {update!r}")
        bn_mom = bn.momentum
        if bn_mom is None:
            warnings.warn(
                f"{type(bn).__name__}({bn.num_features}) has momentum=None (cumulative average); "
                f"UnMix-TNS uses m={bn_momentum_fallback} in its momentum formula",
                stacklevel=3,
            )
            bn_mom = bn_momentum_fallback
        self.bn_momentum = float(bn_mom)
        self.batch_size_max = batch_size_max
        self.momentum = float(momentum) if momentum is not None else unmix_momentum(bn_mom, batch_size, batch_size_max)
        self.momentum_from_actual_batch = momentum_from_actual_batch
        self.temperature = temperature
        self.update = update
        drop, act = getattr(bn, "drop", None), getattr(bn, "act", None)
        self.drop = drop if isinstance(drop, nn.Module) else nn.Identity()
        self.act = act if isinstance(act, nn.Module) else nn.Identity()
        self.last_assignment: Tensor | None = None

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm, num_components: int = 16,
                       generator: torch.Generator | None = None, **kwargs: Any) -> UnMixTNS2d:
        """Build the layer from a trained BN (see ``__init__`` for the keyword options)."""
        return cls(bn, num_components, generator, **kwargs)

    def _should_update(self) -> bool:
        return self.update == "always" or (self.update == "train" and self.training)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"UnMixTNS2d expects [B, C, H, W] input, got shape {tuple(x.shape)}")
        xs = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        ctx = torch.autocast(x.device.type, enabled=False) if torch.is_autocast_enabled(x.device.type) else nullcontext()
        with ctx:
            mu, var = instance_stats(xs)
            means, variances = self.component_means, self.component_vars
            mu_bar, var_bar, p = unmix_statistics(mu, var, means.to(mu.dtype), variances.to(mu.dtype), self.temperature)
            scale = torch.rsqrt(var_bar + self.eps)
            if self.weight is not None:
                scale = scale * self.weight.to(scale.dtype)
            shift = -mu_bar * scale
            if self.bias is not None:
                shift = shift + self.bias.to(scale.dtype)
            if self._should_update():
                self._update(mu.detach(), var.detach(), p)
            self.last_assignment = p
        y = x * scale.to(x.dtype)[:, :, None, None] + shift.to(x.dtype)[:, :, None, None]
        return self.act(self.drop(y))

    @torch.no_grad()
    def _update(self, mu: Tensor, var: Tensor, p: Tensor) -> None:
        """Paper Eq. 8, in place: ``M += Mom/B * (P^T mu - diag(sum_b p_bk) M)`` (and V alike)."""
        b = mu.shape[0]
        mom = unmix_momentum(self.bn_momentum, b, self.batch_size_max) if self.momentum_from_actual_batch else self.momentum
        means, variances = self.component_means, self.component_vars
        mass = p.sum(0)[:, None]
        new_m = means + mom / b * (p.t() @ mu - mass * means.to(mu.dtype)).to(means.dtype)
        new_v = variances + mom / b * (p.t() @ var - mass * variances.to(var.dtype)).to(variances.dtype)
        means.copy_(new_m)
        variances.copy_(new_v)


class UnMixTNS1d(_UnMixBase):
    """BatchNorm1d under UnMix-TNS (official): a fixed source-statistics BN with trainable affine.

    ``y = (x - mu_src) / sqrt(var_src + eps) * weight + bias`` for ``(B, C)`` or ``(B, C, L)``
    inputs. The K components are drawn (RNG parity with the official code) but unused.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, num_components: int = 16,
                 generator: torch.Generator | None = None, *, alpha: float = 0.5, **_: Any) -> None:
        super().__init__(bn, num_components, generator, alpha)

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm, num_components: int = 16,
                       generator: torch.Generator | None = None, **kwargs: Any) -> UnMixTNS1d:
        return cls(bn, num_components, generator, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() not in (2, 3):
            raise ValueError(f"UnMixTNS1d expects (B, C) or (B, C, L) input, got shape {tuple(x.shape)}")
        return F.batch_norm(x, self.source_mean, self.source_var, self.weight, self.bias, False, 0.0, self.eps)


def _set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def replace_batchnorm(model: nn.Module, num_components: int = 16, generator: torch.Generator | None = None, *,
                      batch_size: int = 64, batch_size_max: int = 64, momentum: float | None = None,
                      bn1d: Literal["source", "keep"] = "source", update: UpdatePolicy = "always",
                      temperature: float = 0.07, alpha: float = 0.5, bn_momentum_fallback: float = 0.1,
                      momentum_from_actual_batch: bool = False) -> nn.Module:
    """Swap every ``BatchNorm2d`` (and subclass, e.g. timm ``BatchNormAct2d``) for ``UnMixTNS2d``.

    In place, in ``named_modules()`` order (one ``randn((K, C))`` per layer, ``BatchNorm1d``
    included when ``bn1d="source"``, as the official ``replace_bn_layers``). Layers already
    swapped are skipped. SyncBatchNorm, FrozenBatchNorm2d, BatchNorm3d, LayerNorm, GroupNorm
    and InstanceNorm are left alone. Returns the model, or the new layer when ``model`` is
    itself a BN. Warns (naming the model) when nothing was swapped.
    """
    if bn1d not in ("source", "keep"):
        raise ValueError(f"bn1d must be 'source' or 'keep', got {bn1d!r}")
    kw2d = dict(batch_size=batch_size, batch_size_max=batch_size_max, momentum=momentum, temperature=temperature,
                alpha=alpha, update=update, bn_momentum_fallback=bn_momentum_fallback,
                momentum_from_actual_batch=momentum_from_actual_batch)
    swapped = 0
    root: nn.Module = model
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.BatchNorm2d):
            try:
                new: nn.Module = UnMixTNS2d(module, num_components, generator, **kw2d)
            except ValueError as exc:
                raise ValueError(f"layer {name or '<model>'!r}: {exc}") from None
        elif isinstance(module, nn.BatchNorm1d) and bn1d == "source":
            try:
                new = UnMixTNS1d(module, num_components, generator, alpha=alpha)
            except ValueError as exc:
                raise ValueError(f"layer {name or '<model>'!r}: {exc}") from None
        else:
            continue
        new.train(module.training)
        swapped += 1
        if name:
            _set_child(model, name, new)
        else:
            root = new
    if swapped == 0 and not any(isinstance(m, TestTimeNorm) for m in model.modules()):
        warnings.warn(
            f"UnMix-TNS: model {type(model).__name__} has no BatchNorm2d/BatchNorm1d layer; nothing was swapped "
            "(LayerNorm/GroupNorm models such as ViT, Swin, ConvNeXt gain nothing; convert SyncBatchNorm or "
            "FrozenBatchNorm2d to BatchNorm2d first)",
            stacklevel=2,
        )
    return root


def unmix_layers(model: nn.Module) -> dict[str, _UnMixBase]:
    """The UnMix-TNS layers of a model, by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _UnMixBase)}


def restore_batchnorm(model: nn.Module, *, copy_affine: bool = False) -> nn.Module:
    """Put the original BN objects back (statistics and affine unchanged).

    ``copy_affine=True`` carries the adapted ``weight``/``bias`` over to the BN. Returns the
    model, or the original BN when ``model`` is itself an UnMix-TNS layer.
    """
    root: nn.Module = model
    for name, layer in list(unmix_layers(model).items()):
        bn = layer.source_bn
        if copy_affine and layer.weight is not None:
            with torch.no_grad():
                bn.weight.copy_(layer.weight)
                bn.bias.copy_(layer.bias)
        if name:
            _set_child(model, name, bn)
        else:
            root = bn
    return root
