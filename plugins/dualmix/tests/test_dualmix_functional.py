"""DualMix functional API: the spec's hand-computed test vectors, properties and contracts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from mixhub_dualmix.functional import (
    adapted_label_weight,
    adpmix,
    augment,
    beta_sample,
    classifier_norm_ratio,
    enmix,
    pair_old_with_stream,
    soft_cross_entropy,
)

W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.5]])
X_OLD = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
X_NEW = torch.tensor([[0.0, 0.0], [0.0, 10.0]])
Y_OLD = torch.tensor([0, 1])
Y_NEW = torch.tensor([2, 3])


@pytest.mark.parametrize(
    "mu_x, r, expected",
    [
        (0.7, 3.0, 0.85),
        (0.4, 3.0, 0.4),
        (0.7, 1.5, 0.7),
        (0.98, 2.5, 1.0),
        (0.7, 2.0, 0.7),
        (0.5, 4.0, 0.5),
        (0.9, 10.0, 1.0),
        (0.51, 2.01, 0.6105),
    ],
)
def test_adapted_label_weight_vectors(mu_x: float, r: float, expected: float) -> None:
    assert float(adapted_label_weight(mu_x, r, 2.0, 0.5, 0.05)) == pytest.approx(expected, abs=1e-6)


def test_adapted_label_weight_matches_independent_rule_and_bounds() -> None:
    g = torch.Generator().manual_seed(0)
    mu = torch.rand(2000, generator=g)
    r = torch.rand(2000, generator=g) * 6
    got = adapted_label_weight(mu, r)
    ref = [min(m + 0.05 * q, 1.0) if (q > 2.0 and m > 0.5) else m for m, q in zip(mu.tolist(), r.tolist())]
    assert torch.allclose(got, torch.tensor(ref), atol=1e-6)
    assert bool((got >= mu - 1e-7).all()) and bool((got <= 1).all())
    closed = ~((r > 2.0) & (mu > 0.5))
    assert torch.equal(got[closed], mu[closed])


def test_adapted_label_weight_inf_and_nan_ratios() -> None:
    out = adapted_label_weight(torch.tensor([0.7, 0.3, 0.7]), torch.tensor([math.inf, math.inf, math.nan]))
    assert out.tolist() == pytest.approx([1.0, 0.3, 0.7])


def test_adpmix_vector_pair_mode() -> None:
    x, y, w, info = adpmix(X_OLD, Y_OLD, X_NEW, Y_NEW, W, mu_x=0.8, return_info=True)
    assert torch.allclose(info["r"], torch.tensor([3.0, 0.5]))
    assert torch.allclose(w, torch.tensor([0.95, 0.80]))
    assert torch.allclose(x, torch.tensor([[0.8, 0.8], [1.6, 2.0]]))
    assert torch.allclose(y, torch.tensor([[0.95, 0, 0.05, 0], [0, 0.8, 0, 0.2]]))
    assert info["gate"].tolist() == [True, False]


def test_adpmix_vector_group_mode() -> None:
    r = classifier_norm_ratio(W, Y_OLD, Y_NEW, mode="group", old_classes=[0, 1], new_classes=[2, 3])
    assert torch.allclose(r, torch.tensor([1.75, 1.75]))
    _, y, w = adpmix(
        X_OLD, Y_OLD, X_NEW, Y_NEW, W, mu_x=0.8, norm_ratio="group", old_classes=[0, 1], new_classes=[2, 3]
    )
    assert torch.allclose(w, torch.tensor([0.8, 0.8]))
    assert torch.allclose(y, torch.tensor([[0.8, 0, 0.2, 0], [0, 0.8, 0, 0.2]]))
    with pytest.raises(ValueError, match="group"):
        classifier_norm_ratio(W, Y_OLD, Y_NEW, mode="group")


def test_adpmix_one_hot_labels_and_range_check() -> None:
    _, y1, w1 = adpmix(X_OLD, F.one_hot(Y_OLD, 4), X_NEW, F.one_hot(Y_NEW, 4), W, mu_x=0.8)
    _, y2, w2 = adpmix(X_OLD, Y_OLD, X_NEW, Y_NEW, W, mu_x=0.8)
    assert torch.equal(y1, y2) and torch.equal(w1, w2)
    with pytest.raises(ValueError, match="class ids"):
        adpmix(X_OLD, torch.tensor([0, 4]), X_NEW, Y_NEW, W, mu_x=0.8)


def test_adpmix_properties_random() -> None:
    g = torch.Generator().manual_seed(1)
    p, c = 64, 6
    w = torch.randn(c, 5, generator=g)
    w[3:] *= 4  # new rows much larger: the gate opens for some pairs
    yo, yn = torch.randint(0, 3, (p,), generator=g), torch.randint(3, 6, (p,), generator=g)
    xo, xn = torch.randn(p, 3, generator=g), torch.randn(p, 3, generator=g)
    x, y, mu_y, info = adpmix(xo, yo, xn, yn, w, generator=g, per_sample=True, return_info=True)
    mu = info["mu_x"]
    assert torch.allclose(y.sum(1), torch.ones(p))
    assert torch.allclose(y[torch.arange(p), yo], mu_y) and torch.allclose(y[torch.arange(p), yn], 1 - mu_y)
    assert bool((mu_y >= mu - 1e-7).all()) and bool((mu_y <= 1).all())
    assert torch.equal(mu_y[~info["gate"]], mu[~info["gate"]])
    assert torch.allclose(x, mu[:, None] * xo + (1 - mu[:, None]) * xn)  # pixels use mu_x, not mu_y
    ref_r = w.norm(dim=1)[yn] / w.norm(dim=1)[yo]
    assert torch.allclose(info["r"], ref_r)


def test_adpmix_no_gradient_through_ratio() -> None:
    head = torch.nn.Linear(2, 4)
    with torch.no_grad():
        head.weight.copy_(W)
    x, y, _ = adpmix(X_OLD, Y_OLD, X_NEW, Y_NEW, head.weight, mu_x=0.8)
    feats = torch.randn(2, 2, requires_grad=True)
    soft_cross_entropy(feats @ torch.ones(2, 4), y).backward()
    assert head.weight.grad is None


def test_adpmix_empty() -> None:
    x, y, w = adpmix(X_OLD[:0], Y_OLD[:0], X_NEW[:0], Y_NEW[:0], W)
    assert x.shape == (0, 2) and y.shape == (0, 4) and w.shape == (0,)


def test_enmix_vector() -> None:
    x, y = enmix(torch.tensor([[0.0], [10.0], [20.0]]), torch.eye(3), lam=0.3, index=torch.tensor([1, 0, 2]))
    assert torch.allclose(x, torch.tensor([[7.0], [3.0], [20.0]]))
    assert torch.allclose(y, torch.tensor([[0.3, 0.7, 0], [0.7, 0.3, 0], [0, 0, 1.0]]))


def test_enmix_same_lam_for_images_and_labels() -> None:
    g = torch.Generator().manual_seed(2)
    xa = torch.randn(8, 1, 4, 4, generator=g)
    y = F.one_hot(torch.randint(0, 5, (8,), generator=g), 5).float()
    xm, ym = enmix(xa, y, 0.2, torch.Generator().manual_seed(3))
    g2 = torch.Generator().manual_seed(3)
    index = torch.randperm(8, generator=g2)
    lam = float(beta_sample(0.2, 1, g2))
    assert torch.allclose(xm, lam * xa + (1 - lam) * xa[index], atol=1e-6)
    assert torch.allclose(ym, lam * y + (1 - lam) * y[index], atol=1e-6)
    assert torch.allclose(ym.sum(1), torch.ones(8))


def test_beta_draws_are_u_shaped_and_seeded() -> None:
    d = beta_sample(0.2, 10_000, torch.Generator().manual_seed(0))
    assert float(((d <= 0.1) | (d >= 0.9)).float().mean()) > 0.6
    assert torch.equal(d, beta_sample(0.2, 10_000, torch.Generator().manual_seed(0)))
    assert torch.equal(beta_sample(0.0, 3), torch.ones(3))


def test_pair_old_with_stream() -> None:
    y_mem = torch.tensor([0, 1, 4, 5, 0, 5])
    mp, sp = pair_old_with_stream(y_mem, [], 10, torch.Generator().manual_seed(0))
    assert mp.numel() == 0 and sp.numel() == 0  # first task: no old classes
    mp, sp = pair_old_with_stream(y_mem, [0, 1], 10, torch.Generator().manual_seed(0))
    assert mp.tolist() == [0, 1, 4]  # current-task samples (4, 5) are never paired
    assert sp.shape == (3,) and int(sp.min()) >= 0 and int(sp.max()) < 10


def test_soft_cross_entropy_matches_cross_entropy_on_one_hot() -> None:
    g = torch.Generator().manual_seed(4)
    z, y = torch.randn(7, 5, generator=g), torch.randint(0, 5, (7,), generator=g)
    assert torch.allclose(soft_cross_entropy(z, F.one_hot(y, 5).float()), F.cross_entropy(z, y))
    t = torch.softmax(torch.randn(7, 5, generator=g), 1)
    assert torch.allclose(soft_cross_entropy(z, t), -(t * torch.log_softmax(z, 1)).sum(1).mean())


def test_augment_per_sample_and_seeded() -> None:
    x = torch.rand(1, 3, 16, 16).expand(6, -1, -1, -1).contiguous()
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])  # identical inputs get different crops
    one = augment(x, torch.Generator().manual_seed(0), per_sample=False)
    assert torch.allclose(one[0], one[1])  # one parameter set per call
    assert a.shape == x.shape


def test_augment_identity_settings_and_normalised_space() -> None:
    x = torch.rand(4, 3, 12, 12)
    same = augment(
        x,
        torch.Generator().manual_seed(0),
        crop_scale=(1, 1),
        crop_ratio=(1, 1),
        hflip=False,
        jitter=(0, 0, 0, 0),
        grayscale_p=0,
    )
    assert torch.allclose(same, x, atol=1e-5)
    mean, std = (0.2, 0.2, 0.2), (0.3, 0.3, 0.3)
    xn = (x - 0.2) / 0.3
    out = augment(xn, torch.Generator().manual_seed(1), mean=mean, std=std, jitter_p=1.0)
    pix = out * 0.3 + 0.2
    assert float(pix.min()) >= -1e-5 and float(pix.max()) <= 1 + 1e-5  # colour ops ran in [0, 1]
    g1 = augment(torch.rand(3, 1, 8, 8), torch.Generator().manual_seed(2), grayscale_p=1.0)
    assert g1.shape == (3, 1, 8, 8)  # one channel: saturation, hue, grayscale are no-ops


def test_augment_flip_only_is_a_mirror() -> None:
    x = torch.rand(64, 1, 6, 6)
    out = augment(
        x,
        torch.Generator().manual_seed(5),
        crop_scale=(1, 1),
        crop_ratio=(1, 1),
        jitter=(0, 0, 0, 0),
        grayscale_p=0,
    )
    flipped = torch.isclose(out, x.flip(-1), atol=1e-5).flatten(1).all(1)
    kept = torch.isclose(out, x, atol=1e-5).flatten(1).all(1)
    assert bool((flipped | kept).all()) and 10 < int(flipped.sum()) < 54
