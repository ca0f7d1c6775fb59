"""timm's Mixup / CutMix recipe as pure functions that expose the pairing as a ``MixPlan``.

Behaviour of ``timm.data.Mixup`` (timm ``timm/data/mixup.py``): every sample ``i`` of a batch of
size B is paired with ``B - 1 - i`` (the batch flipped); each batch (``mode="batch"``), each
pair (``"pair"``) or each sample (``"elem"``) is mixed with probability ``prob``; when both
mixup and CutMix are active, CutMix is chosen with probability ``switch_prob``; mixup draws
``lam ~ Beta(mixup_alpha, mixup_alpha)``, CutMix ``lam ~ Beta(cutmix_alpha, cutmix_alpha)`` and
pastes the partner's box of side ``sqrt(1 - lam)`` times the image (or, with ``cutmix_minmax``,
a box whose sides are uniform fractions of the image); ``correct_lam`` resets lam to the
anchor's visible area when the box is clipped; targets are the label-smoothed one-hots mixed
with lam.

timm draws from numpy's global random state. ``sample`` takes a ``numpy.random.RandomState``
and makes the same draws in the same order, so a ``RandomState(seed)`` reproduces
``np.random.seed(seed)`` followed by timm's call exactly; ``mix_inputs`` and ``soft_targets``
repeat timm's arithmetic op for op (bitwise equal outputs). Why not call timm's class: it
mixes in place and returns only the soft targets, so the pairing and lam that loss plugins
need (``MixPlan``) would be lost; our draws are the same, and the plan keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from mixhub import MixPlan

__all__ = ["MixupConfig", "MixDraw", "sample", "to_plan", "mix_inputs", "soft_targets", "partner_index"]

Mode = Literal["batch", "pair", "elem"]


@dataclass(frozen=True)
class MixupConfig:
    """timm's ``Mixup`` arguments (same names and defaults, less ``num_classes``/``multi_label``)."""

    mixup_alpha: float = 1.0
    cutmix_alpha: float = 0.0
    cutmix_minmax: tuple[float, float] | None = None
    prob: float = 1.0
    switch_prob: float = 0.5
    mode: Mode = "batch"
    correct_lam: bool = True

    def __post_init__(self) -> None:
        if self.cutmix_minmax is not None:
            if len(self.cutmix_minmax) != 2 or not 0 <= self.cutmix_minmax[0] < self.cutmix_minmax[1] <= 1:
                raise ValueError(f"cutmix_minmax must be (min, max) with 0 <= min < max <= 1, got {self.cutmix_minmax}")
            # as timm: a min/max box means CutMix with alpha 1 (the alpha only decides the switch)
            object.__setattr__(self, "cutmix_alpha", 1.0)
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError("mixup_alpha and cutmix_alpha must be >= 0")
        if self.mixup_alpha == 0 and self.cutmix_alpha == 0:
            raise ValueError("one of mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax must be set")
        if not 0 <= self.prob <= 1 or not 0 <= self.switch_prob <= 1:
            raise ValueError("prob and switch_prob must lie in [0, 1]")
        if self.mode not in ("batch", "pair", "elem"):
            raise ValueError(f"mode must be batch, pair or elem, got {self.mode!r}")


@dataclass
class MixDraw:
    """One batch's draws. ``lam`` is a Python float (``mode="batch"``, as timm) or a float32
    array ``[B]``; ``boxes[i]`` is sample ``i``'s pasted box ``(y0, y1, x0, x1)`` or ``None``."""

    mode: Mode
    batch_size: int
    lam: float | np.ndarray
    boxes: list[tuple[int, int, int, int] | None] = field(default_factory=list)

    @property
    def lam_per_sample(self) -> np.ndarray:
        if isinstance(self.lam, np.ndarray):
            return self.lam
        return np.full(self.batch_size, self.lam, dtype=np.float32)


def partner_index(batch_size: int, device: torch.device | str | None = None) -> Tensor:
    """timm's pairing: sample ``i`` mixes with ``batch_size - 1 - i``."""
    return torch.arange(batch_size - 1, -1, -1, device=device)


