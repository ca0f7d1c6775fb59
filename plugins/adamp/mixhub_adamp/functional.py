"""AdamP and SGDP as pure tensor functions: the projection and one step per tensor.

Paper: B. Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
Scale-invariant Weights", ICLR 2021 (arXiv 2006.08217), Algorithms 1-3. Official code:
clovaai/AdamP ``adamp/adamp.py`` and ``adamp/sgdp.py`` (PyPI ``adamp`` 0.3.0); the reference
functions below keep its exact order of operations, so they are bitwise equal to it.

Three implementations of the same step:

* ``adamp_update_`` / ``sgdp_update_``: one tensor, the official order (the reference);
* ``adamp_foreach_update_`` / ``sgdp_foreach_update_``: a list of tensors with
  ``torch._foreach_*`` kernels; the projection decision is taken on the host on CPU (bitwise
  equal to the reference) and kept on the device (``projection_branchless``) elsewhere, so a
  CUDA step never synchronises;
* ``adamp_capturable_update_``: the multi-tensor step with the step counts kept as device
  tensors (bias corrections computed on the device) and branch-free projections: no host
  synchronisation and no host value that changes between steps, so it can be captured in a
  CUDA graph or compiled whole;
* ``fused_adamp_update_`` / ``fused_sgdp_update_``: one C++ kernel per tensor on CPU
  (``_kernels.cpp``, the torch ops ``mixhub_adamp::adamp_step`` / ``sgdp_step``): the projection
  decided first from g and w (row sums in double), then each row finished in one sweep; equal
  to the reference to rounding. A layer-view projection, and a cosine within 1% of its
  threshold, go to the reference step instead: there the official float32 sums over the whole
  tensor (up to millions of elements) decide and project, and double sums would drift from
  them (up to ~1e-4 relative after 20 SGDP steps) or take the other side of the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import native

__all__ = [
    "KINDS",
    "projection",
    "projection_branchless",
    "adamp_update_",
    "sgdp_update_",
    "adamp_foreach_update_",
    "adamp_capturable_update_",
    "sgdp_foreach_update_",
    "fused_adamp_update_",
    "fused_sgdp_update_",
    "fused_supported",
]

#: Projection kinds by code (the branch-free and fused paths return codes).
KINDS = ("none", "channel", "layer", "1d")
#: The fused kernels' code for "nothing written: run the reference step on this tensor" (a
#: layer-view projection, or a cosine too close to its threshold to call in double precision).
DEFERRED = 4


def _channel_view(x: Tensor) -> Tensor:
    # ``reshape``, not the official ``view``: identical values, and channels_last works.
    return x.reshape(x.size(0), -1)


def _layer_view(x: Tensor) -> Tensor:
    return x.reshape(1, -1)


def projection(
    weight: Tensor, grad: Tensor, direction: Tensor, delta: float, wd_ratio: float, eps: float
) -> tuple[Tensor, float, str]:
    """Remove the radial component of ``direction`` when ``weight`` looks scale-invariant.

    Paper Algorithm 1 (``Projection``); official ``AdamP._projection``. The channel view
    (one row per output channel) is tested first, then the layer view (one row): a view passes
    when ``max_i |cos(grad_i, weight_i)| < delta / sqrt(row length)``. At the first view that
    passes, ``direction -= w_hat * rowsum(w_hat * direction)`` with ``w_hat = w / (||w_i|| +
    eps)``, in place, and the weight-decay factor is ``wd_ratio``; otherwise ``direction`` is
    unchanged and the factor is 1.

    Returns ``(direction, wd_factor, kind)`` with kind ``"channel"``, ``"layer"`` or ``"none"``.
    """
    expand = [-1] + [1] * (weight.dim() - 1)
    for kind, view in (("channel", _channel_view), ("layer", _layer_view)):
        w_rows = view(weight)
        cosine = F.cosine_similarity(view(grad), w_rows, dim=1, eps=eps).abs_()
        if cosine.max() < delta / math.sqrt(w_rows.size(1)):
            w_hat = weight / w_rows.norm(dim=1).view(expand).add_(eps)
            direction -= w_hat * view(w_hat * direction).sum(dim=1).view(expand)
            return direction, wd_ratio, kind
    return direction, 1.0, "none"


def projection_branchless(
    weight: Tensor, grad: Tensor, direction: Tensor, delta: float, wd_ratio: float, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``projection`` without host synchronisation (spec section 3.4).

    Both candidates (channel- and layer-projected) are computed and selected with
    ``torch.where`` on 0-d boolean tensors. Returns ``(direction, passed, kind_code)``: the
    direction (updated in place), a 0-d bool (a view passed, so the decay uses ``wd_ratio``)
    and a 0-d int64 code into ``KINDS``. The selected values are the ones the reference
    computes, op for op.
    """
    expand = [-1] + [1] * (weight.dim() - 1)
    rows_c, rows_l = _channel_view(weight), _layer_view(weight)
    cos_c = F.cosine_similarity(_channel_view(grad), rows_c, dim=1, eps=eps).abs_()
    cos_l = F.cosine_similarity(_layer_view(grad), rows_l, dim=1, eps=eps).abs_()
    c_ok = cos_c.max() < delta / math.sqrt(rows_c.size(1))
    l_ok = cos_l.max() < delta / math.sqrt(rows_l.size(1))
    w_c = weight / rows_c.norm(dim=1).view(expand).add_(eps)
    u_c = direction - w_c * _channel_view(w_c * direction).sum(dim=1).view(expand)
    w_l = weight / rows_l.norm(dim=1).view(expand).add_(eps)
    u_l = direction - w_l * _layer_view(w_l * direction).sum(dim=1).view(expand)
    direction.copy_(torch.where(c_ok, u_c, torch.where(l_ok, u_l, direction)))
    code = torch.where(c_ok, 1, torch.where(l_ok, 2, 0))
    return direction, c_ok | l_ok, code


