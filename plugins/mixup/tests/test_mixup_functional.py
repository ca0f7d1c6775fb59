import numpy as np
import pytest
import torch
from mixhub_mixup import (
    cutmix_batch,
    cutmix_box,
    cutmix_plan,
    mixup_batch,
    mixup_plan,
    mixup_target,
    sample_lam,
)

from mixhub import MixPlan, mixed_cross_entropy


def test_sample_lam_batch_and_sample():
    g = torch.Generator().manual_seed(0)
    lam = sample_lam(1.0, 8, generator=g)
    assert lam.shape == (8,) and torch.all(lam == lam[0]) and 0 <= float(lam[0]) <= 1
    lam_s = sample_lam(0.4, 1000, per_sample=True, generator=g)
    assert lam_s.unique().numel() > 900 and bool(((lam_s >= 0) & (lam_s <= 1)).all())
    # Beta(0.4, 0.4) has mean 0.5 and variance 1/(4*(2*0.4+1)) = 0.1389
    assert float(lam_s.mean()) == pytest.approx(0.5, abs=0.04)
    assert float(lam_s.var()) == pytest.approx(1 / (4 * 1.8), abs=0.02)
    assert torch.all(sample_lam(0.0, 4) == 1)


def test_mixup_batch_matches_formula():
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 4, 4), torch.tensor([0, 1, 2, 3, 4, 5])
    idx = torch.tensor([5, 4, 3, 2, 1, 0])
    xm, plan = mixup_batch(x, y, lam=0.3, index=idx)
    assert torch.allclose(xm, 0.3 * x + 0.7 * x[idx])
    assert torch.equal(plan.y_b, y[idx]) and plan.batch_lam == pytest.approx(0.3)


def test_mixup_is_seeded():
    a = mixup_plan(16, 1.0, generator=torch.Generator().manual_seed(3))
    b = mixup_plan(16, 1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.index, b.index) and torch.equal(a.lam, b.lam)


def test_cutmix_area_lam_and_mask():
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 16, 16), torch.arange(4)
    xm, plan = cutmix_batch(x, y, lam=0.75, index=torch.tensor([1, 2, 3, 0]), generator=torch.Generator().manual_seed(1))
    keep = plan.mask
    assert keep.shape == (4, 1, 16, 16)
    assert torch.allclose(plan.lam, keep.mean((1, 2, 3)))
    expect = keep * x + (1 - keep) * x[[1, 2, 3, 0]]
    assert torch.allclose(xm, expect)
    # the box is the same for every sample in per-batch mode
    assert torch.equal(keep[0], keep[3])


def test_cutmix_box_area():
    rng = np.random.default_rng(0)
    y0, y1, x0, x1 = cutmix_box(32, 32, 0.75, rng)
    area = (y1 - y0) * (x1 - x0)
    assert area <= 0.25 * 32 * 32 + 1


def test_cutmix_per_sample_boxes_differ():
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8)
    _, plan = cutmix_batch(x, y, 1.0, per_sample=True, generator=torch.Generator().manual_seed(0))
    assert plan.lam.unique().numel() > 1


def test_cutmix_needs_images():
    with pytest.raises(ValueError, match="image inputs"):
        cutmix_batch(torch.randn(4, 5), torch.arange(4))


