"""Decoupled Mixup (DM): the mixup soft cross-entropy plus a decoupled regulariser.

"Harnessing Hard Mixed Samples with Decoupled Regularizer" (NeurIPS 2023, arXiv 2203.10761;
earlier "Decoupled Mixup for Data-efficient Learning"). The formulas mirror the official
openmixup code: ``openmixup/models/losses/cross_entropy_loss.py::soft_mix_cross_entropy`` (the
loss, row split, lambda_k lookup, decoupled terms) and
``openmixup/models/heads/cls_mixup_head.py::ClsMixupHead.loss`` / ``lambda_adjust`` (the eta
weights from lam, mode, threshold and the lam**p rescaling).

For a mixed sample with classes ``a = y_a``, ``b = y_b`` and weight ``lam``::

    L_n = -sum_c t_nc log softmax(z_n)_c                           (mixup soft CE, t = lam*e_a + (1-lam)*e_b)
        + w_a * (-log H_a(z_n)) + w_b * (-log H_b(z_n))             (decoupled regulariser, y_a != y_b only)
    H_a(z) = exp(z_a) / (exp(z_a) + sum_{c not in {a, b}} exp(z_c)) (softmax without the *other* mixed class)

and the batch loss is ``sum_n L_n / B`` (same-class rows count in ``B``). The weights are
``(w_a, w_b) = eta * (lam**p, (1-lam)**p)`` for mode ``both``; ``less``/``more`` keep only the
minority / dominant component (see ``eta_weights``).

Everything here is pure PyTorch, usable in any training loop::

    from mixhub_decoupled import decoupled_mixup_loss
    lam = rng.beta(1.0, 1.0); perm = torch.randperm(x.size(0))
    logits = model(lam * x + (1 - lam) * x[perm])
    loss = decoupled_mixup_loss(logits, y, y[perm], lam, eta=0.1)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MODES",
    "SMOOTHING_TARGETS",
    "OFFICIAL_EPS",
    "PER_SAMPLE_LAM_MESSAGE",
    "LAM_SCALE_MODES",
    "lambda_adjust",
    "eta_weights",
    "multi_eta_weights",
    "decoupled_multimix_loss",
    "decoupled_log_softmax",
    "decoupled_regularizer",
    "decoupled_mixup_loss",
    "mixup_soft_cross_entropy",
    "official_skip_reason",
]

MODES = ("both", "less", "more")
#: How the head rescales each eta weight (``ClsMixupHead.lambda_adjust``): ``pow``, ``exp`` or
#: ``none`` (a constant eta).
LAM_SCALE_MODES = ("pow", "exp", "none")
SMOOTHING_TARGETS = ("official", "onehot")
#: The official "active class" threshold on mixed-label entries (``_eps`` in soft_mix_cross_entropy).
OFFICIAL_EPS = 1e-3
#: Smallest label smoothing the official path applies (smaller values are ignored there).
OFFICIAL_MIN_SMOOTHING = 0.1
PER_SAMPLE_LAM_MESSAGE = (
    "Decoupled Mixup's official mode needs one λ per batch; set official_eta_order=False and "
    "official_skip=False for per-sample λ"
)

LamLike = float | Tensor


# ----------------------------------------------------------------------------- helpers
def _check_mode(mode: str, lam_pow: float) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not lam_pow >= 0:
        raise ValueError(f"lam_pow (the exponent p of the eta weights) must be >= 0, got {lam_pow!r}")


def _compute_dtype(logits: Tensor) -> Tensor:
    """float32 for every dtype except float64 (kept for gradcheck)."""
    return logits if logits.dtype == torch.float64 else logits.float()


def _as_lam(lam: LamLike, batch_size: int, device: torch.device, scalar_if_constant: bool = True) -> tuple[float | None, Tensor | None]:
    """``(scalar, per_row)``: the batch lam when constant (``per_row`` is then ``None``), else
    ``(None, lam [B] float64)``. Finding that a ``[B]`` tensor is constant reads it on the host,
    so it is done only with ``scalar_if_constant`` (the official rules need a scalar)."""
    if isinstance(lam, Tensor):
        t = lam.detach().reshape(-1)
        if t.numel() == 1:
            return float(t[0]), None
        if t.numel() != batch_size:
            raise ValueError(f"lam must be a scalar or have shape [{batch_size}], got {tuple(lam.shape)}")
        t = t.to(device=device, dtype=torch.float64)
        if not scalar_if_constant:
            return None, t
        first = t[0]
        return (float(first), None) if bool(torch.all(t == first)) else (None, t)
    return float(lam), None


def _lse_without(logits: Tensor, removed: Tensor) -> Tensor:
    """``log sum_{c != removed[..]} exp(z_c)`` over the last dim (``removed`` has the leading shape)."""
    return torch.logsumexp(logits.scatter(-1, removed.unsqueeze(-1), float("-inf")), dim=-1)


# ----------------------------------------------------------------------------- eta weights
def _check_scale(lam_scale_mode: str, lam_thr: float, lam_pow: float) -> None:
    if lam_scale_mode not in LAM_SCALE_MODES:
        raise ValueError(f"lam_scale_mode must be one of {LAM_SCALE_MODES}, got {lam_scale_mode!r}")
    if not 0 < lam_thr <= 1:
        raise ValueError(f"lam_thr must lie in (0, 1], got {lam_thr!r}")
    if lam_scale_mode == "exp" and abs(lam_pow) in (0.0, 1.0):
        raise ValueError(
            f"lam_scale_mode='exp' needs lam_pow (the base) other than 0 and 1, got {lam_pow!r} "
            "(the rescaling divides by 1 - lam_pow**(-2 * lam_thr))"
        )


def lambda_adjust(w: float | Tensor, mode: str = "pow", thr: float = 1.0, idx: float = 1.0) -> float | Tensor:
    """Rescale a mixing weight ``w`` in [0, 1] (official ``ClsMixupHead.lambda_adjust``).

    ``w >= thr`` gives 1. Below ``thr``, with ``a = |idx|``:

    * ``pow``: ``thr**(-a) * w**a`` (``thr = 1``: plain ``w**a``);
    * ``exp``: ``(a**(2 w - 2 thr) - b) / (1 - b)`` with ``b = a**(-2 thr)``, i.e. an exponential in
      ``w`` that is 0 at ``w = 0`` and 1 at ``w = thr`` (the official form
      ``(a**(w - 2 thr) * a**w - b) * k``, ``k = 1 / (1 - b)``);
    * ``none``: 1 (the head then uses a constant eta).

    ``w`` is a float or a tensor (elementwise).
    """
    a = abs(float(idx))
    if isinstance(w, Tensor):
        wt = w.to(torch.float64)
        if mode == "pow":
            below_t = (thr ** (-a)) * wt.clamp(min=0).pow(a)
        elif mode == "exp":
            b = a ** (-2 * thr)
            below_t = (torch.pow(torch.full_like(wt, a), 2 * wt - 2 * thr) - b) / (1 - b)
        else:
            below_t = torch.ones_like(wt)
        return torch.where(wt >= thr, torch.ones_like(wt), below_t)
    wf = float(w)
    if wf >= thr or mode == "none":
        return 1.0
    if mode == "pow":
        return float((thr ** (-a)) * (wf**a))
    if mode == "exp":
        b = a ** (-2 * thr)
        return float((a ** (wf - 2 * thr) * a**wf - b) / (1 - b))
    raise ValueError(f"lam_scale_mode must be one of {LAM_SCALE_MODES}, got {mode!r}")


def eta_weights(
    lam: LamLike,
    eta: float = 0.1,
    mode: str = "both",
    thr: float = 0.5,
    lam_pow: float = 1.0,
    *,
    lam_scale_mode: str = "pow",
    lam_thr: float = 1.0,
) -> tuple[float, float] | tuple[Tensor, Tensor]:
    """The regulariser weights ``(w_a, w_b)`` of the ``y_a`` and ``y_b`` terms.

    Mirrors ``ClsMixupHead.loss`` (``eta_weight`` dict) with ``lam_scale_mode='pow'``,
    ``lam_thr=1``, ``lam_idx=lam_pow``:

    * ``both``: ``(lam, 1 - lam)``;
    * ``less``: ``(lam, 0)`` if ``lam < thr`` else ``(0, 1 - lam)`` (the minority component);
    * ``more``: ``(lam, 0)`` if ``lam >= thr`` else ``(0, 1 - lam)`` (the dominant component);
    * every non-zero weight ``w`` becomes ``eta * lambda_adjust(w, lam_scale_mode, lam_thr,
      lam_pow)``: with the defaults ``eta * w**lam_pow`` (``lam_pow=0``: a constant ``eta``);
      ``lam_scale_mode="exp"`` an exponential ramp reaching 1 at ``lam_thr``; ``"none"`` a
      constant ``eta``.

    ``lam`` is a float (returns floats) or a ``[B]`` tensor (returns ``[B]`` tensors, gated per row).
    """
    _check_mode(mode, lam_pow)
    _check_scale(lam_scale_mode, lam_thr, lam_pow)
    if isinstance(lam, Tensor) and lam.dim() > 0:
        lam_t = lam.detach().to(torch.float64)
        below = lam_t < thr
        zero = torch.zeros_like(lam_t)
        if mode == "both":
            w_a, w_b = lam_t, 1 - lam_t
        elif mode == "less":
            w_a, w_b = torch.where(below, lam_t, zero), torch.where(below, zero, 1 - lam_t)
        else:
            w_a, w_b = torch.where(below, zero, lam_t), torch.where(below, 1 - lam_t, zero)

        def scale_t(w: Tensor) -> Tensor:
            adjusted = lambda_adjust(w, lam_scale_mode, lam_thr, lam_pow)
            assert isinstance(adjusted, Tensor)
            return torch.where(w > 0, eta * adjusted, zero)

        return scale_t(w_a), scale_t(w_b)

    lam_f = float(lam)
    below_f = lam_f < thr
    if mode == "both":
        pair = [lam_f, 1.0 - lam_f]
    elif mode == "less":
        pair = [lam_f, 0.0] if below_f else [0.0, 1.0 - lam_f]
    else:
        pair = [0.0, 1.0 - lam_f] if below_f else [lam_f, 0.0]

    def scale(w: float) -> float:
        return eta * float(lambda_adjust(w, lam_scale_mode, lam_thr, lam_pow)) if w > 0 else 0.0

    return scale(pair[0]), scale(pair[1])


# ----------------------------------------------------------------------------- decoupled terms
def decoupled_log_softmax(logits: Tensor, target: Tensor, removed: Tensor) -> Tensor:
    """``log H_target``: log-softmax of class ``target`` with class ``removed`` left out of the normaliser.

    ``H_k(z) = exp(z_k) / sum_{c != j} exp(z_c)`` for ``k = target[n]``, ``j = removed[n]``: only
    the *other* mixed class is dropped; every non-mixed class stays (paper Eq. for the decoupled
    softmax; official: ``mask_lam_i = (label == lam_k[i]) | ~mask_lam_k``). Rows with
    ``target == removed`` drop nothing (the plain log-softmax). Returns ``[B]``.
    """
    z = _compute_dtype(logits)
    idx = removed.reshape(-1, 1)
    keep_value = z.gather(1, idx)  # same-class rows put their own value back: nothing dropped
    fill = torch.where(
        (target != removed).reshape(-1, 1), torch.full_like(keep_value, float("-inf")), keep_value
    )
    lse = torch.logsumexp(z.scatter(1, idx, fill), dim=-1)
    return z.gather(1, target.reshape(-1, 1)).squeeze(1) - lse


def decoupled_regularizer(
    logits: Tensor, y_a: Tensor, y_b: Tensor, w_a: float | Tensor, w_b: float | Tensor
) -> Tensor:
    """``R_n = w_a * (-log H_{y_a}(z_n)) + w_b * (-log H_{y_b}(z_n))`` per row, ``0`` where ``y_a == y_b``.

    ``w_a``/``w_b`` are floats or ``[B]`` tensors (see ``eta_weights``). Returns ``[B]``.
    """
    z = _compute_dtype(logits)
    nll = _decoupled_nll(z, y_a, y_b)
    reg = _as_weight(w_a, z) * nll[:, 0] + _as_weight(w_b, z) * nll[:, 1]
    return torch.where(y_a != y_b, reg, torch.zeros_like(reg))


def _as_weight(w: float | Tensor, like: Tensor) -> float | Tensor:
    return w.to(like.dtype) if isinstance(w, Tensor) else float(w)


def _decoupled_nll(z: Tensor, y_a: Tensor, y_b: Tensor) -> Tensor:
    """``[B, 2]``: ``-log H_{y_a}`` (``y_b`` dropped) and ``-log H_{y_b}`` (``y_a`` dropped), one pass.

    Rows with ``y_a == y_b`` hold finite values the callers mask out.
    """
    targets = torch.stack([y_a, y_b], dim=1)  # [B, 2]
    removed = torch.stack([y_b, y_a], dim=1)  # [B, 2]
    expanded = z.unsqueeze(1).expand(-1, 2, -1)  # [B, 2, C]
    lse = _lse_without(expanded, removed)  # [B, 2]
    return lse - z.gather(1, targets)


def _decoupled_all_ones(logits: Tensor, removed: Tensor, class_weight: Tensor | None = None) -> Tensor:
    """The official smoothing path's term: ``-sum_{c in S} w_c log softmax_S(z)_c`` with ``S = all c != removed``.

    Under label smoothing every kept class has a positive target, so the official
    ``(label_lam_i > 0)`` "one-hot" becomes all ones (the documented bug). ``w_c`` are the class
    weights (1 without). Returns ``[B]``.
    """
    z = _compute_dtype(logits)
    if class_weight is None:
        kept_sum = z.sum(dim=-1) - z.gather(1, removed.reshape(-1, 1)).squeeze(1)
        return (z.shape[-1] - 1) * _lse_without(z, removed) - kept_sum
    w = class_weight.to(z).reshape(1, -1).expand_as(z).scatter(1, removed.reshape(-1, 1), 0.0)
    return (w * (_lse_without(z, removed).unsqueeze(1) - z)).sum(dim=-1)


def _class_weight(class_weight: Tensor | list[float] | None, num_classes: int, like: Tensor) -> Tensor | None:
    """``[C]`` class weights on ``like``'s device and dtype, or ``None``."""
    if class_weight is None:
        return None
    w = torch.as_tensor(class_weight, dtype=like.dtype, device=like.device).reshape(-1)
    if w.numel() != num_classes:
        raise ValueError(f"class_weight must hold one weight per class ({num_classes}), got {w.numel()}")
    return w


