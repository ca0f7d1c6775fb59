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

Mixed logits and targets are **copy-major**: row ``k * B + i`` is copy ``k`` of sample ``i``
(``calibrate/net/resnet_mixup.py``: ``forward_multimixup`` concatenates the copies along dim 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SAME_CLASS_TOL",
    "same_class_rows",
    "mrl_loss",
    "mndcg_per_sample",
    "mndcg_loss",
    "rankmixup_loss",
    "make_mixed_views",
    "sample_lams",
]

MrlMask = Literal["official", "per_sample", "none"]
MrlSpace = Literal["logit", "prob"]
NdcgRatio = Literal["minmax", "plain"]

#: A mixed target entry at or above ``1 - SAME_CLASS_TOL`` marks a same-class pair (the
#: official code tests ``== 1.0`` exactly; the tolerance only guards against rounding).
SAME_CLASS_TOL = 1e-6


def _check_2d(name: str, t: Tensor) -> None:
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [rows, classes], got shape {tuple(t.shape)}")


def same_class_rows(mixed_targets: Tensor) -> Tensor:
    """Bool ``[N]``: rows of soft targets whose two sources share a class (some entry is 1)."""
    _check_2d("mixed_targets", mixed_targets)
    return (mixed_targets.float() >= 1.0 - SAME_CLASS_TOL).any(dim=1)


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
    hinge = F.relu(_top_score(mixed_logits, space) - _top_score(logits, space) + margin)
    keep = (~same_class_rows(mixed_targets)).to(hinge.dtype)
    if mask == "official":
        return keep.mean() * hinge.mean()
    if mask == "per_sample":
        return (keep * hinge).mean()
    if mask == "none":
        return hinge.mean()
    raise ValueError(f"mask must be 'official', 'per_sample' or 'none', got {mask!r}")


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
) -> Tensor:
    """The M-NDCG ranking term ``mean_i(1 - M-NDCG_i)`` (official ``RankMixup_MNDCG``'s ``loss_mixup``)."""
    ndcg = mndcg_per_sample(
        logits, mixed_logits, mixed_targets, num_mixup, ratio=ratio, stable_sort=stable_sort
    )
    return (1.0 - ndcg).mean()


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
) -> Tensor:
    """``CE(logits, targets) + weight * term``: the full RankMixup objective.

    CE (mean reduction) is applied to the **raw** logits only; the mixed logits enter through
    the ranking term alone (official ``RankMixup_MRL.forward`` / ``RankMixup_MNDCG.forward``).

    Example (a plain timm loop)::

        x_mix, t_mix, _, _ = make_mixed_views(x, y, num_classes, num_mixup=1, alpha=2.0)
        logits, mixed_logits = model(x), model(x_mix)   # two calls: separate BN statistics
        loss = rankmixup_loss(logits, y, mixed_logits, t_mix, variant="mrl")
    """
    ce = F.cross_entropy(logits.float(), targets)
    if variant == "mrl":
        if num_mixup != 1:
            raise ValueError(f"rankmixup_loss: MRL is defined for num_mixup=1, got {num_mixup}")
        term = mrl_loss(logits, mixed_logits, mixed_targets, margin, mask, space=space)
    elif variant == "mndcg":
        term = mndcg_loss(logits, mixed_logits, mixed_targets, num_mixup, ratio=ratio)
    else:
        raise ValueError(f"variant must be 'mrl' or 'mndcg', got {variant!r}")
    return ce + weight * term


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


def make_mixed_views(
    x: Tensor,
    targets: Tensor,
    num_classes: int,
    num_mixup: int,
    alpha: float,
    generator: torch.Generator | None = None,
    *,
    lams: Sequence[float] | None = None,
    perms: Sequence[Tensor] | None = None,
) -> tuple[Tensor, Tensor, list[float], list[Tensor]]:
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
        lams, perms: explicit lam and permutation per copy (tests, replays).

    Returns:
        ``(x_views [m*B, ...], t_views [m*B, C] float32, lams, perms)``.
    """
    m = int(num_mixup)
    if m < 1:
        raise ValueError(f"make_mixed_views: num_mixup must be >= 1, got {num_mixup}")
    b = x.shape[0]
    if targets.shape != (b,):
        raise ValueError(f"make_mixed_views: targets must have shape [{b}], got {tuple(targets.shape)}")
    lam_list = list(lams) if lams is not None else sample_lams(m, alpha, generator)
    if perms is None:
        perm_list = [torch.randperm(b, generator=generator).to(x.device) for _ in range(m)]
    else:
        perm_list = [torch.as_tensor(p, dtype=torch.long, device=x.device) for p in perms]
    if len(lam_list) != m or len(perm_list) != m:
        raise ValueError(
            f"make_mixed_views: need {m} lams and perms, got {len(lam_list)} and {len(perm_list)}"
        )
    for lam in lam_list:
        if not (0.0 <= float(lam) <= 1.0) or math.isnan(float(lam)):
            raise ValueError(f"make_mixed_views: lam must lie in [0, 1], got {lam}")
    onehot = F.one_hot(targets.long(), num_classes).float()
    xs, ts = [], []
    for lam, perm in zip(lam_list, perm_list):
        if perm.shape != (b,):
            raise ValueError(
                f"make_mixed_views: a permutation must have shape [{b}], got {tuple(perm.shape)}"
            )
        lam = float(lam)
        xs.append(lam * x + (1.0 - lam) * x[perm])
        ts.append(lam * onehot + (1.0 - lam) * onehot[perm])
    return torch.cat(xs, dim=0), torch.cat(ts, dim=0), [float(v) for v in lam_list], perm_list
