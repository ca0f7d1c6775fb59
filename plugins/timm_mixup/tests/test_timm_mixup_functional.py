"""timm-mixup's functions against ``timm.data.Mixup`` itself on fixed seeds, and the plan against an
independent reading of the mixed batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mixhub_timm_mixup import MixupConfig, mix_inputs, sample, soft_targets, to_plan

from mixhub.defaults import mix_inputs as core_mix_inputs
from mixhub.defaults import mixed_cross_entropy

mixup_module = pytest.importorskip("timm.data.mixup")

B, C, H, W, NUM_CLASSES = 8, 3, 12, 10, 5

CASES = {
    "mixup": dict(mixup_alpha=0.8, cutmix_alpha=0.0),
    "cutmix": dict(mixup_alpha=0.0, cutmix_alpha=1.0),
    "switch": dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5),
    "minmax": dict(mixup_alpha=0.8, cutmix_minmax=(0.2, 0.8)),
    "no-correct": dict(mixup_alpha=0.0, cutmix_alpha=1.0, correct_lam=False),
    "prob": dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.5, switch_prob=0.7),
}


def _batch(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, H, W, generator=gen), torch.randint(0, NUM_CLASSES, (B,), generator=gen)


def _timm(kw: dict, mode: str, smoothing: float, x: torch.Tensor, y: torch.Tensor, seed: int):
    np.random.seed(seed)
    mix = mixup_module.Mixup(**kw, mode=mode, label_smoothing=smoothing, num_classes=NUM_CLASSES)
    return mix(x.clone(), y.clone())


def _ours(kw: dict, mode: str, smoothing: float, x: torch.Tensor, y: torch.Tensor, seed: int):
    cfg = MixupConfig(**kw, mode=mode)
    draw = sample(cfg, B, (H, W), np.random.RandomState(seed))
    return draw, mix_inputs(x, draw), soft_targets(y, NUM_CLASSES, draw, smoothing, dtype=x.dtype)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("case", list(CASES))
def test_equal_to_timm_on_fixed_seeds(case: str, mode: str) -> None:
    """Inputs and soft targets bitwise equal to timm's Mixup over 12 seeds (both kinds of draws,
    mixed and unmixed batches/samples, label smoothing on and off)."""
    kinds = set()
    for seed in range(12):
        x, y = _batch(seed)
        smoothing = 0.1 if seed % 2 else 0.0
        x_t, y_t = _timm(CASES[case], mode, smoothing, x, y, seed)
        draw, x_o, y_o = _ours(CASES[case], mode, smoothing, x, y, seed)
        assert torch.equal(x_o, x_t), (case, mode, seed)
        assert torch.equal(y_o, y_t), (case, mode, seed)
        kinds.update("cut" if b is not None else "mix" for b in draw.boxes)
        kinds.update("none" for lam in draw.lam_per_sample if lam == 1.0)
    expected = {"mixup": {"mix"}, "cutmix": {"cut"}, "no-correct": {"cut"}}.get(case, {"mix", "cut"})
    assert expected <= kinds  # the seeds exercise every kind of draw the case allows
    if case == "prob":
        assert "none" in kinds


def _box_area_lam(draw, i: int) -> float:
    y0, y1, x0, x1 = draw.boxes[i]
    return 1.0 - (y1 - y0) * (x1 - x0) / (H * W)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_plan_describes_the_mixed_batch(mode: str) -> None:
    """Partner B-1-i; lam is the anchor's share: for cut samples the share of pixels left
    outside the box (counted from the mixed images), for interpolated ones the weight that
    reproduces them; the core's generic mixer applied to the plan gives the same images."""
    cfg = MixupConfig(mixup_alpha=0.8, cutmix_alpha=1.0, mode=mode)
    x = torch.arange(B, dtype=torch.float32).reshape(B, 1, 1, 1).expand(B, C, H, W).contiguous() + 1
    seen_cut = seen_mix = False
    for seed in range(10):
        draw = sample(cfg, B, (H, W), np.random.RandomState(seed))
        plan = to_plan(draw, (H, W))
        assert torch.equal(plan.index, torch.arange(B - 1, -1, -1))
        mixed = mix_inputs(x, draw)
        for i in range(B):
            j = B - 1 - i
            own = (mixed[i] == x[i]).float().mean().item()
            if draw.boxes[i] is not None:
                seen_cut = True
                assert ((mixed[i] == x[i]) | (mixed[i] == x[j])).all()
                assert abs(own - plan.lam[i].item()) < 1e-6  # pasted area = 1 - lam (correct_lam)
                assert abs(own - _box_area_lam(draw, i)) < 1e-6
            elif plan.lam[i] < 1:
                seen_mix = True
                lam = (mixed[i, 0, 0, 0] - x[j, 0, 0, 0]) / (x[i, 0, 0, 0] - x[j, 0, 0, 0])
                assert abs(lam.item() - plan.lam[i].item()) < 1e-5
        torch.testing.assert_close(core_mix_inputs(x, plan), mixed, rtol=1e-6, atol=1e-6)
        if mode == "pair":
            assert torch.equal(plan.lam, plan.lam.flip(0))
    assert seen_cut and seen_mix