# ============================================================================ reference
def adamp_update_(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: int,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    delta: float,
    wd_ratio: float,
    nesterov: bool,
) -> str:
    """One AdamP step on one tensor, in place (paper Algorithm 2; official ``AdamP.step``).

    ``step`` is the step count after this update (1 at the first step), a Python int.
    Returns the projection kind (``"1d"`` for tensors that are never tested).
    """
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(eps)
    step_size = lr / bias_correction1
    if nesterov:
        perturb = (beta1 * exp_avg + (1 - beta1) * grad) / denom
    else:
        perturb = exp_avg / denom
    factor, kind = 1.0, "1d"
    if param.dim() > 1:
        perturb, factor, kind = projection(param, grad, perturb, delta, wd_ratio, eps)
    if weight_decay > 0:
        param.mul_(1 - lr * weight_decay * factor)
    param.add_(perturb, alpha=-step_size)
    return kind


def sgdp_update_(
    param: Tensor,
    grad: Tensor,
    buf: Tensor,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    eps: float,
    delta: float,
    wd_ratio: float,
    buffer_alias: bool = True,
) -> str:
    """One SGDP step on one tensor, in place (paper Algorithm 3; official ``SGDP.step``).

    ``buf`` is the momentum buffer (zeros at the first step; no first-step special case).
    Without nesterov the official code projects the buffer itself (``buffer_alias=True``);
    ``buffer_alias=False`` projects a copy, as timm >= 1.0.26 does. The decoupled decay is
    ``1 - lr * weight_decay * factor / (1 - momentum)``.
    """
    buf.mul_(momentum).add_(grad, alpha=1 - dampening)
    if nesterov:
        d_p = grad + momentum * buf
    else:
        d_p = buf if buffer_alias else buf.clone()
    factor, kind = 1.0, "1d"
    if param.dim() > 1:
        d_p, factor, kind = projection(param, grad, d_p, delta, wd_ratio, eps)
    if weight_decay > 0:
        param.mul_(1 - lr * weight_decay * factor / (1 - momentum))
    param.add_(d_p, alpha=-lr)
    return kind


# ============================================================================ multi-tensor
def _decay(param: Tensor, passed: Tensor | None, factor: float, full: float, proj: float) -> None:
    """Multiply by the decay scalar: ``proj`` when the tensor was projected, else ``full``.

    ``passed`` is the branch-free decision (a 0-d bool on the device) or ``None``, in which
    case ``factor`` (``wd_ratio`` or 1, from the host decision) chooses.
    """
    if passed is None:
        param.mul_(proj if factor != 1.0 else full)
    else:
        # 0-d float64 on the device: the multiply casts it to the parameter's dtype exactly as
        # it casts a Python scalar, with no host synchronisation.
        kw = {"dtype": torch.float64, "device": param.device}
        param.mul_(torch.where(passed, torch.full((), proj, **kw), torch.full((), full, **kw)))


