"""DualMix (EnMix + AdpMix) as pure functions.

Paper: "DualMix: Unleashing the Potential of Data Augmentation for Online Class-Incremental
Learning", arXiv 2303.07864 (v1). There is no official code; the formulas follow the paper:

* EnMix (Eq. 7): ``x = mu * g(x_i) + (1 - mu) * g(x_j)``, ``y = mu * y_i + (1 - mu) * y_j``
  between augmented memory samples, ``mu ~ Beta(alpha, alpha)``.
* AdpMix (Eqs. 8-9): ``x = mu_x * x_old + (1 - mu_x) * x_new`` (original images), and the
  old class's label weight ``mu_y = min(mu_x + delta * r, 1)`` when ``r > kappa`` and
  ``mu_x > tau``, else ``mu_y = mu_x``; ``r = ||w_new|| / ||w_old||`` (classifier rows).
* The data augmentation follows SCR's kornia pipeline (``agents/scr.py`` of
  ``RaptorMai/online-continual-learning``): RandomResizedCrop, horizontal flip, ColorJitter
  with probability 0.8, grayscale with probability 0.2, parameters drawn per sample.

Every random draw takes an optional ``torch.Generator`` (a CPU generator; results are moved
to the inputs' device), so a seeded run is reproducible.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "beta_sample",
    "enmix",
    "adpmix",
    "adapted_label_weight",
    "classifier_norm_ratio",
    "pair_old_with_stream",
    "augment",
    "soft_cross_entropy",
    "one_hot",
]


# =============================================================================== helpers
def beta_sample(alpha: float, n: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """``n`` draws of Beta(alpha, alpha) as a float32 tensor ``[n]`` (on CPU).

    The draws come from a NumPy generator seeded by one draw of ``generator``, so they are
    reproducible from the torch generator's state. ``alpha <= 0`` gives ones (no mixing).
    """
    if alpha <= 0:
        return torch.ones(n)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=n).astype(np.float32))


def one_hot(y: Tensor, num_classes: int) -> Tensor:
    """Class ids ``[N]`` -> float one-hot ``[N, C]`` (dense targets pass through as float)."""
    if y.is_floating_point() and y.dim() == 2:
        return y.float()
    return F.one_hot(y.long(), num_classes).float()


def _ids(y: Tensor, num_classes: int, name: str) -> Tensor:
    ids = y.argmax(1) if y.dim() == 2 else y.long()
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
        raise ValueError(
            f"{name}: class ids must lie in [0, {num_classes}) (the classifier's rows), got {ids.tolist()}"
        )
    return ids


def _as_lam(lam: float | Tensor, n: int, like: Tensor) -> Tensor:
    t = torch.as_tensor(lam, dtype=torch.float32)
    if t.numel() == 1:
        t = t.reshape(()).expand(n)
    if t.shape != (n,):
        raise ValueError(f"lam must be a scalar or have shape [{n}], got {tuple(t.shape)}")
    return t.to(like.device)


def _bcast(w: Tensor, x: Tensor) -> Tensor:
    return w.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


def soft_cross_entropy(logits: Tensor, soft_targets: Tensor) -> Tensor:
    """Mean over rows of ``-sum_c t_c log softmax(z)_c``; empty input gives 0."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return -(soft_targets.float() * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


