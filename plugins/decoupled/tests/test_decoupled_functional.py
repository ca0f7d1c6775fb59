"""Decoupled Mixup functional API against the spec's vectors and independent computations."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from mixhub_decoupled import (
    decoupled_log_softmax,
    decoupled_mixup_loss,
    decoupled_regularizer,
    eta_weights,
    mixup_soft_cross_entropy,
    official_skip_reason,
)

from mixhub import MixPlan, mixed_cross_entropy

Z = torch.tensor(
    [[2, 0.5, -1, 1, 0], [0.1, 1.5, 0.3, -0.2, 0.4], [-0.5, 0.2, 2.5, 0, 0.1], [1, 1, 0, 0.8, -0.3]]
)
YA = torch.tensor([0, 1, 2, 3])
YB = torch.tensor([3, 2, 2, 0])


# ----------------------------------------------------------------------------- references
def official_style_reference(logits, y_a, y_b, lam, eta, mode="both", thr=0.5, p=1.0, smoothing=0.0):
    """An independent re-derivation of the official algorithm on the dense mixed-label matrix.

    Builds the soft label matrix, splits one-class rows by counting entries above eps, reads the
    active values of the first mixed row in class-index order, and for each active value keeps
    that class plus every inactive class (explicit index lists, a Python loop over rows).
    """
    logits = logits.double()
    n, c = logits.shape
    lam32 = torch.tensor(lam, dtype=torch.float32)
    label = (
        lam32 * F.one_hot(y_a, c).float()
        + torch.tensor(1 - lam, dtype=torch.float32) * F.one_hot(y_b, c).float()
    )
    if smoothing >= 0.1:
        label = (1 - smoothing) * label + smoothing / c
        eps = max(1e-3, 1e-3 + smoothing / c)
    else:
        eps = 1e-3
    # eta list from the head
    below = lam < thr
    if mode == "both":
        w = [lam, 1 - lam]
    elif mode == "less":
        w = [lam, 0] if below else [0, 1 - lam]
    else:
        w = [lam, 0] if not below else [0, 1 - lam]
    w = [eta * (min(x, 1.0) ** p) if x > 0 else 0.0 for x in w]
    counts = (label > eps).sum(1)
    is_mixed = counts >= counts.max()
    total = 0.0
    for r in range(n):
        total += -(label[r].double() * torch.log_softmax(logits[r], -1)).sum()
    mixed_rows = [r for r in range(n) if bool(is_mixed[r]) and int(counts[r]) > 1]
    if mixed_rows:
        first = label[mixed_rows[0]]
        lam_k = [float(first[k]) for k in range(c) if float(first[k]) > eps]
        if len(set(lam_k)) == len(lam_k) and len(lam_k) > 1:
            for i, value in enumerate(lam_k):
                for r in mixed_rows:
                    keep = [k for k in range(c) if float(label[r, k]) == value or float(label[r, k]) <= eps]
                    sub = logits[r, keep]
                    target = torch.tensor(
                        [1.0 if float(label[r, k]) > 0 else 0.0 for k in keep], dtype=torch.float64
                    )
                    total += w[i] * -(target * torch.log_softmax(sub, -1)).sum()
    return total / n


def naive_loop(logits, y_a, y_b, lam_rows, w_a_rows, w_b_rows):
    """Intended formula, row by row, dropping the other class from an explicit index list."""
    n, c = logits.shape
    total = 0
    for r in range(n):
        a, b, lam = int(y_a[r]), int(y_b[r]), float(lam_rows[r])
        logp = torch.log_softmax(logits[r], -1)
        total = total - lam * logp[a] - (1 - lam) * logp[b]
        if a != b:
            keep_a = [k for k in range(c) if k != b]
            keep_b = [k for k in range(c) if k != a]
            h_a = torch.log_softmax(logits[r, keep_a], -1)[keep_a.index(a)]
            h_b = torch.log_softmax(logits[r, keep_b], -1)[keep_b.index(b)]
            total = total - float(w_a_rows[r]) * h_a - float(w_b_rows[r]) * h_b
    return total / n


def close(a, b, tol=1e-6):
    return abs(float(a) - float(b)) <= tol


# ----------------------------------------------------------------------------- spec vectors
def test_reference_mixup_ce():
    assert close(decoupled_mixup_loss(Z, YA, YB, 0.7, eta=0.0), 0.904894)
    assert close(mixup_soft_cross_entropy(Z, YA, YB, 0.7).mean(), 0.904894)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(eta=0.1, mode="both", lam_pow=1.0), 0.962388),  # TV-D1
        (dict(eta=0.01, mode="more", lam_pow=0.5), 0.909095),  # TV-D2
        (dict(eta=0.1, mode="less", lam_pow=0.5), 0.945684),  # TV-D3
    ],
)
def test_spec_vectors_d1_d3(kwargs, expected):
    assert close(decoupled_mixup_loss(Z, YA, YB, 0.7, **kwargs), expected)
    ref = official_style_reference(Z, YA, YB, 0.7, kwargs["eta"], kwargs["mode"], p=kwargs["lam_pow"])
    assert close(ref, expected)


def test_spec_vector_d6_lam_half():
    assert close(decoupled_mixup_loss(Z, YA, YB, 0.5, eta=0.1), 1.004894)
    assert close(decoupled_mixup_loss(Z, YA, YB, 0.5, eta=0.1, official_skip=False), 1.067239)
    assert close(official_style_reference(Z, YA, YB, 0.5, 0.1), 1.004894)
    assert official_skip_reason(0.5, YA, YB, 5) == "equal"


def test_spec_vector_d7_explicit_weights():
    reg = decoupled_regularizer(Z, YA, YB, 0.07, 0.03)
    ce = mixup_soft_cross_entropy(Z, YA, YB, 0.7)
    assert close((ce.sum() + reg.sum()) / 4, 0.962388)
    assert float(reg[2]) == 0.0  # the same-class row


def test_spec_vector_d8_smoothing():
    z, ya, yb = Z[:2], YA[:2], YB[:2]
    assert close(decoupled_mixup_loss(z, ya, yb, 0.7, eta=0.1, label_smoothing=0.1), 1.759107)
    assert close(official_style_reference(z, ya, yb, 0.7, 0.1, smoothing=0.1), 1.759107)
    onehot = decoupled_mixup_loss(z, ya, yb, 0.7, eta=0.1, label_smoothing=0.1, smoothing_target="onehot")
    assert close(onehot, 1.137314)


def test_official_ignores_small_smoothing():
    a = decoupled_mixup_loss(Z, YA, YB, 0.7, eta=0.1, label_smoothing=0.05)
    assert close(a, 0.962388)
    b = decoupled_mixup_loss(Z, YA, YB, 0.7, eta=0.1, label_smoothing=0.05, smoothing_target="onehot")
    assert not close(a, b, 1e-4)


@pytest.mark.parametrize("p, skip, no_skip", [(0.0, 1.254644, 1.379334), (1.0, 1.254644, 1.329105)])
def test_derived_tiny_lam(p, skip, no_skip):
    assert close(decoupled_mixup_loss(Z, YA, YB, 0.0005, eta=0.1, lam_pow=p), skip)
    assert close(decoupled_mixup_loss(Z, YA, YB, 0.0005, eta=0.1, lam_pow=p, official_skip=False), no_skip)
    assert official_skip_reason(0.0005, YA, YB, 5) == "one-class"


# ----------------------------------------------------------------------------- official reference, random batches
@pytest.mark.parametrize("seed", range(6))
def test_matches_official_style_reference_random(seed):
    g = torch.Generator().manual_seed(seed)
    n, c = 12, 7
    logits = torch.randn(n, c, generator=g) * 2
    y_a = torch.randint(c, (n,), generator=g)
    y_b = y_a[torch.randperm(n, generator=g)]
    for lam, mode, p in itertools.product(
        [0.0, 0.2, 0.5, 0.7, 0.9995, 1.0], ["both", "less", "more"], [0.0, 0.5, 1.0]
    ):
        ours = decoupled_mixup_loss(logits, y_a, y_b, lam, eta=0.3, mode=mode, lam_pow=p)
        ref = official_style_reference(logits, y_a, y_b, lam, 0.3, mode, p=p)
        assert close(ours, ref, 1e-5), (lam, mode, p)


def test_official_eta_order_swaps_when_first_mixed_row_is_descending():
    # first mixed row has y_a=3 > y_b=0: the official code gives the y_a term the weight of 1-lam
    y_a, y_b = torch.tensor([3, 1, 2, 0]), torch.tensor([0, 2, 2, 3])
    official = decoupled_mixup_loss(Z, y_a, y_b, 0.7, eta=0.1)
    assert close(official, official_style_reference(Z, y_a, y_b, 0.7, 0.1))
    intended = decoupled_mixup_loss(Z, y_a, y_b, 0.7, eta=0.1, official_eta_order=False)
    assert not close(official, intended, 1e-4)
    ce = mixup_soft_cross_entropy(Z, y_a, y_b, 0.7)
    swapped = (ce.sum() + decoupled_regularizer(Z, y_a, y_b, 0.03, 0.07).sum()) / 4
    assert close(official, swapped)


def test_official_order_without_effect_when_ascending():
    for mode in ("both", "less", "more"):
        a = decoupled_mixup_loss(Z, YA, YB, 0.3, eta=0.1, mode=mode, lam_pow=0.5)
        b = decoupled_mixup_loss(Z, YA, YB, 0.3, eta=0.1, mode=mode, lam_pow=0.5, official_eta_order=False)
        assert close(a, b, 0)


# ----------------------------------------------------------------------------- properties
def test_eta_zero_is_mixup_ce_and_core_default():
    plan = MixPlan.pairs(torch.arange(4), 0.7)
    plan.y_a, plan.y_b = YA, YB
    core = mixed_cross_entropy(Z, plan)
    ours = decoupled_mixup_loss(Z, YA, YB, 0.7, eta=0.0)
    assert torch.allclose(core, ours, atol=1e-6)


def test_same_class_rows_change_only_their_ce():
    z2 = Z.clone()
    z2[2] = torch.tensor([3.0, -2.0, 0.5, 1.0, 2.0])
    _, parts1 = decoupled_mixup_loss(Z, YA, YB, 0.7, return_parts=True)
    _, parts2 = decoupled_mixup_loss(z2, YA, YB, 0.7, return_parts=True)
    assert torch.equal(parts1["reg"], parts2["reg"])
    assert float(parts2["reg"][2]) == 0.0
    d_loss = decoupled_mixup_loss(z2, YA, YB, 0.7) - decoupled_mixup_loss(Z, YA, YB, 0.7)
    d_ce = (F.cross_entropy(z2[2:3], YA[2:3]) - F.cross_entropy(Z[2:3], YA[2:3])) / 4
    assert close(d_loss, d_ce)


def test_denominator_is_full_batch():
    # all rows same class except one: the regulariser is divided by B, not by the mixed rows
    y_a, y_b = torch.tensor([0, 1, 2, 3]), torch.tensor([3, 1, 2, 3])
    _, parts = decoupled_mixup_loss(Z, y_a, y_b, 0.7, return_parts=True)
    loss = decoupled_mixup_loss(Z, y_a, y_b, 0.7)
    assert close(loss, (parts["ce"].sum() + parts["reg"].sum()) / 4)
    assert float(parts["reg"][1:].abs().sum()) == 0.0 and float(parts["reg"][0]) > 0


@pytest.mark.parametrize("mode", ["both", "less", "more"])
@pytest.mark.parametrize("lam", [0.2, 0.35, 0.8])
def test_symmetry_intended_variant(mode, lam):
    kw = dict(eta=0.2, mode=mode, lam_pow=0.5, official_eta_order=False, official_skip=False)
    a = decoupled_mixup_loss(Z, YA, YB, lam, **kw)
    b = decoupled_mixup_loss(Z, YB, YA, 1 - lam, **kw)
    assert close(a, b, 1e-5)


def test_official_variant_breaks_symmetry():
    # (y_a, y_b, lam) vs (y_b, y_a, 1-lam): the first mixed row flips order, the eta list does not follow
    a = decoupled_mixup_loss(Z, YA, YB, 0.7, eta=0.1, mode="less", lam_pow=0.5)
    b = decoupled_mixup_loss(Z, YB, YA, 0.3, eta=0.1, mode="less", lam_pow=0.5)
    assert not close(a, b, 1e-4)


def test_decoupled_log_softmax_removes_only_the_other_class():
    target, removed = torch.tensor([0, 1, 2, 3]), torch.tensor([3, 2, 2, 0])
    got = decoupled_log_softmax(Z, target, removed)
    for r in range(4):
        keep = [k for k in range(5) if k != int(removed[r]) or int(removed[r]) == int(target[r])]
        expected = Z[r, int(target[r])] - torch.logsumexp(Z[r, keep], 0)
        assert close(got[r], expected)
    # not a softmax over the two mixed classes only, nor over all classes
    full = torch.log_softmax(Z[0], -1)[0]
    assert not close(got[0], full, 1e-3)


def test_eta_weights_modes_and_power():
    assert eta_weights(0.7, 0.1, "both", 0.5, 1.0) == pytest.approx((0.07, 0.03))
    assert eta_weights(0.7, 0.1, "less", 0.5, 0.5) == pytest.approx((0.0, 0.1 * 0.3**0.5))
    assert eta_weights(0.3, 0.1, "less", 0.5, 0.5) == pytest.approx((0.1 * 0.3**0.5, 0.0))
    assert eta_weights(0.7, 0.01, "more", 0.5, 0.5) == pytest.approx((0.01 * 0.7**0.5, 0.0))
    assert eta_weights(0.5, 0.1, "more", 0.5, 1.0) == pytest.approx((0.05, 0.0))  # lam >= thr: dominant = a
    assert eta_weights(0.2, 0.1, "both", 0.5, 0.0) == pytest.approx((0.1, 0.1))  # p = 0: constant eta
    assert eta_weights(0.0, 0.1, "both", 0.5, 0.0) == pytest.approx((0.0, 0.1))  # zero weight stays zero
    lam = torch.tensor([0.2, 0.7])
    w_a, w_b = eta_weights(lam, 0.1, "less", 0.5, 1.0)
    assert torch.allclose(w_a, torch.tensor([0.02, 0.0], dtype=torch.float64))
    assert torch.allclose(w_b, torch.tensor([0.0, 0.03], dtype=torch.float64))


def test_validation_errors():
    with pytest.raises(ValueError, match="mode"):
        decoupled_mixup_loss(Z, YA, YB, 0.7, mode="most")
    with pytest.raises(ValueError, match="lam_pow"):
        decoupled_mixup_loss(Z, YA, YB, 0.7, lam_pow=-1)
    with pytest.raises(ValueError, match="smoothing_target"):
        decoupled_mixup_loss(Z, YA, YB, 0.7, smoothing_target="all")


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_lam_endpoints_and_half(lam):
    loss = decoupled_mixup_loss(Z, YA, YB, lam, eta=0.1)
    assert close(loss, mixup_soft_cross_entropy(Z, YA, YB, lam).mean())  # official skip
    w_a, w_b = eta_weights(lam, 0.1, "both", 0.5, 1.0)
    no_skip = decoupled_mixup_loss(Z, YA, YB, lam, eta=0.1, official_skip=False, official_eta_order=False)
    assert close(no_skip, naive_loop(Z, YA, YB, [lam] * 4, [w_a] * 4, [w_b] * 4), 1e-5)


# ----------------------------------------------------------------------------- per-sample lam
def test_per_sample_equal_entries_equal_scalar():
    a = decoupled_mixup_loss(Z, YA, YB, torch.full((4,), 0.7), eta=0.1)
    b = decoupled_mixup_loss(Z, YA, YB, 0.7, eta=0.1)
    assert close(a, b, 1e-7)
    assert close(decoupled_mixup_loss(Z, YA, YB, torch.tensor(0.7), eta=0.1), b, 1e-7)


def test_per_sample_needs_official_flags_off():
    lam = torch.tensor([0.2, 0.7, 0.4, 0.9])
    with pytest.raises(ValueError, match="one λ per batch"):
        decoupled_mixup_loss(Z, YA, YB, lam)
    with pytest.raises(ValueError, match="official_skip=False"):
        decoupled_mixup_loss(Z, YA, YB, lam, official_eta_order=False)


@pytest.mark.parametrize("mode", ["both", "less", "more"])
def test_per_sample_matches_row_loop(mode):
    lam = torch.tensor([0.2, 0.7, 0.4, 0.9])
    got = decoupled_mixup_loss(
        Z, YA, YB, lam, eta=0.1, mode=mode, lam_pow=0.5, official_eta_order=False, official_skip=False
    )
    rows = [eta_weights(float(v), 0.1, mode, 0.5, 0.5) for v in lam]
    ref = naive_loop(Z, YA, YB, lam, [w[0] for w in rows], [w[1] for w in rows])
    assert close(got, ref, 1e-6)


# ----------------------------------------------------------------------------- gradients and dtypes
def test_gradcheck_float64():
    z = Z.double().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: decoupled_mixup_loss(t, YA, YB, 0.7, eta=0.3), (z,))
    lam = torch.tensor([0.2, 0.7, 0.4, 0.9], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda t: decoupled_mixup_loss(
            t, YA, YB, lam, eta=0.3, official_eta_order=False, official_skip=False
        ),
        (z,),
    )


def test_gradient_matches_naive_loop():
    z1 = Z.clone().requires_grad_(True)
    decoupled_mixup_loss(z1, YA, YB, 0.7, eta=0.5, mode="both").backward()
    z2 = Z.clone().requires_grad_(True)
    naive_loop(z2, YA, YB, [0.7] * 4, [0.35] * 4, [0.15] * 4).backward()
    assert torch.allclose(z1.grad, z2.grad, atol=1e-6)


def test_low_precision_logits_computed_in_float32():
    loss = decoupled_mixup_loss(Z.to(torch.bfloat16), YA, YB, 0.7)
    assert loss.dtype == torch.float32
    assert close(loss, decoupled_mixup_loss(Z.to(torch.bfloat16).float(), YA, YB, 0.7), 1e-6)


def test_regularizer_takes_per_row_weights():
    """``[B]`` float64 weights weigh each row's two terms and give a float32 result; same-class
    rows stay 0. Reference: the per-row loop over decoupled_log_softmax's formula."""
    w_a = torch.tensor([0.05, 0.01, 0.2, 0.07], dtype=torch.float64)
    w_b = torch.tensor([0.02, 0.09, 0.3, 0.03], dtype=torch.float64)
    got = decoupled_regularizer(Z, YA, YB, w_a, w_b)
    assert got.dtype == torch.float32 and got.shape == (4,)
    for r in range(4):
        a, b = int(YA[r]), int(YB[r])
        if a == b:
            assert float(got[r]) == 0.0
            continue
        keep_a = [k for k in range(5) if k != b]
        keep_b = [k for k in range(5) if k != a]
        nll_a = -(Z[r, a].double() - torch.logsumexp(Z[r, keep_a].double(), 0))
        nll_b = -(Z[r, b].double() - torch.logsumexp(Z[r, keep_b].double(), 0))
        assert close(got[r], w_a[r] * nll_a + w_b[r] * nll_b)


