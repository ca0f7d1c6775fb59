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


# ---------------------------------------------------------------- constructors, validation messages, targets
def test_identity_plan_fields_and_device():
    p = MixPlan.identity(4)
    assert p.known_identity is True and torch.equal(p.index, torch.arange(4)) and torch.equal(p.lam, torch.ones(4))
    m = MixPlan.identity(3, device="meta")  # the device is honoured for both tensors
    assert m.index.device.type == "meta" and m.lam.device.type == "meta"


def test_pairs_lam_forms_dtype_and_device():
    p = MixPlan.pairs(torch.tensor([1, 0], dtype=torch.int32), torch.tensor(0.25, dtype=torch.float64), partner_source="dataset")
    assert p.index.dtype == torch.long and p.lam.dtype == torch.float32 and p.lam.tolist() == [0.25, 0.25]
    assert p.partner_source == "dataset"
    q = MixPlan.pairs(torch.arange(3), torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64), extras={"k": 1})
    assert q.lam.dtype == torch.float32 and q.extras == {"k": 1}
    r = MixPlan.pairs(torch.arange(2, device="meta"), 0.5)
    assert r.lam.device.type == "meta" and r.lam.shape == (2,)


def _raises(exc, msg):
    import re

    return pytest.raises(exc, match="^" + re.escape(msg) + "$")


def test_validate_messages_name_the_owner_and_the_field():
    ok = MixPlan.pairs(torch.tensor([1, 0, 2]), 0.5)
    ok.validate(3)
    with _raises(TypeError, "sampler: MixPlan.index and MixPlan.lam must be tensors"):
        MixPlan(index=torch.arange(3), lam=[0.5, 0.5, 0.5]).validate(3)  # type: ignore[arg-type]
    with _raises(TypeError, "me: MixPlan.index and MixPlan.lam must be tensors"):
        MixPlan(index=[0, 1, 2], lam=torch.ones(3)).validate(3, owner="me")  # type: ignore[arg-type]
    with _raises(ValueError, "sampler: MixPlan.index and MixPlan.lam must have shape [3], got (3,) and (2,)"):
        MixPlan(index=torch.arange(3), lam=torch.ones(2)).validate(3)
    for lam in (-0.1, float("nan")):
        with _raises(ValueError, "sampler: MixPlan.lam must lie in [0, 1]"):
            MixPlan.pairs(torch.arange(3), lam).validate(3)
    MixPlan.pairs(torch.tensor([0, 1, 2]), 1.0).validate(3)  # both ends of the range are valid
    MixPlan.pairs(torch.tensor([0, 1, 2]), 0.0).validate(3)
    with _raises(ValueError, "o: MixPlan.index out of range for partner_source='batch' (must be in [0, 3))"):
        MixPlan.pairs(torch.tensor([0, 1, 3]), 0.5).validate(3, owner="o")
    with pytest.raises(ValueError, match="out of range"):
        MixPlan.pairs(torch.tensor([-1, 1, 2]), 0.5).validate(3)
    with _raises(ValueError, "sampler: MixPlan.index out of range for partner_source='dataset' (must be in [0, 100))"):
        MixPlan.pairs(torch.tensor([0, 1, 100]), 0.5, partner_source="dataset").validate(3, dataset_size=100)
    MixPlan.pairs(torch.tensor([0, 1, 99]), 0.5, partner_source="dataset").validate(3)  # no dataset size: unchecked


