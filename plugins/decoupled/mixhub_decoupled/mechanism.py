"""The mechanism metric of Decoupled Mixup: how often a mixed input's two classes are the top-2.

DM's claim is that the network can be confident in *both* constituents of a hard mixed sample.
``mixed_top2_rate`` measures it directly: on a fixed, seeded set of test mixes (pairs of
different classes, ``lam ~ U(lo, hi)``), the share whose two constituent classes are exactly
the model's two highest logits. ``fixed_test_mixes`` builds that set once, with the same kind
of mixing as in training (linear ``mixup`` or a ``cutmix`` box), independent of the run seed so
that every arm of a benchmark sees the same mixes.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["mixed_top2_rate", "sample_test_pairs", "cutmix_box_masks", "fixed_test_mixes"]


def mixed_top2_rate(logits: Tensor, y_a: Tensor, y_b: Tensor) -> float:
    """Share of rows whose top-2 logits are exactly the classes ``{y_a, y_b}`` (rows with ``y_a != y_b``)."""
    top2 = logits.topk(2, dim=-1).indices
    hit = ((top2[:, 0] == y_a) & (top2[:, 1] == y_b)) | ((top2[:, 0] == y_b) & (top2[:, 1] == y_a))
    valid = y_a != y_b
    if not bool(valid.any()):
        return float("nan")
    return float(hit[valid].float().mean())


def sample_test_pairs(
    targets: Tensor, n: int, seed: int = 0, lam_range: tuple[float, float] = (0.3, 0.7)
) -> tuple[Tensor, Tensor, Tensor]:
    """``(i, j, lam)``: ``n`` seeded pairs of samples with different classes and ``lam ~ U(lo, hi)``."""
    g = torch.Generator().manual_seed(seed)
    targets = targets.cpu().long()
    size = targets.shape[0]
    if size < 2 or targets.unique().numel() < 2:
        raise ValueError("mixed top-2 needs at least two classes in the evaluation split")
    first: list[Tensor] = []
    second: list[Tensor] = []
    have = 0
    while have < n:
        i = torch.randint(size, (2 * n,), generator=g)
        j = torch.randint(size, (2 * n,), generator=g)
        keep = targets[i] != targets[j]
        first.append(i[keep])
        second.append(j[keep])
        have += int(keep.sum())
    i_all = torch.cat(first)[:n]
    j_all = torch.cat(second)[:n]
    lo, hi = lam_range
    lam = lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)
    return i_all, j_all, lam.float()


def cutmix_box_masks(lam: Tensor, height: int, width: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Per-sample CutMix boxes: ``(mask [N, 1, H, W], lam_area [N])``.

    The box of sample ``n`` has side ratio ``sqrt(1 - lam[n])`` and a uniform centre, clipped to
    the image (Yun et al. 2019); ``mask`` is 1 where the anchor is kept, and ``lam_area`` is the
    anchor's real area share after clipping (the area-corrected lam).
    """
    g = torch.Generator().manual_seed(seed)
    n = lam.shape[0]
    ratio = torch.sqrt(1.0 - lam.double().clamp(0, 1))
    cut_h = (height * ratio).long()
    cut_w = (width * ratio).long()
    cy = torch.randint(height, (n,), generator=g)
    cx = torch.randint(width, (n,), generator=g)
    y0 = (cy - cut_h // 2).clamp(0, height)
    y1 = (cy + cut_h // 2).clamp(0, height)
    x0 = (cx - cut_w // 2).clamp(0, width)
    x1 = (cx + cut_w // 2).clamp(0, width)
    rows = torch.arange(height).reshape(1, -1, 1)
    cols = torch.arange(width).reshape(1, 1, -1)
    inside = (
        (rows >= y0.reshape(-1, 1, 1))
        & (rows < y1.reshape(-1, 1, 1))
        & (cols >= x0.reshape(-1, 1, 1))
        & (cols < x1.reshape(-1, 1, 1))
    )
    mask = (~inside).float().unsqueeze(1)
    lam_area = mask.flatten(1).mean(dim=1)
    return mask, lam_area


def fixed_test_mixes(
    inputs: Tensor,
    targets: Tensor,
    n: int = 1000,
    seed: int = 0,
    mixer: str = "mixup",
    lam_range: tuple[float, float] = (0.3, 0.7),
) -> tuple[Tensor, Tensor, Tensor]:
    """``(mixed_inputs [n, ...], y_a [n], y_b [n])``: the fixed evaluation mixes of ``mixed_top2_rate``.

    ``mixer`` is ``"mixup"`` (linear interpolation) or ``"cutmix"`` (a box of the partner pasted
    into the anchor; images ``[N, C, H, W]`` only).
    """
    i, j, lam = sample_test_pairs(targets, n, seed, lam_range)
    x_a, x_b = inputs[i], inputs[j]
    if mixer == "mixup":
        w = lam.to(inputs.dtype).reshape(-1, *([1] * (inputs.dim() - 1)))
        mixed = w * x_a + (1 - w) * x_b
    elif mixer == "cutmix":
        if inputs.dim() != 4:
            raise ValueError(f"cutmix test mixes need image inputs [N, C, H, W], got {tuple(inputs.shape)}")
        mask, _ = cutmix_box_masks(lam, inputs.shape[2], inputs.shape[3], seed=seed + 1)
        mask = mask.to(inputs.dtype)
        mixed = mask * x_a + (1 - mask) * x_b
    else:
        raise ValueError(f"mixer must be 'mixup' or 'cutmix', got {mixer!r}")
    return mixed, targets[i], targets[j]