# ----------------------------------------------------------------------------- losses
def mixup_soft_cross_entropy(
    logits: Tensor,
    y_a: Tensor,
    y_b: Tensor,
    lam: LamLike,
    label_smoothing: float = 0.0,
    class_weight: Tensor | list[float] | None = None,
) -> Tensor:
    """Per-row mixup soft CE ``-sum_c w_c t_c log softmax(z)_c`` with ``t = lam e_a + (1-lam) e_b``
    (smoothed as ``(1-s) t + s/C``; ``w_c`` the class weights, 1 without; official
    ``soft_mix_cross_entropy``: ``loss *= class_weight``). Returns ``[B]``."""
    z = _compute_dtype(logits)
    lam_scalar, lam_rows = _as_lam(lam, z.shape[0], z.device, scalar_if_constant=False)
    logp = F.log_softmax(z, dim=-1)
    w = _class_weight(class_weight, z.shape[-1], z)
    wlogp = logp if w is None else logp * w
    nll = -wlogp.gather(1, torch.stack([y_a, y_b], dim=1))  # [B, 2]
    lam_w: float | Tensor = lam_scalar if lam_rows is None else lam_rows.to(z.dtype)
    ce = lam_w * nll[:, 0] + (1 - lam_w) * nll[:, 1]
    if label_smoothing > 0:
        ce = (1 - label_smoothing) * ce - label_smoothing * wlogp.mean(dim=-1)
    return ce


