"""RankMixup's functional API against the spec's test vectors and an independent loop-based computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mixhub_rankmixup import functional as fn
from mixhub_rankmixup import make_mixed_views, mndcg_loss, mndcg_per_sample, mrl_loss, rankmixup_loss

# ----------------------------------------------------------------------------- spec inputs (§7)
Z = torch.tensor([[2.0, 0.5, -1.0], [0.1, 1.5, 0.3], [-0.5, 0.2, 2.5], [1.0, 1.0, 0.0]])
Y = torch.tensor([0, 1, 2, 0])
ZM1 = torch.tensor([[1.0, 0.8, -0.2], [0.6, 0.9, 0.1], [0.0, 0.1, 1.2], [0.9, 0.3, 0.6]])
ZM2 = torch.tensor([[0.2, 0.3, 0.4], [0.5, 0.2, 0.6], [0.7, 0.1, 0.3], [0.1, 0.2, 0.0]])
ZM3 = torch.tensor([[1.8, 0.2, -0.5], [0.0, 1.7, 0.2], [-0.2, 0.0, 2.0], [1.2, 0.1, 0.6]])


def targets_for(lams, perms, y=Y, c=3):
    _, t, _, _ = make_mixed_views(
        torch.zeros(len(y), 1), y, c, len(lams), 0.0, lams=lams, perms=[torch.tensor(p) for p in perms]
    )
    return t


# ----------------------------------------------------------------------------- independent references
def ref_mrl(z, zm, t, margin, mask, space="logit"):
    """Row-by-row Python evaluation of the MRL term (the official mask broadcast written out as a double sum)."""
    b = z.shape[0]
    h, keep = [], []
    for i in range(b):
        if space == "logit":
            s, sm = max(z[i].tolist()), max(zm[i].tolist())
        else:
            s = max(math.exp(v) / sum(math.exp(u) for u in z[i].tolist()) for v in z[i].tolist())
            sm = max(math.exp(v) / sum(math.exp(u) for u in zm[i].tolist()) for v in zm[i].tolist())
        h.append(max(0.0, sm - s + margin))
        keep.append(0.0 if any(v == 1.0 for v in t[i].tolist()) else 1.0)
    if mask == "official":  # mask [B] * hinge [B, 1] -> [B, B], then the mean over B*B entries
        return sum(keep[j] * h[i] for i in range(b) for j in range(b)) / (b * b)
    if mask == "per_sample":
        return sum(k * v for k, v in zip(keep, h)) / b
    return sum(h) / b


def ref_mndcg(z, zm, t, m, ratio="minmax"):
    """Per-sample M-NDCG with explicit Python sorting and sums (linear gains, log2(r + 1) discounts)."""
    b, c = z.shape
    out = []
    for i in range(b):
        p = max(F.softmax(z[i], 0).tolist())
        items = []
        for k in range(m):
            row = k * b + i
            items.append((max(t[row].tolist()), max(F.softmax(zm[row], 0).tolist()), k))
        items.sort(key=lambda it: (-it[0], it[2]))  # gain descending, ties by copy index
        conf = [p] + [it[1] for it in items]
        gain = [1.0] + [it[0] for it in items]
        dcg = sum(v / math.log2(r + 2) for r, v in enumerate(conf))
        idcg = sum(v / math.log2(r + 2) for r, v in enumerate(gain))
        if ratio == "plain":
            out.append(dcg / idcg)
        else:
            out.append(dcg / idcg if idcg > dcg else idcg / dcg)
    return torch.tensor(out)


# ----------------------------------------------------------------------------- test vectors
def test_ce_of_common_inputs():
    assert float(F.cross_entropy(Z, Y)) == pytest.approx(0.419984, abs=1e-6)


def test_tv_r1_no_same_class_pair():
    t = targets_for([0.7], [[1, 0, 3, 2]])
    assert not fn.same_class_rows(t).any()
    assert float(mrl_loss(Z, ZM1, t, 2.0)) == pytest.approx(1.25, abs=1e-6)
    assert float(mrl_loss(Z, ZM1, t, 2.0, "per_sample")) == pytest.approx(1.25, abs=1e-6)
    assert float(rankmixup_loss(Z, Y, ZM1, t)) == pytest.approx(0.544984, abs=1e-6)


def test_tv_r2_official_broadcast_mask():
    t = targets_for([0.7], [[3, 2, 1, 0]])
    assert fn.same_class_rows(t).tolist() == [True, False, False, True]
    assert float(mrl_loss(Z, ZM1, t, 2.0)) == pytest.approx(0.625, abs=1e-6)
    assert float(rankmixup_loss(Z, Y, ZM1, t)) == pytest.approx(0.482484, abs=1e-6)
    assert float(mrl_loss(Z, ZM1, t, 2.0, "per_sample")) == pytest.approx(0.525, abs=1e-6)
    assert float(mrl_loss(Z, ZM1, t, 2.0, "none")) == pytest.approx(1.25, abs=1e-6)


def test_tv_r2b_mrl_rejects_several_copies():
    t = targets_for([0.7, 0.4, 0.9], [[1, 0, 3, 2], [2, 3, 0, 1], [3, 2, 1, 0]])
    with pytest.raises(ValueError, match="exactly one mixed copy"):
        mrl_loss(Z, torch.cat([ZM1, ZM2, ZM3]), t)
    with pytest.raises(ValueError, match="num_mixup=1"):
        rankmixup_loss(Z, Y, torch.cat([ZM1, ZM2, ZM3]), t, "mrl", num_mixup=3)


def test_tv_r3_mndcg():
    t = targets_for([0.7, 0.4, 0.9], [[1, 0, 3, 2], [2, 3, 0, 1], [3, 2, 1, 0]])
    zm = torch.cat([ZM1, ZM2, ZM3])
    ndcg = mndcg_per_sample(Z, zm, t, 3)
    assert torch.allclose(ndcg, torch.tensor([0.743127, 0.684859, 0.861989, 0.506456]), atol=1e-6)
    assert float(mndcg_loss(Z, zm, t, 3)) == pytest.approx(0.300892, abs=1e-6)
    assert float(rankmixup_loss(Z, Y, zm, t, "mndcg", num_mixup=3)) == pytest.approx(0.450073, abs=1e-6)
    # intermediates: raw max-prob and the gains per row
    assert torch.allclose(
        Z.softmax(1).max(1).values, torch.tensor([0.785597, 0.646082, 0.869531, 0.422319]), atol=1e-6
    )
    gains = t.reshape(3, 4, 3).max(2).values.t()
    assert torch.allclose(gains.sort(1, descending=True).values[0], torch.tensor([1.0, 0.7, 0.6]))
    assert torch.allclose(gains.sort(1, descending=True).values[1], torch.tensor([0.9, 0.7, 0.6]))


def test_tv_r3_worked_row_zero():
    dcg = 0.785597 / 1 + 0.767958 / math.log2(3) + 0.471715 / 2 + 0.367165 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 0.7 / 2 + 0.6 / math.log2(5)
    assert dcg == pytest.approx(1.664112, abs=1e-5) and idcg == pytest.approx(2.239336, abs=1e-5)
    assert dcg / idcg == pytest.approx(0.743127, abs=1e-5)


def test_tv_r5_mixing_arithmetic():
    x = torch.arange(8.0).view(4, 2)
    xv, tv, lams, perms = make_mixed_views(
        x, Y, 3, 1, 2.0, lams=[0.696572], perms=[torch.tensor([2, 0, 3, 1])]
    )
    expect_x = torch.tensor(
        [[1.213711, 2.213711], [1.393144, 2.393144], [4.606855, 5.606856], [4.786289, 5.786289]]
    )
    expect_t = torch.tensor(
        [[0.696572, 0, 0.303428], [0.303428, 0.696572, 0], [0.303428, 0, 0.696572], [0.696572, 0.303428, 0]]
    )
    assert torch.allclose(xv, expect_x, atol=1e-5)
    assert torch.allclose(tv, expect_t, atol=1e-6)
    assert lams == [0.696572] and perms[0].tolist() == [2, 0, 3, 1]


def test_tensor_lams_mix_as_python_floats_and_are_checked_on_the_cpu():
    """A lam given as a 0-d (or one-element) tensor is kept as a float64 0-d tensor and mixes
    exactly as the same Python float; CPU tensor lams are range-checked like floats."""
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    perms = [torch.tensor([2, 0, 3, 1]), torch.tensor([1, 0, 3, 2])]
    floats = make_mixed_views(x, Y, 3, 2, 0.0, lams=[0.3, 1 - 2.0**-25], perms=perms)
    lams = [torch.tensor(0.3, dtype=torch.float64), torch.tensor([1 - 2.0**-25], dtype=torch.float64)]
    tensors = make_mixed_views(x, Y, 3, 2, 0.0, lams=lams, perms=perms)
    assert torch.equal(floats[0], tensors[0]) and torch.equal(floats[1], tensors[1])
    assert all(isinstance(v, torch.Tensor) and v.dtype == torch.float64 and v.shape == () for v in tensors[2])
    assert float(tensors[2][1]) == 1 - 2.0**-25
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="lam must lie in"):
            make_mixed_views(x, Y, 3, 2, 0.0, lams=[torch.tensor(0.5), torch.tensor(bad)], perms=perms)


# ----------------------------------------------------------------------------- independent computation
@pytest.mark.parametrize("mask", ["official", "per_sample", "none"])
@pytest.mark.parametrize("space,margin", [("logit", 2.0), ("prob", 0.3)])
def test_mrl_matches_reference(mask, space, margin):
    g = torch.Generator().manual_seed(3)
    b, c = 9, 5
    z, zm = torch.randn(b, c, generator=g) * 2, torch.randn(b, c, generator=g) * 2
    y = torch.randint(0, c, (b,), generator=g)
    y[:3] = 1  # make same-class pairs likely
    _, t, _, _ = make_mixed_views(torch.zeros(b, 1), y, c, 1, 2.0, generator=g)
    got = float(mrl_loss(z, zm, t, margin, mask, space=space))
    assert got == pytest.approx(ref_mrl(z, zm, t, margin, mask, space), abs=1e-5)


@pytest.mark.parametrize("m", [1, 2, 3, 5])
@pytest.mark.parametrize("ratio", ["minmax", "plain"])
def test_mndcg_matches_reference(m, ratio):
    g = torch.Generator().manual_seed(10 + m)
    b, c = 7, 4
    z, zm = torch.randn(b, c, generator=g) * 2, torch.randn(m * b, c, generator=g) * 2
    y = torch.randint(0, c, (b,), generator=g)
    _, t, _, _ = make_mixed_views(torch.zeros(b, 1), y, c, m, 1.0, generator=g)
    assert torch.allclose(
        mndcg_per_sample(z, zm, t, m, ratio=ratio), ref_mndcg(z, zm, t, m, ratio), atol=1e-6
    )


def test_official_and_per_sample_agree_without_same_class_pairs():
    g = torch.Generator().manual_seed(0)
    b, c = 6, 6
    y = torch.arange(b)  # all distinct labels: a pair is same-class only when pi(i) = i
    perm = torch.tensor([1, 2, 3, 4, 5, 0])
    _, t, _, _ = make_mixed_views(torch.zeros(b, 1), y, c, 1, 0.0, lams=[0.6], perms=[perm])
    z, zm = torch.randn(b, c, generator=g), torch.randn(b, c, generator=g)
    assert float(mrl_loss(z, zm, t, mask="official")) == pytest.approx(
        float(mrl_loss(z, zm, t, mask="per_sample")), abs=1e-7
    )


# ----------------------------------------------------------------------------- gradients
def test_mrl_gradient_reaches_only_the_argmax_logit():
    z = Z.clone().requires_grad_(True)
    zm = torch.tensor(
        [[1.0, 0.8, -0.2], [0.6, 0.9, 0.1], [0.0, 0.1, 1.2], [0.7, 0.3, 0.9]], requires_grad=True
    )
    t = targets_for([0.7], [[1, 0, 3, 2]])
    mrl_loss(z, zm, t).backward()
    for logits, grad in ((z, z.grad), (zm, zm.grad)):
        nonzero = grad != 0
        assert nonzero.sum(1).tolist() == [1, 1, 1, 1]
        assert nonzero.float().argmax(1).tolist() == logits.detach().argmax(1).tolist()
    assert torch.allclose(z.grad.sum(1), torch.full((4,), -0.25))  # d/ds of mean(relu(s~ - s + 2))
    assert torch.allclose(zm.grad.sum(1), torch.full((4,), 0.25))


def test_mixed_logits_get_gradient_only_through_the_ranking_term():
    t = targets_for([0.7, 0.4, 0.9], [[1, 0, 3, 2], [2, 3, 0, 1], [3, 2, 1, 0]])
    for variant, zm0, m in (("mrl", ZM1, 1), ("mndcg", torch.cat([ZM1, ZM2, ZM3]), 3)):
        tt = t[: 4 * m]
        zm = zm0.clone().requires_grad_(True)
        z = Z.clone().requires_grad_(True)
        rankmixup_loss(z, Y, zm, tt, variant, weight=0.0, num_mixup=m).backward()
        assert zm.grad is None or torch.count_nonzero(zm.grad) == 0
        zm.grad = None
        rankmixup_loss(z, Y, zm, tt, variant, weight=0.1, num_mixup=m).backward()
        assert torch.count_nonzero(zm.grad) > 0


def test_mndcg_gains_are_constants_and_probabilities_get_gradient():
    t = targets_for([0.7, 0.4, 0.9], [[1, 0, 3, 2], [2, 3, 0, 1], [3, 2, 1, 0]]).requires_grad_(True)
    z = Z.clone().requires_grad_(True)
    zm = torch.cat([ZM1, ZM2, ZM3]).requires_grad_(True)
    mndcg_loss(z, zm, t, 3).backward()
    assert t.grad is None
    assert torch.count_nonzero(z.grad) > 0 and torch.count_nonzero(zm.grad) > 0


# ----------------------------------------------------------------------------- properties
def _logit_for_conf(p: float) -> list[float]:
    return [math.log(p / (1 - p)), 0.0] if p < 1 else [60.0, 0.0]


def test_mndcg_is_at_most_one_with_equality_when_confidences_match_gains():
    lams = [0.7, 0.6, 0.9]
    y = torch.tensor([0, 1])
    t = targets_for(lams, [[1, 0]] * 3, y=y, c=2)
    z = torch.tensor([_logit_for_conf(1.0), list(reversed(_logit_for_conf(1.0)))])
    # mixed copy k of sample 0 (class 0) has max target lam_k on class 0; of sample 1 (class 1), on class 1
    zm = torch.tensor(
        [row for lam in lams for row in (_logit_for_conf(lam), list(reversed(_logit_for_conf(lam))))]
    )
    ndcg = mndcg_per_sample(z, zm, t, 3)
    assert torch.allclose(ndcg, torch.ones(2), atol=1e-6)
    for scale in (0.5, 2.0):  # under- and over-confident copies both lower M-NDCG
        off = mndcg_per_sample(z, zm * scale, t, 3)
        assert (off < 1 - 1e-4).all()
    g = torch.Generator().manual_seed(1)
    zr, zmr = torch.randn(20, 4, generator=g) * 3, torch.randn(60, 4, generator=g) * 3
    yr = torch.randint(0, 4, (20,), generator=g)
    _, tr, _, _ = make_mixed_views(torch.zeros(20, 1), yr, 4, 3, 2.0, generator=g)
    assert (mndcg_per_sample(zr, zmr, tr, 3) <= 1 + 1e-6).all()


def test_plain_ratio_can_exceed_one():
    lams = [0.55]
    y = torch.tensor([0, 1])
    t = targets_for(lams, [[1, 0]], y=y, c=2)
    z = torch.tensor([[9.0, 0.0], [0.0, 9.0]])
    zm = torch.tensor([[9.0, 0.0], [0.0, 9.0]])  # mixed copies far more confident than 0.55
    assert (mndcg_per_sample(z, zm, t, 1, ratio="plain") > 1).all()
    assert (mndcg_per_sample(z, zm, t, 1, ratio="minmax") < 1).all()
    assert float(mndcg_loss(z, zm, t, 1, ratio="plain")) < 0


def test_rankmixup_loss_is_ce_plus_weighted_term():
    t = targets_for([0.7], [[1, 0, 3, 2]])
    for w in (0.0, 0.1, 1.3):
        expect = F.cross_entropy(Z, Y) + w * mrl_loss(Z, ZM1, t, 1.5, "per_sample")
        got = rankmixup_loss(Z, Y, ZM1, t, "mrl", margin=1.5, weight=w, mask="per_sample")
        assert float(got) == pytest.approx(float(expect), abs=1e-7)
    with pytest.raises(ValueError, match="variant"):
        rankmixup_loss(Z, Y, ZM1, t, "ndcg")  # type: ignore[arg-type]


def test_make_mixed_views_draws_distinct_copies_and_is_reproducible():
    x = torch.randn(16, 3, 4, 4)
    y = torch.randint(0, 5, (16,))
    x0 = x.clone()
    xv, tv, lams, perms = make_mixed_views(x, y, 5, 3, 2.0, torch.Generator().manual_seed(7))
    assert torch.equal(x, x0)  # inputs untouched
    assert xv.shape == (48, 3, 4, 4) and tv.shape == (48, 5)
    assert torch.allclose(tv.sum(1), torch.ones(48))
    assert len(set(lams)) == 3 and all(0 <= v <= 1 for v in lams)
    assert len({tuple(p.tolist()) for p in perms}) == 3
    for k in range(3):  # copy-major: rows k*B .. (k+1)*B - 1 are copy k
        expect = lams[k] * x + (1 - lams[k]) * x[perms[k]]
        assert torch.allclose(xv[k * 16 : (k + 1) * 16], expect)
    again = make_mixed_views(x, y, 5, 3, 2.0, torch.Generator().manual_seed(7))
    assert again[2] == lams and all(torch.equal(a, b) for a, b in zip(again[3], perms))
    _, _, ones, _ = make_mixed_views(x, y, 5, 2, 0.0, torch.Generator().manual_seed(7))
    assert ones == [1.0, 1.0]


# ----------------------------------------------------------------------------- edge cases
def test_all_same_class_pairs():
    y = torch.zeros(4, dtype=torch.long)
    t = targets_for([0.3], [[1, 0, 3, 2]], y=y)
    assert fn.same_class_rows(t).all()
    assert float(mrl_loss(Z, ZM1, t)) == 0.0
    assert float(mrl_loss(Z, ZM1, t, mask="per_sample")) == 0.0
    assert float(mrl_loss(Z, ZM1, t, mask="none")) == pytest.approx(1.25, abs=1e-6)
    t3 = targets_for([0.3, 0.8, 0.5], [[1, 0, 3, 2]] * 3, y=y)
    zm = torch.cat([ZM1, ZM2, ZM3])
    assert torch.allclose(mndcg_per_sample(Z, zm, t3, 3), ref_mndcg(Z, zm, t3, 3), atol=1e-6)


def test_batch_of_one():
    z, zm, y = Z[:1], ZM1[:1], Y[:1]
    xv, t, _, perms = make_mixed_views(torch.ones(1, 2), y, 3, 1, 2.0, torch.Generator().manual_seed(0))
    assert perms[0].tolist() == [0] and torch.allclose(xv, torch.ones(1, 2))
    assert float(mrl_loss(z, zm, t)) == 0.0  # its only partner is itself: a same-class pair
    _, t3, _, _ = make_mixed_views(torch.ones(1, 2), y, 3, 3, 2.0, torch.Generator().manual_seed(0))
    ndcg = mndcg_per_sample(z, torch.cat([ZM1[:1], ZM2[:1], ZM3[:1]]), t3, 3)
    assert ndcg.shape == (1,) and 0 < float(ndcg) <= 1
    loss = rankmixup_loss(z, y, zm, t)
    assert torch.isfinite(loss)


def test_shape_errors():
    t = targets_for([0.7], [[1, 0, 3, 2]])
    with pytest.raises(ValueError, match=r"\[12, 3\]"):
        mndcg_loss(Z, ZM1, t, 3)
    with pytest.raises(ValueError, match="2-D"):
        mrl_loss(Z[0], ZM1, t)
    with pytest.raises(ValueError, match="need 2 lams"):
        make_mixed_views(torch.zeros(4, 1), Y, 3, 2, 1.0, lams=[0.5], perms=[torch.arange(4)])


def test_autocast_computes_in_float32():
    t = targets_for([0.7, 0.4, 0.9], [[1, 0, 3, 2], [2, 3, 0, 1], [3, 2, 1, 0]])
    zm = torch.cat([ZM1, ZM2, ZM3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = mrl_loss(Z.bfloat16(), ZM1.bfloat16(), t[:4])
        b = mndcg_loss(Z.bfloat16(), zm.bfloat16(), t, 3)
    assert a.dtype == torch.float32 and b.dtype == torch.float32
    assert float(b) == pytest.approx(float(mndcg_loss(Z, zm, t, 3)), abs=2e-2)


# ----------------------------------------------------------------------------- messages, options, edges
def _message(func, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        func(*args, **kwargs)
    return str(info.value)


def test_error_messages_name_the_argument_and_the_shapes():
    t1 = targets_for([0.7], [[1, 0, 3, 2]])
    zm3, t3 = torch.cat([ZM1, ZM2, ZM3]), targets_for([0.7, 0.4, 0.9], [[1, 0, 3, 2]] * 3)
    two_d = "must be 2-D [rows, classes], got shape (3,)"
    assert _message(fn.same_class_rows, t1[0]) == "mixed_targets " + two_d
    assert _message(mrl_loss, Z[0], ZM1, t1) == "logits " + two_d
    assert _message(mrl_loss, Z, ZM1[0], t1) == "mixed_logits " + two_d
    assert _message(mrl_loss, Z, zm3, t3) == (
        "mrl_loss: MRL is defined for exactly one mixed copy; got 12 mixed rows for a batch of 4 "
        "(use num_mixup=1, or the M-NDCG variant for several copies)"
    )
    assert _message(mrl_loss, Z, ZM1, t1[:, :2]) == "mrl_loss: shapes differ: logits (4, 3), mixed_logits (4, 3), mixed_targets (4, 2)"
    assert _message(mrl_loss, Z[:, :2], ZM1[:, :2], t1) == "mrl_loss: shapes differ: logits (4, 2), mixed_logits (4, 2), mixed_targets (4, 3)"
    assert _message(mrl_loss, Z[:0], ZM1[:0], t1[:0]) == "mrl_loss: empty batch"
    assert _message(mrl_loss, Z, ZM1, t1, 2.0, "sum") == "mask must be 'official', 'per_sample' or 'none', got 'sum'"
    assert _message(mrl_loss, Z, ZM1, t1, space="rank") == "space must be 'logit' or 'prob', got 'rank'"
    assert _message(mrl_loss, Z, ZM1, t1, valid=torch.ones(4)) == "valid must be a bool tensor of shape [4], got torch.float32 (4,)"
    assert _message(mrl_loss, Z, ZM1, t1, valid=torch.ones(3, dtype=torch.bool)) == "valid must be a bool tensor of shape [4], got torch.bool (3,)"
    assert _message(mndcg_per_sample, Z[0], zm3, t3, 3) == "logits " + two_d
    assert _message(mndcg_per_sample, Z, zm3[0], t3, 3) == "mixed_logits " + two_d
    assert _message(mndcg_per_sample, Z, zm3, t3, 0) == "mndcg: num_mixup must be >= 1, got 0"
    assert _message(mndcg_per_sample, Z, zm3, t3[:8], 3) == (
        "mndcg: expected mixed_logits and mixed_targets of shape [num_mixup*B, C] = [12, 3], got (12, 3) and (8, 3)"
    )
    assert _message(mndcg_per_sample, Z[:0], zm3[:0], t3[:0], 3) == "mndcg: empty batch"
    assert _message(mndcg_per_sample, Z, zm3, t3, 3, ratio="max") == "ratio must be 'minmax' or 'plain', got 'max'"
    assert _message(rankmixup_loss, Z, Y, ZM1, t1, ignore_index=-100) == (
        "rankmixup_loss: ignore_index needs the copies' permutations (perms=...)"
    )
    x = torch.zeros(4, 1)
    assert _message(make_mixed_views, x, Y, 3, 0, 1.0) == "make_mixed_views: num_mixup must be >= 1, got 0"
    assert _message(make_mixed_views, x, Y[:3], 3, 1, 1.0) == "make_mixed_views: targets must have shape [4], got (3,)"
    assert _message(make_mixed_views, x, Y, 3, 1, 1.0, lams=[0.5], perms=[torch.arange(3)]) == (
        "make_mixed_views: a permutation must have shape [4], got (3,)"
    )
    assert _message(make_mixed_views, x, Y, 3, 2, 1.0, lams=[0.5], perms=[torch.arange(4)] * 2) == (
        "make_mixed_views: need 2 lams and perms, got 1 and 2"
    )
    assert _message(fn.mix_copies, x, [0.5], []) == "mix_copies: 1 lams but 0 permutations"


def test_views_accept_the_closed_interval_and_return_long_permutations_on_the_inputs_device():
    x = torch.zeros(4, 1)
    _, t, lams, perms = make_mixed_views(x, Y, 3, 2, 1.0, lams=[0.0, 1.0], perms=[torch.tensor([1, 0, 3, 2], dtype=torch.int32)] * 2)
    assert lams == [0.0, 1.0] and all(p.dtype == torch.long for p in perms)
    assert torch.equal(t[:4], F.one_hot(Y[[1, 0, 3, 2]], 3).float())  # lam 0: the partner's label
    # a device lam is not read back; a CPU lam after it is still checked
    with pytest.raises(ValueError, match="lam must lie in"):
        make_mixed_views(x, Y, 3, 2, 1.0, lams=[torch.tensor(0.5, device="meta"), 1.5], perms=[torch.arange(4)] * 2)


def test_sample_lams_follow_a_numpy_generator_seeded_from_the_torch_generator():
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(3)).item())
    want = np.random.default_rng(seed).beta(0.5, 0.5, size=3).tolist()
    assert fn.sample_lams(3, 0.5, torch.Generator().manual_seed(3)) == want
    assert fn.sample_lams(2, 0.0) == [1.0, 1.0]


def test_empty_and_single_valid_rows_of_the_ranking_terms():
    t1 = targets_for([0.7], [[1, 0, 3, 2]])
    none = torch.zeros(4, dtype=torch.bool)
    zm = ZM1.clone().requires_grad_()
    got = mrl_loss(Z, zm, t1, valid=none)
    assert float(got) == 0.0
    got.backward()
    assert torch.equal(zm.grad, torch.zeros_like(zm))
    zm3, t3 = torch.cat([ZM1, ZM2, ZM3]), targets_for([0.7, 0.4, 0.9], [[1, 0, 3, 2]] * 3)
    assert float(mndcg_loss(Z, zm3, t3, 3, valid=none)) == 0.0
    one = torch.tensor([False, False, True, False])
    per_sample = mndcg_per_sample(Z, zm3, t3, 3)
    assert float(mndcg_loss(Z, zm3, t3, 3, valid=one)) == pytest.approx(1.0 - float(per_sample[2]))


def test_tied_gains_keep_copy_order_by_default():
    """24 copies with the same lam (tied gains) and different mixed logits: the default ranks
    them by copy index, as the reference; an unstable sort would shuffle their confidences."""
    m = 24
    gen = torch.Generator().manual_seed(0)
    zm = torch.randn(m * 4, 3, generator=gen) * 3
    t = targets_for([0.6] * m, [[1, 0, 3, 2]] * m)
    want = ref_mndcg(Z, zm, t, m)
    assert torch.allclose(mndcg_per_sample(Z, zm, t, m), want, atol=1e-6)
    assert float(mndcg_loss(Z, zm, t, m)) == pytest.approx(float((1 - want).mean()), abs=1e-6)
    unstable = mndcg_per_sample(Z, zm, t, m, stable_sort=False)  # torch's order of the ties
    assert not torch.allclose(unstable, want, atol=1e-6)
    assert float(mndcg_loss(Z, zm, t, m, stable_sort=False)) == pytest.approx(float((1 - unstable).mean()), abs=1e-6)


def test_rankmixup_loss_passes_every_option_on():
    perms = [[3, 2, 1, 0]]  # rows 0 and 3 are both class 0: a same-class pair
    t = targets_for([0.7], perms)
    ce = F.cross_entropy(Z, Y)
    for kw in ({"mask": "per_sample"}, {"mask": "none"}, {"space": "prob", "margin": 0.5}):
        want = float(ce) + 0.1 * float(mrl_loss(Z, ZM1, t, kw.get("margin", 2.0), kw.get("mask", "official"), space=kw.get("space", "logit")))
        assert float(rankmixup_loss(Z, Y, ZM1, t, **kw)) == pytest.approx(want, abs=1e-6), kw
    assert float(mrl_loss(Z, ZM1, t, mask="per_sample")) != pytest.approx(float(mrl_loss(Z, ZM1, t)), abs=1e-4)
    assert float(mrl_loss(Z, ZM1, t, 0.5, space="prob")) != pytest.approx(float(mrl_loss(Z, ZM1, t, 0.5)), abs=1e-4)
    # M-NDCG: the plain ratio and ignore_index reach the term
    zm = ZM3 * 4  # confident copies: DCG > IDCG in some rows, where plain and minmax differ
    t_nd = targets_for([0.55], [[1, 0, 3, 2]])
    plain = mndcg_loss(Z, zm, t_nd, 1, ratio="plain")
    assert float(plain) != pytest.approx(float(mndcg_loss(Z, zm, t_nd, 1)), abs=1e-4)
    got = rankmixup_loss(Z, Y, zm, t_nd, "mndcg", ratio="plain")
    assert float(got) == pytest.approx(float(ce) + 0.1 * float(plain), abs=1e-6)
    y = torch.tensor([0, 1, -100, 0])
    t_ig = fn.mixed_copy_targets(y, 3, [0.55], [torch.tensor([1, 0, 3, 2])], ignore_index=-100)
    valid = fn.ranking_rows(y, [torch.tensor([1, 0, 3, 2])], -100)
    want = fn.masked_cross_entropy(Z, y, -100) + 0.1 * mndcg_loss(Z, zm, t_ig, 1, valid=valid)
    got = rankmixup_loss(Z, y, zm, t_ig, "mndcg", ignore_index=-100, perms=[torch.tensor([1, 0, 3, 2])])
    assert float(got) == pytest.approx(float(want), abs=1e-6)
    assert float(mndcg_loss(Z, zm, t_ig, 1, valid=valid)) != pytest.approx(float(mndcg_loss(Z, zm, t_ig, 1)), abs=1e-4)


def test_masked_cross_entropy_smooths_and_averages_over_the_labelled_rows():
    y = torch.tensor([-1, 2, -1, -1])
    assert float(fn.masked_cross_entropy(Z, y, -1)) == pytest.approx(float(F.cross_entropy(Z[1:2], y[1:2])), abs=1e-6)
    y = torch.tensor([0, 2, -1, 1])
    want = F.cross_entropy(Z[[0, 1, 3]], y[[0, 1, 3]], label_smoothing=0.2)
    assert float(fn.masked_cross_entropy(Z, y, -1, 0.2)) == pytest.approx(float(want), abs=1e-6)


def test_views_and_mndcg_stay_on_the_inputs_device():
    """On another device (``meta``: shapes only) the permutations, targets and M-NDCG discounts
    follow the inputs, whether the permutations are drawn or given on the CPU."""
    x, y = torch.zeros(4, 1, device="meta"), Y.to("meta")
    for kw in ({"lams": [0.5], "perms": [torch.arange(4)]}, {"generator": torch.Generator().manual_seed(0)}):
        xv, t, _, perms = make_mixed_views(x, y, 3, 1, 2.0, **kw)
        assert perms[0].device.type == t.device.type == xv.device.type == "meta", kw
    zm = torch.zeros(8, 3, device="meta")
    assert mndcg_per_sample(Z.to("meta"), zm, zm, 2).device.type == "meta"
