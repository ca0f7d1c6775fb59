"""The functional API against the spec's test vectors and independent computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from mixhub_adautomix import (
    MaskGenerator,
    apply_lam_margin,
    cosine_consistency,
    ema_momentum,
    ema_update_,
    generator_objective,
    is_adversarial_step,
    mask_statistics,
    mix_ce,
    mix_with_masks,
    sample_mix_lambdas,
)
from torch import nn

C = 4


def _fixed_generator(lam_concat: bool, scale: int = 2) -> MaskGenerator:
    """The spec's fixed weights (C = 4, reduction 2, d = 2)."""
    g = MaskGenerator(C, 2, lam_concat=lam_concat, scale_factor=scale)
    cp = C + int(lam_concat)
    with torch.no_grad():
        for o in range(2):
            for c in range(cp):
                g.conv_q.weight[o, c, 0, 0] = 0.5 * math.sin(1 + o * cp + c)
                g.conv_k.weight[o, c, 0, 0] = 0.5 * math.cos(2 + o * cp + c)
            g.conv_q.bias[o] = 0.1 * (o + 1)
            g.conv_k.bias[o] = -0.1 * (o + 1)
        for c in range(cp):
            g.conv_v.weight[0, c, 0, 0] = 0.3 * (c + 1) * (-1) ** c
        g.conv_v.bias.fill_(0.05)
    return g


def _fixed_features(n: int, h: int = 2, w: int = 2) -> list[torch.Tensor]:
    b_, c_, y_, x_ = torch.meshgrid(
        torch.arange(2.0),
        torch.arange(float(C)),
        torch.arange(float(h)),
        torch.arange(float(w)),
        indexing="ij",
    )
    return [torch.sin(0.5 * (c_ + 1) + 0.9 * y_ - 0.6 * x_ + 1.3 * i + 0.7 * b_) for i in range(n)]


VECTORS = {
    (2, False): (
        [0.314545, 0.314364, 0.314004, 0.313824],
        [0.360303, 0.360452, 0.360748, 0.360896],
        [0.314407, 0.685593],
    ),
    (2, True): (
        [0.466435, 0.465930, 0.464920, 0.464415],
        [0.504709, 0.506303, 0.509492, 0.511086],
        [0.464908, 0.535092],
    ),
    (3, False): (
        [0.165385, 0.164327, 0.162225, 0.161182],
        [0.249748, 0.249786, 0.249861, 0.249898],
        [0.167229, 0.377329, 0.455442],
    ),
    (3, True): (
        [0.231697, 0.231254, 0.230370, 0.229928],
        [0.321336, 0.320939, 0.320145, 0.319748],
        [0.233293, 0.374718, 0.391989],
    ),
}
LAMS = {2: (0.7, 0.3), 3: (0.5, 0.3, 0.2)}


def _reference_masks(g: MaskGenerator, feats: list[torch.Tensor], lams: tuple[float, ...]) -> torch.Tensor:
    """Independent loop implementation of the spec's section 3 (per image, per pixel)."""
    n = len(feats)
    b, _, h, w = feats[0].shape
    d = g.inter_channels
    out = torch.zeros(b, n, h, w, dtype=torch.float64)
    wq, bq = g.conv_q.weight[:, :, 0, 0].double(), g.conv_q.bias.double()
    wk, bk = g.conv_k.weight[:, :, 0, 0].double(), g.conv_k.bias.double()
    wv, bv = g.conv_v.weight[0, :, 0, 0].double(), g.conv_v.bias.double()
    for bi in range(b):
        zs = []
        for i in range(n):
            z = feats[i][bi].double().reshape(feats[i].shape[1], -1)  # [C, hw]
            if g.lam_concat:
                z = torch.cat([z, torch.full((1, h * w), lams[i], dtype=torch.float64)])
            zs.append(z)
        q = [torch.relu(wq @ z + bq[:, None]) for z in zs]  # [d, hw]
        k = [torch.relu(wk @ z + bk[:, None]) for z in zs]
        v = [wv @ z + bv for z in zs]  # [hw]
        for i in range(n):
            logits = sum(q[i].T @ k[j] for j in range(n) if j != i) / math.sqrt(d)
            attn = torch.softmax(logits, dim=-1)
            out[bi, i] = (attn @ v[i]).reshape(h, w)
    up = F.interpolate(out, scale_factor=g.scale_factor, mode="bilinear", align_corners=False)
    return up.softmax(dim=1)


@pytest.mark.parametrize("n,lam_concat", list(VECTORS))
def test_mask_generator_matches_spec_vectors(n: int, lam_concat: bool) -> None:
    g = _fixed_generator(lam_concat)
    feats = _fixed_features(n)
    m = g(feats, LAMS[n])
    row0, row1, means = VECTORS[(n, lam_concat)]
    assert m.shape == (2, n, 4, 4)
    torch.testing.assert_close(m[0, 0, 0], torch.tensor(row0), atol=2e-6, rtol=0)
    torch.testing.assert_close(m[1, 0, 3], torch.tensor(row1), atol=2e-6, rtol=0)
    torch.testing.assert_close(m[0].mean((1, 2)), torch.tensor(means), atol=2e-6, rtol=0)


