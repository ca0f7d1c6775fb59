"""TENT functional tests: entropy, configuration, one step, bitwise teardown, UnMix-TNS composition."""

from __future__ import annotations

import copy

import pytest
import torch
from mixhub_tent.functional import (
    collect_params,
    configure_model,
    restore,
    snapshot,
    softmax_entropy,
    tent_step,
)
from torch import nn


def small_model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(8, 3, 8, 8))
    return m.eval()


def test_softmax_entropy_matches_definition():
    z = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]])
    p = torch.tensor([[float(v) for v in row] for row in z]).softmax(1)
    expected = -(p * p.log()).sum(1)
    torch.testing.assert_close(softmax_entropy(z), expected)
    assert abs(float(softmax_entropy(z)[1]) - float(torch.log(torch.tensor(3.0)))) < 1e-6


def test_configure_uses_batch_statistics_and_only_affine_trains():
    m = small_model()
    ref = copy.deepcopy(m)
    configure_model(m)
    m.eval()  # batch statistics even in eval mode: running stats are None
    x = torch.randn(6, 3, 8, 8)
    ref.train()
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x))
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"1.weight", "1.bias", "4.weight", "4.bias"}
    assert [id(p) for p in collect_params(m)] == [id(m[1].weight), id(m[1].bias), id(m[4].weight), id(m[4].bias)]


def test_one_step_returns_pre_step_logits_changes_only_affine_and_restores_bitwise():
    m = small_model()
    sd0 = {k: v.clone() for k, v in m.state_dict().items()}
    flags0 = {n: p.requires_grad for n, p in m.named_parameters()}
    snap = snapshot(m)
    configure_model(m)
    twin = copy.deepcopy(m)
    opt = torch.optim.Adam(collect_params(m), lr=1e-2)
    x = torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        logits = tent_step(m, x, opt)
        torch.testing.assert_close(logits, twin(x))  # the prediction is the pre-update forward
    changed = {n for n, p in m.named_parameters() if not torch.equal(p, dict(twin.named_parameters())[n])}
    assert changed == {"1.weight", "1.bias", "4.weight", "4.bias"}
    restore(m, snap)
    assert m[1].running_mean is not None and m[1].track_running_stats
    for k, v in m.state_dict().items():
        assert torch.equal(v, sd0[k]), k
    assert {n: p.requires_grad for n, p in m.named_parameters()} == flags0
    assert not m.training and all(not mod.training for mod in m.modules())


def test_the_returned_logits_are_detached_from_the_adaptation_graph():
    """The prediction leaves no graph behind (official ``forward_and_adapt`` returns outputs the
    caller only reads): even under grad mode it has no ``grad_fn``, and a loss on it cannot reach
    the adapted parameters."""
    m = small_model()
    configure_model(m)
    opt = torch.optim.SGD(collect_params(m), lr=0.1)
    with torch.enable_grad():
        logits = tent_step(m, torch.randn(6, 3, 8, 8), opt)
    assert logits.grad_fn is None and not logits.requires_grad
    assert all(p.grad is None for p in collect_params(m))
    with pytest.raises(RuntimeError, match="does not require grad"):
        logits.sum().backward()


def test_with_unmixtns_collects_exactly_the_unmix_affine_and_backward_works():
    unmix = pytest.importorskip("mixhub_unmixtns")
    replace_batchnorm, unmix_layers = unmix.replace_batchnorm, unmix.unmix_layers

    m = replace_batchnorm(small_model(), 4, torch.Generator().manual_seed(0))
    layers = unmix_layers(m)
    configure_model(m)
    params = collect_params(m)
    expected = [p for layer in layers.values() for p in (layer.weight, layer.bias)]
    assert [id(p) for p in params] == [id(p) for p in expected]
    assert all(layer.training for layer in layers.values())
    opt = torch.optim.Adam(params, lr=1e-2)
    before = [p.clone() for p in params]
    comps = [layer.component_means.clone() for layer in layers.values()]
    with torch.no_grad():
        tent_step(m, torch.randn(4, 3, 8, 8), opt)
    assert all(not torch.equal(a, b) for a, b in zip(before, params))
    assert any(not torch.equal(a, layer.component_means) for a, layer in zip(comps, layers.values()))


def test_adaptation_lowers_the_entropy_of_the_predictions():
    """TENT minimises entropy: repeated steps on one batch make the predictions more confident."""
    m = small_model()
    configure_model(m)
    opt = torch.optim.SGD(collect_params(m), lr=0.5)
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = float(softmax_entropy(m(x)).mean())
        for _ in range(5):
            tent_step(m, x, opt)
        after = float(softmax_entropy(m(x)).mean())
    assert after < before - 1e-3, (before, after)


def test_one_sgd_step_descends_the_mean_entropy_gradient():
    """Independent computation: p' = p - lr * d mean_b H_b / dp, by autograd on a twin."""
    m = small_model()
    configure_model(m)
    twin = copy.deepcopy(m)
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    params = collect_params(twin)
    p = twin(x).softmax(1)
    loss = -(p * p.log()).sum(1).mean()
    grads = torch.autograd.grad(loss, params)
    expected = [(q - 0.1 * g).detach() for q, g in zip(params, grads)]
    opt = torch.optim.SGD(collect_params(m), lr=0.1)
    tent_step(m, x, opt)
    for got, want in zip(collect_params(m), expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
    assert all(q.grad is None for q in collect_params(m))  # zero_grad(set_to_none) after the step


def test_configure_and_restore_flags_exactly():
    m = small_model()
    m.train()  # snapshot a model in train mode: restore must bring train mode back, not just "not eval"
    bn = m[1]
    mean_obj, var_obj = bn.running_mean, bn.running_var
    snap = snapshot(m)
    configure_model(m)
    assert bn.track_running_stats is False and bn.running_mean is None and bn.running_var is None
    tracked = int(m[4].num_batches_tracked)
    opt = torch.optim.SGD(collect_params(m), lr=0.1)
    with torch.no_grad():
        tent_step(m, torch.randn(4, 3, 8, 8), opt)
    assert int(m[4].num_batches_tracked) == tracked  # no running statistics are tracked during adaptation
    restore(m, snap)
    assert bn.running_mean is mean_obj and bn.running_var is var_obj and bn.track_running_stats is True
    assert all(mod.training is True for mod in m.modules())
    m.eval()
    snap = snapshot(m)
    configure_model(m)
    restore(m, snap)
    assert all(mod.training is False for mod in m.modules())