def _project_all(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    dirs: Sequence[Tensor],
    delta: float,
    wd_ratio: float,
    eps: float,
    branchless: bool | None,
) -> tuple[list[Tensor | None], list[float], list[str | Tensor]]:
    passed: list[Tensor | None] = []
    factors: list[float] = []
    kinds: list[str | Tensor] = []
    for p, g, d in zip(params, grads, dirs):
        if p.dim() <= 1:
            passed.append(None), factors.append(1.0), kinds.append("1d")
            continue
        use_branchless = branchless if branchless is not None else p.device.type != "cpu"
        if use_branchless:
            _, ok, code = projection_branchless(p, g, d, delta, wd_ratio, eps)
            passed.append(ok), factors.append(float("nan")), kinds.append(code)
        else:
            _, factor, kind = projection(p, g, d, delta, wd_ratio, eps)
            passed.append(None), factors.append(factor), kinds.append(kind)
    return passed, factors, kinds


def adamp_foreach_update_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    step: int,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    delta: float,
    wd_ratio: float,
    nesterov: bool,
    branchless: bool | None = None,
) -> list[str | Tensor]:
    """``adamp_update_`` on a list of tensors sharing device, dtype and step count.

    Moments, directions, decay and step use ``torch._foreach_*``; the projection runs per
    tensor, decided on the host on CPU and branch-free elsewhere (``branchless`` overrides).
    Returns the kinds (strings, or 0-d code tensors from the branch-free path).
    """
    params, grads = list(params), list(grads)
    exp_avgs, exp_avg_sqs = list(exp_avgs), list(exp_avg_sqs)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, math.sqrt(bias_correction2))
    torch._foreach_add_(denoms, eps)
    step_size = lr / bias_correction1
    if nesterov:
        dirs = torch._foreach_mul(exp_avgs, beta1)
        torch._foreach_add_(dirs, torch._foreach_mul(grads, 1 - beta1))
        torch._foreach_div_(dirs, denoms)
    else:
        dirs = torch._foreach_div(exp_avgs, denoms)
    passed, factors, kinds = _project_all(params, grads, dirs, delta, wd_ratio, eps, branchless)
    if weight_decay > 0:
        full, proj = 1 - lr * weight_decay * 1, 1 - lr * weight_decay * wd_ratio
        for p, ok, f in zip(params, passed, factors):
            _decay(p, ok, f, full, proj)
    torch._foreach_add_(params, dirs, alpha=-step_size)
    return kinds


def adamp_capturable_update_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    steps: Sequence[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    delta: float,
    wd_ratio: float,
    nesterov: bool,
) -> list[Tensor | str]:
    """``adamp_update_`` on a list of tensors whose step counts are 0-d tensors on their device.

    ``steps`` hold the count before this update and are incremented in place. The bias
    corrections are computed on the device in the steps' dtype (float64 where the device has
    it), cast to the parameters' dtype where they meet them, as the reference casts its Python
    floats; the projection is ``projection_branchless``. Nothing is read back to the host.
    Returns the kinds (0-d code tensors, ``"1d"`` for tensors that are never tested).
    """
    params, grads = list(params), list(grads)
    exp_avgs, exp_avg_sqs, steps = list(exp_avgs), list(exp_avg_sqs), list(steps)
    torch._foreach_add_(steps, 1)
    # 1 - beta**t as -(beta**t) + 1 (the same rounding), on the device
    bias_correction1 = torch._foreach_pow(beta1, steps)
    torch._foreach_neg_(bias_correction1)
    torch._foreach_add_(bias_correction1, 1)
    bias_correction2 = torch._foreach_pow(beta2, steps)
    torch._foreach_neg_(bias_correction2)
    torch._foreach_add_(bias_correction2, 1)
    torch._foreach_sqrt_(bias_correction2)
    # -lr / bias_correction1
    neg_step_size = torch._foreach_reciprocal(bias_correction1)
    torch._foreach_mul_(neg_step_size, -lr)
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, [b.to(d.dtype) for b, d in zip(bias_correction2, denoms)])
    torch._foreach_add_(denoms, eps)
    if nesterov:
        dirs = torch._foreach_mul(exp_avgs, beta1)
        torch._foreach_add_(dirs, torch._foreach_mul(grads, 1 - beta1))
        torch._foreach_div_(dirs, denoms)
    else:
        dirs = torch._foreach_div(exp_avgs, denoms)
    passed, _, kinds = _project_all(params, grads, dirs, delta, wd_ratio, eps, branchless=True)
    if weight_decay > 0:
        full, proj = 1 - lr * weight_decay * 1, 1 - lr * weight_decay * wd_ratio
        for p, ok in zip(params, passed):
            if ok is None:
                p.mul_(full)
            else:
                _decay(p, ok, float("nan"), full, proj)
    torch._foreach_mul_(dirs, [s.to(d.dtype) for s, d in zip(neg_step_size, dirs)])
    torch._foreach_add_(params, dirs)
    return kinds