@pytest.mark.parametrize("n,lam_concat", list(VECTORS))
def test_mask_generator_matches_loop_reference(n: int, lam_concat: bool) -> None:
    g = _fixed_generator(lam_concat)
    feats = _fixed_features(n)
    ref = _reference_masks(g, feats, LAMS[n]).float()
    torch.testing.assert_close(g(feats, LAMS[n]), ref, atol=1e-6, rtol=0)


def test_non_square_maps_follow_the_formula() -> None:
    g = _fixed_generator(True)
    feats = _fixed_features(3, h=2, w=3)
    m = g(feats, LAMS[3])
    assert m.shape == (2, 3, 4, 6)
    torch.testing.assert_close(m, _reference_masks(g, feats, LAMS[3]).float(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("lam_concat,tol", [(False, 1e-3), (True, 1e-2)])
@torch.no_grad()
def test_masks_sum_to_one_and_start_uniform(n: int, lam_concat: bool, tol: float) -> None:
    """At the N(0, 0.01) init: masks sum to 1, are spatially constant and near 1/N.

    The distance to 1/N scales with init_std times the input magnitude; the lambda channel
    (magnitude up to 1) alone shifts the values by ~0.01 * lam, hence the looser bound.
    """
    torch.manual_seed(0)
    g = MaskGenerator(16, lam_concat=lam_concat, scale_factor=4)
    for lams in ([0.05] + [0.95 / (n - 1)] * (n - 1), [1.0 / n] * n):
        feats = [0.1 * torch.randn(3, 16, 4, 4) for _ in range(n)]
        m = g(feats, lams)
        assert m.shape == (3, n, 16, 16)
        assert float(m.min()) >= 0
        torch.testing.assert_close(m.sum(1), torch.ones(3, 16, 16))
        assert float((m - 1.0 / n).abs().max()) < tol
        assert float(m.flatten(2).std(2).max()) < 1e-5  # spatially constant at init


@torch.no_grad()
def test_mask_generator_init_and_validation() -> None:
    g = MaskGenerator(64, reduction=2, norm="bn")
    assert g.conv_q.bias is None and isinstance(g.norm_q, nn.BatchNorm2d)
    assert abs(float(g.conv_q.weight.std()) - 0.01) < 2e-3 and float(g.conv_v.bias.abs().max()) == 0
    assert g.conv_q.in_channels == 64 and g.inter_channels == 32
    assert MaskGenerator(64, lam_concat=True).conv_q.in_channels == 65
    with pytest.raises(ValueError, match="at least 2"):
        g([torch.zeros(1, 64, 2, 2)], [1.0])
    with pytest.raises(ValueError, match="one shape"):
        g([torch.zeros(1, 64, 2, 2), torch.zeros(1, 64, 2, 3)], [0.5, 0.5])
    with pytest.raises(ValueError, match="lambda"):
        g([torch.zeros(1, 64, 2, 2)] * 2, [1.0])


def test_nan_policy() -> None:
    g = MaskGenerator(4, scale_factor=1)
    feats = [torch.full((1, 4, 2, 2), float("nan")), torch.zeros(1, 4, 2, 2)]
    m = g(feats, [0.5, 0.5])
    assert torch.isfinite(m).all()
    g_raise = MaskGenerator(4, scale_factor=1, nan_policy="raise")
    with pytest.raises(FloatingPointError, match="adautomix"):
        g_raise(feats, [0.5, 0.5])


def test_mix_with_masks() -> None:
    torch.manual_seed(1)
    xs = [torch.randn(2, 3, 4, 4) for _ in range(3)]
    masks = torch.rand(2, 3, 4, 4).softmax(1)
    expected = sum(masks[:, i : i + 1].expand(-1, 3, -1, -1) * xs[i] for i in range(3))
    torch.testing.assert_close(mix_with_masks(xs, masks), expected)
    with pytest.raises(ValueError, match="masks must be"):
        mix_with_masks(xs[:2], masks)
    with pytest.raises(ValueError, match="does not match"):
        mix_with_masks(xs, torch.rand(2, 3, 2, 2))
    with pytest.raises(ValueError, match="batch sizes"):
        mix_with_masks([x[:1] for x in xs], masks)


def test_sample_mix_lambdas() -> None:
    lam = sample_mix_lambdas(3, 1.0, torch.Generator().manual_seed(3))
    assert len(lam) == 3 and abs(sum(lam) - 1) < 1e-9 and min(lam) >= 0
    assert lam == sample_mix_lambdas(3, 1.0, torch.Generator().manual_seed(3))
    raw = sample_mix_lambdas(2, 1.0, torch.Generator().manual_seed(3), sampler="raw_beta")
    assert len(raw) == 2 and all(0 <= v <= 1 for v in raw)
    d = sample_mix_lambdas(3, 0.5, torch.Generator().manual_seed(4), sampler="dirichlet")
    assert abs(sum(d) - 1) < 1e-9
    # the normalised Beta is not a Dirichlet: with alpha = 1 its first component has mean 1/3
    # but a smaller spread than Dirichlet(1, 1, 1) (var 1/18 ~ 0.056; here ~0.033)
    g = torch.Generator().manual_seed(5)
    first = torch.tensor([sample_mix_lambdas(3, 1.0, g)[0] for _ in range(3000)])
    assert abs(float(first.mean()) - 1 / 3) < 0.02
    assert float(first.var()) < 0.045
    gd = torch.Generator().manual_seed(6)
    first_d = torch.tensor([sample_mix_lambdas(3, 1.0, gd, sampler="dirichlet")[0] for _ in range(3000)])
    assert abs(float(first_d.var()) - 1 / 18) < 0.006
    with pytest.raises(ValueError):
        sample_mix_lambdas(3, 1.0, sampler="nope")


def test_losses_match_spec_example() -> None:
    mixed = torch.tensor([[1.0, 2, 0], [0, 1, 3]])
    s1 = torch.tensor([[1.0, 0, 0], [0, 0, 1]])
    s2 = torch.tensor([[0.0, 1, 0], [1, 1, 1]])
    lam = (0.7, 0.3)
    cos = cosine_consistency(mixed, [s1, s2], lam)
    assert abs(float(cos) - 0.732273) < 1e-6
    y1, y2 = torch.tensor([0, 2]), torch.tensor([1, 1])
    lk = mix_ce(mixed, [y1, y2], lam)
    assert abs(float(lk) - 0.938726) < 1e-6
    assert abs(float(generator_objective(lk, cos, True, 0.3)) - 0.230973) < 1e-6
    assert abs(float(generator_objective(lk, cos, False, 0.3)) - 0.938726) < 1e-6
    anchor = generator_objective(lk, cos, True, 0.3, cos_term="anchor")
    assert abs(float(anchor) - (-0.3 * 0.938726 + 0.7 * (1 - 0.732273))) < 1e-6


def test_losses_match_independent_computation() -> None:
    torch.manual_seed(2)
    logits = torch.randn(5, 4, dtype=torch.float16)
    ys = [torch.randint(0, 4, (5,)) for _ in range(3)]
    lams = [0.2, 0.5, 0.3]
    logp = torch.log_softmax(logits.double(), 1)
    ref = sum(lam * float(-logp[torch.arange(5), y].mean()) for y, lam in zip(ys, lams))
    out = mix_ce(logits, ys, lams)
    assert out.dtype == torch.float32 and abs(float(out) - ref) < 1e-5
    srcs = [torch.randn(5, 4) for _ in range(3)]
    lf = logits.double()
    cos_ref = sum(
        lam * ((lf * s.double()).sum(1) / (lf.norm(dim=1) * s.double().norm(dim=1)))
        for s, lam in zip(srcs, lams)
    ).mean()
    assert abs(float(cosine_consistency(logits, srcs, lams)) - float(cos_ref)) < 1e-3


def test_alternation() -> None:
    assert [is_adversarial_step(t) for t in range(5)] == [True, False, True, False, True]
    assert not any(is_adversarial_step(t, 0) for t in range(5))
    assert all(is_adversarial_step(t, 1) for t in range(5))


def test_momentum_schedule_vectors() -> None:
    expect = {0: 0.999, 99: 0.999, 100: 0.99902445, 500: 0.9994995, 999: 0.99999900}
    for t, m in expect.items():
        assert abs(ema_momentum(t, 1000) - m) < 5e-9, t
    # the jump at the scope start (global t), and the smooth variant starting at m_0
    assert ema_momentum(100, 1000) > 0.999
    assert abs(ema_momentum(100, 1000, schedule="smooth") - 0.999) < 1e-12
    assert abs(ema_momentum(1000, 1000, schedule="smooth") - 0.999999) < 1e-12
    # linear warm-up as the official formula reads: m_0 at t = 0, rising towards m_end at the scope start
    assert abs(ema_momentum(0, 1000, warmup="linear") - 0.999) < 1e-12
    assert abs(ema_momentum(50, 1000, warmup="linear") - (0.999999 - 0.000999 * 0.5)) < 1e-12
    ms = [ema_momentum(t, 240, 0.92, 0.9997) for t in range(240)]
    assert all(b >= a for a, b in zip(ms[24:], ms[25:]))


def test_ema_update_parameters_only() -> None:
    torch.manual_seed(3)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    teacher = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    student[1].running_mean.fill_(5.0)
    old = [p.detach().clone() for p in teacher.parameters()]
    ema_update_(teacher, student, 0.9)
    for pt, p0, ps in zip(teacher.parameters(), old, student.parameters()):
        torch.testing.assert_close(pt - p0, 0.1 * (ps - p0), atol=1e-7, rtol=0)
    assert float(teacher[1].running_mean.abs().max()) == 0
    ema_update_(teacher, student, 0.9, buffers=True)
    assert float(teacher[1].running_mean[0]) == 5.0


def test_lam_margin_rules() -> None:
    masks = torch.rand(2, 2, 4, 4).softmax(1)
    out = apply_lam_margin(masks, [0.02, 0.98], 0.03)
    torch.testing.assert_close(out[:, 0], torch.full((2, 4, 4), 0.02))
    torch.testing.assert_close(out[:, 1], torch.full((2, 4, 4), 0.98))
    assert apply_lam_margin(masks, [0.5, 0.5], 0.03) is masks
    assert apply_lam_margin(masks, [0.02, 0.98], 0.0) is masks
    m3 = torch.rand(2, 3, 4, 4).softmax(1)
    # official N = 3 rule tests only lam_0 (> on the upper side); "all" tests every lam
    assert apply_lam_margin(m3, [0.5, 0.49, 0.01], 0.03) is m3
    assert not torch.equal(apply_lam_margin(m3, [0.5, 0.49, 0.01], 0.03, rule="all"), m3)
    torch.testing.assert_close(
        apply_lam_margin(m3, [0.02, 0.5, 0.48], 0.03)[:, 2], torch.full((2, 4, 4), 0.48)
    )
    # N = 2 upper side uses >=, N = 3 uses > (margin == 1 - lam_0 exactly)
    assert apply_lam_margin(masks, [0.75, 0.25], 0.25) is not masks
    assert apply_lam_margin(m3, [0.75, 0.2, 0.05], 0.25) is m3


def test_lam_margin_lower_side_falls_back_when_margin_equals_lam0() -> None:
    """Official ``lam_margin >= lam[0]``: a lam_0 equal to the margin falls back to constant
    masks (N = 2 and N = 3); a lam_0 one step above the margin keeps the learned masks."""
    g = torch.Generator().manual_seed(0)
    for n, lams in ((2, [0.25, 0.75]), (3, [0.25, 0.5, 0.25])):
        masks = torch.rand(2, n, 4, 4, generator=g).softmax(1)
        out = apply_lam_margin(masks, lams, 0.25)
        assert torch.equal(out, torch.tensor(lams).reshape(1, n, 1, 1).expand(2, n, 4, 4)), n
        above = [0.25 + 1e-7, 0.75 - 1e-7] if n == 2 else [0.25 + 1e-7, 0.5, 0.25 - 1e-7]
        assert apply_lam_margin(masks, above, 0.25) is masks, n


def test_mask_statistics() -> None:
    m = torch.zeros(2, 2, 2, 2)
    m[:, 0] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    m[:, 1] = 1 - m[:, 0]
    m[1] = m[1].flip(1) * 0 + 0.5
    s = mask_statistics(m)
    assert abs(s["mask_mean_0"] - 0.5) < 1e-6
    assert abs(s["mask_spatial_std"] - 0.25) < 1e-6  # image 0: std 0.5, image 1: 0
    assert s["mask_image_std"] == 0.0


def _momentum_reference(t: int, t_min: int, t_max: int, base: float, end: float, smooth: bool) -> float:
    """The cosine schedule written out for a window [t_min, t_max] (no clamping logic)."""
    frac = (t - t_min) / max(t_max - t_min, 1) if smooth else t / t_max
    return end - (end - base) * (math.cos(math.pi * frac) + 1) / 2


def test_momentum_schedule_inside_a_partial_scope() -> None:
    """scope = (0.2, 0.6) of T = 1000: the window is [200, 600]; after it m = end."""
    base, end = 0.99, 0.9999
    for t in (200, 300, 450, 600):
        for smooth in (False, True):
            got = ema_momentum(t, 1000, base, end, (0.2, 0.6), schedule="smooth" if smooth else "official")
            assert abs(got - _momentum_reference(t, 200, 600, base, end, smooth)) < 1e-12, (t, smooth)
    assert ema_momentum(601, 1000, base, end, (0.2, 0.6)) == end
    assert ema_momentum(100, 1000, base, end, (0.2, 0.6)) == base
    assert (
        abs(ema_momentum(100, 1000, base, end, (0.2, 0.6), warmup="linear") - (end - (end - base) * 0.5))
        < 1e-12
    )
    # a scope end beyond 1 is the whole run
    for t in (0, 500, 999, 1000):
        assert ema_momentum(t, 1000, base, end, (0.0, 1.5)) == ema_momentum(t, 1000, base, end, (0.0, 1.0)), t
    assert ema_momentum(1001, 1000, base, end, (0.0, 1.5)) == end


def test_momentum_schedule_window_edges() -> None:
    base, end = 0.9, 0.99
    # no run length: the base momentum; a one-step run: base at t = 0, end at t = 1
    assert ema_momentum(0, 0, base, end) == base
    assert ema_momentum(0, 1, base, end) == base
    assert ema_momentum(1, 1, base, end) == end
    # a scope starting at 0 (or before) is the whole run from t = 0: the smooth variant moves at t = 1
    for scope in ((0.0, 1.0), (-0.5, 1.0)):
        got = ema_momentum(1, 10, base, end, scope, schedule="smooth")
        assert abs(got - _momentum_reference(1, 0, 10, base, end, True)) < 1e-12, scope
    # a one-step window [5, 6] reaches end at its last step
    assert abs(ema_momentum(6, 10, base, end, (0.5, 0.6), schedule="smooth") - end) < 1e-12
    # an empty window [5, 5]: the smooth variant is still at its start value there
    assert abs(ema_momentum(5, 10, base, end, (0.5, 0.5), schedule="smooth") - base) < 1e-12
    assert ema_momentum(6, 10, base, end, (0.5, 0.5), schedule="smooth") == end


def test_momentum_schedule_errors_name_the_option() -> None:
    with pytest.raises(ValueError, match=r"^ema_momentum: warmup must be 'constant' or 'linear', got 'cos'$"):
        ema_momentum(0, 10, scope=(0.5, 1.0), warmup="cos")
    with pytest.raises(
        ValueError, match=r"^ema_momentum: schedule must be 'official' or 'smooth', got 'step'$"
    ):
        ema_momentum(5, 10, schedule="step")


def test_losses_take_per_sample_and_0d_tensor_weights() -> None:
    """A ``[B]`` lam weighs each row's CE / cosine; a 0-d lam acts as the float it holds."""
    torch.manual_seed(4)
    logits = torch.randn(5, 3)
    ys = [torch.randint(0, 3, (5,)) for _ in range(2)]
    srcs = [torch.randn(5, 3) for _ in range(2)]
    lam_b = torch.rand(5, dtype=torch.float64)
    lams = [lam_b, 1 - lam_b]
    logp = torch.log_softmax(logits.double(), 1)
    ce_ref = sum((w * -logp[torch.arange(5), y]).mean() for y, w in zip(ys, lams))
    ce = mix_ce(logits, ys, lams)
    assert ce.dtype == torch.float32  # float64 weights are cast to the loss's float32
    torch.testing.assert_close(ce.double(), ce_ref, atol=1e-6, rtol=0)
    lf = logits.double()
    cos_ref = sum(w * F.cosine_similarity(lf, s.double(), dim=-1) for s, w in zip(srcs, lams)).mean()
    cos = cosine_consistency(logits, srcs, lams)
    assert cos.dtype == torch.float32
    torch.testing.assert_close(cos.double(), cos_ref, atol=1e-6, rtol=0)
    zero_d = [torch.tensor(0.3), torch.tensor(0.7)]
    assert torch.equal(mix_ce(logits, ys, zero_d), mix_ce(logits, ys, [0.3, 0.7]))
    # a per-sample lam on the CPU follows logits on another device (meta: no kernel runs)
    out = mix_ce(logits.to("meta"), [y.to("meta") for y in ys], lams)
    assert out.device.type == "meta" and out.shape == ()
    cos = cosine_consistency(logits.to("meta"), [s.to("meta") for s in srcs], lams)
    assert cos.device.type == "meta" and cos.shape == ()


def test_generator_objective_default_beta_and_error() -> None:
    lk, cos = torch.tensor(2.0), torch.tensor(0.5)
    assert abs(float(generator_objective(lk, cos, True)) - (-0.3 * 2.0 + 0.7 * 0.5)) < 1e-7
    with pytest.raises(
        ValueError, match=r"^generator_objective: cos_term must be 'official' or 'anchor', got 'x'$"
    ):
        generator_objective(lk, cos, True, cos_term="x")


def test_mask_statistics_against_numpy() -> None:
    """Random masks (N = 3, non-square, channels not summing to 1) against numpy's moments."""
    import numpy as np

    m = torch.rand(3, 3, 2, 5, generator=torch.Generator().manual_seed(7))
    a = m.double().numpy()
    s = mask_statistics(m)
    per_image = a.mean(axis=(2, 3))
    for i in range(3):
        assert abs(float(s[f"mask_mean_{i}"]) - per_image[:, i].mean()) < 1e-6
    spatial = np.mean(
        [a[b, i].std() for b in range(3) for i in range(3)]
    )  # population std per image and channel
    assert abs(float(s["mask_spatial_std"]) - spatial) < 1e-6
    assert abs(float(s["mask_image_std"]) - per_image[:, 0].std()) < 1e-6  # population std over images
    assert float(s["mask_image_std"]) > 0
    two = mask_statistics(m[:2])  # two images: their population std, not zero
    assert abs(float(two["mask_image_std"]) - per_image[:2, 0].std()) < 1e-6
    one = mask_statistics(m[:1])
    assert float(one["mask_image_std"]) == 0.0 and one["mask_image_std"].shape == ()


def test_mix_with_masks_casts_each_mask_to_its_input() -> None:
    """bf16 inputs with float32 masks give a bf16 mix, product by product in bf16; a float32
    second input promotes only its own term."""
    g = torch.Generator().manual_seed(8)
    xs = [torch.randn(2, 3, 4, 4, generator=g).bfloat16() for _ in range(2)]
    masks = torch.rand(2, 2, 4, 4, generator=g).softmax(1)
    out = mix_with_masks(xs, masks)
    m_bf = masks.bfloat16()
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, m_bf[:, 0:1] * xs[0] + m_bf[:, 1:2] * xs[1])
    x1 = xs[1].float()
    out2 = mix_with_masks([xs[0], x1], masks)
    assert out2.dtype == torch.float32
    assert torch.equal(out2, (m_bf[:, 0:1] * xs[0]).float() + masks[:, 1:2] * x1)


def test_mix_with_masks_errors_name_the_sizes() -> None:
    xs = [torch.zeros(2, 3, 4, 5)] * 2
    with pytest.raises(ValueError, match=r"^mix_with_masks: batch sizes differ: inputs 2, masks 1$"):
        mix_with_masks(xs, torch.zeros(1, 2, 4, 5))
    with pytest.raises(
        ValueError, match=r"^mix_with_masks: mask size \(4, 6\) does not match input size \(4, 5\)$"
    ):
        mix_with_masks(xs, torch.zeros(2, 2, 4, 6))


def test_lam_margin_boundaries_and_layouts() -> None:
    masks = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(9)).softmax(1)
    # margin 0 disables the fallback, even for a lam of exactly 0
    assert apply_lam_margin(masks, [0.0, 0.5, 0.5], 0.0) is masks
    m2 = masks[:, :2].contiguous()
    assert apply_lam_margin(m2, [1.0, 0.0], 0.0) is m2
    # N = 3, official rule: lam_0 above 1 - margin falls back
    out = apply_lam_margin(masks, [0.875, 0.0625, 0.0625], 0.25)
    assert torch.equal(out, torch.tensor([0.875, 0.0625, 0.0625]).reshape(1, 3, 1, 1).expand(2, 3, 4, 4))
    # rule "all", inclusive at both ends (lams need not sum to 1 here: raw Beta draws)
    for lams in ([0.5, 0.25, 0.5], [0.5, 0.75, 0.5]):
        assert apply_lam_margin(masks, lams, 0.25, rule="all") is not masks, lams
    assert apply_lam_margin(masks, [0.5, 0.375, 0.5], 0.25, rule="all") is masks
    with pytest.raises(ValueError, match=r"^apply_lam_margin: rule must be 'official' or 'all', got 'any'$"):
        apply_lam_margin(masks, [0.5, 0.25, 0.25], 0.25, rule="any")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_lam_margin_constants_keep_the_masks_dtype_and_device(dtype: torch.dtype) -> None:
    masks = torch.full((2, 2, 3, 3), 0.5, dtype=dtype)
    out = apply_lam_margin(masks, [0.1, 0.9], 0.2)
    assert out.dtype == dtype and torch.equal(out[:, 0], torch.full((2, 3, 3), 0.1, dtype=dtype))
    meta = apply_lam_margin(masks.to("meta"), [0.1, 0.9], 0.2)
    assert meta.device.type == "meta" and meta.dtype == dtype and meta.shape == masks.shape