def test_eta_weights_defaults():
    """eta 0.1, mode "both", threshold 0.5 (for "less"/"more"), power 1."""
    assert eta_weights(0.3) == pytest.approx((0.1 * 0.3, 0.1 * 0.7), abs=1e-15)
    assert eta_weights(0.7, mode="less") == pytest.approx((0.0, 0.1 * 0.3), abs=1e-15)
    assert eta_weights(0.7, mode="more") == pytest.approx((0.1 * 0.7, 0.0), abs=1e-15)
    w_a, w_b = eta_weights(torch.tensor([0.3, 0.7], dtype=torch.float64), mode="less")
    assert torch.allclose(w_a, torch.tensor([0.03, 0.0], dtype=torch.float64), atol=1e-15)
    assert torch.allclose(w_b, torch.tensor([0.0, 0.03], dtype=torch.float64), atol=1e-15)


def test_eta_weights_tensor_and_zero_d_paths():
    # a 0-d tensor is a batch lam: floats back
    w = eta_weights(torch.tensor(0.3))
    assert all(isinstance(x, float) for x in w) and w == pytest.approx((0.03, 0.07), abs=1e-8)
    # per-row weights are float64 whatever the lam's dtype; lam == thr is not "below"
    w_a, w_b = eta_weights(torch.tensor([0.5, 0.25], dtype=torch.float32), mode="less")
    assert w_a.dtype == w_b.dtype == torch.float64
    assert w_a.tolist() == pytest.approx([0.0, 0.025], abs=1e-15)
    assert w_b.tolist() == pytest.approx([0.05, 0.0], abs=1e-15)
    # a gated-off (zero) weight stays 0 even where the scaled weight of 0 is not (power 0, "none")
    for kw in ({"lam_pow": 0.0}, {"lam_scale_mode": "none"}):
        w_a, w_b = eta_weights(torch.tensor([0.3, 0.8], dtype=torch.float64), mode="less", **kw)
        assert w_a.tolist() == [0.1, 0.0] and w_b.tolist() == [0.0, 0.1], kw


