"""DualMix's colour jitter against torchvision's own ColorJitter operations with fixed parameters and order."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms as transforms  # the reference (core test extra)
import torchvision.transforms.functional as tvf
from mixhub_dualmix.functional import JITTER_OPS, augment, color_jitter, hsv_to_rgb, rgb_to_hsv

TV_OPS = {
    "brightness": tvf.adjust_brightness,
    "contrast": tvf.adjust_contrast,
    "saturation": tvf.adjust_saturation,
    "hue": tvf.adjust_hue,
}


def torchvision_jitter(img, factors, order):
    """One image through torchvision's functional ops in the given order (ColorJitter.forward)."""
    for k in order:
        op = JITTER_OPS[int(k)]
        if factors.get(op) is not None:
            img = TV_OPS[op](img, float(factors[op]))
    return img


def images(b, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, 7, 9, generator=g)
    x[0] = x[0, :1]  # a grey image (hue undefined, saturation 0)
    x[1, :, :2] = 1.0  # saturated pixels: brightness > 1 must clamp
    return x


@pytest.mark.parametrize("c", [3, 1])
def test_every_order_and_factor_matches_torchvision(c):
    b = 24
    x = images(b, c)
    g = torch.Generator().manual_seed(1)
    orders = torch.stack([torch.randperm(4, generator=g) for _ in range(b)])
    factors = {
        "brightness": 0.4 + 1.2 * torch.rand(b, generator=g),
        "contrast": 0.4 + 1.2 * torch.rand(b, generator=g),
        "saturation": 0.4 + 1.2 * torch.rand(b, generator=g),
        "hue": -0.5 + torch.rand(b, generator=g),
    }
    got = color_jitter(x, factors, orders)
    for i in range(b):
        expect = torchvision_jitter(x[i], {k: v[i] for k, v in factors.items()}, orders[i])
        assert torch.allclose(got[i], expect, atol=2e-6), (i, orders[i].tolist())
    assert float(got.min()) >= 0.0 and float(got.max()) <= 1.0
    # the order matters: the same factors in the reverse order give another image
    rev = color_jitter(x, factors, orders.flip(1))
    assert not torch.allclose(rev, got, atol=1e-3)


def test_skipped_operations_and_one_op_at_a_time():
    x = images(5)
    f = torch.tensor([0.3, 0.9, 1.0, 1.4, 1.8])
    order = torch.arange(4).expand(5, 4)
    for op in ("brightness", "contrast", "saturation"):
        got = color_jitter(x, {op: f}, order)
        for i in range(5):
            assert torch.allclose(got[i], TV_OPS[op](x[i], float(f[i])), atol=2e-6)
    hue = torch.tensor([-0.5, -0.2, 0.0, 0.13, 0.5])
    got = color_jitter(x, {"hue": hue}, order)
    for i in range(5):
        assert torch.allclose(got[i], tvf.adjust_hue(x[i], float(hue[i])), atol=2e-6)
    assert torch.equal(color_jitter(x, {}, order), x)


def test_hsv_round_trip_and_known_values():
    x = images(6)
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-6)
    rgb = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0], [0.5, 0.5, 0.5]]).reshape(5, 3, 1, 1)
    hsv = rgb_to_hsv(rgb).reshape(5, 3)
    assert torch.allclose(hsv[:, 0], torch.tensor([0.0, 1 / 3, 2 / 3, 1 / 6, 0.0]), atol=1e-6)
    assert torch.allclose(hsv[:, 1], torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0]))


@pytest.mark.parametrize("per_sample", [True, False])
def test_augment_applies_torchvision_jitter_with_the_drawn_parameters(per_sample):
    x = images(16)
    out, params = augment(
        x,
        torch.Generator().manual_seed(3),
        crop_scale=(1, 1),
        crop_ratio=(1, 1),
        hflip=False,
        jitter=(0.4, 0.4, 0.4, 0.1),
        jitter_p=0.6,
        grayscale_p=0.0,
        per_sample=per_sample,
        return_params=True,
    )
    order, jit = params["order"], params["jitter"]
    assert 0 < int(jit.sum()) < 16 or not per_sample
    for f in params["factors"].values():
        assert f is not None and f.shape == (16,)
    lo_hi = {"brightness": (0.6, 1.4), "contrast": (0.6, 1.4), "saturation": (0.6, 1.4), "hue": (-0.1, 0.1)}
    for op, (lo, hi) in lo_hi.items():
        assert bool(((params["factors"][op] >= lo) & (params["factors"][op] <= hi)).all())
    for i in range(16):
        factors = {k: v[i] for k, v in params["factors"].items()}
        expect = torchvision_jitter(x[i], factors, order[i]) if bool(jit[i]) else x[i]
        assert torch.allclose(out[i], expect, atol=2e-5)
    if per_sample:
        assert len({tuple(o.tolist()) for o in order}) > 1  # orders are drawn per sample
    else:
        assert bool((order == order[0]).all())


def test_matches_the_torchvision_colorjitter_module_with_its_own_draws():
    """torchvision's ColorJitter module on one image, with its parameters fixed through get_params."""
    x = images(3)[2]
    jitter = transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)
    torch.manual_seed(7)
    fn_idx, b, c, s, h = jitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
    torch.manual_seed(7)
    expect = jitter(x)
    factors = {k: torch.tensor([v]) for k, v in zip(JITTER_OPS, (b, c, s, h))}
    got = color_jitter(x[None], factors, fn_idx[None])
    assert torch.allclose(got[0], expect, atol=2e-6)