def _raw_reference(
    g: MaskGenerator, feats: list[torch.Tensor], lams, *, use_scale: bool, bn: bool = False
) -> torch.Tensor:
    """Pre-upsampling masks ``[B, N, h, w]`` in float64, written per image; ``bn`` applies the
    eval-mode BatchNorm of the q/k branches by its formula (running statistics, affine)."""
    n = len(feats)
    b, _, h, w = feats[0].shape
    d = g.inter_channels

    def branch(conv, norm, z):
        y = conv.weight[:, :, 0, 0].double() @ z
        if conv.bias is not None:
            y = y + conv.bias.double()[:, None]
        if bn:
            rm, rv = norm.running_mean.double(), norm.running_var.double()
            y = (y - rm[:, None]) / torch.sqrt(rv[:, None] + norm.eps) * norm.weight.double()[:, None]
            y = y + norm.bias.double()[:, None]
        return y

    out = torch.zeros(b, n, h, w, dtype=torch.float64)
    for bi in range(b):
        zs = [f[bi].double().reshape(f.shape[1], -1) for f in feats]
        if g.lam_concat:
            zs = [
                torch.cat([z, torch.full((1, h * w), lam, dtype=torch.float64)]) for z, lam in zip(zs, lams)
            ]
        q = [torch.relu(branch(g.conv_q, g.norm_q, z)) for z in zs]
        k = [torch.relu(branch(g.conv_k, g.norm_k, z)) for z in zs]
        v = [g.conv_v.weight[0, :, 0, 0].double() @ z + g.conv_v.bias.double() for z in zs]
        for i in range(n):
            logits = sum(q[i].T @ k[j] for j in range(n) if j != i)
            if use_scale:
                logits = logits / math.sqrt(d)
            out[bi, i] = (torch.softmax(logits, dim=-1) @ v[i]).reshape(h, w)
    return out