def sgdp_foreach_update_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    bufs: Sequence[Tensor],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    eps: float,
    delta: float,
    wd_ratio: float,
    buffer_alias: bool = True,
    branchless: bool | None = None,
) -> list[str | Tensor]:
    """``sgdp_update_`` on a list of tensors sharing device and dtype (see ``adamp_foreach_update_``)."""
    params, grads, bufs = list(params), list(grads), list(bufs)
    torch._foreach_mul_(bufs, momentum)
    torch._foreach_add_(bufs, grads, alpha=1 - dampening)
    if nesterov:
        dirs = torch._foreach_add(grads, torch._foreach_mul(bufs, momentum))
    else:
        dirs = bufs if buffer_alias else torch._foreach_mul(bufs, 1.0)
    passed, factors, kinds = _project_all(params, grads, dirs, delta, wd_ratio, eps, branchless)
    if weight_decay > 0:
        full = 1 - lr * weight_decay * 1 / (1 - momentum)
        proj = 1 - lr * weight_decay * wd_ratio / (1 - momentum)
        for p, ok, f in zip(params, passed, factors):
            _decay(p, ok, f, full, proj)
    torch._foreach_add_(params, dirs, alpha=-lr)
    return kinds


# ============================================================================ fused (CPU)
def fused_supported(param: Tensor) -> bool:
    """Whether the fused CPU kernel takes ``param``: a dense float32/float64 CPU tensor whose
    output channels are contiguous chunks (contiguous or channels_last), kernels built."""
    if param.device.type != "cpu" or param.dtype not in (torch.float32, torch.float64):
        return False
    if param.is_sparse or param.numel() == 0 or not native.available():
        return False
    if param.is_contiguous():
        return True
    if param.dim() == 4:
        return param.is_contiguous(memory_format=torch.channels_last)
    if param.dim() == 5:
        return param.is_contiguous(memory_format=torch.channels_last_3d)
    return False


def _like(t: Tensor, param: Tensor) -> Tensor:
    """``t`` with ``param``'s layout (a copy only when the strides differ)."""
    if t.stride() == param.stride() and t.dtype == param.dtype:
        return t
    out = torch.empty_like(param)
    out.copy_(t)
    return out


def fused_adamp_update_(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: int,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    delta: float,
    wd_ratio: float,
    nesterov: bool,
) -> str:
    """``adamp_update_`` in one C++ kernel (CPU). ``exp_avg``/``exp_avg_sq`` must share
    ``param``'s layout (``fused_supported(param)`` must hold); ``grad`` is copied if not."""
    kernels = native.ops()
    assert kernels is not None and exp_avg.stride() == param.stride() == exp_avg_sq.stride()
    grad = _like(grad, param)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    decay_full = 1 - lr * weight_decay * 1 if weight_decay > 0 else 1.0
    decay_proj = 1 - lr * weight_decay * wd_ratio if weight_decay > 0 else 1.0
    code = kernels.adamp_step(
        param, grad, exp_avg, exp_avg_sq, param.dim() > 1, beta1, beta2, lr / bias_correction1,
        math.sqrt(bias_correction2), eps, decay_full, decay_proj, delta, nesterov,
    )  # fmt: skip
    if code == DEFERRED:
        return adamp_update_(
            param, grad, exp_avg, exp_avg_sq, step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
            weight_decay=weight_decay, delta=delta, wd_ratio=wd_ratio, nesterov=nesterov,
        )  # fmt: skip
    return KINDS[code]


def fused_sgdp_update_(
    param: Tensor,
    grad: Tensor,
    buf: Tensor,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    eps: float,
    delta: float,
    wd_ratio: float,
    buffer_alias: bool = True,
) -> str:
    """``sgdp_update_`` in one C++ kernel (CPU); same contract as ``fused_adamp_update_``."""
    kernels = native.ops()
    assert kernels is not None and buf.stride() == param.stride()
    grad = _like(grad, param)
    decay_full = 1 - lr * weight_decay * 1 / (1 - momentum) if weight_decay > 0 else 1.0
    decay_proj = 1 - lr * weight_decay * wd_ratio / (1 - momentum) if weight_decay > 0 else 1.0
    code = kernels.sgdp_step(
        param, grad, buf, param.dim() > 1, momentum, dampening, lr, eps, decay_full, decay_proj,
        delta, nesterov, buffer_alias,
    )  # fmt: skip
    if code == DEFERRED:
        return sgdp_update_(
            param, grad, buf, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov, eps=eps, delta=delta, wd_ratio=wd_ratio, buffer_alias=buffer_alias,
        )  # fmt: skip
    return KINDS[code]