# =============================================================================== EnMix
def enmix(
    x_aug: Tensor,
    y_onehot: Tensor,
    alpha: float = 0.2,
    generator: torch.Generator | None = None,
    *,
    lam: float | Tensor | None = None,
    index: Tensor | None = None,
    per_sample: bool = False,
) -> tuple[Tensor, Tensor]:
    """EnMix (paper Eq. 7): mix augmented memory samples with a permutation of themselves.

    ``x = lam * x_aug + (1 - lam) * x_aug[index]`` and the same ``lam`` for the labels
    ``y = lam * y + (1 - lam) * y[index]``. ``index`` defaults to a random permutation and
    ``lam`` to Beta(alpha, alpha) (one per call, or one per sample with ``per_sample``).
    ``y_onehot`` may also be class ids (``[B]`` long); the number of classes is then
    ``max + 1``, so pass one-hot rows when the head is wider. Returns ``(x_mixed, y_mixed)``,
    with the shapes of the inputs and label rows that sum to 1.
    """
    b = x_aug.shape[0]
    y = y_onehot.float() if y_onehot.dim() == 2 else one_hot(y_onehot, int(y_onehot.max()) + 1 if b else 1)
    if b == 0:
        return x_aug.clone(), y.clone()
    if index is None:
        index = torch.randperm(b, generator=generator)
    index = index.to(x_aug.device).long()
    if lam is None:
        lam = beta_sample(alpha, b if per_sample else 1, generator)
    lam_t = _as_lam(lam, b, x_aug)
    x = _bcast(lam_t, x_aug) * x_aug + _bcast(1 - lam_t, x_aug) * x_aug[index]
    yl = lam_t.reshape(-1, 1).to(y.device)
    return x, yl * y + (1 - yl) * y[index.to(y.device)]


# =============================================================================== AdpMix
def adapted_label_weight(
    mu_x: Tensor | float,
    norm_ratio: Tensor | float,
    kappa: float = 2.0,
    tau: float = 0.5,
    delta: float = 0.05,
) -> Tensor:
    """The old class's label weight (paper Eq. 9), elementwise with broadcasting.

    ``mu_y = min(mu_x + delta * r, 1)`` if ``r > kappa`` and ``mu_x > tau`` (both strict),
    else ``mu_y = mu_x``. So ``mu_x <= mu_y <= 1``. ``r = +inf`` (a zero-norm old row) opens
    the gate and gives 1; ``r = NaN`` (two zero rows) keeps it closed.
    """
    mu = torch.as_tensor(mu_x, dtype=torch.float32)
    r = torch.as_tensor(norm_ratio, dtype=torch.float32).to(mu.device)
    gate = (r > kappa) & (mu > tau)
    raised = torch.clamp(mu + delta * torch.where(gate, r, torch.zeros_like(r)), max=1.0)
    return torch.where(gate, raised, mu)


def classifier_norm_ratio(
    classifier_weight: Tensor,
    y_old: Tensor,
    y_new: Tensor,
    *,
    mode: str = "pair",
    old_classes: list[int] | Tensor | None = None,
    new_classes: list[int] | Tensor | None = None,
) -> Tensor:
    """``r`` per pair: ``||W[y_new]|| / ||W[y_old]||`` (``pair``) or, in ``group`` mode, the mean
    row norm of ``new_classes`` over the mean row norm of ``old_classes`` for every pair.

    ``classifier_weight`` is ``[C, d]`` (the bias is not part of it) and is detached: no
    gradient flows through the ratio. Returns a float tensor ``[P]``.
    """
    w = classifier_weight.detach().float()
    c = w.shape[0]
    yo, yn = _ids(y_old, c, "y_old"), _ids(y_new, c, "y_new")
    norms = w.norm(dim=1)
    if mode == "pair":
        return norms[yn.to(w.device)] / norms[yo.to(w.device)]
    if mode == "group":
        if old_classes is None or new_classes is None or len(old_classes) == 0 or len(new_classes) == 0:
            raise ValueError("norm_ratio='group' needs non-empty old_classes and new_classes")
        old = torch.as_tensor(old_classes, dtype=torch.long, device=w.device)
        new = torch.as_tensor(new_classes, dtype=torch.long, device=w.device)
        r = norms[new].mean() / norms[old].mean()
        return r.expand(yo.shape[0]).clone()
    raise ValueError(f"norm_ratio mode must be 'pair' or 'group', got {mode!r}")