@pytest.mark.parametrize("mode", ["nearest", "bicubic", "bilinear"])
def test_mask_generator_modes_scale_and_logits(mode: str) -> None:
    """Each upsampling mode (align_corners=False; unset for nearest), without the sqrt(d) scale,
    and the pre-softmax logits, against the reference."""
    g = _fixed_generator(False, scale=3)
    g.upsample_mode, g.use_scale = mode, False
    feats = _fixed_features(3, h=2, w=3)
    raw = _raw_reference(g, feats, LAMS[3], use_scale=False)
    kw = {} if mode == "nearest" else {"align_corners": False}
    up = F.interpolate(raw, scale_factor=3, mode=mode, **kw)
    logits = g(feats, LAMS[3], return_logits=True)
    assert logits.shape == (2, 3, 6, 9)
    torch.testing.assert_close(logits, up.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(g(feats, LAMS[3]), up.softmax(1).float(), atol=1e-6, rtol=0)
    assert MaskGenerator(4, upsample_mode=mode, use_scale=False).use_scale is False


def test_mask_generator_with_batchnorm_in_eval() -> None:
    torch.manual_seed(11)
    g = MaskGenerator(C, 2, norm="bn", scale_factor=1, init_std=0.5)
    with torch.no_grad():
        for norm in (g.norm_q, g.norm_k):
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
        g.conv_v.bias.fill_(0.1)
    g.eval()
    feats = _fixed_features(2)
    ref = _raw_reference(g, feats, LAMS[2], use_scale=True, bn=True)
    torch.testing.assert_close(g(feats, LAMS[2], return_logits=True), ref.float(), atol=1e-5, rtol=0)
    assert isinstance(g.norm_k, nn.BatchNorm2d) and g.conv_k.bias is None and g.conv_v.bias is not None


@torch.no_grad()
def test_mask_generator_init_options() -> None:
    torch.manual_seed(12)
    g = MaskGenerator(64, reduction=4, init_std=0.05)
    assert g.inter_channels == 16 and g.reduction == 4 and g.init_std == 0.05
    assert abs(float(g.conv_k.weight.std()) - 0.05) < 0.01 and abs(float(g.conv_v.weight.std()) - 0.05) < 0.02
    assert float(g.conv_k.bias.abs().max()) == 0 and float(g.conv_v.bias.abs().max()) == 0
    assert MaskGenerator(3, reduction=8).inter_channels == 1  # at least one channel
    default = MaskGenerator(8)  # reduction 2, upsampling by 4, no norm
    assert default.inter_channels == 4 and default.scale_factor == 4 and default.norm is None
    assert default([torch.zeros(1, 8, 2, 3)] * 2, [0.5, 0.5]).shape == (1, 2, 8, 12)
    assert MaskGenerator(8, norm="bn").norm == "bn"
    g.reset_parameters("kaiming")  # fan-in, ReLU gain: std sqrt(2 / 64)
    assert abs(float(g.conv_q.weight.std()) - math.sqrt(2 / 64)) < 0.03
    assert float(g.conv_q.bias.abs().max()) == 0
    gb = MaskGenerator(8, norm="bn")
    with torch.no_grad():
        gb.norm_q.weight.fill_(3.0), gb.norm_q.bias.fill_(2.0)
    gb.reset_parameters()
    assert torch.equal(gb.norm_q.weight, torch.ones(4)) and torch.equal(gb.norm_q.bias, torch.zeros(4))
    with pytest.raises(ValueError, match=r"^unknown init 'xavier' \(normal or kaiming\)$"):
        g.reset_parameters("xavier")


def test_mask_generator_errors_name_the_option() -> None:
    with pytest.raises(
        ValueError, match=r"^MaskGenerator: upsample_mode must be bilinear, nearest or bicubic, got 'area'$"
    ):
        MaskGenerator(4, upsample_mode="area")
    with pytest.raises(ValueError, match=r"^MaskGenerator: norm must be None or 'bn', got 'ln'$"):
        MaskGenerator(4, norm="ln")
    with pytest.raises(
        ValueError, match=r"^MaskGenerator: nan_policy must be 'official' or 'raise', got 'zero'$"
    ):
        MaskGenerator(4, nan_policy="zero")
    g = MaskGenerator(4)
    with pytest.raises(ValueError, match=r"^MaskGenerator needs at least 2 feature maps, got 1$"):
        g([torch.zeros(1, 4, 2, 2)], [1.0])
    with pytest.raises(ValueError, match=r"^MaskGenerator: expected 4 channels, got 3$"):
        g([torch.zeros(1, 3, 2, 2)] * 2, [0.5, 0.5])
    with pytest.raises(ValueError, match=r"one shape, got \[\(1, 4, 2\), \(1, 4, 2\)\]$"):
        g([torch.zeros(1, 4, 2)] * 2, [0.5, 0.5])
    with pytest.raises(ValueError, match=r"^expected 2 lambda values \(one per source\), got 3$"):
        g([torch.zeros(1, 4, 2, 2)] * 2, torch.tensor([0.2, 0.3, 0.5]))


@pytest.mark.parametrize("n,fill", [(2, [1e-4, 1e4]), (3, [0.3, 0.3, 0.3])])
def test_nan_masks_take_the_official_fill_values(n: int, fill: list[float]) -> None:
    g = MaskGenerator(4, scale_factor=2)
    feats = [torch.full((2, 4, 2, 2), float("nan"))] + [torch.zeros(2, 4, 2, 2)] * (n - 1)
    logits = g(feats, [1.0 / n] * n, return_logits=True)
    expect = torch.tensor(fill).reshape(1, n, 1, 1).expand(2, n, 4, 4)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, expect, rtol=1e-6, atol=0)
    torch.testing.assert_close(g(feats, [1.0 / n] * n), expect.softmax(1))