def _lam_skip_reason(lam: float, num_classes: int, label_smoothing: float, eps: float) -> str | None:
    """The lam part of the official skip rule, on float32 label values as the official code sees them."""
    s = label_smoothing
    t_a, t_b = np.float32(lam), np.float32(1.0 - lam)
    eps_eff = eps
    if s > 0:
        t_a = np.float32((1 - s) * t_a + s / num_classes)
        t_b = np.float32((1 - s) * t_b + s / num_classes)
        eps_eff = eps + s / num_classes
    if t_a <= eps_eff or t_b <= eps_eff:
        return "one-class"
    if t_a == t_b:
        return "equal"
    return None


def official_skip_reason(
    lam: float,
    y_a: Tensor,
    y_b: Tensor,
    num_classes: int,
    label_smoothing: float = 0.0,
    eps: float = OFFICIAL_EPS,
) -> str | None:
    """Why the official code drops the regulariser for this whole batch, or ``None``.

    ``soft_mix_cross_entropy`` only adds the decoupled terms when the first mixed row has two
    *distinct* active label values above ``_eps`` (float32): it skips ``lam`` within ``eps`` of
    0 or 1 (``"one-class"``), ``lam = 0.5`` (``"equal"``) and batches without a mixed row
    (``"no-mixed-rows"``). With smoothing ``s`` the label values and ``eps`` shift by ``s/C``.
    """
    reason = _lam_skip_reason(lam, num_classes, label_smoothing, eps)
    if reason is None and not bool((y_a != y_b).any()):
        return "no-mixed-rows"
    return reason


