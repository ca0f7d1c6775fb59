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
    "color_jitter",
    "rgb_to_hsv",
    "hsv_to_rgb",
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


def _ids(y: Tensor, num_classes: int, name: str, check: bool = True) -> Tensor:
    ids = y.argmax(1) if y.dim() == 2 else y.long()
    if check and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
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
    check_ids: bool = True,
) -> Tensor:
    """``r`` per pair: ``||W[y_new]|| / ||W[y_old]||`` (``pair``) or, in ``group`` mode, the mean
    row norm of ``new_classes`` over the mean row norm of ``old_classes`` for every pair.

    ``classifier_weight`` is ``[C, d]`` (the bias is not part of it) and is detached: no
    gradient flows through the ratio. Returns a float tensor ``[P]``.
    """
    w = classifier_weight.detach().float()
    c = w.shape[0]
    yo, yn = _ids(y_old, c, "y_old", check_ids), _ids(y_new, c, "y_new", check_ids)
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
    check_ids: bool = True,
) -> Any:
    """AdpMix (paper Eqs. 8-9): mix old-class memory samples with new-task stream samples.

    ``check_ids``: check on the host that the class ids index the classifier's rows (a device
    read; a training loop whose labels are already checked, like mixhub's, turns it off).

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
    yo, yn = _ids(y_old, c, "y_old", check_ids), _ids(y_new, c, "y_new", check_ids)
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
        classifier_weight, yo, yn, mode=norm_ratio, old_classes=old_classes, new_classes=new_classes, check_ids=False
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
    old = torch.as_tensor(list(old_classes) if not isinstance(old_classes, Tensor) else old_classes, dtype=torch.long)
    if old.device != ids.device:  # host labels (the replay buffer's copy) pair on the host
        old = old.to(ids.device)
    if old.numel() == 0 or stream_size <= 0:
        empty = torch.zeros(0, dtype=torch.long, device=ids.device)
        return empty, empty.clone()
    memory_pos = torch.isin(ids, old).nonzero().flatten()
    stream_pos = torch.randint(0, stream_size, (memory_pos.numel(),), generator=generator).to(ids.device)
    return memory_pos, stream_pos


# =============================================================================== augmentation
def _uniform(lo: float, hi: float, n: int, g: torch.Generator | None) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


#: Luma weights of torchvision's ``rgb_to_grayscale`` (ITU-R 601-2 as torchvision rounds them).
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
#: ColorJitter's operations, in the index order torchvision's ``ColorJitter`` permutes.
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


def _gray(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype, device=x.device)
    return (x[:, :3] * w.reshape(1, 3, 1, 1)).sum(1, keepdim=True)


def _blend(a: Tensor, b: Tensor | float, f: Tensor) -> Tensor:
    """``(f a + (1 - f) b)`` clamped to [0, 1], ``f`` per sample ``[n]``."""
    w = f.to(a.dtype).reshape(-1, 1, 1, 1)
    return (w * a + (1 - w) * b).clamp(0.0, 1.0)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """RGB ``[B, 3, H, W]`` in [0, 1] to HSV (each in [0, 1]; hue 0 for grey pixels).

    Hexcone model: ``v = max``, ``s = (max - min) / max`` and the hue sector from whichever
    channel holds the maximum (red first, then green, as torchvision resolves ties).
    """
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    v = x.amax(dim=1)
    c = v - x.amin(dim=1)
    grey = c == 0
    safe_c = torch.where(grey, torch.ones_like(c), c)
    s = torch.where(grey, torch.zeros_like(c), c / torch.where(v == 0, torch.ones_like(v), v))
    sector = torch.where(
        v == r,
        (g - b) / safe_c,
        torch.where(v == g, 2.0 + (b - r) / safe_c, 4.0 + (r - g) / safe_c),
    )
    h = torch.where(grey, torch.zeros_like(c), torch.remainder(sector / 6.0, 1.0))
    return torch.stack([h, s, v], dim=1)


def hsv_to_rgb(x: Tensor) -> Tensor:
    """HSV ``[B, 3, H, W]`` to RGB: channel ``n`` (5 red, 3 green, 1 blue) is
    ``v - v s clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 h) mod 6``."""
    h, s, v = x[:, 0], x[:, 1], x[:, 2]
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + 6.0 * h, 6.0)
        out.append(v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(out, dim=1)


def _adjust(op: str, x: Tensor, f: Tensor) -> Tensor:
    """One ColorJitter operation with per-sample factors (torchvision's tensor semantics)."""
    if op == "brightness":
        return _blend(x, 0.0, f)
    if op == "contrast":
        return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), f)
    if x.shape[1] == 1:  # saturation and hue leave one-channel images alone
        return x
    if op == "saturation":
        return _blend(x, _gray(x), f)
    hsv = rgb_to_hsv(x)
    hue = torch.remainder(hsv[:, 0] + f.to(x.dtype).reshape(-1, 1, 1), 1.0)
    return hsv_to_rgb(torch.stack([hue, hsv[:, 1], hsv[:, 2]], dim=1))


