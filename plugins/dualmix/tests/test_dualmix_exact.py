"""DualMix functional API, exactly: augment's draws replayed by hand, dtypes, devices, messages.

``augment`` draws, in this order, from its generator: the crop's area share, its log aspect
ratio, its centre (x, then y), the flip, whether to jitter, the four jitter factors, the jitter
order and the grayscale decision (one draw per sample, or one per call). The tests replay that
stream and build the expected crop (a RandomResizedCrop box as an affine map of the image's
[-1, 1] coordinates) and colour parameters by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mixhub_dualmix.functional import (
    GRAY_WEIGHTS,
    adapted_label_weight,
    adpmix,
    augment,
    beta_sample,
    classifier_norm_ratio,
    color_jitter,
    enmix,
    one_hot,
    pair_old_with_stream,
    rgb_to_hsv,
    soft_cross_entropy,
)


def _replay(seed, n, hflip=True):
    g = torch.Generator().manual_seed(seed)
    names = ["area", "logr", "cx", "cy"] + (["flip"] if hflip else []) + ["jit", "fb", "fc", "fs", "fh"]
    u = {k: torch.rand(n, generator=g) for k in names}
    u["order"] = torch.rand(n, 4, generator=g)
    u["gray"] = torch.rand(n, generator=g)
    return u


def _expected_crop(u, b, scale, ratio, hflip=True):
    """theta [b, 2, 3]: the crop box (area share, aspect ratio, centre inside the image)."""
    area = scale[0] + (scale[1] - scale[0]) * u["area"]
    aspect = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u["logr"])
    width = torch.sqrt(area * aspect).clamp(max=1.0)  # shares of the image's width and height
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    centre_x = (2 * u["cx"] - 1) * (1 - width)  # the box never leaves the image
    centre_y = (2 * u["cy"] - 1) * (1 - height)
    mirror = (u["flip"] < 0.5) if hflip else torch.zeros_like(width, dtype=torch.bool)
    theta = torch.zeros(len(area), 2, 3)
    theta[:, 0, 0] = torch.where(mirror, -width, width)
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = centre_y
    return theta.expand(b, -1, -1) if len(area) == 1 else theta


def _resample(x, theta):
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


@pytest.mark.parametrize("per_sample, hflip", [(True, True), (False, True), (True, False)])
def test_augment_crop_is_the_replayed_random_resized_crop(per_sample, hflip):
    x = torch.rand(6, 3, 10, 14, generator=torch.Generator().manual_seed(0))
    scale, ratio = (0.3, 0.8), (0.5, 1.5)
    out = augment(x, torch.Generator().manual_seed(4), crop_scale=scale, crop_ratio=ratio, hflip=hflip,
                  jitter=(0, 0, 0, 0), grayscale_p=0.0, per_sample=per_sample)
    u = _replay(4, 6 if per_sample else 1, hflip)
    theta = _expected_crop(u, 6, scale, ratio, hflip)
    assert torch.allclose(out, _resample(x, theta), atol=1e-6)
    # the box's area and aspect follow the draws where the box fits the image
    w, h = theta[:, 0, 0].abs(), theta[:, 1, 1]
    fits = (w < 1) & (h < 1)
    assert bool(fits.any())
    area = scale[0] + (scale[1] - scale[0]) * u["area"].expand(6)
    assert torch.allclose((w * h)[fits], area[fits], atol=1e-6)


def test_augment_colour_parameters_are_the_replayed_draws():
    x = torch.rand(12, 3, 5, 6, generator=torch.Generator().manual_seed(1))
    mean, std = (0.4, 0.5, 0.3), (0.2, 0.25, 0.3)
    xn = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    jitter = (1.5, 0.3, 0.2, 0.05)  # brightness > 1: its lower bound is clipped at 0
    out, params = augment(xn, torch.Generator().manual_seed(6), crop_scale=(0.5, 0.9), jitter=jitter,
                          jitter_p=0.6, grayscale_p=0.3, mean=mean, std=std, return_params=True)
    u = _replay(6, 12)
    want = {
        "brightness": 0.0 + (2.5 - 0.0) * u["fb"],
        "contrast": 0.7 + (1.3 - 0.7) * u["fc"],
        "saturation": 0.8 + (1.2 - 0.8) * u["fs"],
        "hue": -0.05 + (0.05 + 0.05) * u["fh"],
    }
    assert params["factors"].keys() == want.keys()
    for op, f in want.items():
        assert torch.allclose(params["factors"][op], f, atol=1e-7), op
    assert torch.equal(params["jitter"], u["jit"] < 0.6) and torch.equal(params["gray"], u["gray"] < 0.3)
    assert torch.equal(params["order"], u["order"].argsort(dim=1))
    assert 0 < int(params["jitter"].sum()) < 12 and 0 < int(params["gray"].sum()) < 12
    # the output: crop, then (in pixel space) jitter on the drawn rows, then grayscale
    m, s = torch.tensor(mean).reshape(1, 3, 1, 1), torch.tensor(std).reshape(1, 3, 1, 1)
    pix = _resample(xn, _expected_crop(u, 12, (0.5, 0.9), (3 / 4, 4 / 3))) * s + m
    rows = params["jitter"]
    pix[rows] = color_jitter(pix[rows].clamp(0, 1), {k: v[rows] for k, v in want.items()}, params["order"][rows])
    gray = (pix * torch.tensor(GRAY_WEIGHTS).reshape(1, 3, 1, 1)).sum(1, keepdim=True).expand(-1, 3, -1, -1)
    pix = torch.where(params["gray"].reshape(-1, 1, 1, 1), gray, pix)
    assert torch.allclose(out, (pix - m) / s, atol=1e-5)


def test_augment_zero_strengths_skip_their_operations():
    x = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(2))
    for k, op in enumerate(("brightness", "contrast", "saturation", "hue")):
        jitter = [0.0] * 4
        jitter[k] = 0.3
        _, params = augment(x, torch.Generator().manual_seed(0), jitter=tuple(jitter), return_params=True)
        assert [name for name, f in params["factors"].items() if f is not None] == [op]


def test_augment_rejects_non_images_and_passes_empty_batches():
    with pytest.raises(ValueError, match=r"^augment needs images \[B, C, H, W\], got shape \(3, 4, 4\)$"):
        augment(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match=r"^color_jitter needs images \[B, C, H, W\], got shape \(4, 4\)$"):
        color_jitter(torch.zeros(4, 4), {}, torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"^color_jitter: order must have shape \[2, 4\], got \(2, 3\)$"):
        color_jitter(torch.zeros(2, 3, 4, 4), {}, torch.zeros(2, 3))
    empty = torch.zeros(0, 3, 4, 4)
    out, params = augment(empty, return_params=True)
    assert out.shape == (0, 3, 4, 4) and params == {} and out is not empty
    assert augment(empty).shape == (0, 3, 4, 4)


# ----------------------------------------------------------------------------- helpers
def test_beta_sample_is_the_numpy_beta_seeded_from_the_generator():
    d = beta_sample(0.4, 5, torch.Generator().manual_seed(3))
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(3)))
    want = torch.from_numpy(np.random.default_rng(seed).beta(0.4, 0.4, size=5).astype(np.float32))
    assert d.dtype == torch.float32 and torch.equal(d, want)
    assert beta_sample(0.2).shape == (1,)  # one draw by default
    assert torch.equal(beta_sample(-1.0, 2), torch.ones(2))


def test_one_hot_and_soft_cross_entropy_edges():
    assert torch.equal(one_hot(torch.tensor([2, 0]), 3), torch.tensor([[0.0, 0, 1], [1, 0, 0]]))
    dense = torch.tensor([[0.25, 0.75]], dtype=torch.float64)
    assert one_hot(dense, 2).dtype == torch.float32 and torch.equal(one_hot(dense, 2), dense.float())
    z = torch.zeros(0, 3, requires_grad=True)
    loss = soft_cross_entropy(z, torch.zeros(0, 3))
    assert loss.shape == () and float(loss.detach()) == 0.0 and loss.requires_grad


def test_adapted_label_weight_defaults_and_device():
    assert float(adapted_label_weight(0.6, 2.5)) == pytest.approx(0.6 + 0.05 * 2.5)  # kappa 2, tau 0.5, delta 0.05
    assert float(adapted_label_weight(0.5, 2.5)) == pytest.approx(0.5)  # tau is strict
    assert float(adapted_label_weight(0.6, 2.0)) == pytest.approx(0.6)  # kappa is strict
    assert adapted_label_weight(torch.tensor([0.6], dtype=torch.float64), 3.0).dtype == torch.float32
    assert adapted_label_weight(torch.zeros(2, device="meta"), torch.zeros(2)).device.type == "meta"


# ----------------------------------------------------------------------------- EnMix
@pytest.mark.parametrize("per_sample", [False, True])
def test_enmix_default_draws_are_a_permutation_and_beta_02(per_sample):
    x = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([0, 2, 1, 2, 0])  # class ids: three classes (max + 1)
    xm, ym = enmix(x, ids, generator=torch.Generator().manual_seed(8), per_sample=per_sample)
    g = torch.Generator().manual_seed(8)
    index = torch.randperm(5, generator=g)
    lam = beta_sample(0.2, 5 if per_sample else 1, g).expand(5)
    y = torch.eye(3)[ids]
    assert torch.allclose(xm, lam[:, None, None] * x + (1 - lam[:, None, None]) * x[index], atol=1e-6)
    assert ym.shape == (5, 3) and torch.allclose(ym, lam[:, None] * y + (1 - lam[:, None]) * y[index], atol=1e-6)
    if per_sample:
        assert len(set(lam.tolist())) == 5


def test_enmix_empty_lam_shape_and_device():
    xm, ym = enmix(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    assert xm.shape == (0, 2) and ym.shape == (0, 1)
    xm, ym = enmix(torch.zeros(0, 2), torch.zeros(0, 4))
    assert ym.shape == (0, 4)
    with pytest.raises(ValueError, match=r"^lam must be a scalar or have shape \[3\], got \(2,\)$"):
        enmix(torch.zeros(3, 2), torch.eye(3), lam=torch.tensor([0.1, 0.2]))
    x = torch.zeros(3, 2, device="meta")
    xm, ym = enmix(x, torch.eye(3, device="meta"), lam=torch.tensor([0.1, 0.2, 0.3]), index=torch.tensor([2, 0, 1]))
    assert xm.device.type == ym.device.type == "meta"  # a host lam and index follow the inputs
    xm, ym = enmix(torch.ones(2, 1, dtype=torch.float64), torch.eye(2), lam=torch.tensor([0.25, 0.5], dtype=torch.float64),
                   index=torch.tensor([1, 0]))
    assert xm.dtype == torch.float64 and ym.dtype == torch.float32


# ----------------------------------------------------------------------------- AdpMix
W4 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.5]])


@pytest.mark.parametrize("per_sample", [False, True])
def test_adpmix_default_mu_is_beta_02_and_default_gate(per_sample):
    g = torch.Generator().manual_seed(1)
    xo, xn = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    yo, yn = torch.tensor([0, 1, 0, 1, 0, 1]), torch.tensor([2, 3, 3, 2, 2, 3])
    x, y, mu_y, info = adpmix(xo, yo, xn, yn, W4, generator=torch.Generator().manual_seed(5), per_sample=per_sample,
                              return_info=True)
    mu = beta_sample(0.2, 6 if per_sample else 1, torch.Generator().manual_seed(5)).expand(6)
    r = W4.norm(dim=1)[yn] / W4.norm(dim=1)[yo]
    gate = (r > 2.0) & (mu > 0.5)
    want = torch.where(gate, (mu + 0.05 * r).clamp(max=1.0), mu)
    assert torch.equal(info["mu_x"], mu) and torch.equal(info["gate"], gate) and torch.equal(info["r"], r)
    assert torch.allclose(mu_y, want) and torch.allclose(x, mu[:, None] * xo + (1 - mu[:, None]) * xn)
    assert torch.allclose(y, want[:, None] * torch.eye(4)[yo] + (1 - want[:, None]) * torch.eye(4)[yn])


def test_adpmix_passes_its_gate_and_group_options_on():
    xo, xn = torch.ones(2, 1), torch.zeros(2, 1)
    yo, yn = torch.tensor([0, 1]), torch.tensor([2, 3])
    _, _, w, info = adpmix(xo, yo, xn, yn, W4, mu_x=0.6, kappa=0.4, tau=0.55, delta=0.1, return_info=True)
    assert torch.allclose(w, torch.tensor([0.9, 0.65])) and info["gate"].tolist() == [True, True]
    _, _, w, info = adpmix(xo, yo, xn, yn, W4, mu_x=0.6, norm_ratio="group", old_classes=[0], new_classes=[2],
                           kappa=2.5, return_info=True)
    assert torch.allclose(info["r"], torch.tensor([3.0, 3.0])) and torch.allclose(w, torch.tensor([0.75, 0.75]))


def test_adpmix_errors_and_empty_batches():
    xo, yo = torch.zeros(2, 1), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"^adpmix: x_old and x_new must pair up row by row, got 2 and 3$"):
        adpmix(xo, yo, torch.zeros(3, 1), torch.tensor([2, 3, 3]), W4)
    with pytest.raises(ValueError, match=r"^y_old: class ids must lie in \[0, 4\) \(the classifier's rows\), got \[-1, 1\]$"):
        adpmix(xo, torch.tensor([-1, 1]), xo, yo, W4)
    with pytest.raises(ValueError, match=r"^y_new: class ids must lie in \[0, 4\) \(the classifier's rows\), got \[2, 4\]$"):
        adpmix(xo, yo, xo, torch.tensor([2, 4]), W4)
    x, y, w, info = adpmix(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), torch.zeros(0, 3),
                           torch.zeros(0, dtype=torch.long), W4, return_info=True)
    assert x.shape == (0, 3) and y.shape == (0, 4) and w.shape == (0,)
    assert info["r"].shape == info["mu_x"].shape == (0,) and info["gate"].dtype == torch.bool
    assert info["gate"].shape == (0,)
    out = adpmix(torch.zeros(0, 3, device="meta"), torch.zeros(0, dtype=torch.long), torch.zeros(0, 3, device="meta"),
                 torch.zeros(0, dtype=torch.long), W4)
    assert len(out) == 3 and all(t.device.type == "meta" for t in out)


def test_classifier_norm_ratio_modes_and_errors():
    r = classifier_norm_ratio(W4.double(), torch.eye(4)[[0, 1]], torch.tensor([2, 3]))  # one-hot rows read by argmax
    assert r.dtype == torch.float32 and torch.allclose(r, torch.tensor([3.0, 0.5]))
    r = classifier_norm_ratio(W4, torch.tensor([0, 1, 1]), torch.tensor([2, 3, 2]), mode="group",
                              old_classes=torch.tensor([0, 1]), new_classes=[2, 3])
    assert r.shape == (3,) and torch.allclose(r, torch.full((3,), 1.75))
    r[0] = 0.0  # its own storage, not a view of one value
    assert float(r[1]) == pytest.approx(1.75)
    msg = r"^norm_ratio='group' needs non-empty old_classes and new_classes$"
    for old, new in ((None, [2]), ([0], None), ([], [2]), ([0], [])):
        with pytest.raises(ValueError, match=msg):
            classifier_norm_ratio(W4, torch.tensor([0]), torch.tensor([2]), mode="group", old_classes=old, new_classes=new)
    with pytest.raises(ValueError, match=r"^norm_ratio mode must be 'pair' or 'group', got 'mean'$"):
        classifier_norm_ratio(W4, torch.tensor([0]), torch.tensor([2]), mode="mean")
    with pytest.raises(ValueError, match=r"^y_new: class ids"):
        classifier_norm_ratio(W4, torch.tensor([0]), torch.tensor([7]))
    assert classifier_norm_ratio(W4, torch.tensor([0]), torch.tensor([3]), check_ids=False).tolist() == [0.5]


def test_pair_old_with_stream_draws_and_labels():
    y_mem = torch.eye(6)[[0, 1, 4, 5, 0, 3]]  # one-hot memory labels, read by argmax
    mp, sp = pair_old_with_stream(y_mem, torch.tensor([0, 3]), 7, torch.Generator().manual_seed(2))
    assert mp.tolist() == [0, 4, 5] and mp.dtype == sp.dtype == torch.long
    assert torch.equal(sp, torch.randint(0, 7, (3,), generator=torch.Generator().manual_seed(2)))
    for old, size in (([0], 0), ([0], -1), ([], 5)):
        mp, sp = pair_old_with_stream(y_mem, old, size)
        assert mp.shape == sp.shape == (0,) and mp.dtype == sp.dtype == torch.long
    mp, sp = pair_old_with_stream(torch.tensor([0, 1, 0], device="meta"), [], 4)
    assert mp.device.type == sp.device.type == "meta"  # pairs on the labels' device


# ----------------------------------------------------------------------------- dtypes and devices
def _factors(b, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = {k: 0.6 + 0.8 * torch.rand(b, generator=g) for k in ("brightness", "contrast", "saturation")}
    f["hue"] = 0.2 * torch.rand(b, generator=g) - 0.1
    return f, torch.stack([torch.randperm(4, generator=g) for _ in range(b)])


def test_color_jitter_keeps_half_precision_and_the_device():
    x = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(3))
    f, order = _factors(4)
    half = color_jitter(x.half(), f, order)
    assert half.dtype == torch.float16 and torch.allclose(half.float(), color_jitter(x, f, order), atol=1e-2)
    assert color_jitter(x.to("meta"), f, order).device.type == "meta"  # host factors follow the images


def test_gray_and_contrast_in_float64_and_with_a_fourth_channel():
    x = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    gray = augment(x, torch.Generator().manual_seed(0), crop_scale=(1, 1), crop_ratio=(1, 1), hflip=False,
                   jitter=(0, 0, 0, 0), grayscale_p=1.0)
    want = (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None].expand(-1, 3, -1, -1)
    assert gray.dtype == torch.float64 and torch.allclose(gray, want, rtol=0, atol=1e-12)
    rgba = torch.cat([x, torch.ones(3, 1, 4, 4, dtype=torch.float64)], 1)  # contrast reads the first three
    f = torch.tensor([0.5, 1.0, 1.5])
    out = color_jitter(rgba, {"contrast": f}, torch.arange(4).repeat(3, 1))
    mean = (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean(dim=(1, 2))
    want = (f.double()[:, None, None, None] * rgba + (1 - f.double()[:, None, None, None]) * mean[:, None, None, None])
    assert torch.allclose(out, want.clamp(0, 1), atol=1e-12)


def test_rgb_to_hsv_hue_stays_in_the_unit_interval():
    px = torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.0, 0.0], [0.2, 0.4, 0.4]]).T.reshape(1, 3, 3, 1)
    hsv = rgb_to_hsv(px)[0, :, :, 0].T  # rows: (h, s, v) per pixel
    assert torch.allclose(hsv, torch.tensor([[11 / 12, 1.0, 1.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.4]]), atol=1e-6)


def test_low_precision_images_and_float64_weights():
    x = torch.rand(3, 2, generator=torch.Generator().manual_seed(5))
    xm, _ = enmix(x.half(), torch.eye(3), lam=0.25, index=torch.tensor([1, 2, 0]))
    assert xm.dtype == torch.float16
    xm, _, _ = adpmix(x.bfloat16(), torch.tensor([0, 1, 0]), x.bfloat16(), torch.tensor([2, 3, 3]), W4, mu_x=0.3)
    assert xm.dtype == torch.bfloat16
    assert adapted_label_weight(0.6, torch.tensor(2.5, dtype=torch.float64)).dtype == torch.float32


def test_one_hot_of_float_class_ids_and_one_row_soft_cross_entropy():
    assert torch.equal(one_hot(torch.tensor([2.0, 0.0]), 3), torch.tensor([[0.0, 0, 1], [1, 0, 0]]))
    z, t = torch.tensor([[0.3, -1.0, 2.0]]), torch.tensor([[0.2, 0.0, 0.8]])
    assert float(soft_cross_entropy(z, t)) == pytest.approx(float(-(t * torch.log_softmax(z, 1)).sum()))


# ----------------------------------------------------------------------------- second round
def test_augment_defaults_clamps_and_normalisation_options():
    x = torch.rand(16, 3, 6, 6, generator=torch.Generator().manual_seed(7))
    _, params = augment(x, torch.Generator().manual_seed(2), return_params=True)
    u = _replay(2, 16)
    assert torch.equal(params["jitter"], u["jit"] < 0.8) and torch.equal(params["gray"], u["gray"] < 0.2)
    # inputs outside [0, 1] (no mean/std given): jitter sees them clamped; unjittered rows are not clamped
    wide = x * 3 - 1
    ident = dict(crop_scale=(1, 1), crop_ratio=(1, 1), hflip=False, grayscale_p=0.0)
    assert torch.allclose(augment(wide, torch.Generator().manual_seed(0), jitter=(0, 0, 0, 0), jitter_p=1.0, **ident),
                          wide, atol=1e-5)
    out, params = augment(wide, torch.Generator().manual_seed(1), jitter_p=1.0, return_params=True, **ident)
    want = color_jitter(_resample(wide, _expected_crop(_replay(1, 16, hflip=False), 16, (1, 1), (1, 1), False)).clamp(0, 1),
                        params["factors"], params["order"])
    assert torch.allclose(out, want, atol=1e-5)
    # mean without std (or std without mean) is no normalisation
    for kw in ({"mean": (0.5, 0.5, 0.5)}, {"std": (0.2, 0.2, 0.2)}):
        assert torch.equal(augment(x, torch.Generator().manual_seed(3), **kw), augment(x, torch.Generator().manual_seed(3)))


def test_augment_normalisation_in_float64_and_on_the_images_device():
    x = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    mean, std = (0.3, 0.4, 0.5), (0.2, 0.3, 0.25)
    m, s = torch.tensor(mean, dtype=torch.float64).reshape(1, 3, 1, 1), torch.tensor(std, dtype=torch.float64).reshape(1, 3, 1, 1)
    out, params = augment((x - m) / s, torch.Generator().manual_seed(4), crop_scale=(1, 1), crop_ratio=(1, 1), hflip=False,
                          jitter=(0.5, 0, 0, 0), jitter_p=1.0, grayscale_p=0.0, mean=mean, std=std, return_params=True)
    pix = _resample((x - m) / s, _expected_crop(_replay(4, 4, hflip=False), 4, (1, 1), (1, 1), False)) * s + m
    f = params["factors"]["brightness"].double().reshape(-1, 1, 1, 1)
    assert out.dtype == torch.float64
    assert torch.allclose(out, ((f * pix.clamp(0, 1)).clamp(0, 1) - m) / s, rtol=0, atol=1e-12)
    meta = augment(x.to("meta"), torch.Generator().manual_seed(0), mean=mean, std=std, grayscale_p=0.5)
    assert meta.device.type == "meta" and meta.shape == x.shape


def test_augment_crop_wider_than_the_image_is_clipped_to_it():
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    out = augment(x, torch.Generator().manual_seed(5), crop_scale=(0.9, 1.0), crop_ratio=(1.3, 1.5), jitter=(0, 0, 0, 0),
                  grayscale_p=0.0)
    theta = _expected_crop(_replay(5, 6), 6, (0.9, 1.0), (1.3, 1.5))
    assert bool((theta[:, 0, 0].abs() == 1).all())  # sqrt(area * ratio) > 1: the full width
    assert torch.allclose(out, _resample(x, theta), atol=1e-6)


def test_enmix_mixes_a_single_sample_with_itself():
    x = torch.rand(1, 100, generator=torch.Generator().manual_seed(0)) * 10
    xm, ym = enmix(x, torch.tensor([[1.0]]), lam=0.3, index=torch.tensor([0]))
    lam = torch.tensor(0.3)  # lam x + (1 - lam) x rounds away from x for some entries
    assert torch.equal(xm, lam * x + (1 - lam) * x) and not torch.equal(xm, x)
    assert torch.equal(ym, torch.tensor([[1.0]]))


def test_classifier_norm_ratio_checks_and_group_ratio():
    with pytest.raises(ValueError, match=r"^y_old: class ids must lie in \[0, 4\) \(the classifier's rows\), got \[4\]$"):
        classifier_norm_ratio(W4, torch.tensor([4]), torch.tensor([0]))
    norms = W4.norm(dim=1)
    # unchecked ids index the rows as Python does (-1: the last row)
    r = classifier_norm_ratio(W4, torch.tensor([-1]), torch.tensor([-2]), check_ids=False)
    assert torch.allclose(r, norms[2:3] / norms[3:4])
    r = classifier_norm_ratio(W4, torch.tensor([0]), torch.tensor([1]), mode="group", old_classes=[2.0], new_classes=[3.0])
    assert torch.allclose(r, torch.tensor([0.5 / 3.0]))  # mean new norm over mean old norm


def test_adpmix_single_pair_default_draw_unchecked_ids_and_strict_gate():
    xo, xn = torch.ones(1, 2), torch.zeros(1, 2)
    x, y, w = adpmix(xo, torch.tensor([0]), xn, torch.tensor([2]), W4, mu_x=0.3)
    assert x.shape == (1, 2) and torch.allclose(x, torch.full((1, 2), 0.3)) and torch.allclose(w, torch.tensor([0.3]))
    g = torch.Generator().manual_seed(6)
    _, _, _, info = adpmix(torch.ones(3, 2), torch.tensor([0, 1, 0]), xn.expand(3, -1), torch.tensor([2, 3, 2]), W4,
                           generator=g, return_info=True)  # one mu_x per call by default
    assert torch.equal(info["mu_x"], beta_sample(0.2, 1, torch.Generator().manual_seed(6)).expand(3))
    for yo, yn in (([-1], [2]), ([0], [-1])):  # unchecked: torch's own error, not the host check's ValueError
        with pytest.raises(RuntimeError):
            adpmix(xo, torch.tensor(yo), xn, torch.tensor(yn), W4, mu_x=0.6, check_ids=False)
    _, _, _, info = adpmix(xo.expand(2, -1), torch.tensor([0, 0]), xn.expand(2, -1), torch.tensor([2, 2]), W4,
                           mu_x=torch.tensor([0.5, 0.6]), kappa=3.0, tau=0.5, return_info=True)
    assert info["gate"].tolist() == [False, False]  # r == kappa keeps the gate closed
    _, _, w, info = adpmix(xo.expand(2, -1), torch.tensor([0, 0]), xn.expand(2, -1), torch.tensor([2, 2]), W4,
                           mu_x=torch.tensor([0.5, 0.6]), kappa=2.0, tau=0.5, return_info=True)
    assert info["gate"].tolist() == [False, True] and torch.allclose(w, torch.tensor([0.5, 0.75]))  # so does mu == tau
    out = adpmix(torch.zeros(2, 3, device="meta"), torch.tensor([0, 1]), torch.zeros(2, 3, device="meta"),
                 torch.tensor([2, 3]), W4, mu_x=0.6, return_info=True)
    assert all(t.device.type == "meta" for t in out[:3]) and all(t.device.type == "meta" for t in out[3].values())


def test_pair_old_with_stream_sets_and_a_one_sample_stream():
    y_mem = torch.tensor([0, 1, 4, 3])
    mp, sp = pair_old_with_stream(y_mem, {0, 3}, 1, torch.Generator().manual_seed(0))
    assert mp.tolist() == [0, 3] and sp.tolist() == [0, 0]