def test_soft_ce_per_row_lam_dtype_and_device():
    lam = torch.tensor([0.2, 0.7, 0.5, 0.9], dtype=torch.float64)
    ce = mixup_soft_cross_entropy(Z, YA, YB, lam)
    assert ce.dtype == torch.float32
    logp = torch.log_softmax(Z.double(), -1)
    ref = -(lam * logp[torch.arange(4), YA] + (1 - lam) * logp[torch.arange(4), YB])
    torch.testing.assert_close(ce.double(), ref, atol=1e-6, rtol=0)
    # logits on another device (meta: no values): a CPU lam follows them; a [B] lam on that
    # device is taken as per-row weights without reading it on the host
    zm, ya, yb = Z.to("meta"), YA.to("meta"), YB.to("meta")
    assert mixup_soft_cross_entropy(zm, ya, yb, lam).device.type == "meta"
    assert mixup_soft_cross_entropy(zm, ya, yb, torch.full((4,), 0.3, device="meta")).shape == (4,)


def test_loss_moves_targets_and_lams_to_the_logits_device():
    """Logits on another device (meta: shapes only): CPU targets and a CPU per-row lam follow
    them, and a per-row lam already there is used without a host read (official flags off)."""
    zm = Z.to("meta")
    off = {"official_eta_order": False, "official_skip": False}
    assert decoupled_mixup_loss(zm, YA, YB, 0.3, official_eta_order=False).device.type == "meta"
    lam = torch.tensor([0.2, 0.3, 0.4, 0.6])
    assert decoupled_mixup_loss(zm, YA, YB, lam, **off).device.type == "meta"
    lam_m = torch.full((4,), 0.3, device="meta")
    assert decoupled_mixup_loss(zm, YA.to("meta"), YB.to("meta"), lam_m, **off).device.type == "meta"


