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
@given(plans())
def test_plan_validates_and_mixes_consistently(data):
    b, plan = data
    plan.validate(b)
    # one-hot "inputs" of the sample id: the mixed input says exactly which samples it came from
    x = torch.eye(b)
    batch = Batch(inputs=x, targets=torch.arange(b), index=torch.arange(b))
    plan.resolve(batch)
    xm = mix_inputs(x, plan)
    assert xm.shape == x.shape
    assert torch.allclose(xm.sum(1), torch.ones(b))
    for i in range(b):
        lam = float(plan.lam[i])
        a, p = int(plan.y_a[i]), int(plan.y_b[i])
        if a == p:
            assert abs(float(xm[i, a]) - 1.0) < 1e-6
        else:
            assert abs(float(xm[i, a]) - lam) < 1e-6 and abs(float(xm[i, p]) - (1 - lam)) < 1e-6
    assert bool(((plan.lam >= 0) & (plan.lam <= 1)).all())


@settings(max_examples=40, deadline=None)
@given(plans(), st.integers(2, 6))
def test_mixed_ce_is_a_convex_combination(data, classes):
    b, plan = data
    torch.manual_seed(b)
    logits = torch.randn(b, classes)
    y = torch.randint(classes, (b,))
    plan.resolve(Batch(inputs=torch.zeros(b, 1), targets=y, index=torch.arange(b)))
    ce_a = torch.nn.functional.cross_entropy(logits, plan.y_a, reduction="none")
    ce_b = torch.nn.functional.cross_entropy(logits, plan.y_b, reduction="none")
    value = mixed_cross_entropy(logits, plan)
    assert torch.minimum(ce_a, ce_b).mean() - 1e-5 <= value <= torch.maximum(ce_a, ce_b).mean() + 1e-5


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