def test_soft_target_loss_equals_plan_loss():
    torch.manual_seed(0)
    logits = torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 3, 0])
    _, plan = mixup_batch(torch.randn(5, 2), y, lam=0.6, index=torch.tensor([1, 2, 3, 4, 0]))
    soft = mixup_target(plan, 4)
    dense = -(soft * logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(dense, mixed_cross_entropy(logits, plan), atol=1e-6)
    assert torch.allclose(mixup_target(plan, 4, 0.1).sum(1), torch.ones(5))


def test_labels_follow_inputs_under_random_plans():
    """Property: the partner label of each row is the label of the row its input was mixed with,
    read back from one-hot inputs (not from the plan), and the partners form a permutation."""
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        b = int(torch.randint(2, 12, (1,), generator=g))
        x = torch.eye(b)
        y = torch.randint(0, 4, (b,), generator=g)
        xm, plan = mixup_batch(x, y, 1.0, per_sample=True, generator=g)
        assert sorted(plan.index.tolist()) == list(range(b))
        assert torch.equal(plan.y_a, y)
        for i in range(b):
            lam = float(plan.lam[i])
            row = xm[i].clone()
            row[i] -= lam
            assert float(row.sum()) == pytest.approx(1 - lam, abs=1e-6)
            if lam < 1 - 1e-4:
                j = int(row.argmax())
                assert float(row[j]) == pytest.approx(1 - lam, abs=1e-6)
                assert int(plan.y_b[i]) == int(y[j])
        assert isinstance(plan, MixPlan)


def _official_box(h, w, lam, rng):
    """CutMix's box as the paper's code draws it: side sqrt(1 - lam) of the image, centre uniform, clipped."""
    cut = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * cut), int(w * cut)
    cy, cx = rng.integers(h), rng.integers(w)
    return (int(np.clip(cy - cut_h // 2, 0, h)), int(np.clip(cy + cut_h // 2, 0, h)),
            int(np.clip(cx - cut_w // 2, 0, w)), int(np.clip(cx + cut_w // 2, 0, w)))


@pytest.mark.parametrize("lam", [0.1, 0.3, 0.5, 0.75, 0.9])
def test_cutmix_box_matches_an_independent_draw_and_its_area_is_one_minus_lam(lam):
    h, w = 32, 24
    r = np.sqrt(1 - lam)
    unclipped = 0
    for seed in range(60):
        got = cutmix_box(h, w, lam, np.random.default_rng(seed))
        assert got == _official_box(h, w, lam, np.random.default_rng(seed)), (seed, got)
        y0, y1, x0, x1 = got
        area = (y1 - y0) * (x1 - x0)
        assert area <= (1 - lam) * h * w + 1e-9
        if y0 > 0 and x0 > 0 and y1 < h and x1 < w:  # not clipped: only the integer rounding of each side
            unclipped += 1
            assert (y1 - y0) > h * r - 2 and (x1 - x0) > w * r - 2, (seed, got)
            assert area >= (h * r - 2) * (w * r - 2)
    assert unclipped >= (5 if lam >= 0.5 else 0)  # large boxes are almost always clipped


@pytest.mark.parametrize("per_sample", [False, True])
def test_cutmix_batch_pastes_the_partner_over_an_area_of_one_minus_lam(per_sample):
    """The pasted region of every sample equals the independently drawn box, filled with the partner."""
    b, h, w, lam = 6, 20, 20, 0.6
    x = torch.randn(b, 3, h, w)
    idx = torch.tensor([1, 2, 3, 4, 5, 0])
    xm, plan = cutmix_batch(x, torch.arange(b), lam=lam, index=idx, per_sample=per_sample, generator=torch.Generator().manual_seed(7))
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(7)))
    rng = np.random.default_rng(seed)
    boxes = [_official_box(h, w, lam, rng) for _ in range(b if per_sample else 1)]
    for i in range(b):
        y0, y1, x0, x1 = boxes[i if per_sample else 0]
        pasted = torch.zeros(h, w, dtype=torch.bool)
        pasted[y0:y1, x0:x1] = True
        assert torch.equal(plan.mask[i, 0] == 0, pasted), i
        assert torch.equal(xm[i][:, pasted], x[idx[i]][:, pasted]) and torch.equal(xm[i][:, ~pasted], x[i][:, ~pasted])
        assert float(plan.lam[i]) == pytest.approx(1 - pasted.float().mean().item())
        assert float(pasted.float().mean()) <= 1 - lam + 1e-6


def test_devices_and_dtypes_are_honoured():
    """Everything lands on the requested device (the meta device shows it without a GPU), lam in float32."""
    for plan in (mixup_plan(4, device="meta", generator=torch.Generator().manual_seed(0)),
                 mixup_plan(4, lam=0.3, device="meta"), mixup_plan(4, 0.0, index=torch.tensor([1, 0, 3, 2]), device="meta"),
                 cutmix_plan(4, 6, 6, device="meta", generator=torch.Generator().manual_seed(0)),
                 cutmix_plan(4, 6, 6, lam=0.5, per_sample=True, device="meta")):
        assert plan.index.device.type == "meta" and plan.lam.device.type == "meta" and plan.lam.dtype == torch.float32
    assert cutmix_plan(2, 6, 6, lam=0.5, device="meta").mask.device.type == "meta"
    x, y = torch.zeros(4, 3, 6, 6, device="meta"), torch.zeros(4, dtype=torch.long, device="meta")
    for fn in (mixup_batch, cutmix_batch):
        _, plan = fn(x, y, generator=torch.Generator().manual_seed(0))
        assert plan.index.device.type == "meta" and plan.lam.device.type == "meta"
    assert sample_lam(0.0, 3, device="meta").device.type == "meta"
    assert sample_lam(1.0, 3, device="meta", generator=torch.Generator().manual_seed(0)).device.type == "meta"
    assert sample_lam(1.0, 5, per_sample=True).dtype == torch.float32
    lam64 = torch.tensor([0.25, 0.5], dtype=torch.float64)
    assert mixup_plan(2, lam=lam64).lam.dtype == torch.float32
    assert cutmix_plan(2, 4, 4, lam=lam64, per_sample=True).lam.dtype == torch.float32


def test_defaults_alpha_one_per_batch_on_cpu():
    def same(a, b):
        return torch.equal(a.index, b.index) and torch.equal(a.lam, b.lam)

    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert same(mixup_plan(8, generator=g()), mixup_plan(8, 1.0, per_sample=False, generator=g(), device="cpu"))
    assert same(cutmix_plan(8, 6, 6, generator=g()), cutmix_plan(8, 6, 6, 1.0, per_sample=False, generator=g(), device="cpu"))
    x, y = torch.randn(8, 3, 6, 6), torch.arange(8)
    assert same(mixup_batch(x, y, generator=g())[1], mixup_batch(x, y, 1.0, per_sample=False, generator=g())[1])
    assert same(cutmix_batch(x, y, generator=g())[1], cutmix_batch(x, y, 1.0, per_sample=False, generator=g())[1])
    assert mixup_plan(8, generator=g()).lam.unique().numel() == 1


def test_alpha_zero_means_no_mixing_in_the_batch_functions():
    x, y = torch.randn(4, 3, 6, 6), torch.arange(4)
    xm, plan = mixup_batch(x, y, 0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plan.lam, torch.ones(4)) and torch.equal(xm, x)
    xc, cplan = cutmix_batch(x, y, 0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cplan.mask, torch.ones(4, 1, 6, 6)) and torch.equal(xc, x)


def test_per_sample_is_passed_through_and_seeded():
    x, y = torch.randn(8, 3, 6, 6), torch.arange(8)
    for fn in (mixup_batch, cutmix_batch):
        _, a = fn(x, y, 1.0, per_sample=True, generator=torch.Generator().manual_seed(3))
        _, b = fn(x, y, 1.0, per_sample=True, generator=torch.Generator().manual_seed(3))
        assert a.lam.unique().numel() > 1, fn.__name__
        assert torch.equal(a.index, b.index) and torch.equal(a.lam, b.lam), fn.__name__
    c1 = cutmix_plan(8, 6, 6, 1.0, per_sample=True, generator=torch.Generator().manual_seed(3))
    c2 = cutmix_plan(8, 6, 6, 1.0, per_sample=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(c1.mask, c2.mask) and torch.equal(c1.index, c2.index)


def test_cutmix_per_sample_boxes_follow_each_samples_own_lam():
    lam = torch.tensor([0.9, 0.3, 0.6, 0.1])
    h = w = 16
    plan = cutmix_plan(4, h, w, lam=lam, index=torch.tensor([1, 2, 3, 0]), per_sample=True, generator=torch.Generator().manual_seed(4))
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(4)))
    rng = np.random.default_rng(seed)
    for i in range(4):
        y0, y1, x0, x1 = _official_box(h, w, float(lam[i]), rng)
        expect = torch.ones(h, w)
        expect[y0:y1, x0:x1] = 0
        assert torch.equal(plan.mask[i, 0], expect), i
    one = cutmix_plan(1, 8, 8, lam=0.5, generator=torch.Generator().manual_seed(0))  # a batch of one
    assert one.mask.shape == (1, 1, 8, 8) and float(one.lam[0]) < 1.0


def test_mixup_target_has_num_classes_columns():
    _, plan = mixup_batch(torch.randn(3, 2), torch.tensor([0, 1, 1]), lam=0.75, index=torch.tensor([1, 2, 0]))
    t = mixup_target(plan, 5, smoothing=0.1)
    assert t.shape == (3, 5)
    expect = torch.tensor([[0.75, 0.25, 0, 0, 0], [0, 1.0, 0, 0, 0], [0.25, 0.75, 0, 0, 0]]) * 0.9 + 0.02
    assert torch.allclose(t, expect)


def test_cutmix_per_sample_draws_one_lam_per_sample_then_one_box_each():
    """Independent replay of the draws: lam_i ~ Beta(a, a) per sample, then a box of side sqrt(1 - lam_i)."""
    b, h, w, a = 6, 16, 16, 1.0
    plan = cutmix_plan(b, h, w, a, index=torch.arange(b), per_sample=True, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    lams = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=g))).beta(a, a, size=b).astype(np.float32)
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=g)))
    for i in range(b):
        y0, y1, x0, x1 = _official_box(h, w, float(lams[i]), rng)
        expect = torch.ones(h, w)
        expect[y0:y1, x0:x1] = 0
        assert torch.equal(plan.mask[i, 0], expect), i