def test_finite_masks_are_not_replaced_by_the_float64_recompute() -> None:
    g = _fixed_generator(False)
    feats = _fixed_features(2)
    official = g(feats, LAMS[2], return_logits=True)
    g.nan_policy = "raise"
    assert torch.equal(official, g(feats, LAMS[2], return_logits=True))


def test_overflowing_attention_logits_are_clamped_not_nan() -> None:
    """Features of 1e20 give float32 logits of ~1e40 (inf): clamped to 1e25 the softmax stays
    finite, so nan_policy="raise" does not raise; the masks still sum to one."""
    g = _fixed_generator(False)
    g.nan_policy = "raise"
    feats = [1e20 * f for f in _fixed_features(2)]
    m = g(feats, LAMS[2])
    assert torch.isfinite(m).all()
    torch.testing.assert_close(m.sum(1), torch.ones(2, 4, 4))


def test_nan_policy_raise_message() -> None:
    g = MaskGenerator(4, scale_factor=1, nan_policy="raise")
    feats = [torch.full((1, 4, 2, 2), float("nan")), torch.zeros(1, 4, 2, 2)]
    with pytest.raises(
        FloatingPointError, match=r"^adautomix: the mask generator produced NaN masks \(nan_policy='raise'\)$"
    ):
        g(feats, [0.5, 0.5])