def decoupled_mixup_loss(
    logits: Tensor,
    y_a: Tensor,
    y_b: Tensor,
    lam: LamLike,
    eta: float = 0.1,
    mode: str = "both",
    thr: float = 0.5,
    lam_pow: float = 1.0,
    official_eta_order: bool = True,
    *,
    official_skip: bool = True,
    eps: float = OFFICIAL_EPS,
    label_smoothing: float = 0.0,
    smoothing_target: str = "official",
    lam_scale_mode: str = "pow",
    lam_thr: float = 1.0,
    class_weight: Tensor | list[float] | None = None,
    return_parts: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """Decoupled Mixup loss: mixup soft CE plus the decoupled regulariser, mean over the whole batch.

    Args:
        logits: ``[B, C]`` (any float dtype; computed in float32, float64 kept).
        y_a, y_b: ``[B]`` class ids of the anchor and the partner.
        lam: the anchor's weight: a float, a 0-d tensor or a ``[B]`` tensor.
        eta, mode, thr, lam_pow: the regulariser weights (``eta_weights``). ``eta=0`` gives exactly
            the mixup soft CE.
        official_eta_order: official pairing of the eta list with the active classes in class
            index order of the first mixed row: when ``y_a[r0] > y_b[r0]`` the two weights are
            swapped for the whole batch. ``False``: ``w_a`` always goes with ``y_a``.
        official_skip: drop the regulariser batch-wide when ``lam`` is within ``eps`` of 0 or 1,
            or exactly 0.5 (``official_skip_reason``). ``False``: apply it to every mixed row.
        eps: the official active-class threshold.
        label_smoothing: ``s``. ``smoothing_target="official"``: applied only when ``s >= 0.1``
            (smaller values are ignored, as officially), and the decoupled targets become all
            ones over the kept classes (the official behaviour). ``"onehot"``: ``s`` smooths the
            mixup CE only, the decoupled targets stay one-hot.
        lam_scale_mode, lam_thr: how each eta weight is rescaled (``lambda_adjust``; the head's
            ``lam_scale_mode``, ``lam_thr``, with ``lam_pow`` as ``lam_idx``).
        class_weight: ``[C]`` class weights: the mixup CE is ``-sum_c w_c t_c log p_c`` (official
            ``loss *= class_weight``) and each decoupled term is weighted by its target class's
            weight. (The official code multiplies the ``[N, C-k+1]`` decoupled term by the ``[C]``
            weights, a shape error whenever the regulariser applies; the kept classes' weights are
            what it means, and only the target class's weight survives its one-hot target.)
        return_parts: also return ``{"ce": [B], "reg": [B], "skipped": 0-d bool tensor}`` (no host sync).

    Per-sample ``lam`` (distinct values) needs ``official_eta_order=False`` and
    ``official_skip=False`` (our documented extension); otherwise ``ValueError``.
    """
    _check_mode(mode, lam_pow)
    _check_scale(lam_scale_mode, lam_thr, lam_pow)
    if smoothing_target not in SMOOTHING_TARGETS:
        raise ValueError(f"smoothing_target must be one of {SMOOTHING_TARGETS}, got {smoothing_target!r}")
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape [B, C], got {tuple(logits.shape)}")
    z = _compute_dtype(logits)
    batch_size, num_classes = z.shape
    y_a = y_a.to(z.device).long().reshape(-1)
    y_b = y_b.to(z.device).long().reshape(-1)
    if y_a.shape[0] != batch_size or y_b.shape[0] != batch_size:
        raise ValueError(
            f"y_a and y_b must have shape [{batch_size}], got {tuple(y_a.shape)} and {tuple(y_b.shape)}"
        )
    lam_scalar, lam_rows = _as_lam(lam, batch_size, z.device, scalar_if_constant=official_eta_order or official_skip)
    if lam_scalar is None and (official_eta_order or official_skip):
        raise ValueError(PER_SAMPLE_LAM_MESSAGE)

    s = float(label_smoothing)
    official_smoothing = smoothing_target == "official" and s >= OFFICIAL_MIN_SMOOTHING
    ce_smoothing = s if (smoothing_target == "onehot" or official_smoothing) else 0.0
    lam_arg: LamLike = lam_scalar if lam_rows is None else lam_rows
    cw = _class_weight(class_weight, num_classes, z)
    ce = mixup_soft_cross_entropy(z, y_a, y_b, lam_arg, label_smoothing=ce_smoothing, class_weight=cw)

    mixed = y_a != y_b
    reg = torch.zeros_like(ce)
    applied = False
    if eta != 0 and batch_size > 0:
        if official_skip and lam_scalar is not None:
            applied = _lam_skip_reason(lam_scalar, num_classes, s if official_smoothing else 0.0, eps) is None
        else:
            applied = True
    if applied:
        w_a, w_b = eta_weights(lam_arg, eta, mode, thr, lam_pow, lam_scale_mode=lam_scale_mode, lam_thr=lam_thr)
        w_a_t = torch.as_tensor(w_a, dtype=z.dtype, device=z.device)
        w_b_t = torch.as_tensor(w_b, dtype=z.dtype, device=z.device)
        if official_eta_order:
            # the eta list follows the active classes of the first mixed row in class-index order
            r0 = mixed.to(torch.uint8).argmax()
            swap = y_a[r0] > y_b[r0]
            w_a_t, w_b_t = torch.where(swap, w_b_t, w_a_t), torch.where(swap, w_a_t, w_b_t)
        if official_smoothing:
            reg_all = w_a_t * _decoupled_all_ones(z, y_b, cw) + w_b_t * _decoupled_all_ones(z, y_a, cw)
        else:
            nll = _decoupled_nll(z, y_a, y_b)
            if cw is not None:
                nll = nll * cw[torch.stack([y_a, y_b], dim=1)]
            reg_all = w_a_t * nll[:, 0] + w_b_t * nll[:, 1]
        reg = torch.where(mixed, reg_all, torch.zeros_like(reg_all))
    skipped = (~mixed.any()) if applied else torch.ones((), dtype=torch.bool, device=z.device)
    loss = (ce.sum() + reg.sum()) / max(batch_size, 1)
    if return_parts:
        return loss, {"ce": ce, "reg": reg, "skipped": skipped}
    return loss


# ----------------------------------------------------------------------------- N-source mixes
def multi_eta_weights(
    lams: list[float],
    eta: float = 0.1,
    lam_pow: float = 1.0,
    *,
    lam_scale_mode: str = "pow",
    lam_thr: float = 1.0,
) -> list[float]:
    """Eta weights of a k-source mix, one per source: ``eta * lambda_adjust(lam_j)`` (mode ``both``).

    The official head builds two-source lists only; its loss takes any k-long ``eta_weight``
    list, and this is mode ``both`` carried over to k sources (``less``/``more`` name one of two
    components and have no k-source form).
    """
    _check_scale(lam_scale_mode, lam_thr, lam_pow)
    return [eta * float(lambda_adjust(w, lam_scale_mode, lam_thr, lam_pow)) if w > 0 else 0.0 for w in lams]


def decoupled_multimix_loss(
    logits: Tensor,
    ys: Tensor,
    lams: list[float] | Tensor,
    eta: float = 0.1,
    lam_pow: float = 1.0,
    official_eta_order: bool = True,
    *,
    eta_weights: list[float] | None = None,
    official_skip: bool = True,
    eps: float = OFFICIAL_EPS,
    lam_scale_mode: str = "pow",
    lam_thr: float = 1.0,
    class_weight: Tensor | list[float] | None = None,
    label_smoothing: float = 0.0,
    return_parts: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """Decoupled Mixup for mixes of k >= 2 classes (official ``soft_mix_cross_entropy`` with a k-hot label).

    Row ``n`` mixes sources ``j = 1..k`` with classes ``ys[n, j]`` and batch-constant weights
    ``lams[j]`` (summing to 1): ``t_n = sum_j lam_j e_{y_nj}``. The loss is

        ``(sum_n l_n + sum_{mixed n} sum_j w_j * w_c(y_nj) * (-log H_j(z_n))) / B``

    where ``l_n = -sum_c w_c t_nc log softmax(z_n)_c`` (the mixup soft CE), a row is *mixed* when
    its k classes are distinct (rows with a repeated class get ``l_n`` only, as the official
    split by the number of active classes), and ``H_j`` is the softmax over ``y_nj`` and every
    class **not** in the mix (the other k - 1 mixed classes are dropped; official
    ``mask_lam_i = (label == lam_k[i]) | ~mask_lam_k``).

    Args:
        logits: ``[B, C]``.
        ys: ``[B, k]`` class ids of the k sources.
        lams: the k source weights (floats or a ``[k]`` tensor), constant over the batch.
        eta, lam_pow, lam_scale_mode, lam_thr: the eta weights (``multi_eta_weights``) unless
            ``eta_weights`` (k floats, in source order) is given.
        official_eta_order: the official loss pairs its eta list with the active classes of the
            first mixed row **in class-index order**: source ``order[i]`` gets ``eta_weights[i]``,
            where ``order`` sorts that row's classes. ``False``: ``eta_weights[j]`` goes with source j.
        official_skip: no regulariser when some ``float32(lam_j) <= eps`` or two weights are equal
            (the official "distinct active values" test), or no row is mixed. (With k > 2 and an
            inactive source the official code fails an assertion; skipping is ours.)
        class_weight: ``[C]``: as in ``decoupled_mixup_loss``.
        label_smoothing: smooths the soft CE only (``(1-s) t + s/C``); the decoupled targets stay
            one-hot (the official code forbids mixing with smoothing here).
        return_parts: also return ``{"ce": [B], "reg": [B], "skipped": 0-d bool}``.

    With k = 2 this equals ``decoupled_mixup_loss(logits, ys[:, 0], ys[:, 1], lams[0])`` in
    mode ``both``.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape [B, C], got {tuple(logits.shape)}")
    z = _compute_dtype(logits)
    batch_size, num_classes = z.shape
    ys = ys.to(z.device).long()
    lam_list = [float(v) for v in (lams.tolist() if isinstance(lams, Tensor) else lams)]
    k = len(lam_list)
    if ys.dim() != 2 or ys.shape != (batch_size, k):
        raise ValueError(f"ys must have shape [B, k] = [{batch_size}, {k}], got {tuple(ys.shape)}")
    if k < 2:
        raise ValueError(f"decoupled_multimix_loss needs at least two sources, got {k}")
    if any(not 0.0 <= v <= 1.0 for v in lam_list) or abs(sum(lam_list) - 1.0) > 1e-4:
        raise ValueError(f"lams must lie in [0, 1] and sum to 1, got {lam_list}")
    weights = (
        list(eta_weights)
        if eta_weights is not None
        else multi_eta_weights(lam_list, eta, lam_pow, lam_scale_mode=lam_scale_mode, lam_thr=lam_thr)
    )
    if len(weights) != k:
        raise ValueError(f"eta_weights must hold one weight per source ({k}), got {len(weights)}")
    cw = _class_weight(class_weight, num_classes, z)

    lam_t = torch.tensor(lam_list, dtype=z.dtype, device=z.device)
    logp = F.log_softmax(z, dim=-1)
    wlogp = logp if cw is None else logp * cw
    ce = -(wlogp.gather(1, ys) * lam_t).sum(dim=1)
    if label_smoothing > 0:
        ce = (1 - label_smoothing) * ce - label_smoothing * wlogp.mean(dim=-1)

    onehots = F.one_hot(ys, num_classes).to(z.dtype)  # [B, k, C]
    distinct = onehots.sum(dim=1).amax(dim=1) <= 1  # no class repeated in the row
    applied = any(w != 0 for w in weights) and batch_size > 0
    if applied and official_skip:
        f32 = [float(np.float32(v)) for v in lam_list]
        applied = min(f32) > eps and len(set(f32)) == k
    reg = torch.zeros_like(ce)
    if applied:
        w_t = torch.tensor(weights, dtype=z.dtype, device=z.device)
        if official_eta_order:
            first = distinct.to(torch.uint8).argmax()
            order = torch.argsort(ys[first])  # sources of the first mixed row in class-index order
            w_t = torch.empty_like(w_t).scatter_(0, order, w_t)
        in_mix = onehots.sum(dim=1, keepdim=True) - onehots  # [B, k, C]: the other sources' classes
        masked = z.unsqueeze(1).masked_fill(in_mix > 0, float("-inf"))
        nll = torch.logsumexp(masked, dim=-1) - z.gather(1, ys)  # [B, k]: -log H_j
        if cw is not None:
            nll = nll * cw[ys]
        reg = torch.where(distinct, (nll * w_t).sum(dim=1), torch.zeros_like(ce))
    skipped = (~distinct.any()) if applied else torch.ones((), dtype=torch.bool, device=z.device)
    loss = (ce.sum() + reg.sum()) / max(batch_size, 1)
    if return_parts:
        return loss, {"ce": ce, "reg": reg, "skipped": skipped}
    return loss