def test_validate_sources_and_mask_messages():
    w = torch.full((3,), 0.5)
    good = [(torch.arange(3), w), (torch.tensor([1, 2, 0]), w)]
    MixPlan(index=torch.arange(3), lam=w, sources=good).validate(3)
    with _raises(ValueError, "sampler: MixPlan.sources[1] must hold two tensors of shape [3]"):
        MixPlan(index=torch.arange(3), lam=w, sources=[good[0], (torch.tensor([1, 2, 0]), torch.full((2,), 0.5))]).validate(3)
    with _raises(ValueError, "sampler: MixPlan.sources[0] must hold two tensors of shape [3]"):
        MixPlan(index=torch.arange(3), lam=w, sources=[(torch.arange(2), w), good[1]]).validate(3)
    with _raises(ValueError, "sampler: MixPlan.sources[1] index out of range [0, 3)"):
        MixPlan(index=torch.arange(3), lam=w, sources=[good[0], (torch.tensor([1, 3, 0]), w)]).validate(3)
    with _raises(ValueError, "sampler: MixPlan.sources[0] weights must lie in [0, 1]"):
        MixPlan(index=torch.arange(3), lam=w, sources=[(torch.arange(3), torch.full((3,), 1.5)), (torch.arange(3), torch.full((3,), -0.5))]).validate(3)
    with _raises(ValueError, "sampler: MixPlan.sources[1] weights must lie in [0, 1]"):
        MixPlan(index=torch.arange(3), lam=w, sources=[(torch.arange(3), torch.full((3,), 1.0)), (torch.arange(3), torch.full((3,), -0.0001))]).validate(3)
    # weights of exactly 0 and 1 are allowed
    MixPlan(index=torch.arange(3), lam=w, sources=[(torch.arange(3), torch.ones(3)), (torch.arange(3), torch.zeros(3))]).validate(3)
    with _raises(ValueError, "sampler: MixPlan.sources weights must sum to 1 per sample"):
        MixPlan(index=torch.arange(3), lam=w, sources=[(torch.arange(3), w), (torch.arange(3), torch.full((3,), 0.4))]).validate(3)
    with _raises(ValueError, "sampler: MixPlan.sources weights must sum to 1 per sample"):
        MixPlan(index=torch.arange(3), lam=w, sources=[(torch.arange(3), w), (torch.arange(3), torch.full((3,), 0.499))]).validate(3)
    MixPlan(index=torch.arange(3), lam=w, sources=[(torch.arange(3), w), (torch.arange(3), torch.full((3,), 0.49995))]).validate(3)
    with _raises(ValueError, "sampler: MixPlan.mask must have 3 rows, got shape (2, 1, 2, 2)"):
        MixPlan.pairs(torch.arange(3), 0.5, mask=torch.ones(2, 1, 2, 2)).validate(3)
    for bad in (-0.5, 1.5):
        with _raises(ValueError, "sampler: MixPlan.mask must lie in [0, 1]"):
            MixPlan.pairs(torch.arange(3), 0.5, mask=torch.full((3, 1, 2, 2), bad)).validate(3)
    edge = torch.zeros(3, 1, 2, 2)
    edge[:, :, 0] = 1.0
    MixPlan.pairs(torch.arange(3), 0.5, mask=edge).validate(3)


def test_resolve_dataset_partners():
    b = make_batch(3)
    p = MixPlan.pairs(torch.tensor([7, 8, 9]), 0.5, partner_source="dataset")
    with _raises(RuntimeError, "MixPlan: dataset partners have not been fetched"):
        p.resolve(b)
    p.partner = Batch(inputs=torch.zeros(3, 3, 4, 4), targets=torch.tensor([2, 2, 0]), index=torch.tensor([7, 8, 9]))
    p.resolve(b)
    assert torch.equal(p.y_a, b.targets) and p.y_b.tolist() == [2, 2, 0]
    assert p.source_targets(b.targets)[1][0].tolist() == [2, 2, 0]  # the fetched targets, not targets[index]


def test_source_targets_two_and_n_sources():
    y = torch.tensor([5, 6, 7])
    p = MixPlan.pairs(torch.tensor([2, 0, 1]), torch.tensor([0.1, 0.2, 0.3]))
    (ya, wa), (yb, wb) = p.source_targets(y)
    assert ya.tolist() == [5, 6, 7] and yb.tolist() == [7, 5, 6]
    assert torch.allclose(wa, torch.tensor([0.1, 0.2, 0.3])) and torch.allclose(wb, torch.tensor([0.9, 0.8, 0.7]))
    p.y_b = torch.tensor([1, 1, 1])  # resolved targets win over targets[index]
    assert p.source_targets(y)[1][0].tolist() == [1, 1, 1]
    w = torch.full((3,), 0.5)
    n = MixPlan(index=torch.arange(3), lam=w, sources=[(torch.tensor([1, 2, 0]), w), (torch.tensor([2, 0, 1]), w)])
    assert [t.tolist() for t, _ in n.source_targets(y)] == [[6, 7, 5], [7, 5, 6]]


def test_lam_as_and_regression_targets_of_any_rank():
    p = MixPlan.pairs(torch.tensor([1, 0]), torch.tensor([0.25, 0.5]))
    like = torch.zeros(2, 3, 4, dtype=torch.float64)
    la = p.lam_as(like)
    assert la.shape == (2, 1, 1) and la.dtype == torch.float64
    with _raises(RuntimeError, "MixPlan.resolve(batch) must run before the targets are read"):
        p.mixed_regression_target()
    p.y_a = torch.zeros(2, 2)
    with _raises(RuntimeError, "MixPlan.resolve(batch) must run before the targets are read"):
        p.mixed_regression_target()
    y = torch.tensor([[0.0, 4.0], [8.0, 12.0]], dtype=torch.float64)
    p.resolve(Batch(inputs=torch.zeros(2, 1), targets=y, index=torch.arange(2)))
    out = p.mixed_regression_target()
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([[6.0, 10.0], [4.0, 8.0]]))
    w1, w2 = torch.tensor([0.25, 1.0]), torch.tensor([0.75, 0.0])
    n = MixPlan(index=torch.arange(2), lam=w1, sources=[(torch.arange(2), w1), (torch.tensor([1, 0]), w2)])
    n.resolve(Batch(inputs=torch.zeros(2, 1), targets=y, index=torch.arange(2)))
    out = n.mixed_regression_target()
    assert out.shape == (2, 2) and out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([[6.0, 10.0], [8.0, 12.0]]))
    y3 = torch.arange(8, dtype=torch.float32).reshape(2, 2, 2)
    n.resolve(Batch(inputs=torch.zeros(2, 1), targets=y3, index=torch.arange(2)))
    assert torch.allclose(n.mixed_regression_target(), torch.stack([0.25 * y3[0] + 0.75 * y3[1], y3[1]]))


