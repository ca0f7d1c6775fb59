"""mixup (Zhang et al., ICLR 2018) and CutMix (Yun et al., ICCV 2019) as pure functions.

Each returns the mixed inputs and the ``MixPlan`` that produced them, so the pairing and
lam stay visible to any loss::

    x_mixed, plan = mixup_batch(x, y, alpha=1.0)
    logits = model(x_mixed)
    loss = mixhub.mixed_cross_entropy(logits, plan)   # lam*CE(y_a) + (1-lam)*CE(y_b)
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mixhub import MixPlan, mix_inputs

__all__ = ["sample_lam", "mixup_plan", "mixup_batch", "cutmix_box", "cutmix_plan", "cutmix_batch", "mixup_target"]


def _rng(generator: torch.Generator | None) -> np.random.Generator:
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return np.random.default_rng(seed)


def sample_lam(alpha: float, batch_size: int, *, per_sample: bool = False, generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
    """lam ~ Beta(alpha, alpha): one value repeated ``[B]`` (per batch) or one per sample.

    ``alpha <= 0`` gives lam = 1 (no mixing).
    """
    lam = _draw(alpha, batch_size if per_sample else 1, generator)
    out = torch.from_numpy(lam).to(device)
    return out if per_sample else out.expand(batch_size).clone()


def _draw(alpha: float, n: int, generator: torch.Generator | None) -> np.ndarray:
    """``n`` draws of Beta(alpha, alpha) as float32 on the host (ones when ``alpha <= 0``)."""
    if alpha <= 0:
        return np.ones(n, dtype=np.float32)
    return _rng(generator).beta(alpha, alpha, size=n).astype(np.float32)


def _partners(batch_size: int, index: Tensor | None, generator: torch.Generator | None, device: torch.device) -> Tensor:
    if index is not None:
        return index.to(device).long()
    return torch.randperm(batch_size, generator=generator).to(device)


def mixup_plan(
    batch_size: int,
    alpha: float = 1.0,
    *,
    lam: float | Tensor | None = None,
    index: Tensor | None = None,
    per_sample: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> MixPlan:
    """The mixup plan: a random permutation and lam ~ Beta(alpha, alpha) (per batch or per sample)."""
    device = torch.device(device)
    idx = _partners(batch_size, index, generator, device)
    lam_value = None  # the per-batch lam on the host (losses read it without a device read)
    if lam is None:
        draws = _draw(alpha, batch_size if per_sample else 1, generator)
        lam_t = torch.from_numpy(draws).to(device)
        if not per_sample:
            lam_value, lam_t = float(draws[0]), lam_t.expand(batch_size).clone()
    else:
        lam_t = torch.as_tensor(lam, dtype=torch.float32, device=device).expand(batch_size).clone()
        lam_value = float(lam) if isinstance(lam, (int, float)) else None
    return MixPlan.pairs(idx, lam_t, lam_value=lam_value)


def mixup_batch(
    x: Tensor,
    y: Tensor,
    alpha: float = 1.0,
    *,
    lam: float | Tensor | None = None,
    index: Tensor | None = None,
    per_sample: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, MixPlan]:
    """``x_mixed = lam * x + (1 - lam) * x[index]`` with a random permutation ``index``.

    Args:
        x: inputs ``[B, ...]``; y: targets ``[B]`` (or ``[B, d]``).
        alpha: Beta parameter (ignored when ``lam`` is given).
        lam: fixed lam (float or ``[B]``); index: fixed partners ``[B]``.
        per_sample: one lam per sample instead of one per batch.

    Returns:
        the mixed inputs and the plan (``plan.y_a = y``, ``plan.y_b = y[index]``).
    """
    plan = mixup_plan(x.shape[0], alpha, lam=lam, index=index, per_sample=per_sample, generator=generator, device=x.device)
    plan.y_a, plan.y_b = y, y[plan.index]
    return mix_inputs(x, plan), plan


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box covering about ``1 - lam`` of the image: ``(y0, y1, x0, x1)``, centre uniform, clipped."""
    ratio = math.sqrt(1.0 - lam)
    ch, cw = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, height)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, width)
    return y0, y1, x0, x1


def cutmix_plan(
    batch_size: int,
    height: int,
    width: int,
    alpha: float = 1.0,
    *,
    lam: float | Tensor | None = None,
    index: Tensor | None = None,
    per_sample: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> MixPlan:
    """The CutMix plan: partners, a keep-mask ``[B, 1, H, W]`` and the area-corrected lam.

    With ``per_sample`` every sample gets its own lam and box; otherwise one box for the
    batch (as timm and openmixup).
    """
    device = torch.device(device)
    b, h, w = batch_size, height, width
    idx = _partners(b, index, generator, device)
    if lam is None:
        lams = _draw(alpha, b if per_sample else 1, generator)
    else:  # host numbers: the boxes are drawn on the host
        lams = np.broadcast_to(torch.as_tensor(lam, dtype=torch.float32).cpu().numpy(), (b,))
    rng = _rng(generator)
    mask = torch.ones(b, 1, h, w, device=device)
    rows = range(b) if per_sample else [None]
    area = None
    for r in rows:
        lam_r = float(lams[0 if r is None else r])
        y0, y1, x0, x1 = cutmix_box(h, w, lam_r, rng)
        if r is None:
            mask[:, :, y0:y1, x0:x1] = 0
            area = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the anchor's share, known on the host
        else:
            mask[r, :, y0:y1, x0:x1] = 0
    return MixPlan.pairs(idx, mask.mean((1, 2, 3)), mask=mask, lam_value=area)


def cutmix_batch(
    x: Tensor,
    y: Tensor,
    alpha: float = 1.0,
    *,
    lam: float | Tensor | None = None,
    index: Tensor | None = None,
    per_sample: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, MixPlan]:
    """Paste a box of ``x[index]`` into ``x``; ``plan.lam`` is the area-corrected anchor share
    and ``plan.mask`` is 1 where the anchor is kept."""
    if x.dim() != 4:
        raise ValueError(f"cutmix_batch needs image inputs [B, C, H, W], got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    plan = cutmix_plan(b, h, w, alpha, lam=lam, index=index, per_sample=per_sample, generator=generator, device=x.device)
    plan.y_a, plan.y_b = y, y[plan.index]
    return mix_inputs(x, plan), plan


def mixup_target(plan: MixPlan, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """Dense soft targets ``[B, C]``: ``sum_k w_k * smooth(onehot(y_k))`` (for losses that want them)."""
    assert plan.y_a is not None
    out = None
    off = smoothing / num_classes
    for targets, weight in plan.source_targets(plan.y_a):
        t = F.one_hot(targets, num_classes).float() * (1 - smoothing) + off
        term = weight.float()[:, None] * t
        out = term if out is None else out + term
    assert out is not None
    return out