def test_plans_keep_the_batch_lam_on_the_host():
    """``lam_value``: the per-batch lam as a Python float (losses read it without a device read);
    ``None`` for per-sample lams."""
    assert mixup_plan(4, lam=0.3).lam_value == 0.3
    plan = mixup_plan(4, 1.0, generator=torch.Generator().manual_seed(5))
    assert plan.lam_value == float(plan.lam[0]) and 0 < plan.lam_value < 1
    assert mixup_plan(4, 1.0, per_sample=True, generator=torch.Generator().manual_seed(5)).lam_value is None
    for lam in (0.7, 0.35):
        cut = cutmix_plan(4, 8, 6, lam=lam, generator=torch.Generator().manual_seed(6))
        keep = float(cut.mask[0].sum()) / (8 * 6)  # the anchor's share of the image, in double
        assert cut.lam_value == pytest.approx(keep, abs=1e-12) and keep < 1
        assert cut.lam_value == pytest.approx(float(cut.lam[0]), abs=1e-6)
    assert cutmix_plan(4, 8, 6, 1.0, per_sample=True, generator=torch.Generator().manual_seed(6)).lam_value is None


def test_sample_lam_uses_the_generator():
    a = sample_lam(1.0, 4, per_sample=True, generator=torch.Generator().manual_seed(7))
    b = sample_lam(1.0, 4, per_sample=True, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and len(set(a.tolist())) == 4


def test_no_mixing_lams_are_float32_ones():
    for per_sample in (False, True):
        lam = sample_lam(0.0, 3, per_sample=per_sample)
        assert lam.dtype == torch.float32 and torch.equal(lam, torch.ones(3))