def test_n_source_regression_target_is_float32_for_any_weight_dtype():
    w1, w2 = torch.tensor([0.25, 1.0], dtype=torch.float64), torch.tensor([0.75, 0.0], dtype=torch.float64)
    n = MixPlan(index=torch.arange(2), lam=w1, sources=[(torch.arange(2), w1), (torch.tensor([1, 0]), w2)])
    n.resolve(Batch(inputs=torch.zeros(2, 1), targets=torch.tensor([0.0, 4.0]), index=torch.arange(2)))
    out = n.mixed_regression_target()
    assert out.dtype == torch.float32 and torch.allclose(out, torch.tensor([3.0, 4.0]))


def test_plan_lam_value_from_a_float_or_kept_when_given():
    assert MixPlan.identity(3).lam_value == 1.0
    assert MixPlan.pairs(torch.arange(3), 0.25).lam_value == 0.25
    assert MixPlan.pairs(torch.arange(3), 1).lam_value == 1.0
    assert MixPlan.pairs(torch.arange(3), 0.25, lam_value=0.3).lam_value == 0.3  # a given value is kept
    assert MixPlan.pairs(torch.arange(3), torch.tensor(0.25)).lam_value is None


def test_validate_messages_and_boundaries():
    idx = torch.arange(3)
    with pytest.raises(TypeError, match=r"^sampler: MixPlan.index must be an integer tensor, got torch.bool$"):
        MixPlan(index=torch.zeros(3, dtype=torch.bool), lam=torch.ones(3)).validate(3)
    with pytest.raises(TypeError, match=r"^sampler: MixPlan.lam must be a floating-point tensor, got torch.int64$"):
        MixPlan(index=idx, lam=torch.ones(3, dtype=torch.long)).validate(3)
    with pytest.raises(ValueError, match=r"^sampler: MixPlan.partner_source must be 'batch' or 'dataset', got 'bank'$"):
        MixPlan.pairs(idx, 0.5, partner_source="bank").validate(3)
    # lam_value: a difference of exactly 1e-5 (float32) is tolerated, a larger one is not
    MixPlan(index=idx, lam=torch.full((3,), 1e-5), lam_value=0.0).validate(3)
    with pytest.raises(ValueError, match=r"^sampler: MixPlan.lam differs from MixPlan.lam_value=0.0$"):
        MixPlan(index=idx, lam=torch.full((3,), 0.5), lam_value=0.0).validate(3)
    MixPlan.pairs(idx, 0.5, mask=torch.ones(3)).validate(3)  # a mask of one value per sample


def test_validate_sources_and_their_lams():
    idx = torch.arange(3)
    w1 = torch.full((3,), 1e-5)
    w0 = 1 - w1
    good = [(idx, w0), (idx.flip(0), w1)]
    MixPlan(index=idx, lam=w0, sources=good, source_lams=[float(w0[0]), 0.0]).validate(3)  # exactly 1e-5 off: tolerated
    with pytest.raises(ValueError, match=r"^sampler: MixPlan.sources must be a non-empty list of \(index, weight\) pairs$"):
        MixPlan(index=idx, lam=w0, sources=[]).validate(3)
    with pytest.raises(ValueError, match=r"^sampler: MixPlan.source_lams has 1 values for 2 sources$"):
        MixPlan(index=idx, lam=w0, sources=good, source_lams=[1.0]).validate(3)
    half = [(idx, torch.full((3,), 0.5)), (idx, torch.full((3,), 0.5))]
    MixPlan(index=idx, lam=torch.full((3,), 0.5), sources=half, source_lams=[0.5, 0.5]).validate(3)
    with pytest.raises(ValueError, match=r"^sampler: MixPlan.sources\[1\] weights differ from MixPlan.source_lams\[1\]=0.0$"):
        MixPlan(index=idx, lam=torch.full((3,), 0.5), sources=half, source_lams=[0.5, 0.0]).validate(3)


def test_validate_with_device_checks_defers_every_value_check():
    from mixhub.checks import DeviceChecks

    checks = DeviceChecks()
    idx = torch.arange(3)
    half = [(idx, torch.full((3,), 0.5)), (idx, torch.full((3,), 0.6))]
    MixPlan(index=idx, lam=torch.full((3,), 0.5), sources=half).validate(3, owner="cutmix", checks=checks,
                                                                        error=RuntimeError)
    assert len(checks) == 7  # lam and index ranges, each source's index and weight ranges, the sum
    with pytest.raises(RuntimeError, match=r"^cutmix: MixPlan.sources weights must sum to 1 per sample$"):
        checks.verify()
    MixPlan.pairs(idx, 0.5).validate(3, checks=checks)
    checks.verify()  # nothing failed
