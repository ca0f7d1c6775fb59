"""The mixed top-2 mechanism metric and its fixed test mixes."""

from __future__ import annotations

import pytest
import torch
from mixhub_decoupled.mechanism import cutmix_box_masks, fixed_test_mixes, mixed_top2_rate, sample_test_pairs


def test_mixed_top2_rate_counts_unordered_top2():
    logits = torch.tensor(
        [
            [5.0, 4.0, 0.0, 0.0],  # top-2 {0, 1} = {y_a, y_b}: hit
            [4.0, 5.0, 0.0, 0.0],  # order swapped: still a hit
            [5.0, 0.0, 4.0, 0.0],  # top-2 {0, 2}: miss
            [0.0, 0.0, 5.0, 4.0],  # top-2 {2, 3}: miss
        ]
    )
    y_a = torch.tensor([0, 0, 0, 1])
    y_b = torch.tensor([1, 1, 1, 0])
    assert mixed_top2_rate(logits, y_a, y_b) == pytest.approx(0.5)
    # manual count, independent of the vectorised form
    hits = sum(set(logits[i].topk(2).indices.tolist()) == {int(y_a[i]), int(y_b[i])} for i in range(4))
    assert hits / 4 == pytest.approx(0.5)


def test_same_class_rows_are_ignored():
    logits = torch.tensor([[5.0, 4.0, 0.0], [0.0, 4.0, 5.0]])
    assert mixed_top2_rate(logits, torch.tensor([0, 2]), torch.tensor([1, 2])) == pytest.approx(1.0)


def test_pairs_are_seeded_and_of_different_classes():
    targets = torch.arange(50) % 5
    i1, j1, lam1 = sample_test_pairs(targets, 300, seed=4)
    i2, j2, lam2 = sample_test_pairs(targets, 300, seed=4)
    assert torch.equal(i1, i2) and torch.equal(j1, j2) and torch.equal(lam1, lam2)
    assert bool((targets[i1] != targets[j1]).all())
    assert float(lam1.min()) >= 0.3 and float(lam1.max()) <= 0.7
    i3, _, _ = sample_test_pairs(targets, 300, seed=5)
    assert not torch.equal(i1, i3)


def test_cutmix_masks_match_their_area():
    lam = torch.tensor([0.3, 0.5, 0.7, 1.0])
    mask, area = cutmix_box_masks(lam, 16, 16, seed=1)
    assert mask.shape == (4, 1, 16, 16)
    manual = torch.stack([mask[k, 0].sum() / 256 for k in range(4)])
    assert torch.allclose(area, manual)
    assert float(area[3]) == 1.0
    assert bool((area >= lam - 1e-6).all())  # clipping can only shrink the pasted box


@pytest.mark.parametrize("mixer", ["mixup", "cutmix"])
def test_fixed_test_mixes(mixer):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 1, 8, 8, generator=g)
    y = torch.arange(40) % 4
    mixed, y_a, y_b = fixed_test_mixes(x, y, n=50, seed=2, mixer=mixer)
    assert mixed.shape == (50, 1, 8, 8) and bool((y_a != y_b).all())
    i, j, lam = sample_test_pairs(y, 50, seed=2)
    if mixer == "mixup":
        expected = lam.reshape(-1, 1, 1, 1) * x[i] + (1 - lam.reshape(-1, 1, 1, 1)) * x[j]
        assert torch.allclose(mixed, expected)
    else:
        # every pixel comes from one of the two sources
        from_a = torch.isclose(mixed, x[i])
        from_b = torch.isclose(mixed, x[j])
        assert bool((from_a | from_b).all())
    with pytest.raises(ValueError, match="mixer"):
        fixed_test_mixes(x, y, n=5, mixer="fmix")