def adpmix(
    x_old: Tensor,
    y_old: Tensor,
    x_new: Tensor,
    y_new: Tensor,
    classifier_weight: Tensor,
    alpha: float = 0.2,
    kappa: float = 2.0,
    tau: float = 0.5,
    delta: float = 0.05,
    generator: torch.Generator | None = None,
    *,
    mu_x: float | Tensor | None = None,
    per_sample: bool = False,
    norm_ratio: str = "pair",
    old_classes: list[int] | Tensor | None = None,
    new_classes: list[int] | Tensor | None = None,
    return_info: bool = False,
) -> Any:
    """AdpMix (paper Eqs. 8-9): mix old-class memory samples with new-task stream samples.

    Pixels use ``mu_x`` (``x = mu_x * x_old + (1 - mu_x) * x_new``); labels use the adapted
    ``mu_y`` (``adapted_label_weight``) on the old class and ``1 - mu_y`` on the new class.
    ``mu_x`` defaults to Beta(alpha, alpha), one per call (or one per pair with
    ``per_sample``). Labels are class ids ``[P]`` (or one-hot, read by argmax); C is
    ``classifier_weight.shape[0]``. Returns ``(x_mixed [P, ...], y_mixed [P, C],
    label_weight [P])`` and, with ``return_info``, a dict with ``r``, ``gate`` and ``mu_x``.
    """
    c = classifier_weight.shape[0]
    p = x_old.shape[0]
    if x_new.shape[0] != p:
        raise ValueError(f"adpmix: x_old and x_new must pair up row by row, got {p} and {x_new.shape[0]}")
    yo, yn = _ids(y_old, c, "y_old"), _ids(y_new, c, "y_new")
    if p == 0:
        empty = (
            x_old[:0].clone(),
            torch.zeros(0, c, device=x_old.device),
            torch.zeros(0, device=x_old.device),
        )
        info = {"r": torch.zeros(0), "gate": torch.zeros(0, dtype=torch.bool), "mu_x": torch.zeros(0)}
        return (*empty, info) if return_info else empty
    if mu_x is None:
        mu_x = beta_sample(alpha, p if per_sample else 1, generator)
    mu = _as_lam(mu_x, p, x_old)
    r = classifier_norm_ratio(
        classifier_weight, yo, yn, mode=norm_ratio, old_classes=old_classes, new_classes=new_classes
    ).to(mu.device)
    mu_y = adapted_label_weight(mu, r, kappa, tau, delta)
    x = _bcast(mu, x_old) * x_old + _bcast(1 - mu, x_old) * x_new
    y = mu_y.reshape(-1, 1) * one_hot(yo, c).to(mu.device) + (1 - mu_y).reshape(-1, 1) * one_hot(yn, c).to(
        mu.device
    )
    if return_info:
        return x, y, mu_y, {"r": r, "gate": (r > kappa) & (mu > tau), "mu_x": mu}
    return x, y, mu_y