def color_jitter(x: Tensor, factors: dict[str, Tensor | None], order: Tensor) -> Tensor:
    """torchvision's ``ColorJitter`` on a batch, with each sample's own factors and order.

    For sample i the operations run in the order ``order[i]`` (a permutation of 0..3 over
    ``JITTER_OPS``, torchvision's ``fn_idx``), with ``factors[op][i]``:

    * brightness: ``clamp(f x, 0, 1)``;
    * contrast: ``clamp(f x + (1 - f) mean(gray(x)), 0, 1)`` (one mean per image);
    * saturation: ``clamp(f x + (1 - f) gray(x), 0, 1)``;
    * hue: the HSV hue shifted by ``f`` turns (mod 1).

    ``gray`` uses torchvision's weights (0.2989, 0.587, 0.114). An operation whose factors are
    ``None`` is skipped (torchvision's ``None`` for a zero strength). Saturation and hue leave
    one-channel images unchanged. Images are ``[B, C, H, W]`` floats in [0, 1].
    ``order``/``factors`` may live on the CPU (the grouping by operation then needs no device
    synchronisation); samples are processed in groups that share an operation at each position.
    """
    if x.dim() != 4:
        raise ValueError(f"color_jitter needs images [B, C, H, W], got shape {tuple(x.shape)}")
    b = x.shape[0]
    order_cpu = torch.as_tensor(order).cpu().long()
    if order_cpu.shape != (b, len(JITTER_OPS)):
        raise ValueError(f"color_jitter: order must have shape [{b}, 4], got {tuple(order_cpu.shape)}")
    out = x
    for pos in range(len(JITTER_OPS)):
        for k, op in enumerate(JITTER_OPS):
            f = factors.get(op)
            if f is None:
                continue
            rows = (order_cpu[:, pos] == k).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            idx = rows.to(x.device)
            out = out.index_copy(0, idx, _adjust(op, out.index_select(0, idx), f.cpu()[rows].to(x.device)))
    return out


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
    return_params: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Any]]:
    """SCR/kornia-style augmentation of images ``[B, C, H, W]``, batched on ``x``'s device.

    RandomResizedCrop (area share in ``crop_scale``, aspect ratio in ``crop_ratio``, resized
    back to H x W by bilinear sampling), horizontal flip with probability 0.5 (``hflip``),
    ColorJitter with probability ``jitter_p`` with torchvision's semantics (``color_jitter``:
    brightness, contrast, saturation factors in ``[max(0, 1 - v), 1 + v]``, hue shift in
    ``[-h, h]`` turns, the four operations in a random order, every result clamped to [0, 1],
    hue rotated in HSV; a zero strength skips its operation), and grayscale with probability
    ``grayscale_p`` (torchvision's luma weights). With ``per_sample`` every image gets its own
    parameters and order (kornia semantics); otherwise one set per call (a torchvision
    transform called on a batch tensor). The colour operations work in [0, 1] pixel space:
    with ``mean``/``std`` the inputs are un-normalised first and re-normalised after; without,
    they are taken as [0, 1] images. Saturation, hue and grayscale do nothing on one-channel
    images. ``return_params`` also returns the drawn colour parameters (``jitter`` [B] bool,
    ``factors`` per operation [B], ``order`` [B, 4], ``gray`` [B] bool; CPU tensors).
    """
    if x.dim() != 4:
        raise ValueError(f"augment needs images [B, C, H, W], got shape {tuple(x.shape)}")
    b, ch, h, w = x.shape
    if b == 0:
        return (x.clone(), {}) if return_params else x.clone()
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
    order = torch.rand(n, len(JITTER_OPS), generator=g).argsort(dim=1)
    order = order.expand(b, -1).clone() if n == 1 else order
    do_gray = expand(torch.rand(n, generator=g) < grayscale_p)

    grid = F.affine_grid(theta.to(dev, x.dtype), [b, ch, h, w], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if mean is not None and std is not None:
        m = torch.as_tensor(mean, dtype=x.dtype, device=dev).reshape(1, -1, 1, 1)
        s = torch.as_tensor(std, dtype=x.dtype, device=dev).reshape(1, -1, 1, 1)
        out = out * s + m
    factors: dict[str, Tensor | None] = {
        "brightness": fb if bri > 0 else None,
        "contrast": fc if con > 0 else None,
        "saturation": fs if sat > 0 else None,
        "hue": fh if hue > 0 else None,
    }
    rows = do_jit.nonzero().squeeze(1)  # CPU: no device synchronisation
    if rows.numel() and any(f is not None for f in factors.values()):
        idx = rows.to(dev)
        sub = {k: None if f is None else f[rows] for k, f in factors.items()}
        out = out.index_copy(0, idx, color_jitter(out.index_select(0, idx).clamp(0, 1), sub, order[rows]))
    if ch == 3 and grayscale_p > 0:
        out = torch.where(do_gray.to(dev).reshape(-1, 1, 1, 1), _gray(out).expand(-1, 3, -1, -1), out)
    if mean is not None and std is not None:
        out = (out - m) / s
    if return_params:
        params = {"jitter": do_jit, "factors": factors, "order": order, "gray": do_gray}
        return out, params
    return out