def test_sample_mix_lambdas_is_numpy_seeded_from_the_torch_generator() -> None:
    """The draws: a seed in [0, 2^62) from the torch generator, then numpy's Beta / Dirichlet."""
    import numpy as np

    for sampler in ("normalized_beta", "raw_beta", "dirichlet"):
        seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(21)))
        rng = np.random.default_rng(seed)
        if sampler == "dirichlet":
            expect = rng.dirichlet([1.0] * 3).tolist()
        else:
            b = rng.beta(1.0, 1.0, 3)
            expect = (b if sampler == "raw_beta" else b / b.sum()).tolist()
        got = sample_mix_lambdas(3, generator=torch.Generator().manual_seed(21), sampler=sampler)
        assert got == pytest.approx(expect, abs=1e-15), sampler
    assert sample_mix_lambdas(1, 0.5) == [1.0]
    with pytest.raises(ValueError, match=r"^sample_mix_lambdas: n must be >= 1$"):
        sample_mix_lambdas(0)
    with pytest.raises(ValueError, match=r"^sample_mix_lambdas: alpha must be > 0$"):
        sample_mix_lambdas(2, 0.0)
    with pytest.raises(
        ValueError,
        match=r"^sample_mix_lambdas: unknown sampler 'uniform' \(normalized_beta, dirichlet, raw_beta\)$",
    ):
        sample_mix_lambdas(2, sampler="uniform")