def pair_old_with_stream(
    y_memory: Tensor,
    old_classes: list[int] | Tensor,
    stream_size: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """AdpMix pairs: every memory position whose class is old, with a uniformly drawn stream
    position (with replacement). "Old" means classes of earlier tasks, so current-task samples
    in memory are never paired, and the first task gives no pairs. Returns LongTensors ``[P]``.
    """
    ids = y_memory.argmax(1) if y_memory.dim() == 2 else y_memory.long()
    old = torch.as_tensor(
        list(old_classes) if not isinstance(old_classes, Tensor) else old_classes,
        dtype=torch.long,
        device=ids.device,
    )
    if old.numel() == 0 or stream_size <= 0:
        empty = torch.zeros(0, dtype=torch.long, device=ids.device)
        return empty, empty.clone()
    memory_pos = torch.isin(ids, old).nonzero().flatten()
    stream_pos = torch.randint(0, stream_size, (memory_pos.numel(),), generator=generator).to(ids.device)
    return memory_pos, stream_pos


# =============================================================================== augmentation
def _uniform(lo: float, hi: float, n: int, g: torch.Generator | None) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _gray(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
    return (x[:, :3] * w.reshape(1, 3, 1, 1)).sum(1, keepdim=True)


def _hue_shift(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the chroma of RGB images by ``2 pi * shift`` (per sample) in YIQ space."""
    m = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
        dtype=x.dtype,
        device=x.device,
    )
    yiq = torch.einsum("ij,bjhw->bihw", m, x)
    th = (2 * math.pi * shift).to(x.dtype).reshape(-1, 1, 1)
    cos, sin = torch.cos(th), torch.sin(th)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], 1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(m), yiq)


def augment(
    x: Tensor,
    generator: torch.Generator | None = None,
    *,
    crop_scale: tuple[float, float] = (0.2, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
    jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
    per_sample: bool = True,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> Tensor:
    """SCR/kornia-style augmentation of images ``[B, C, H, W]``, batched on ``x``'s device.

    RandomResizedCrop (area share in ``crop_scale``, aspect ratio in ``crop_ratio``, resized
    back to H x W by bilinear sampling), horizontal flip with probability 0.5 (``hflip``),
    ColorJitter with probability ``jitter_p`` (brightness, contrast, saturation factors in
    ``[1 - v, 1 + v]``, hue shift in ``[-h, h]`` turns; applied in that fixed order), and
    grayscale with probability ``grayscale_p``. With ``per_sample`` every image gets its own
    parameters (kornia semantics); otherwise one set per call (a torchvision transform called
    on a batch tensor). With ``mean``/``std`` the inputs are normalised images: the colour
    operations run in [0, 1] pixel space (un-normalise, clamp, re-normalise). Saturation, hue
    and grayscale do nothing on one-channel images.
    """
    if x.dim() != 4:
        raise ValueError(f"augment needs images [B, C, H, W], got shape {tuple(x.shape)}")
    b, ch, h, w = x.shape
    if b == 0:
        return x.clone()
    g, dev = generator, x.device
    n = b if per_sample else 1

    def expand(t: Tensor) -> Tensor:
        return t.expand(b).clone() if n == 1 else t

    # --- random resized crop (+ flip) as one affine grid per sample
    area = expand(_uniform(crop_scale[0], crop_scale[1], n, g))
    logr = expand(_uniform(math.log(crop_ratio[0]), math.log(crop_ratio[1]), n, g))
    ratio = torch.exp(logr)
    cw = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width as a share of the image width
    chh = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = expand(torch.rand(n, generator=g)) * 2 - 1
    cy = expand(torch.rand(n, generator=g)) * 2 - 1
    tx, ty = cx * (1 - cw), cy * (1 - chh)
    flip = expand(torch.rand(n, generator=g) < 0.5) if hflip else torch.zeros(b, dtype=torch.bool)
    sx = torch.where(flip, -cw, cw)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, tx, chh, ty
    # --- colour parameters
    bri, con, sat, hue = jitter
    do_jit = expand(torch.rand(n, generator=g) < jitter_p)
    fb = expand(_uniform(max(0.0, 1 - bri), 1 + bri, n, g))
    fc = expand(_uniform(max(0.0, 1 - con), 1 + con, n, g))
    fs = expand(_uniform(max(0.0, 1 - sat), 1 + sat, n, g))
    fh = expand(_uniform(-hue, hue, n, g))
    do_gray = expand(torch.rand(n, generator=g) < grayscale_p)

    grid = F.affine_grid(theta.to(dev, x.dtype), [b, ch, h, w], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if mean is not None and std is not None:
        m = torch.as_tensor(mean, dtype=x.dtype, device=dev).reshape(1, -1, 1, 1)
        s = torch.as_tensor(std, dtype=x.dtype, device=dev).reshape(1, -1, 1, 1)
        out = out * s + m
    keep = (~do_jit).to(dev).reshape(-1, 1, 1, 1)
    j = out * fb.to(dev, x.dtype).reshape(-1, 1, 1, 1)
    if mean is not None:
        j = j.clamp(0, 1)
    gm = _gray(j).mean((1, 2, 3), keepdim=True)
    j = gm + fc.to(dev, x.dtype).reshape(-1, 1, 1, 1) * (j - gm)
    if mean is not None:
        j = j.clamp(0, 1)
    if ch == 3:
        gr = _gray(j)
        j = gr + fs.to(dev, x.dtype).reshape(-1, 1, 1, 1) * (j - gr)
        if hue > 0:
            j = _hue_shift(j, fh.to(dev))
        if mean is not None:
            j = j.clamp(0, 1)
    out = torch.where(keep, out, j)
    if ch == 3 and grayscale_p > 0:
        out = torch.where(do_gray.to(dev).reshape(-1, 1, 1, 1), _gray(out).expand(-1, 3, -1, -1), out)
    if mean is not None and std is not None:
        out = (out - m) / s
    return out