def test_constant_per_row_lam_with_either_official_flag_is_the_batch_lam():
    lam = torch.full((4,), 0.3)
    for order, skip in ((True, False), (False, True), (True, True)):
        got = decoupled_mixup_loss(Z, YA, YB, lam, official_eta_order=order, official_skip=skip)
        assert torch.equal(
            got, decoupled_mixup_loss(Z, YA, YB, 0.3, official_eta_order=order, official_skip=skip)
        )


def test_empty_batch_is_a_zero_loss():
    empty = torch.zeros(0, dtype=torch.long)
    loss, parts = decoupled_mixup_loss(torch.zeros(0, 5), empty, empty, 0.3, return_parts=True)
    assert float(loss) == 0.0 and bool(parts["skipped"]) and parts["reg"].shape == (0,)


def test_soft_ce_label_smoothing_per_row():
    """Smoothed targets (1 - s) t + s / C, row by row on four rows."""
    s, lam = 0.2, 0.7
    got = mixup_soft_cross_entropy(Z, YA, YB, lam, label_smoothing=s)
    logp = torch.log_softmax(Z.double(), -1)
    for r in range(4):
        t = torch.full((5,), s / 5, dtype=torch.float64)
        t[int(YA[r])] += (1 - s) * lam
        t[int(YB[r])] += (1 - s) * (1 - lam)
        assert close(got[r], -(t * logp[r]).sum(), 1e-5)


def test_soft_ce_without_smoothing_tolerates_a_masked_class():
    z = Z.clone()
    z[:, 4] = float("-inf")  # no target uses class 4
    ce = mixup_soft_cross_entropy(z, YA, YB, 0.3)
    assert torch.isfinite(ce).all()
    torch.testing.assert_close(ce, mixup_soft_cross_entropy(Z[:, :4], YA, YB, 0.3))


def test_eta_weights_per_row_complement_in_float64():
    """``1 - lam`` is taken in float64: for float32 lams of 0.1 and 0.35 it differs from float32's."""
    lam32 = torch.tensor([0.1, 0.35], dtype=torch.float32)
    w_a, w_b = eta_weights(lam32)
    lam64 = lam32.double()
    assert torch.equal(w_a, 0.1 * lam64) and torch.equal(w_b, 0.1 * (1 - lam64))
    assert not torch.equal(w_b, 0.1 * (1 - lam32).double())