def test_adversarial_interval_error() -> None:
    with pytest.raises(ValueError, match=r"^adv_interval must be >= 0$"):
        is_adversarial_step(3, -1)
    assert [is_adversarial_step(t, 3) for t in range(7)] == [True, False, False, True, False, False, True]


def test_mask_generator_takes_tensor_lams() -> None:
    g = _fixed_generator(True)
    feats = _fixed_features(3)
    ref = g(feats, LAMS[3])
    assert torch.equal(g(feats, torch.tensor(LAMS[3], dtype=torch.float64)), ref)
    assert torch.equal(g(feats, torch.tensor([LAMS[3]], dtype=torch.float64)), ref)  # [1, N]


def test_normalized_beta_divides_by_any_positive_sum_and_falls_back_at_zero() -> None:
    """Sums below and above 1 are both normalised; when every Beta draw underflows to 0 (a tiny
    alpha), the weights are equal."""
    import numpy as np

    sums = []
    for s in range(8):
        seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(s)))
        b = np.random.default_rng(seed).beta(1.0, 1.0, 2)
        sums.append(float(b.sum()))
        assert sample_mix_lambdas(2, 1.0, torch.Generator().manual_seed(s)) == pytest.approx(
            b / b.sum(), abs=1e-15
        )
    assert min(sums) < 1 < max(sums)
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(25)))
    assert float(np.random.default_rng(seed).beta(1e-3, 1e-3, 2).sum()) == 0.0  # both draws underflow
    assert sample_mix_lambdas(2, 1e-3, torch.Generator().manual_seed(25)) == [0.5, 0.5]


def test_loss_length_errors_name_the_counts() -> None:
    logits, ys = torch.zeros(2, 3), [torch.zeros(2, dtype=torch.long)] * 2
    with pytest.raises(ValueError, match=r"^mix_ce: 2 target sets but 3 weights$"):
        mix_ce(logits, ys, [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match=r"^cosine_consistency: 2 sources but 1 weights$"):
        cosine_consistency(logits, [logits, logits], [1.0])
