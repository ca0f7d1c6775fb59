"""AdAutoMix (Adversarial AutoMixup, ICLR 2024, arXiv 2312.11954): the pure math.

Everything here is usable in a plain PyTorch/timm loop; ``plugin.py`` only wires it to
mixhub's hooks. Official code: ``JinXins/Adversarial-AutoMixup@9d6fd12``:

* ``openmixup/models/heads/Ada_mix_pine.py`` (``AdaptiveMask``): the mask generator;
* ``openmixup/models/classifiers/AdAutoMix.py``: lambda draws, ``lam_margin``, the
  alternation of adversarial and cooperative generator objectives, the cosine term and
  ``momentum_update`` (the EMA teacher);
* ``openmixup/core/hooks/momentum_hook.py`` (``CosineScheduleHook``, OpenMixup): the
  momentum schedule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MaskGenerator",
    "no_repeat_permutation",
    "mix_with_masks",
    "sample_mix_lambdas",
    "mix_ce",
    "cosine_consistency",
    "generator_objective",
    "is_adversarial_step",
    "ema_momentum",
    "ema_update_",
    "apply_lam_margin",
    "mask_statistics",
]

LamLike = Sequence[float] | Tensor


def _lam_list(lams: LamLike, n: int) -> list[float]:
    if isinstance(lams, Tensor):
        values = [float(v) for v in lams.detach().reshape(-1).tolist()]
    else:
        values = [float(v) for v in lams]
    if len(values) != n:
        raise ValueError(f"expected {n} lambda values (one per source), got {len(values)}")
    return values


# =============================================================================== pairing
def no_repeat_permutation(
    n: int, generator: torch.Generator | None = None, *, ignore_failure: bool = False, tries: int = 10
) -> Tensor:
    """A random permutation of ``range(n)`` that tries to move every element (official ``mix_shuffle_no_repeat``).

    Mirrors ``AdAutoMix._no_repeat_shuffle_idx``: draw ``randperm(n)``; up to ``tries`` times, if
    some ``i`` maps to itself, draw again. After the last try the newest draw is kept
    *unchecked* with ``ignore_failure=True`` (the official classifier-branch call), while with
    ``ignore_failure=False`` (the generator-branch call) a failure -- the last checked draw had
    a fixed point -- falls back to a cyclic shift ``i -> (i + s) % n`` with ``s`` uniform in
    ``[1, n - 2]`` (``np.random.randint(1, n - 1)``), which moves every element. For ``n = 2``
    the only derangement ``s = 1`` is used (the official range is empty there); ``n = 1`` returns
    ``[0]``. Draws come from ``generator`` (CPU), so a seeded generator reproduces them.
    """
    if n < 1:
        raise ValueError(f"no_repeat_permutation: n must be >= 1, got {n}")
    ident = torch.arange(n)
    perm = torch.randperm(n, generator=generator)
    repeat = False
    for _ in range(tries):
        if bool((perm == ident).any()):
            repeat = True
            perm = torch.randperm(n, generator=generator)
        else:
            repeat = False
            break
    if repeat and not ignore_failure and n > 1:
        shift = int(torch.randint(1, n - 1, (1,), generator=generator)) if n > 2 else 1
        perm = (ident + shift) % n
    return perm


# =============================================================================== generator
class MaskGenerator(nn.Module):
    """Cross-attention mask generator over N samples (official ``AdaptiveMask``).

    For feature maps ``z_i`` ``[B, C, h, w]`` and weights ``lam_i`` (paper Sec. 3.2, Eq. 4-5):

    1. with ``lam_concat``, a constant channel ``lam_i`` is appended to ``z_i`` (``C' = C + 1``);
    2. ``q_i = ReLU(conv_q(z_i))`` ``[B, hw, d]``, ``k_i = ReLU(conv_k(z_i))`` ``[B, d, hw]``,
       ``v_i = conv_v(z_i)`` ``[B, hw, 1]`` with ``d = C // reduction`` (shared 1x1 convs;
       ``norm="bn"`` puts a BatchNorm between conv and ReLU, as mmcv's ``ConvModule``);
    3. ``A_i = softmax_keys(sum_{j != i} q_i k_j / sqrt(d))`` ``[B, hw, hw]`` in float32;
    4. ``m_i = A_i v_i`` ``[B, 1, h, w]``: each sample keeps its own values, re-weighted by
       its attention to the *other* samples' keys;
    5. ``M = softmax_N(upsample(concat_i m_i))`` ``[B, N, h*s, w*s]``.

    With the official N(0, 0.01) initialisation every mask starts at ~1/N everywhere.

    Args:
        in_channels: ``C`` of the feature maps.
        reduction: ``d = max(C // reduction, 1)``.
        lam_concat: append the lambda channel.
        scale_factor: upsampling factor ``s`` (input side / feature side).
        upsample_mode: ``"bilinear"`` (CNN configs) or ``"nearest"`` (ViT configs), ``align_corners=False``.
        use_scale: divide the attention logits by ``sqrt(d)``.
        norm: ``None`` (1x1 convs with bias) or ``"bn"``.
        init_std: std of the normal initialisation of every conv (bias 0).
        nan_policy: ``"official"`` (recompute in float64, replace NaN by 1e-4 / 1e4 for
            N = 2 or 0.3 for N > 2) or ``"raise"``.
    """

    def __init__(
        self,
        in_channels: int,
        reduction: int = 2,
        lam_concat: bool = False,
        scale_factor: int = 4,
        upsample_mode: str = "bilinear",
        use_scale: bool = True,
        norm: str | None = None,
        init_std: float = 0.01,
        nan_policy: str = "official",
    ) -> None:
        super().__init__()
        if upsample_mode not in ("bilinear", "nearest", "bicubic"):
            raise ValueError(
                f"MaskGenerator: upsample_mode must be bilinear, nearest or bicubic, got {upsample_mode!r}"
            )
        if norm not in (None, "bn"):
            raise ValueError(f"MaskGenerator: norm must be None or 'bn', got {norm!r}")
        if nan_policy not in ("official", "raise"):
            raise ValueError(f"MaskGenerator: nan_policy must be 'official' or 'raise', got {nan_policy!r}")
        self.in_channels = int(in_channels)
        self.reduction = int(reduction)
        self.inter_channels = max(self.in_channels // self.reduction, 1)
        self.lam_concat = bool(lam_concat)
        self.scale_factor = int(scale_factor)
        self.upsample_mode = upsample_mode
        self.use_scale = bool(use_scale)
        self.norm = norm
        self.init_std = float(init_std)
        self.nan_policy = nan_policy
        c_in = self.in_channels + int(self.lam_concat)
        d = self.inter_channels
        self.conv_q = nn.Conv2d(c_in, d, 1, bias=norm is None)
        self.conv_k = nn.Conv2d(c_in, d, 1, bias=norm is None)
        self.norm_q: nn.Module = nn.BatchNorm2d(d) if norm == "bn" else nn.Identity()
        self.norm_k: nn.Module = nn.BatchNorm2d(d) if norm == "bn" else nn.Identity()
        self.conv_v = nn.Conv2d(c_in, 1, 1, bias=True)
        self.reset_parameters()

    def reset_parameters(self, init: str = "normal") -> None:
        """Official ``init_weights``: convs N(0, init_std) with bias 0 (or Kaiming fan-in), norms 1/0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if init == "normal":
                    nn.init.normal_(m.weight, 0.0, self.init_std)
                elif init == "kaiming":
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                else:
                    raise ValueError(f"unknown init {init!r} (normal or kaiming)")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _attention_logits(self, q: list[Tensor], k: list[Tensor]) -> list[Tensor]:
        out = []
        for i in range(len(q)):
            logits = sum(torch.matmul(q[i], k[j]) for j in range(len(k)) if j != i)
            assert isinstance(logits, Tensor)
            if self.use_scale:
                logits = logits / math.sqrt(self.inter_channels)
            out.append(logits)
        return out

    def _raw_masks(self, feats: list[Tensor], lam_values: list[float]) -> tuple[list[Tensor], list[Tensor]]:
        """Attention weights and values per source (float32)."""
        b, _, h, w = feats[0].shape
        if self.lam_concat:
            feats = [
                torch.cat([z, z.new_full((b, 1, h, w), lam)], dim=1) for z, lam in zip(feats, lam_values)
            ]
        q = [F.relu(self.norm_q(self.conv_q(z))).flatten(2).transpose(1, 2).float() for z in feats]
        k = [F.relu(self.norm_k(self.conv_k(z))).flatten(2).float() for z in feats]
        v = [self.conv_v(z).flatten(2).transpose(1, 2).float() for z in feats]
        logits = self._attention_logits(q, k)
        attn = [a.clamp(-1e25, 1e25).softmax(dim=-1) for a in logits]
        return attn, v

    def forward(self, features: Sequence[Tensor], lams: LamLike, *, return_logits: bool = False) -> Tensor:
        """Masks ``[B, N, h*s, w*s]`` (softmax over N) or their pre-softmax logits."""
        n = len(features)
        if n < 2:
            raise ValueError(f"MaskGenerator needs at least 2 feature maps, got {n}")
        shape = tuple(features[0].shape)
        if len(shape) != 4 or any(tuple(f.shape) != shape for f in features):
            raise ValueError(
                f"MaskGenerator: all feature maps must be [B, C, h, w] of one shape, got {[tuple(f.shape) for f in features]}"
            )
        if shape[1] != self.in_channels:
            raise ValueError(f"MaskGenerator: expected {self.in_channels} channels, got {shape[1]}")
        lam_values = _lam_list(lams, n)
        b, _, h, w = shape
        device_type = features[0].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            feats = [f.float() for f in features]
            attn, v = self._raw_masks(feats, lam_values)
            mask = torch.cat([torch.matmul(a, vi).reshape(b, 1, h, w) for a, vi in zip(attn, v)], dim=1)
            if self.nan_policy == "raise":
                if torch.isnan(mask).any():  # a host read, asked for by nan_policy="raise"
                    self._nan_fallback(attn, v, b, h, w)
            else:  # official: the float64 recompute when any entry is NaN, chosen on the device
                mask = torch.where(torch.isnan(mask).any(), self._nan_fallback(attn, v, b, h, w), mask)
            mask = F.interpolate(
                mask,
                scale_factor=self.scale_factor,
                mode=self.upsample_mode,
                align_corners=None if self.upsample_mode == "nearest" else False,
            )
            return mask if return_logits else mask.softmax(dim=1)

    def _nan_fallback(self, attn: list[Tensor], v: list[Tensor], b: int, h: int, w: int) -> Tensor:
        if self.nan_policy == "raise":
            raise FloatingPointError("adautomix: the mask generator produced NaN masks (nan_policy='raise')")
        n = len(attn)
        fill = [1e-4, 1e4] if n == 2 else [0.3] * n
        parts = []
        for i, (a, vi) in enumerate(zip(attn, v)):
            m = torch.matmul(a.double(), vi.double()).reshape(b, 1, h, w)
            parts.append(torch.where(torch.isnan(m), torch.full_like(m, fill[i]), m).float())
        return torch.cat(parts, dim=1)


# =============================================================================== mixing
def mix_with_masks(inputs_list: Sequence[Tensor], masks: Tensor) -> Tensor:
    """``sum_i masks[:, i:i+1] * inputs_list[i]`` (masks broadcast over colour channels).

    Official ``AdAutoMix.mixup`` / ``co_mixup``: ``x_mix = sum_i M_i * x[pi_i]``.
    """
    n = len(inputs_list)
    if masks.dim() != 4 or masks.shape[1] != n:
        raise ValueError(
            f"mix_with_masks: masks must be [B, {n}, H, W] for {n} inputs, got {tuple(masks.shape)}"
        )
    for x in inputs_list:
        if x.shape[0] != masks.shape[0]:
            raise ValueError(
                f"mix_with_masks: batch sizes differ: inputs {x.shape[0]}, masks {masks.shape[0]}"
            )
        if tuple(x.shape[-2:]) != tuple(masks.shape[-2:]):
            raise ValueError(
                f"mix_with_masks: mask size {tuple(masks.shape[-2:])} does not match input size {tuple(x.shape[-2:])}"
            )
    out = masks[:, 0:1].to(inputs_list[0].dtype) * inputs_list[0]
    for i in range(1, n):
        out = out + masks[:, i : i + 1].to(inputs_list[i].dtype) * inputs_list[i]
    return out


def _numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return np.random.default_rng(seed)


def sample_mix_lambdas(
    n: int,
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    sampler: str = "normalized_beta",
) -> list[float]:
    """One mixing-weight vector ``lam`` of length ``n`` summing to 1.

    ``"normalized_beta"`` (official, ``forward_train``): ``b_i ~ Beta(alpha, alpha)``,
    ``lam_i = b_i / sum(b)`` (not a Dirichlet); ``"dirichlet"``: ``Dirichlet(alpha, ..., alpha)``.
    ``"raw_beta"`` returns the ``n`` Beta draws unnormalised (the official N = 2 case draws
    two: ``lam_mb, lam_bb``). Draws are reproducible from the torch ``generator``.
    """
    if n < 1:
        raise ValueError("sample_mix_lambdas: n must be >= 1")
    if alpha <= 0:
        raise ValueError("sample_mix_lambdas: alpha must be > 0")
    rng = _numpy_rng(generator)
    if sampler in ("normalized_beta", "raw_beta"):
        b = rng.beta(alpha, alpha, n)
        if sampler == "raw_beta":
            return [float(v) for v in b]
        total = float(b.sum())
        if total <= 0:  # all draws underflowed to 0: fall back to equal weights
            return [1.0 / n] * n
        return [float(v) / total for v in b]
    if sampler == "dirichlet":
        return [float(v) for v in rng.dirichlet([alpha] * n)]
    raise ValueError(
        f"sample_mix_lambdas: unknown sampler {sampler!r} (normalized_beta, dirichlet, raw_beta)"
    )


# =============================================================================== losses
def _lam_weight(lam: float | Tensor, like: Tensor) -> Tensor | float:
    if isinstance(lam, Tensor):
        return lam.to(device=like.device, dtype=torch.float32).reshape(-1) if lam.dim() else float(lam)
    return float(lam)


def mix_ce(logits: Tensor, targets_list: Sequence[Tensor], lams: Sequence[float | Tensor]) -> Tensor:
    """``sum_i lam_i * CE(logits, y_i)`` with mean CE, logits cast to float32.

    Official ``ClsMixupHead.loss`` (N = 2, ``(y, y[index], lam)``) and ``co_loss`` (N > 2).
    A ``lam_i`` may be a float or a per-sample ``[B]`` tensor.
    """
    if len(targets_list) != len(lams):
        raise ValueError(f"mix_ce: {len(targets_list)} target sets but {len(lams)} weights")
    logits = logits.float()
    total = logits.new_zeros(())
    for y, lam in zip(targets_list, lams):
        ce = F.cross_entropy(logits, y, reduction="none")
        total = total + (_lam_weight(lam, ce) * ce).mean()
    return total


def cosine_consistency(
    mixed_logits: Tensor, source_logits_list: Sequence[Tensor], lams: Sequence[float | Tensor]
) -> Tensor:
    """``mean_b sum_i lam_i * cos(mixed_b, s_ib)`` on raw logit vectors (official ``forward_k``)."""
    if len(source_logits_list) != len(lams):
        raise ValueError(f"cosine_consistency: {len(source_logits_list)} sources but {len(lams)} weights")
    mixed = mixed_logits.float()
    total = mixed.new_zeros(mixed.shape[0])
    for s, lam in zip(source_logits_list, lams):
        total = total + _lam_weight(lam, mixed) * F.cosine_similarity(mixed, s.float(), dim=-1, eps=1e-8)
    return total.mean()


def generator_objective(
    loss_k: Tensor, cos: Tensor | float, adversarial: bool, beta: float = 0.3, *, cos_term: str = "official"
) -> Tensor:
    """The generator's loss (official ``forward_train``).

    Adversarial steps: ``-beta * L_k + (1 - beta) * cos`` (``cos_term="official"``; pushes the
    mixed prediction away from the sources) or ``-beta * L_k + (1 - beta) * (1 - cos)``
    (``"anchor"``). Cooperative steps: ``+L_k``.
    """
    if not adversarial:
        return loss_k
    if cos_term == "official":
        term = cos
    elif cos_term == "anchor":
        term = 1.0 - cos
    else:
        raise ValueError(f"generator_objective: cos_term must be 'official' or 'anchor', got {cos_term!r}")
    return -beta * loss_k + (1.0 - beta) * term


def is_adversarial_step(step: int, adv_interval: int = 2) -> bool:
    """Official alternation (``self.iter % 2 == 0``): step 0, 2, 4, ... adversarial.

    ``adv_interval`` 0 never adversarial, 1 always, k: every k-th optimizer step (from 0).
    """
    if adv_interval < 0:
        raise ValueError("adv_interval must be >= 0")
    if adv_interval == 0:
        return False
    return step % adv_interval == 0


def ema_momentum(
    step: int,
    total_steps: int,
    base: float = 0.999,
    end: float = 0.999999,
    scope: tuple[float, float] = (0.1, 1.0),
    warmup: str = "constant",
    *,
    schedule: str = "official",
) -> float:
    """Teacher momentum ``m(t)`` for the 0-based step ``t`` (OpenMixup ``CosineScheduleHook``).

    Inside ``[floor(scope0 * T), floor(scope1 * T)]``: ``end - (end - base) * (cos(pi t / T1) + 1) / 2``
    with the *global* ``t`` (``schedule="official"``: m jumps at the scope start) or
    ``t`` re-based on the window (``"smooth"``). Before the window: ``base`` (``warmup="constant"``)
    or, as the official formula reads, ``end - (end - base) * (t0 - t) / t0`` (``"linear"``:
    ``base`` at t = 0 rising to ``end`` at the window start). After it: ``end``.
    """
    if total_steps <= 0:
        return base
    t_max = int(total_steps * scope[1]) if scope[1] < 1 else total_steps
    t_min = int(total_steps * scope[0]) if scope[0] > 0 else 0
    if step < t_min:
        if warmup == "constant":
            return base
        if warmup == "linear":
            return end - (end - base) * (t_min - step) / t_min
        raise ValueError(f"ema_momentum: warmup must be 'constant' or 'linear', got {warmup!r}")
    if step > t_max:
        return end
    if schedule == "official":
        frac = step / float(t_max)
    elif schedule == "smooth":
        frac = (step - t_min) / float(max(t_max - t_min, 1))
    else:
        raise ValueError(f"ema_momentum: schedule must be 'official' or 'smooth', got {schedule!r}")
    return end - (end - base) * (math.cos(math.pi * frac) + 1) / 2


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float, *, buffers: bool = False) -> None:
    """``theta_T <- m * theta_T + (1 - m) * theta_S`` over parameters (official ``momentum_update``).

    With ``buffers=True`` floating buffers are copied too (not official: the official teacher
    keeps its own BatchNorm statistics).
    """
    t_params = list(teacher.parameters())
    s_params = list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError(f"ema_update_: teacher has {len(t_params)} parameters, student {len(s_params)}")
    for pt, ps in zip(t_params, s_params):
        pt.mul_(momentum).add_(ps.detach().to(pt.dtype), alpha=1.0 - momentum)
    if buffers:
        for bt, bs in zip(teacher.buffers(), student.buffers()):
            bt.copy_(bs)


def apply_lam_margin(masks: Tensor, lams: LamLike, margin: float, *, rule: str = "official") -> Tensor:
    """Replace the masks by constants ``lam_i`` when the lambdas are too extreme.

    Official (``AdAutoMix.mixup``/``co_mixup``): N = 2 falls back when ``margin >= lam_0`` or
    ``margin >= 1 - lam_0``; N > 2 when ``margin >= lam_0`` or ``margin > 1 - lam_0`` (only
    ``lam_0`` is tested). ``rule="all"``: fall back when any ``lam_i <= margin`` or ``>= 1 - margin``.
    Returns a new tensor (the input is unchanged); ``margin <= 0`` disables the fallback.
    """
    n = masks.shape[1]
    lam_values = _lam_list(lams, n)
    if margin <= 0:
        return masks
    if rule == "official":
        lam0 = lam_values[0]
        hit = margin >= lam0 or (margin >= 1 - lam0 if n == 2 else margin > 1 - lam0)
    elif rule == "all":
        hit = any(margin >= lam or margin >= 1 - lam for lam in lam_values)
    else:
        raise ValueError(f"apply_lam_margin: rule must be 'official' or 'all', got {rule!r}")
    if not hit:
        return masks
    const = torch.tensor(lam_values, dtype=masks.dtype, device=masks.device).reshape(1, n, 1, 1)
    return const.expand_as(masks).clone()


def mask_statistics(masks: Tensor) -> dict[str, Tensor]:
    """Per-channel mean, within-image spatial std and across-image std of the per-image weight
    (0-d tensors on the masks' device: nothing is read on the host)."""
    m = masks.detach().float()
    per_image = m.mean(dim=(2, 3))  # [B, N]
    out = {f"mask_mean_{i}": per_image[:, i].mean() for i in range(m.shape[1])}
    out["mask_spatial_std"] = m.flatten(2).std(dim=2, unbiased=False).mean()
    out["mask_image_std"] = per_image[:, 0].std(unbiased=False) if m.shape[0] > 1 else m.new_zeros(())
    return out
