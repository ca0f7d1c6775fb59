"""Property tests (hypothesis) for MixPlan and the core mixing: shapes, lam range, labels consistent with inputs."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mixhub import Batch, MixPlan, mix_inputs, mixed_cross_entropy


@st.composite
def plans(draw):
    b = draw(st.integers(1, 12))
    perm = draw(st.permutations(list(range(b))))
    per_sample = draw(st.booleans())
    if per_sample:
        lam = torch.tensor(draw(st.lists(st.floats(0, 1), min_size=b, max_size=b)), dtype=torch.float32)
    else:
        lam = torch.full((b,), draw(st.floats(0, 1)), dtype=torch.float32)
    return b, MixPlan.pairs(torch.tensor(perm), lam)


@settings(max_examples=60, deadline=None)
@given(plans(), st.integers(0, 2**31 - 1))
def test_plan_validates_and_mixes_consistently(data, seed):
    b, plan = data
    plan.validate(b)
    # one-hot "inputs" of the sample id: the mixed input says exactly which samples it came from
    x = torch.eye(b)
    labels = torch.randint(0, 3, (b,), generator=torch.Generator().manual_seed(seed))  # repeated classes
    batch = Batch(inputs=x, targets=labels, index=torch.arange(b))
    plan.resolve(batch)
    xm = mix_inputs(x, plan)
    assert xm.shape == x.shape
    idx = plan.index.tolist()
    for i in range(b):
        lam = float(plan.lam[i])
        expected = torch.zeros(b)
        expected[i] += lam
        expected[idx[i]] += 1 - lam  # the partner named by the plan, not any partner
        torch.testing.assert_close(xm[i], expected, rtol=0, atol=1e-6)
        assert int(plan.y_a[i]) == int(labels[i]) and int(plan.y_b[i]) == int(labels[idx[i]])
    assert bool(((plan.lam >= 0) & (plan.lam <= 1)).all())


@settings(max_examples=40, deadline=None)
@given(plans(), st.integers(2, 6))
def test_mixed_ce_is_the_lam_weighted_sum_over_the_plan_partners(data, classes):
    b, plan = data
    torch.manual_seed(b)
    logits = torch.randn(b, classes)
    y = torch.randint(classes, (b,))
    plan.resolve(Batch(inputs=torch.zeros(b, 1), targets=y, index=torch.arange(b)))
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    idx = plan.index.tolist()
    lam = plan.lam.tolist()
    expected = sum(lam[i] * float(ce[i]) + (1 - lam[i]) * float(torch.nn.functional.cross_entropy(logits[i:i + 1], y[idx[i]:idx[i] + 1])) for i in range(b)) / b
    value = float(mixed_cross_entropy(logits, plan))
    assert abs(value - expected) < 1e-5
    # and so it lies between the anchor-only and partner-only losses
    ce_b = torch.nn.functional.cross_entropy(logits, y[plan.index], reduction="none")
    assert torch.minimum(ce, ce_b).mean() - 1e-5 <= value <= torch.maximum(ce, ce_b).mean() + 1e-5


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 10), st.integers(2, 4))
def test_n_source_weights_sum_to_one(b, k):
    g = torch.Generator().manual_seed(b * 10 + k)
    w = torch.rand(k, b, generator=g)
    w = w / w.sum(0)
    sources = [(torch.randperm(b, generator=g), w[i]) for i in range(k)]
    plan = MixPlan(index=sources[0][0], lam=w[0], sources=sources)
    plan.validate(b)
    x = torch.eye(b)
    xm = mix_inputs(x, plan)
    assert torch.allclose(xm.sum(1), torch.ones(b), atol=1e-5)