def test_cutmix_box_side_is_sqrt_one_minus_lam() -> None:
    """An independent computation of the unclipped box: sides int(H*sqrt(1-lam)), int(W*sqrt(1-lam))."""
    cfg = MixupConfig(mixup_alpha=0.0, cutmix_alpha=1.0, correct_lam=False)
    for seed in range(30):
        rng = np.random.RandomState(seed)
        draw = sample(cfg, B, (40, 40), rng)
        rng = np.random.RandomState(seed)
        rng.rand()  # the prob draw
        lam = rng.beta(1.0, 1.0)
        cy, cx = rng.randint(0, 40), rng.randint(0, 40)
        side = int(40 * np.sqrt(1 - lam))
        y0, y1, x0, x1 = draw.boxes[0]
        assert y0 == max(cy - side // 2, 0) and y1 == min(cy + (side + 1) // 2, 40)
        assert x0 == max(cx - side // 2, 0) and x1 == min(cx + (side + 1) // 2, 40)
        assert draw.lam == pytest.approx(lam)  # uncorrected


def test_default_loss_equals_soft_target_cross_entropy() -> None:
    """The core's plan-weighted CE with train.label_smoothing = timm's SoftTargetCrossEntropy on
    timm's smoothed mixed targets (so timm's recipe keeps its loss in mixhub)."""
    from timm.loss import SoftTargetCrossEntropy

    x, y = _batch(3)
    logits = torch.randn(B, NUM_CLASSES, generator=torch.Generator().manual_seed(1))
    for mode in ("batch", "elem"):
        draw, _, target = _ours(CASES["switch"], mode, 0.1, x, y, 5)
        plan = to_plan(draw, (H, W))
        plan.y_a, plan.y_b = y, y[plan.index]
        torch.testing.assert_close(
            mixed_cross_entropy(logits, plan, 0.1), SoftTargetCrossEntropy()(logits, target), rtol=1e-5, atol=1e-6
        )


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="even batch"):
        sample(MixupConfig(), 7, (4, 4), np.random.RandomState(0))
    with pytest.raises(ValueError, match="image inputs"):
        sample(MixupConfig(cutmix_alpha=1.0), 8, None, np.random.RandomState(0))
    with pytest.raises(ValueError, match="one of mixup_alpha"):
        MixupConfig(mixup_alpha=0.0)
    with pytest.raises(ValueError, match="cutmix_minmax"):
        MixupConfig(cutmix_minmax=(0.8, 0.2))
    assert MixupConfig(mixup_alpha=0.5, cutmix_minmax=(0.2, 0.8)).cutmix_alpha == 1.0  # as timm


def test_soft_targets_independent() -> None:
    """Smoothed one-hots mixed by lam, written out by hand."""
    y = torch.tensor([0, 1, 2, 3])
    draw = sample(MixupConfig(mixup_alpha=1.0), 4, None, np.random.RandomState(0))
    lam, s = draw.lam, 0.2
    t = soft_targets(y, 4, draw, s)
    onehot = F.one_hot(y, 4).float() * (1 - s) + s / 4
    torch.testing.assert_close(t, lam * onehot + (1 - lam) * onehot.flip(0))
    torch.testing.assert_close(t.sum(1), torch.ones(4))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cutmix_minmax": (0.5, 0.5)}, "cutmix_minmax must be (min, max) with 0 <= min < max <= 1, got (0.5, 0.5)"),
        ({"cutmix_minmax": (-0.1, 0.5)}, "cutmix_minmax must be (min, max) with 0 <= min < max <= 1, got (-0.1, 0.5)"),
        ({"cutmix_minmax": (0.2, 1.5)}, "cutmix_minmax must be (min, max) with 0 <= min < max <= 1, got (0.2, 1.5)"),
        ({"mixup_alpha": -1.0, "cutmix_alpha": 1.0}, "mixup_alpha and cutmix_alpha must be >= 0"),
        ({"mixup_alpha": 1.0, "cutmix_alpha": -1.0}, "mixup_alpha and cutmix_alpha must be >= 0"),
        ({"mixup_alpha": 0.0}, "one of mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax must be set"),
        ({"prob": 1.5}, "prob and switch_prob must lie in [0, 1]"),
        ({"prob": -0.1}, "prob and switch_prob must lie in [0, 1]"),
        ({"switch_prob": 1.01}, "prob and switch_prob must lie in [0, 1]"),
        ({"switch_prob": -0.5}, "prob and switch_prob must lie in [0, 1]"),
        ({"mode": "row"}, "mode must be batch, pair or elem, got 'row'"),
    ],
)
def test_config_errors_say_what_is_wrong(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        MixupConfig(**kwargs)
    assert str(info.value) == message


def test_config_bounds_are_inclusive() -> None:
    for kw in ({"cutmix_minmax": (0.0, 1.0)}, {"prob": 0.0}, {"prob": 1.0}, {"switch_prob": 0.0}, {"switch_prob": 1.0}):
        MixupConfig(**kw)
    with pytest.raises(ValueError) as info:
        sample(MixupConfig(cutmix_alpha=1.0), 8, None, np.random.RandomState(0))
    assert str(info.value) == "CutMix needs image inputs [B, C, H, W]"


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_draw_keeps_its_mode_and_the_plan_its_device(mode: str) -> None:
    draw = sample(MixupConfig(mixup_alpha=0.8, cutmix_alpha=1.0, mode=mode), B, (H, W), np.random.RandomState(1))
    assert draw.mode == mode
    plan = to_plan(draw, (H, W), device="meta")
    assert plan.index.device.type == "meta" and plan.lam.device.type == "meta"
    assert plan.lam.dtype == torch.float32 and plan.extras["timm_mixup"] is draw
    if mode != "batch":  # this seed cuts some pairs / samples: the mask is built on the device too
        assert plan.mask is not None and plan.mask.device.type == "meta"
    y = torch.randint(0, NUM_CLASSES, (B,))
    t = soft_targets(y.to("meta"), NUM_CLASSES, draw, 0.1)
    assert t.device.type == "meta" and t.shape == (B, NUM_CLASSES)
    t64 = soft_targets(y, NUM_CLASSES, draw, 0.1, dtype=torch.float64)
    assert t64.dtype == (torch.float32 if mode == "batch" else torch.float64)  # a Python-float lam in batch mode


def test_unmixed_inputs_and_targets_pass_through_untouched() -> None:
    """prob = 0: no sample is mixed; an infinite input stays as it is (no ``inf * 0``) and the
    targets are the plain one-hots (no smoothing by default)."""
    x, y = _batch(0)
    x[B - 1, 0, 0, 0] = float("inf")  # sample 0's partner
    for mode in ("batch", "elem"):
        draw = sample(MixupConfig(mixup_alpha=1.0, prob=0.0, mode=mode), B, (H, W), np.random.RandomState(0))
        assert torch.equal(mix_inputs(x, draw), x), mode
        assert torch.equal(soft_targets(y, NUM_CLASSES, draw), F.one_hot(y, NUM_CLASSES).float()), mode
    with pytest.raises(ValueError) as info:
        mix_inputs(x[:6], draw)
    assert str(info.value) == "draw is for a batch of 8, inputs have 6"


def test_without_a_generator_the_draws_come_from_numpys_global_state() -> None:
    cfg = MixupConfig(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem")
    np.random.seed(5)
    a = sample(cfg, B, (H, W))
    b = sample(cfg, B, (H, W), np.random.RandomState(5))
    assert a.boxes == b.boxes and np.array_equal(a.lam_per_sample, b.lam_per_sample)


@pytest.mark.parametrize("hw", [(12, 10), (10, 12)])
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_consecutive_draws_equal_timms_with_extreme_lams(mode: str, hw: tuple[int, int]) -> None:
    """One generator over 150 batches against timm's Mixup over the same global stream: CutMix
    with alpha 0.05 draws lam at or next to 0 and 1 (boxes of side 0 or 1 at the image's edges,
    lam exactly 1.0 with CutMix chosen), so the order of draws and every clipped box count."""
    h, w = hw
    kw = dict(mixup_alpha=0.05, cutmix_alpha=0.05, switch_prob=0.7)
    np.random.seed(11)
    timm_mix = mixup_module.Mixup(**kw, mode=mode, num_classes=NUM_CLASSES)
    rng = np.random.RandomState(11)
    cfg = MixupConfig(**kw, mode=mode)
    gen = torch.Generator().manual_seed(0)
    for step in range(150):
        x = torch.randn(B, C, h, w, generator=gen)
        y = torch.randint(0, NUM_CLASSES, (B,), generator=gen)
        draw = sample(cfg, B, (h, w), rng)
        x_t, y_t = timm_mix(x.clone(), y.clone())
        assert torch.equal(mix_inputs(x, draw), x_t), step
        assert torch.equal(soft_targets(y, NUM_CLASSES, draw, 0.1, dtype=x.dtype), y_t), step  # timm smooths by 0.1


class _Corner:
    """A generator whose integers are always the lowest allowed: boxes centred on the top-left corner."""

    def randint(self, low: int, high: int | None = None, size=None) -> int:
        return 0 if high is None else low


@pytest.mark.parametrize("hw", [(12, 10), (10, 12)])
def test_corner_boxes_with_a_side_of_zero_equal_timms(hw: tuple[int, int], monkeypatch) -> None:
    """lam = 0.992: the box's sides are 1 and 0 pixels (int(side * sqrt(0.008))); centred on the
    corner, its clipped extent and the corrected lam must be timm's ``cutmix_bbox_and_lam``."""
    from mixhub_timm_mixup.functional import _box

    monkeypatch.setattr(mixup_module.np.random, "randint", lambda low, high=None, size=None: 0 if high is None else low)
    for lam in (0.992, 0.9999, 0.5):
        (y0, y1, x0, x1), got = _box(MixupConfig(cutmix_alpha=1.0), lam, *hw, _Corner())
        (ty0, ty1, tx0, tx1), want = mixup_module.cutmix_bbox_and_lam((1, 1, *hw), lam)
        assert (y0, y1, x0, x1) == (ty0, ty1, tx0, tx1) and got == want, lam


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_plan_keeps_the_batch_lam_on_the_host(mode):
    """``lam_value``: timm's per-batch lam as a Python float in batch mode, ``None`` otherwise."""
    cfg = MixupConfig(mixup_alpha=0.8, cutmix_alpha=1.0, mode=mode)
    rng = np.random.RandomState(3)
    for _ in range(6):
        draw = sample(cfg, 8, (8, 8), rng)
        plan = to_plan(draw, (8, 8))
        if mode == "batch":
            assert isinstance(plan.lam_value, float) and plan.lam_value == float(draw.lam)
        else:
            assert plan.lam_value is None