def _lam_mix(cfg: MixupConfig, rng: np.random.RandomState, size: int | None):
    """(lam drawn, use_cutmix) in timm's order of draws."""
    if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
        if size is None:
            use_cutmix = rng.rand() < cfg.switch_prob
            alpha = cfg.cutmix_alpha if use_cutmix else cfg.mixup_alpha
            return rng.beta(alpha, alpha), use_cutmix
        use = rng.rand(size) < cfg.switch_prob
        # both arrays are drawn, CutMix's first, as timm's np.where arguments are evaluated
        cut = rng.beta(cfg.cutmix_alpha, cfg.cutmix_alpha, size=size)
        mix = rng.beta(cfg.mixup_alpha, cfg.mixup_alpha, size=size)
        return np.where(use, cut, mix), use
    if cfg.mixup_alpha > 0:
        lam = rng.beta(cfg.mixup_alpha, cfg.mixup_alpha, size=size)
        return lam, (False if size is None else np.zeros(size, dtype=bool))
    lam = rng.beta(cfg.cutmix_alpha, cfg.cutmix_alpha, size=size)
    return lam, (True if size is None else np.ones(size, dtype=bool))


def _box(
    cfg: MixupConfig, lam: float | np.floating, h: int, w: int, rng: np.random.RandomState
) -> tuple[tuple[int, int, int, int], float | np.floating]:
    """A CutMix box and the (corrected) lam, timm's ``cutmix_bbox_and_lam``."""
    if cfg.cutmix_minmax is not None:
        lo, hi = cfg.cutmix_minmax
        cut_h = rng.randint(int(h * lo), int(h * hi))
        cut_w = rng.randint(int(w * lo), int(w * hi))
        y0 = rng.randint(0, h - cut_h + 1)
        x0 = rng.randint(0, w - cut_w + 1)
        y1, x1 = y0 + cut_h, x0 + cut_w
    else:
        ratio = np.sqrt(1 - lam)
        cut_h, cut_w = int(h * ratio), int(w * ratio)
        cy = rng.randint(0, h)
        cx = rng.randint(0, w)
        y0, y1 = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + (cut_h + 1) // 2, 0, h)
        x0, x1 = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + (cut_w + 1) // 2, 0, w)
    if cfg.correct_lam or cfg.cutmix_minmax is not None:
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    return (int(y0), int(y1), int(x0), int(x1)), lam


def sample(
    cfg: MixupConfig, batch_size: int, image_hw: tuple[int, int] | None, rng: np.random.RandomState | None = None
) -> MixDraw:
    """Draw one batch's lam values and boxes exactly as ``timm.data.Mixup`` does.

    ``image_hw`` is needed only when CutMix can be chosen; ``rng=None`` uses numpy's global
    state, as timm. ``batch_size`` must be even (timm asserts it).
    """
    if batch_size % 2:
        raise ValueError(f"timm-mixup pairs sample i with B-1-i and needs an even batch, got {batch_size}")
    rng = rng if rng is not None else np.random.mtrand._rand
    cutmix_possible = cfg.cutmix_alpha > 0
    if cutmix_possible and image_hw is None:
        raise ValueError("CutMix needs image inputs [B, C, H, W]")
    if cfg.mode == "batch":
        lam, use_cutmix = 1.0, False
        if rng.rand() < cfg.prob:
            lam_mix, use_cutmix = _lam_mix(cfg, rng, None)
            lam = float(lam_mix)
        boxes: list[tuple[int, int, int, int] | None] = [None] * batch_size
        if lam != 1.0 and use_cutmix:
            assert image_hw is not None
            box, lam = _box(cfg, lam, *image_hw, rng)
            boxes = [box] * batch_size
        return MixDraw("batch", batch_size, float(lam), boxes)
    n = batch_size // 2 if cfg.mode == "pair" else batch_size
    lam_arr = np.ones(n, dtype=np.float32)
    lam_mix, use = _lam_mix(cfg, rng, n)
    lam_arr = np.where(rng.rand(n) < cfg.prob, lam_mix.astype(np.float32), lam_arr)
    boxes = [None] * n
    for i in range(n):
        if lam_arr[i] != 1.0 and use[i]:
            assert image_hw is not None
            # lam stays a numpy float32 here, as in timm (the box side is computed in float32)
            boxes[i], lam_arr[i] = _box(cfg, lam_arr[i], *image_hw, rng)
    if cfg.mode == "pair":  # the partner of a pair shares its lam and box
        lam_arr = np.concatenate((lam_arr, lam_arr[::-1]))
        boxes = boxes + boxes[::-1]
    return MixDraw(cfg.mode, batch_size, lam_arr, boxes)


