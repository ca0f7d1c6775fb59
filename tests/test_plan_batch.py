import pytest
import torch

from mixhub import Batch, MixPlan, mix_inputs, mixed_cross_entropy


def make_batch(b=4):
    return Batch(inputs=torch.randn(b, 3, 4, 4), targets=torch.arange(b) % 3, index=torch.arange(b) + 10)


def test_batch_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="batch dimension"):
        Batch(inputs=torch.randn(4, 2), targets=torch.zeros(3, dtype=torch.long), index=torch.arange(4))


def test_identity_plan():
    p = MixPlan.identity(5)
    assert p.is_identity and p.batch_lam == 1.0


def test_pairs_plan_resolve_and_targets():
    b = make_batch()
    p = MixPlan.pairs(torch.tensor([1, 0, 3, 2]), 0.7).resolve(b)
    assert torch.equal(p.y_a, b.targets) and torch.equal(p.y_b, b.targets[[1, 0, 3, 2]])
    assert p.batch_lam == pytest.approx(0.7)
    x = mix_inputs(b.inputs, p)
    assert torch.allclose(x, 0.7 * b.inputs + 0.3 * b.inputs[[1, 0, 3, 2]])


def test_mask_and_sources_mixing():
    b = make_batch()
    mask = torch.zeros(4, 1, 4, 4)
    mask[..., :2] = 1
    p = MixPlan.pairs(torch.tensor([1, 0, 3, 2]), 0.5, mask=mask)
    x = mix_inputs(b.inputs, p)
    assert torch.equal(x[..., :2], b.inputs[..., :2]) and torch.equal(x[..., 2:], b.inputs[[1, 0, 3, 2]][..., 2:])
    w = torch.full((4,), 1 / 3)
    p3 = MixPlan(index=torch.arange(4), lam=w, sources=[(torch.arange(4), w), (torch.tensor([1, 2, 3, 0]), w), (torch.tensor([2, 3, 0, 1]), w)])
    x3 = mix_inputs(b.inputs, p3)
    expect = (b.inputs + b.inputs[[1, 2, 3, 0]] + b.inputs[[2, 3, 0, 1]]) / 3
    assert torch.allclose(x3, expect, atol=1e-6)


def test_validate_rejects_bad_plans():
    with pytest.raises(ValueError, match="lie in"):
        MixPlan.pairs(torch.arange(3), 1.5).validate(3)
    with pytest.raises(ValueError, match="out of range"):
        MixPlan.pairs(torch.tensor([0, 1, 5]), 0.5).validate(3)
    with pytest.raises(ValueError, match="shape"):
        MixPlan.pairs(torch.arange(4), 0.5).validate(3)
    MixPlan.pairs(torch.tensor([0, 1, 99]), 0.5, partner_source="dataset").validate(3, dataset_size=100)


def test_mixed_cross_entropy_matches_formula():
    torch.manual_seed(0)
    logits = torch.randn(4, 3)
    b = make_batch()
    p = MixPlan.pairs(torch.tensor([1, 0, 3, 2]), torch.tensor([0.2, 0.5, 0.9, 1.0])).resolve(b)
    ce = torch.nn.functional.cross_entropy
    expect = (p.lam * ce(logits, p.y_a, reduction="none") + (1 - p.lam) * ce(logits, p.y_b, reduction="none")).mean()
    assert torch.allclose(mixed_cross_entropy(logits, p), expect)


def test_regression_target():
    b = Batch(inputs=torch.randn(3, 2), targets=torch.tensor([0.0, 1.0, 2.0]), index=torch.arange(3))
    p = MixPlan.pairs(torch.tensor([2, 0, 1]), 0.25).resolve(b)
    assert torch.allclose(p.mixed_regression_target(), torch.tensor([1.5, 0.25, 1.25]))


def test_n_source_regression_target_and_validation():
    b = Batch(inputs=torch.zeros(3, 1), targets=torch.tensor([0.0, 10.0, 20.0]), index=torch.arange(3))
    w = torch.full((3,), 1 / 3)
    sources = [(torch.arange(3), w), (torch.tensor([1, 2, 0]), w), (torch.tensor([2, 0, 1]), w)]
    p = MixPlan(index=torch.arange(3), lam=w, sources=sources).resolve(b)
    assert torch.allclose(p.mixed_regression_target(), torch.full((3,), 10.0))
    bad = MixPlan(index=torch.arange(3), lam=w, sources=[(torch.tensor([0, 1, 7]), w), *sources[1:]])
    with pytest.raises(ValueError, match=r"sources\[0\] index out of range"):
        bad.validate(3)
    with pytest.raises(ValueError, match="mask must lie in"):
        MixPlan.pairs(torch.arange(3), 0.5, mask=torch.full((3, 1, 2, 2), 2.0)).validate(3)
