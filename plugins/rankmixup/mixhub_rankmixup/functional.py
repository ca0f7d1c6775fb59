"""RankMixup's losses and the construction of its mixed copies, as pure functions.

RankMixup (Noh et al., "RankMixup: Ranking-Based Mixup Training for Network Calibration",
ICCV 2023, arXiv 2308.11990) trains with plain cross-entropy on the raw batch and uses mixup
samples only inside a ranking regulariser:

* **MRL** (mixup ranking loss, paper Eq. 4): the top score of a raw sample must exceed the top
  score of its mixed copy by a margin, ``relu(max z~ - max z + margin)``.
* **M-NDCG** (paper Eq. 5-7): the confidences of the raw sample and of its m mixed copies,
  ordered by mixing coefficient, must match those coefficients in an NDCG ratio.

The defaults reproduce the official implementation (``cvlab-yonsei/RankMixup@e5dc77f``,
``calibrate/losses/rankmixup.py``: ``RankMixup_MRL.get_logit_diff`` and its mask,
``RankMixup_MNDCG.get_indcg``), including its quirks, each behind a named flag:

* ``space="logit"``: MRL compares max **logits** (the official ``get_logit_diff``); ``"prob"``
  compares max softmax probabilities (needs a margin below 1).
* ``mask="official"``: the same-class mask ``[B]`` multiplies the hinge ``[B, 1]`` by
  broadcasting to ``[B, B]``, so the term is ``mean(keep) * mean(hinge)``; ``"per_sample"``
  zeroes same-class rows; ``"none"`` keeps every row.
* ``ratio="minmax"``: M-NDCG is ``DCG/IDCG`` when ``IDCG > DCG`` else ``IDCG/DCG``;
  ``"plain"`` is ``DCG/IDCG`` always.
* same-class pairs: a mixed target entry **exactly** 1.0 (``target_re == 1.0``), as officially.

Mixing happens on the inputs (official ``layer_mix: 0``) or on the output of an intermediate
module (``mix_at_layer``; official ``layer_mix: 4`` mixes the output of ``layer4`` of the CIFAR
ResNets, ``calibrate/net/resnet_mixup.py``: ``ResNet_Cifar.forward_multimixup``). Samples whose
target is ``ignore_index`` are left out of CE (official: ``nn.CrossEntropyLoss`` / the
``ignore_index`` filter) and, with every mixed copy that involves them, out of the ranking term.

Mixed logits and targets are **copy-major**: row ``k * B + i`` is copy ``k`` of sample ``i``
(``calibrate/net/resnet_mixup.py``: ``forward_multimixup`` concatenates the copies along dim 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "same_class_rows",
    "ranking_rows",
    "mix_copies",
    "mixed_copy_targets",
    "mix_at_layer",
    "mrl_loss",
    "mndcg_per_sample",
    "mndcg_loss",
    "rankmixup_loss",
    "masked_cross_entropy",
    "make_mixed_views",
    "sample_lams",
]

MrlMask = Literal["official", "per_sample", "none"]
MrlSpace = Literal["logit", "prob"]
NdcgRatio = Literal["minmax", "plain"]
Lam = float | Tensor  # a copy's mixing weight: a Python float or a 0-d tensor (float64 in the plugin)

def _check_2d(name: str, t: Tensor) -> None:
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [rows, classes], got shape {tuple(t.shape)}")


def same_class_rows(mixed_targets: Tensor) -> Tensor:
    """Bool ``[N]``: rows of soft targets with an entry exactly 1.0 (a same-class pair).

    The test is exact equality, as the official ``(target_re == 1.0)``: a float32 entry just
    below 1 (e.g. ``lam`` within 6e-8 of 1 for two different classes) is *not* a same-class pair,
    which matters for small Beta parameters (alpha <= 0.5) where such draws are common.
    """
    _check_2d("mixed_targets", mixed_targets)
    return (mixed_targets == 1.0).any(dim=1)


def ranking_rows(targets: Tensor, perms: Sequence[Tensor], ignore_index: int | None) -> Tensor | None:
    """Bool ``[B]``: raw samples that enter the ranking term, or ``None`` when all do.

    A sample is left out when its own target or the target of a partner in any copy
    (``targets[perm_k]``) equals ``ignore_index``: its mixed copies have no defined target.
    """
    if ignore_index is None:
        return None
    labelled = targets != ignore_index
    keep = labelled.clone()
    for perm in perms:
        keep &= labelled[perm.to(targets.device)]
    return keep


def _top_score(logits: Tensor, space: MrlSpace) -> Tensor:
    z = logits.float()
    if space == "logit":
        return z.max(dim=1).values
    if space == "prob":
        return z.softmax(dim=1).max(dim=1).values
    raise ValueError(f"space must be 'logit' or 'prob', got {space!r}")


def mrl_loss(
    logits: Tensor,
    mixed_logits: Tensor,
    mixed_targets: Tensor,
    margin: float = 2.0,
    mask: MrlMask = "official",
    *,
    space: MrlSpace = "logit",
    valid: Tensor | None = None,
) -> Tensor:
    """Mixup ranking loss (paper Eq. 4; official ``RankMixup_MRL``), the ranking term alone.

    ``h_i = relu(max_c z~_ic - max_c z_ic + margin)`` over **all** classes (not the label's),
    with ``keep_i = 0`` for same-class pairs. Reductions: ``official`` =
    ``mean(keep) * mean(h)`` (the broadcast quirk), ``per_sample`` = ``mean(keep * h)``,
    ``none`` = ``mean(h)``.

    Args:
        logits: raw logits ``[B, C]``.
        mixed_logits: logits of the single mixed copy ``[B, C]`` (MRL is defined for one copy).
        mixed_targets: soft targets of the mixed copy ``[B, C]``.
        margin: the hinge margin (logit units for ``space="logit"``).
        mask: ``"official"``, ``"per_sample"`` or ``"none"``.
        space: ``"logit"`` (official) or ``"prob"``.
        valid: optional bool ``[B]`` (``ranking_rows``): the term is computed on these rows
            alone, as if the batch held only them (0 when none is valid).
    """
    _check_2d("logits", logits)
    _check_2d("mixed_logits", mixed_logits)
    b = logits.shape[0]
    if mixed_logits.shape[0] != b:
        raise ValueError(
            f"mrl_loss: MRL is defined for exactly one mixed copy; got {mixed_logits.shape[0]} mixed rows "
            f"for a batch of {b} (use num_mixup=1, or the M-NDCG variant for several copies)"
        )
    if mixed_targets.shape != mixed_logits.shape or logits.shape != mixed_logits.shape:
        raise ValueError(
            f"mrl_loss: shapes differ: logits {tuple(logits.shape)}, mixed_logits {tuple(mixed_logits.shape)}, "
            f"mixed_targets {tuple(mixed_targets.shape)}"
        )
    if b == 0:
        raise ValueError("mrl_loss: empty batch")
    if valid is not None:
        logits, mixed_logits, mixed_targets = _select(valid, b, logits, mixed_logits, mixed_targets)
        if logits.shape[0] == 0:
            return mixed_logits.float().sum() * 0.0
    hinge = F.relu(_top_score(mixed_logits, space) - _top_score(logits, space) + margin)
    keep = (~same_class_rows(mixed_targets)).to(hinge.dtype)
    if mask == "official":
        return keep.mean() * hinge.mean()
    if mask == "per_sample":
        return (keep * hinge).mean()
    if mask == "none":
        return hinge.mean()
    raise ValueError(f"mask must be 'official', 'per_sample' or 'none', got {mask!r}")


def _select(valid: Tensor, b: int, *tensors: Tensor) -> list[Tensor]:
    if valid.shape != (b,) or valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor of shape [{b}], got {valid.dtype} {tuple(valid.shape)}")
    return [t[valid] for t in tensors]


def mndcg_per_sample(
    logits: Tensor,
    mixed_logits: Tensor,
    mixed_targets: Tensor,
    num_mixup: int,
    *,
    ratio: NdcgRatio = "minmax",
    stable_sort: bool = True,
) -> Tensor:
    """M-NDCG of every raw sample ``[B]`` (paper Eq. 5-7; official ``RankMixup_MNDCG.get_indcg``).

    For sample i: ``conf = [p_i, p~_i sorted]`` and ``gain = [1, g_i sorted]``, where ``p`` is
    the max softmax probability, ``g_{i,k} = max_c t~_{kB+i,c}`` the copy's mixing coefficient
    (1 for a same-class pair) and the copies are ordered by ``g`` descending. With discounts
    ``D_r = log2(r + 1)``: ``DCG = sum_r conf_r / D_r``, ``IDCG = sum_r gain_r / D_r`` (linear
    gains). ``minmax`` returns ``min(DCG, IDCG) / max(DCG, IDCG)``; ``plain`` ``DCG / IDCG``.
    Gradients flow through ``p`` and ``p~``; the gains are constants.

    ``stable_sort`` orders tied gains by copy index (the official ``argsort`` leaves ties in
    an undefined order; untied inputs are unaffected).
    """
    _check_2d("logits", logits)
    _check_2d("mixed_logits", mixed_logits)
    b, c = logits.shape
    m = int(num_mixup)
    if m < 1:
        raise ValueError(f"mndcg: num_mixup must be >= 1, got {num_mixup}")
    if mixed_logits.shape != (m * b, c) or mixed_targets.shape != (m * b, c):
        raise ValueError(
            f"mndcg: expected mixed_logits and mixed_targets of shape [num_mixup*B, C] = [{m * b}, {c}], got "
            f"{tuple(mixed_logits.shape)} and {tuple(mixed_targets.shape)}"
        )
    if b == 0:
        raise ValueError("mndcg: empty batch")
    p = logits.float().softmax(dim=1).max(dim=1, keepdim=True).values  # [B, 1]
    p_mix = mixed_logits.float().softmax(dim=1).reshape(m, b, c).max(dim=2).values.t()  # [B, m]
    gains = mixed_targets.detach().float().reshape(m, b, c).max(dim=2).values.t()  # [B, m]
    order = torch.argsort(gains, dim=1, descending=True, stable=stable_sort)
    conf = torch.cat([p, p_mix.gather(1, order)], dim=1)  # [B, m + 1]
    gain = torch.cat([torch.ones_like(p), gains.gather(1, order)], dim=1)
    discounts = torch.log2(torch.arange(2, m + 3, device=conf.device, dtype=conf.dtype))
    dcg = (conf / discounts).sum(dim=1)
    idcg = (gain / discounts).sum(dim=1)
    if ratio == "minmax":
        return torch.where(idcg > dcg, dcg / idcg, idcg / dcg)
    if ratio == "plain":
        return dcg / idcg
    raise ValueError(f"ratio must be 'minmax' or 'plain', got {ratio!r}")


def mndcg_loss(
    logits: Tensor,
    mixed_logits: Tensor,
    mixed_targets: Tensor,
    num_mixup: int,
    *,
    ratio: NdcgRatio = "minmax",
    stable_sort: bool = True,
    valid: Tensor | None = None,
) -> Tensor:
    """The M-NDCG ranking term ``mean_i(1 - M-NDCG_i)`` (official ``RankMixup_MNDCG``'s ``loss_mixup``).

    ``valid`` (bool ``[B]``, see ``ranking_rows``) restricts the mean to those raw samples (and
    their copies); 0 when none is valid.
    """
    ndcg = mndcg_per_sample(
        logits, mixed_logits, mixed_targets, num_mixup, ratio=ratio, stable_sort=stable_sort
    )
    if valid is None:
        return (1.0 - ndcg).mean()
    (kept,) = _select(valid, logits.shape[0], ndcg)
    if kept.numel() == 0:
        return ndcg.sum() * 0.0
    return (1.0 - kept).mean()


def rankmixup_loss(
    logits: Tensor,
    targets: Tensor,
    mixed_logits: Tensor,
    mixed_targets: Tensor,
    variant: Literal["mrl", "mndcg"] = "mrl",
    margin: float = 2.0,
    weight: float = 0.1,
    num_mixup: int = 1,
    *,
    mask: MrlMask = "official",
    space: MrlSpace = "logit",
    ratio: NdcgRatio = "minmax",
    ignore_index: int | None = None,
    perms: Sequence[Tensor] | None = None,
) -> Tensor:
    """``CE(logits, targets) + weight * term``: the full RankMixup objective.

    CE (mean reduction) is applied to the **raw** logits only; the mixed logits enter through
    the ranking term alone (official ``RankMixup_MRL.forward`` / ``RankMixup_MNDCG.forward``).

    ``ignore_index``: samples with this target are left out of CE (the mean runs over the
    others, as ``nn.CrossEntropyLoss(ignore_index=...)`` and the official filter) and, together
    with every copy whose partner is such a sample (``perms``, the copies' permutations, as
    returned by ``make_mixed_views``), out of the ranking term. ``None``: every target is a class.

    Example (a plain timm loop)::

        x_mix, t_mix, _, _ = make_mixed_views(x, y, num_classes, num_mixup=1, alpha=2.0)
        logits, mixed_logits = model(x), model(x_mix)   # two calls: separate BN statistics
        loss = rankmixup_loss(logits, y, mixed_logits, t_mix, variant="mrl")
    """
    valid = None
    if ignore_index is None:
        ce = F.cross_entropy(logits.float(), targets)
    else:
        if perms is None:
            raise ValueError("rankmixup_loss: ignore_index needs the copies' permutations (perms=...)")
        ce = masked_cross_entropy(logits, targets, ignore_index)
        valid = ranking_rows(targets, perms, ignore_index)
    if variant == "mrl":
        if num_mixup != 1:
            raise ValueError(f"rankmixup_loss: MRL is defined for num_mixup=1, got {num_mixup}")
        term = mrl_loss(logits, mixed_logits, mixed_targets, margin, mask, space=space, valid=valid)
    elif variant == "mndcg":
        term = mndcg_loss(logits, mixed_logits, mixed_targets, num_mixup, ratio=ratio, valid=valid)
    else:
        raise ValueError(f"variant must be 'mrl' or 'mndcg', got {variant!r}")
    return ce + weight * term


def masked_cross_entropy(
    logits: Tensor, targets: Tensor, ignore_index: int, label_smoothing: float = 0.0
) -> Tensor:
    """Mean CE (float32) over the rows whose target is not ``ignore_index`` (0 with graph when none is)."""
    labelled = targets != ignore_index
    safe = torch.where(labelled, targets, torch.zeros_like(targets))
    per_row = F.cross_entropy(logits.float(), safe, reduction="none", label_smoothing=label_smoothing)
    count = labelled.sum().clamp(min=1)
    return (per_row * labelled).sum() / count


def sample_lams(num_mixup: int, alpha: float, generator: torch.Generator | None = None) -> list[float]:
    """``num_mixup`` independent draws of Beta(alpha, alpha) (all 1.0 when ``alpha <= 0``).

    The draws come from a NumPy generator seeded from ``generator`` (torch's Beta sampler takes
    no generator), so a seeded ``torch.Generator`` makes them reproducible.
    """
    if alpha <= 0:
        return [1.0] * num_mixup
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    rng = np.random.default_rng(seed)
    return [float(v) for v in rng.beta(alpha, alpha, size=num_mixup)]


def _lam(lam: Lam) -> Lam:
    """A copy's lam as the arithmetic uses it: a Python float, or a 0-d tensor kept in its own
    dtype and on its own device (no host read)."""
    return lam.reshape(()) if isinstance(lam, Tensor) else float(lam)


def mix_copies(h: Tensor, lams: Sequence[Lam], perms: Sequence[Tensor]) -> Tensor:
    """``cat_k(lam_k h + (1 - lam_k) h[perm_k])`` along dim 0: the copy-major mixed copies ``[m*B, ...]``.

    The same arithmetic on inputs (official ``mixup_process`` at ``layer_mix: 0``) and on the
    features of an intermediate layer (``mix_at_layer``). ``1 - lam_k`` is formed in lam's own
    precision (float64 for a Python float or a float64 tensor, as the official NumPy lam) before
    it scales ``h``: a float32 lam would round ``1 - lam`` differently and can turn a mixed target
    entry into exactly 1.0 (a same-class pair that the official code does not see).
    """
    if len(lams) != len(perms):
        raise ValueError(f"mix_copies: {len(lams)} lams but {len(perms)} permutations")
    out = []
    for lam, p in zip(lams, perms):
        lam = _lam(lam)
        out.append(lam * h + (1.0 - lam) * h[p.to(h.device)])
    return torch.cat(out, dim=0)


def mixed_copy_targets(
    targets: Tensor,
    num_classes: int,
    lams: Sequence[Lam],
    perms: Sequence[Tensor],
    ignore_index: int | None = None,
) -> Tensor:
    """Soft targets of the copies, copy-major ``[m*B, C]`` float32: ``lam_k e_y + (1 - lam_k) e_{y[perm_k]}``.

    With ``ignore_index``, such targets get an all-zero one-hot row (their rows are then left
    out of the ranking term by ``ranking_rows``).
    """
    t = targets.long()
    if ignore_index is not None:
        labelled = t != ignore_index
        onehot = F.one_hot(torch.where(labelled, t, torch.zeros_like(t)), num_classes).float()
        onehot = onehot * labelled.unsqueeze(1)
    else:
        onehot = F.one_hot(t, num_classes).float()
    return mix_copies(onehot, lams, perms)


def make_mixed_views(
    x: Tensor,
    targets: Tensor,
    num_classes: int,
    num_mixup: int,
    alpha: float,
    generator: torch.Generator | None = None,
    *,
    lams: Sequence[Lam] | None = None,
    perms: Sequence[Tensor] | None = None,
    ignore_index: int | None = None,
) -> tuple[Tensor, Tensor, list[Lam], list[Tensor]]:
    """Build the m mixed copies of a batch, copy-major (official ``mixup_process`` per copy).

    Copy k uses its own ``lam_k ~ Beta(alpha, alpha)`` (one scalar for the copy) and its own
    permutation ``pi_k``: ``x~_k = lam_k x + (1 - lam_k) x[pi_k]`` and
    ``t~_k = lam_k onehot(y) + (1 - lam_k) onehot(y[pi_k])``.

    Args:
        x: inputs ``[B, ...]`` (not modified).
        targets: class ids ``[B]``.
        num_classes: C, the width of the one-hot targets.
        num_mixup: m, the number of copies.
        alpha: the Beta parameter (``<= 0``: lam = 1).
        generator: the source of lam and the permutations (a CPU ``torch.Generator``).
        lams, perms: explicit lam and permutation per copy (tests, replays); a lam may be a
            0-d tensor (e.g. float64 on the device), used as it is without a host read.
        ignore_index: targets with this value get all-zero one-hot rows (see ``mixed_copy_targets``).

    Returns:
        ``(x_views [m*B, ...], t_views [m*B, C] float32, lams, perms)``.
    """
    m = int(num_mixup)
    if m < 1:
        raise ValueError(f"make_mixed_views: num_mixup must be >= 1, got {num_mixup}")
    b = x.shape[0]
    if targets.shape != (b,):
        raise ValueError(f"make_mixed_views: targets must have shape [{b}], got {tuple(targets.shape)}")
    lam_list, perm_list = _views(b, m, alpha, generator, lams, perms, x.device)
    x_views = mix_copies(x, lam_list, perm_list)
    t_views = mixed_copy_targets(targets, num_classes, lam_list, perm_list, ignore_index)
    return x_views, t_views, lam_list, perm_list


def _views(
    b: int,
    m: int,
    alpha: float,
    generator: torch.Generator | None,
    lams: Sequence[Lam] | None,
    perms: Sequence[Tensor] | None,
    device: torch.device,
) -> tuple[list[Lam], list[Tensor]]:
    lam_list = [_lam(v) for v in lams] if lams is not None else list(sample_lams(m, alpha, generator))
    if perms is None:
        perm_list = [torch.randperm(b, generator=generator).to(device) for _ in range(m)]
    else:
        perm_list = [torch.as_tensor(p, dtype=torch.long, device=device) for p in perms]
    if len(lam_list) != m or len(perm_list) != m:
        raise ValueError(f"make_mixed_views: need {m} lams and perms, got {len(lam_list)} and {len(perm_list)}")
    for lam in lam_list:
        if isinstance(lam, Tensor) and lam.device.type != "cpu":
            continue  # checking a device lam would wait for the device; the plugin's lams come from sample_lams
        value = float(lam)
        if not (0.0 <= value <= 1.0) or math.isnan(value):
            raise ValueError(f"make_mixed_views: lam must lie in [0, 1], got {value}")
    for perm in perm_list:
        if perm.shape != (b,):
            raise ValueError(f"make_mixed_views: a permutation must have shape [{b}], got {tuple(perm.shape)}")
    return lam_list, perm_list


@contextmanager
def mix_at_layer(
    layer: nn.Module, lams: Sequence[Lam], perms: Sequence[Tensor], *, keep_raw: bool = False
) -> Iterator[None]:
    """Inside the block, ``layer``'s output ``h [B, ...]`` is replaced by its m mixed copies.

    Feature-level mixing (official ``layer_mix: 4``: ``ResNet_Cifar.forward_multimixup`` runs
    the raw batch up to ``layer4``, mixes its output with ``mixup_process`` once per copy and
    finishes the forward on the ``[m*B, ...]`` copies). Here a forward hook on any module does
    the same, so it works for any model whose layers after ``layer`` are batch-size agnostic
    (timm CNNs, ViT blocks, the core models)::

        with mix_at_layer(model.layer4, lams, perms):
            mixed_logits = model(x)            # [m*B, C], copy-major
        t_mix = mixed_copy_targets(y, num_classes, lams, perms)

    ``keep_raw=True`` returns ``cat([h, copies])`` so that one call gives the raw logits
    (first B rows) and the mixed ones. Only the first call of ``layer`` inside the block is
    mixed; a second call (a module reused in one forward) raises ``RuntimeError``.
    """
    calls = [0]

    def hook(module: nn.Module, args: Any, out: Any) -> Tensor:
        calls[0] += 1
        if calls[0] > 1:
            raise RuntimeError(
                "mix_at_layer: the mixing layer ran twice in one forward pass; choose a module that runs once"
            )
        if not isinstance(out, Tensor):
            raise TypeError(f"mix_at_layer: the mixing layer must return a tensor, got {type(out).__name__}")
        copies = mix_copies(out, lams, perms)
        return torch.cat([out, copies], dim=0) if keep_raw else copies

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
    if calls[0] == 0:
        raise RuntimeError("mix_at_layer: the mixing layer did not run in the forward pass")