def to_plan(draw: MixDraw, image_hw: tuple[int, int] | None, device: torch.device | str | None = None) -> MixPlan:
    """The draw as a ``MixPlan``: partner ``B-1-i``, lam per sample (the anchor's weight), and a
    per-pixel mask (1 = anchor) when any sample was cut: a box of zeros for cut samples, lam
    everywhere for interpolated ones. ``extras["timm_mixup"]`` keeps the draw."""
    b = draw.batch_size
    lam = torch.tensor(draw.lam_per_sample, dtype=torch.float32, device=device)
    mask = None
    if any(box is not None for box in draw.boxes):
        assert image_hw is not None
        mask = lam.reshape(b, 1, 1, 1).expand(b, 1, *image_hw).clone()
        for i, box in enumerate(draw.boxes):
            if box is not None:
                y0, y1, x0, x1 = box
                mask[i] = 1.0
                mask[i, :, y0:y1, x0:x1] = 0.0
    lam_value = float(draw.lam) if draw.mode == "batch" else None  # one lam for the batch, on the host
    return MixPlan.pairs(partner_index(b, device), lam, mask=mask, extras={"timm_mixup": draw}, lam_value=lam_value)


def mix_inputs(x: Tensor, draw: MixDraw) -> Tensor:
    """Mixed inputs (out of place), timm's arithmetic op for op: batch mixup
    ``x * lam + flip(x) * (1 - lam)`` with Python-float lam, per-sample mixup with float32 lam,
    and boxes copied from the partner."""
    b = x.shape[0]
    if b != draw.batch_size:
        raise ValueError(f"draw is for a batch of {draw.batch_size}, inputs have {b}")
    if draw.mode == "batch":
        lam = float(draw.lam)  # type: ignore[arg-type]
        if lam == 1.0:
            return x
        out = x.clone()
        box = draw.boxes[0]
        if box is not None:
            y0, y1, x0, x1 = box
            out[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
            return out
        return out.mul_(lam).add_(x.flip(0).mul_(1.0 - lam))
    out = x.clone()
    lam_arr = draw.lam_per_sample
    for i in range(b):
        j = b - 1 - i
        lam_i = lam_arr[i]
        if lam_i == 1.0:
            continue
        box = draw.boxes[i]
        if box is not None:
            y0, y1, x0, x1 = box
            out[i][:, y0:y1, x0:x1] = x[j][:, y0:y1, x0:x1]
        else:
            out[i] = x[i] * lam_i + x[j] * (1 - lam_i)
    return out


def soft_targets(target: Tensor, num_classes: int, draw: MixDraw, smoothing: float = 0.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """timm's ``mixup_target``: smoothed one-hots (off ``s/C``, on ``1 - s + s/C``) mixed with the
    flipped batch's by lam (a Python float in batch mode, a ``[B, 1]`` tensor of ``dtype``, the
    inputs' dtype in timm, otherwise)."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    y1 = torch.full((target.shape[0], num_classes), off, device=target.device).scatter_(
        1, target.long().view(-1, 1), on
    )
    y2 = y1.flip(0)
    lam: float | Tensor
    if draw.mode == "batch":
        lam = float(draw.lam)  # type: ignore[arg-type]
    else:
        lam = torch.tensor(draw.lam_per_sample, device=target.device, dtype=dtype).unsqueeze(1)
    return y1 * lam + y2 * (1.0 - lam)
