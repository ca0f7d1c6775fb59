"""UnMix-TNS functional tests: spec test vector TV-U1, closed form vs a direct [B, K, C]
transcription, K=1 == instance norm, batch independence, momentum, init, RNG, edge cases."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from mixhub_unmixtns.functional import (
    UnMixTNS1d,
    UnMixTNS2d,
    replace_batchnorm,
    restore_batchnorm,
    unmix_layers,
    unmix_momentum,
)
from torch import nn

import mixhub


def make_layer(c: int, k: int, dtype=torch.float64, seed: int = 0, **kw) -> UnMixTNS2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c).to(dtype)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g, dtype=dtype))
        bn.running_var.copy_(torch.rand(c, generator=g, dtype=dtype) + 0.5)
        bn.weight.copy_(torch.randn(c, generator=g, dtype=dtype))
        bn.bias.copy_(torch.randn(c, generator=g, dtype=dtype))
    return UnMixTNS2d.from_batchnorm(bn, k, torch.Generator().manual_seed(seed + 1), **kw)


def reference_forward(x, M, V, gamma, beta, eps, mom, tau=0.07):
    """Direct transcription of spec §3.2-3.5 with [B, K, C] tensors (independent of the layer)."""
    B, C = x.shape[:2]
    K = M.shape[0]
    xf = x.reshape(B, C, -1)
    mu = xf.mean(-1)
    var = xf.var(-1, unbiased=False)
    with torch.no_grad():
        sim = torch.einsum("bc,kc->bk", mu / mu.norm(dim=1, keepdim=True).clamp_min(1e-12),
                           M / M.norm(dim=1, keepdim=True).clamp_min(1e-12))
        p = torch.softmax(sim / tau, dim=1)
    pe = p[:, :, None]
    mu_hat = (1 - pe) * M[None] + pe * mu[:, None]
    var_hat = (1 - pe) * V[None] + pe * var[:, None]
    mu_bar = mu_hat.mean(1)
    var_bar = var_hat.mean(1) + mu_hat.square().mean(1) - mu_bar.square()
    y = (x - mu_bar[:, :, None, None]) / torch.sqrt(var_bar[:, :, None, None] + eps) * gamma[None, :, None, None] + beta[None, :, None, None]
    with torch.no_grad():
        M_new = M.clone()
        V_new = V.clone()
        for k in range(K):
            M_new[k] = M[k] + mom * (p[:, k:k + 1] * (mu.detach() - M[k])).sum(0) / B
            V_new[k] = V[k] + mom * (p[:, k:k + 1] * (var.detach() - V[k])).sum(0) / B
    return y, M_new, V_new


def test_tv_u1():
    layer = make_layer(2, 2, momentum=0.1)
    with torch.no_grad():
        layer.component_means.copy_(torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64))
        layer.component_vars.copy_(torch.tensor([[1.0, 1.0], [0.5, 2.0]], dtype=torch.float64))
        layer.weight.copy_(torch.tensor([1.0, 2.0]))
        layer.bias.copy_(torch.tensor([0.0, -1.0]))
    layer.eps = 1e-5
    x = torch.tensor(
        [[[[1, 2], [3, 4]], [[1.5, 1.5], [2.5, 2.5]]], [[[-1, -1], [0, 0]], [[2, 4], [2, 4]]]], dtype=torch.float64
    )
    y = layer(x)
    p = layer.last_assignment
    tol = dict(atol=1e-8, rtol=0)
    torch.testing.assert_close(p, torch.tensor([[0.730617461, 0.269382539], [0.000640804, 0.999359196]], dtype=torch.float64), **tol)
    torch.testing.assert_close(y[0, 0], torch.tensor([[-0.513281964, 0.391425735], [1.296133434, 2.200841132]], dtype=torch.float64), **tol)
    torch.testing.assert_close(y[1, 1], torch.tensor([[-0.687653149, 1.812723909], [-0.687653149, 1.812723909]], dtype=torch.float64), **tol)
    torch.testing.assert_close(layer.component_means, torch.tensor([[1.054748249, 0.554876410], [0.476970294, 1.113405047]], dtype=torch.float64), **tol)
    torch.testing.assert_close(layer.component_vars, torch.tensor([[1.009108688, 0.972601845], [0.497609855, 1.926461068]], dtype=torch.float64), **tol)


def test_tv_u1_pooled_statistics():
    from mixhub_unmixtns.functional import instance_stats, unmix_statistics

    x = torch.tensor(
        [[[[1, 2], [3, 4]], [[1.5, 1.5], [2.5, 2.5]]], [[[-1, -1], [0, 0]], [[2, 4], [2, 4]]]], dtype=torch.float64
    )
    mu, var = instance_stats(x)
    torch.testing.assert_close(mu, torch.tensor([[2.5, 2.0], [-0.5, 3.0]], dtype=torch.float64))
    torch.testing.assert_close(var, torch.tensor([[1.25, 0.25], [0.25, 1.0]], dtype=torch.float64))
    M = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    V = torch.tensor([[1.0, 1.0], [0.5, 2.0]], dtype=torch.float64)
    mu_bar, var_bar, _ = unmix_statistics(mu, var, M, V)
    tol = dict(atol=1e-8, rtol=0)
    torch.testing.assert_close(mu_bar, torch.tensor([[1.567345635, 1.432654365], [0.249839799, 1.750160201]], dtype=torch.float64), **tol)
    torch.testing.assert_close(var_bar, torch.tensor([[1.221743039, 1.016966420], [1.186138934, 2.559217959]], dtype=torch.float64), **tol)


@pytest.mark.parametrize("k", [1, 2, 16, 128])
@pytest.mark.parametrize("b", [1, 5, 64])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_closed_form_matches_direct_transcription(k, b, dtype):
    c = 8
    layer = make_layer(c, k, dtype=dtype, seed=k + b)
    g = torch.Generator().manual_seed(100 + k * b)
    x = (torch.randn(b, c, 3, 3, generator=g, dtype=dtype) * 1.5 + 0.3).requires_grad_(True)
    M0, V0 = layer.component_means.clone(), layer.component_vars.clone()
    gamma = layer.weight.detach().clone().requires_grad_(True)
    beta = layer.bias.detach().clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref, M_ref, V_ref = reference_forward(x_ref, M0, V0, gamma, beta, layer.eps, layer.momentum)
    y = layer(x)
    tol = dict(atol=1e-12, rtol=1e-12) if dtype == torch.float64 else dict(atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(y, y_ref, **tol)
    torch.testing.assert_close(layer.component_means, M_ref, **tol)
    torch.testing.assert_close(layer.component_vars, V_ref, **tol)
    w = torch.randn(y.shape, generator=g, dtype=dtype)
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    gtol = dict(atol=1e-10, rtol=1e-10) if dtype == torch.float64 else dict(atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(x.grad, x_ref.grad, **gtol)
    torch.testing.assert_close(layer.weight.grad, gamma.grad, **gtol)
    torch.testing.assert_close(layer.bias.grad, beta.grad, **gtol)


def test_k1_is_instance_norm_on_every_call():
    layer = make_layer(6, 1)
    for i in range(3):
        x = torch.randn(4, 6, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(i)) * (i + 1)
        ref = F.instance_norm(x, weight=layer.weight, bias=layer.bias, eps=layer.eps)
        torch.testing.assert_close(layer(x), ref, atol=1e-13, rtol=0)


def test_initial_mixture_matches_source_on_average():
    c, k = 4096, 16
    bn = nn.BatchNorm2d(c)  # running_mean 0, running_var 1
    layer = UnMixTNS2d.from_batchnorm(bn, k, torch.Generator().manual_seed(3))
    M, V = layer.component_means, layer.component_vars
    total = V.mean(0) + M.var(0, unbiased=False)
    assert abs(float(total.mean()) - 1) < 0.02
    assert torch.equal(V, torch.full_like(V, 0.5))
    assert abs(float(M.mean(0).mean())) < 0.02


def test_init_is_one_randn_per_layer_in_module_order_bn1d_included():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(5), nn.BatchNorm1d(5), nn.BatchNorm2d(7))
    model[3] = nn.Linear(4, 5)
    for bn in (model[1], model[4], model[5]):
        bn.running_var.fill_(4.0)
        bn.running_mean.fill_(1.0)
    swapped = replace_batchnorm(copy.deepcopy(model), 16, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    scale = (0.5 * 16 / 15) ** 0.5
    for idx, c in ((1, 4), (4, 5), (5, 7)):
        eps = torch.randn((16, c), generator=g)
        torch.testing.assert_close(swapped[idx].component_means, 1.0 + scale * 2.0 * eps)
    assert isinstance(swapped[4], UnMixTNS1d)
    # same seed, same start, bitwise
    again = replace_batchnorm(copy.deepcopy(model), 16, torch.Generator().manual_seed(5))
    for a, b in zip(unmix_layers(swapped).values(), unmix_layers(again).values()):
        assert torch.equal(a.component_means, b.component_means)


def test_batch_independence_and_b1():
    layer = make_layer(5, 16, dtype=torch.float32)
    g = torch.Generator().manual_seed(9)
    xs = [torch.randn(1, 5, 4, 4, generator=g) for _ in range(5)]
    a, b = copy.deepcopy(layer), copy.deepcopy(layer)
    ya = a(torch.cat([xs[0], xs[1], xs[2]]))
    yb = b(torch.cat([xs[0], xs[3], xs[4]]))
    torch.testing.assert_close(ya[0], yb[0], atol=1e-6, rtol=0)
    assert copy.deepcopy(layer)(xs[0]).shape == (1, 5, 4, 4)


@pytest.mark.parametrize(
    "args,expected",
    [((0.1, 64, 64), 0.09999999999999998), ((0.1, 16, 16), 0.09999999999999998), ((0.1, 16, 64), 0.0259962536),
     ((0.1, 1, 64), 0.0016449037), ((0.1, 200, 64), 0.2805380309)],
)
def test_momentum_formula(args, expected):
    got = unmix_momentum(*args)
    if expected == 0.09999999999999998:
        assert got == expected
    else:
        assert got == pytest.approx(expected, abs=1e-10)


def test_layer_momentum_from_configured_batch():
    bn = nn.BatchNorm2d(3)
    assert UnMixTNS2d.from_batchnorm(bn, 4, batch_size=16, batch_size_max=64).momentum == pytest.approx(0.0259962536, abs=1e-10)
    assert UnMixTNS2d.from_batchnorm(bn, 4, momentum=0.3).momentum == 0.3


@pytest.mark.parametrize("policy,train,changes", [("always", False, True), ("train", False, False), ("train", True, True), ("never", True, False)])
def test_update_policy(policy, train, changes):
    layer = make_layer(4, 8, dtype=torch.float32, update=policy)
    layer.train(train)
    before = layer.component_means.clone()
    with torch.no_grad():
        layer(torch.randn(3, 4, 3, 3) + 2)
    assert (not torch.equal(before, layer.component_means)) == changes


def test_update_keeps_buffer_identity_and_backward_after_update():
    layer = make_layer(4, 8, dtype=torch.float32)
    ptr = layer.component_means.data_ptr()
    x = torch.randn(3, 4, 3, 3, requires_grad=True)
    y = layer(x)
    layer(torch.randn(2, 4, 3, 3))  # a second in-place update before backward
    y.sum().backward()
    assert layer.component_means.data_ptr() == ptr
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_state_dict_round_trip():
    layer = make_layer(4, 8, dtype=torch.float32)
    layer(torch.randn(3, 4, 3, 3))
    other = make_layer(4, 8, dtype=torch.float32, seed=7)
    other.load_state_dict(layer.state_dict())
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(other(x), layer(x))
    assert set(layer.state_dict()) == {"component_means", "component_vars", "source_mean", "source_var", "weight", "bias"}


def test_edge_cases():
    bn = nn.BatchNorm2d(3, momentum=None)
    with pytest.warns(UserWarning, match="momentum=None"):
        layer = UnMixTNS2d.from_batchnorm(bn, 4)
    assert layer.momentum == pytest.approx(0.09999999999999998)
    layer = UnMixTNS2d.from_batchnorm(nn.BatchNorm2d(3, affine=False), 4)
    assert layer.weight is None and layer.bias is None
    assert layer(torch.randn(2, 3, 4, 4)).shape == (2, 3, 4, 4)
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3, track_running_stats=False))
    with pytest.raises(ValueError, match="'1'.*track_running_stats"):
        replace_batchnorm(model)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        UnMixTNS2d.from_batchnorm(nn.BatchNorm2d(3), 4)(torch.randn(2, 3))


def test_no_batchnorm_warns_naming_model():
    class TinyViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(4)

    with pytest.warns(UserWarning, match="TinyViT has no BatchNorm"):
        replace_batchnorm(TinyViT())


def test_bn1d_source_and_keep():
    bn = nn.BatchNorm1d(5)
    with torch.no_grad():
        bn.running_mean.uniform_()
        bn.running_var.uniform_(0.5, 2)
    bn.eval()
    model = nn.Sequential(bn)
    swapped = replace_batchnorm(copy.deepcopy(model), 4)
    assert isinstance(swapped[0], UnMixTNS1d) and isinstance(swapped[0], mixhub.TestTimeNorm)
    for shape in ((3, 5), (3, 5, 7)):
        x = torch.randn(shape)
        torch.testing.assert_close(swapped(x), model(x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kept = replace_batchnorm(copy.deepcopy(model), 4, bn1d="keep")
    assert isinstance(kept[0], nn.BatchNorm1d)


def test_replace_then_restore_is_bitwise_and_skips_swapped():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    ref = model(x)
    bn = model[1]
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    replace_batchnorm(model, 4)
    layer = model[1]
    assert bn not in list(model.modules())
    assert not any(p is bn.weight for p in model.parameters())
    replace_batchnorm(model, 4)  # already swapped: skipped
    assert model[1] is layer
    with torch.no_grad():
        model(x)
        layer.weight.add_(1.0)
    restore_batchnorm(model)
    assert model[1] is bn
    assert torch.equal(model(x), ref)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    replace_batchnorm(model, 4)
    with torch.no_grad():
        model[1].weight.add_(1.0)
    restore_batchnorm(model, copy_affine=True)
    torch.testing.assert_close(bn.weight, sd["1.weight"] + 1)


def test_model_that_is_a_bn():
    bn = nn.BatchNorm2d(3)
    layer = replace_batchnorm(bn, 2)
    assert isinstance(layer, UnMixTNS2d)
    assert restore_batchnorm(layer) is bn


def test_autocast_and_channels_last():
    layer = make_layer(4, 8, dtype=torch.float32)
    ref_layer = copy.deepcopy(layer)
    x = torch.randn(3, 4, 5, 5)
    ref = ref_layer(x)
    y = layer(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = copy.deepcopy(ref_layer)(x.bfloat16())
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), ref, atol=0.1, rtol=0.05)


def test_timm_efficientnet_bnact_keeps_activation():
    timm = pytest.importorskip("timm")
    from timm.layers import BatchNormAct2d

    model = timm.create_model("efficientnet_b0", num_classes=10, pretrained=False).eval()
    names = [n for n, m in model.named_modules() if isinstance(m, BatchNormAct2d)]
    assert len(names) == 49
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    bns = {n: model.get_submodule(n) for n in names}
    acts = {n: type(bns[n].act) for n in names}
    replace_batchnorm(model, 4, torch.Generator().manual_seed(0))
    outs = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o)) for n in names]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for n in names:
        layer = model.get_submodule(n)
        assert isinstance(layer, UnMixTNS2d) and type(layer.act) is acts[n]
        if acts[n] is nn.SiLU:
            assert float(outs[n].min()) >= -0.2785
    restore_batchnorm(model)
    with torch.no_grad():
        assert torch.equal(model(x), ref)


# ---------------------------------------------------------------- options reach the layers, exact init, 1-D layer
def _bn_model(dtype=torch.float64):
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5), nn.BatchNorm1d(5))
    m(torch.randn(4, 3, 6, 6))
    m = m.to(dtype)
    with torch.no_grad():
        for bn in (m[1], m[5]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return m.eval()


def test_replace_batchnorm_passes_every_option_to_the_layers():
    m = replace_batchnorm(_bn_model(), 3, torch.Generator().manual_seed(0), batch_size=16, batch_size_max=32,
                          temperature=0.5, alpha=0.25, update="train", momentum_from_actual_batch=True)
    layer = m[1]
    assert isinstance(layer, UnMixTNS2d)
    assert layer.momentum == pytest.approx(unmix_momentum(0.1, 16, 32)) and layer.batch_size_max == 32
    assert layer.temperature == 0.5 and layer.update == "train" and layer.momentum_from_actual_batch is True
    assert layer.bn_momentum == pytest.approx(0.1)
    assert torch.allclose(layer.component_vars, (0.75 * layer.source_var)[None].expand(3, 4))
    assert isinstance(m[5], UnMixTNS1d)
    fixed = replace_batchnorm(_bn_model(), 3, torch.Generator().manual_seed(0), momentum=0.3)
    assert fixed[1].momentum == pytest.approx(0.3)
    bn = _bn_model()[1]
    bn.momentum = None
    with pytest.warns(UserWarning, match=r"BatchNorm2d\(4\) has momentum=None .* m=0.2 in its momentum formula"):
        w = replace_batchnorm(nn.Sequential(bn), 2, torch.Generator().manual_seed(0), bn_momentum_fallback=0.2)
    assert w[0].bn_momentum == pytest.approx(0.2)


def test_replace_batchnorm_defaults():
    layer = replace_batchnorm(_bn_model(), 4, torch.Generator().manual_seed(0))[1]
    assert layer.num_components == 4 and layer.num_features == 4
    assert layer.momentum == pytest.approx(unmix_momentum(0.1, 64, 64)) and layer.batch_size_max == 64
    assert layer.temperature == 0.07 and layer.update == "always" and layer.momentum_from_actual_batch is False
    assert torch.allclose(layer.component_vars, (0.5 * layer.source_var)[None].expand(4, 4))
    bn = _bn_model()[1]
    bn.momentum = None
    with pytest.warns(UserWarning, match="m=0.1 in"):
        assert UnMixTNS2d(bn, 2).bn_momentum == pytest.approx(0.1)
    d = UnMixTNS2d(_bn_model()[1])
    assert d.num_components == 16 and d.temperature == 0.07 and d.momentum == pytest.approx(unmix_momentum(0.1, 64, 64))


def test_component_init_is_the_source_spread_by_one_draw():
    bn = _bn_model()[1]
    k, alpha = 5, 0.3
    layer = UnMixTNS2d(bn, k, torch.Generator().manual_seed(11), alpha=alpha)
    noise = torch.randn((k, 4), generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    expected = bn.running_mean + (alpha * k / (k - 1)) ** 0.5 * bn.running_var.sqrt() * noise
    torch.testing.assert_close(layer.component_means, expected)
    torch.testing.assert_close(layer.component_vars, ((1 - alpha) * bn.running_var)[None].expand(k, 4))
    assert layer.component_means.dtype == torch.float64
    one = UnMixTNS1d(_bn_model()[5], 3, torch.Generator().manual_seed(2), alpha=0.9)
    torch.testing.assert_close(one.component_vars[0], 0.1 * one.source_var)


def test_meta_device_components():
    bn = nn.BatchNorm2d(3, device="meta")
    layer = UnMixTNS2d(bn, 4)
    assert layer.component_means.device.type == "meta" and layer.component_vars.device.type == "meta"


def test_bn1d_layer_is_source_batch_norm_with_affine_and_eps():
    m = _bn_model()
    bn = m[5]
    bn.eps = 0.3
    layer = UnMixTNS1d.from_batchnorm(bn, 2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.weight.mul_(2.0)
        layer.bias.add_(1.0)
    for x in (torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, 3, dtype=torch.float64)):
        shape = (1, 5) + (1,) * (x.dim() - 2)
        expect = (x - bn.running_mean.reshape(shape)) / (bn.running_var.reshape(shape) + 0.3).sqrt() * layer.weight.reshape(shape) + layer.bias.reshape(shape)
        torch.testing.assert_close(layer(x), expect.detach())
    import re

    with pytest.raises(ValueError, match="^" + re.escape("UnMixTNS1d expects (B, C) or (B, C, L) input, got shape (2, 5, 1, 1)") + "$"):
        layer(torch.randn(2, 5, 1, 1, dtype=torch.float64))
    assert UnMixTNS1d.from_batchnorm(bn).num_components == 16


def test_cosine_assignment_normalises_over_channels():
    layer = make_layer(3, 2, temperature=1.0)
    with torch.no_grad():
        layer.component_means.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 10.0, 0.0]], dtype=torch.float64))
    x = torch.zeros(2, 3, 2, 2, dtype=torch.float64)
    x[0, 0] = 5.0  # mean direction (1, 0, 0): cosine 1 with component 0, 0 with component 1
    x[1, 1] = 0.1  # direction (0, 1, 0)
    layer.update = "never"
    layer(x)
    p = layer.last_assignment
    e = torch.tensor(1.0, dtype=torch.float64).exp()
    torch.testing.assert_close(p, torch.tensor([[e / (e + 1), 1 / (e + 1)], [1 / (e + 1), e / (e + 1)]], dtype=torch.float64))


def test_layer_errors_name_the_problem():
    import re

    bn = nn.BatchNorm2d(3, track_running_stats=False)
    with pytest.raises(ValueError, match="^" + re.escape("layer '0': BatchNorm2d has track_running_stats=False: no source statistics to start UnMix-TNS components from") + "$"):
        replace_batchnorm(nn.Sequential(bn), 2)
    with pytest.raises(ValueError, match="^" + re.escape("layer '<model>': num_components must be >= 1, got 0") + "$"):
        replace_batchnorm(nn.BatchNorm2d(3), 0)
    with pytest.raises(ValueError, match="^" + re.escape("layer '1': num_components must be >= 1, got 0") + "$"):
        replace_batchnorm(nn.Sequential(nn.Identity(), nn.BatchNorm1d(3)), 0)
    half = nn.BatchNorm2d(3)
    half.running_var = None
    with pytest.raises(ValueError, match="track_running_stats=False"):
        UnMixTNS2d(half, 2)
    with pytest.raises(ValueError, match="^" + re.escape("update must be one of ('always', 'train', 'never'), got 'sometimes'") + "$"):
        UnMixTNS2d(nn.BatchNorm2d(3), 2, update="sometimes")
    with pytest.raises(ValueError, match="^" + re.escape("bn1d must be 'source' or 'keep', got 'drop'") + "$"):
        replace_batchnorm(nn.BatchNorm2d(3), 2, bn1d="drop")


def test_swapping_warns_only_when_nothing_is_swapped_and_names_the_model():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        replace_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), 2)  # one layer swapped: no warning
        already = replace_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), 2)
        replace_batchnorm(already, 2)  # nothing new, but UnMix-TNS layers present: no warning
    with pytest.warns(UserWarning, match=r"^UnMix-TNS: model Sequential has no BatchNorm2d/BatchNorm1d layer; nothing was swapped \(LayerNorm/GroupNorm models such as ViT, Swin, ConvNeXt gain nothing; convert SyncBatchNorm or FrozenBatchNorm2d to BatchNorm2d first\)$"):
        replace_batchnorm(nn.Sequential(nn.LayerNorm(3)), 2)


def test_from_batchnorm_passes_generator_and_options():
    bn = _bn_model()[1]
    a = UnMixTNS2d.from_batchnorm(bn, 3, torch.Generator().manual_seed(5), temperature=0.5, alpha=0.2)
    b = UnMixTNS2d(bn, 3, torch.Generator().manual_seed(5), temperature=0.5, alpha=0.2)
    assert a.temperature == 0.5 and torch.equal(a.component_means, b.component_means)
    bn1 = _bn_model()[5]
    c = UnMixTNS1d.from_batchnorm(bn1, 3, torch.Generator().manual_seed(5), alpha=0.2)
    d = UnMixTNS1d(bn1, 3, torch.Generator().manual_seed(5), alpha=0.2)
    assert torch.equal(c.component_means, d.component_means)
    torch.testing.assert_close(c.component_vars[0], 0.8 * bn1.running_var)
    torch.testing.assert_close(UnMixTNS1d(bn1, 3).component_vars[0], 0.5 * bn1.running_var)  # default alpha 0.5
    m = replace_batchnorm(_bn_model(), 3, torch.Generator().manual_seed(0), alpha=0.25)
    torch.testing.assert_close(m[5].component_vars[0], 0.75 * m[5].source_var)


def test_buffers_in_another_dtype_than_the_input():
    layer = make_layer(4, 3)  # float64 buffers and affine
    x = torch.randn(5, 4, 3, 3)
    y = layer(x)
    assert y.dtype == torch.float32
    ref = make_layer(4, 3)(x.double())
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4)


def test_replace_default_momentum_fallback_and_validation_edges():
    import re

    bn = _bn_model()[1]
    bn.momentum = None
    with pytest.warns(UserWarning, match="m=0.1 in"):
        m = replace_batchnorm(nn.Sequential(bn), 2, torch.Generator().manual_seed(0))
    assert m[0].bn_momentum == pytest.approx(0.1)
    odd = nn.BatchNorm2d(3)
    odd.track_running_stats = False  # buffers still there, but the layer does not track them
    with pytest.raises(ValueError, match="track_running_stats=False"):
        UnMixTNS2d(odd, 2)
    with pytest.raises(ValueError, match="^" + re.escape("layer '<model>': num_components must be >= 1, got 0") + "$"):
        replace_batchnorm(nn.BatchNorm1d(3), 0)
    msg = "batch sizes must be positive, got batch_size={}, batch_size_max={}"
    for bs, bmax in ((0, 5), (5, 0)):
        with pytest.raises(ValueError, match="^" + re.escape(msg.format(bs, bmax)) + "$"):
            unmix_momentum(0.1, bs, bmax)
    assert unmix_momentum(0.1, 1, 1) == pytest.approx(0.1)


def test_restore_returns_the_model():
    model = _bn_model()
    replace_batchnorm(model, 2, torch.Generator().manual_seed(0))
    assert restore_batchnorm(model) is model and isinstance(model[1], nn.BatchNorm2d)


def test_sixteen_components_by_default():
    m = _bn_model()
    assert UnMixTNS2d.from_batchnorm(m[1]).num_components == 16 and UnMixTNS1d(m[5]).num_components == 16
    swapped = replace_batchnorm(_bn_model())
    assert swapped[1].num_components == 16 and swapped[5].num_components == 16


def test_a_batchnorm_act_layers_dropout_is_carried_over():
    """timm's ``BatchNormAct2d`` keeps a ``drop`` module; the UnMix-TNS layer applies the same one."""
    bn = nn.BatchNorm2d(3)
    bn.drop = nn.Dropout(0.5)
    layer = UnMixTNS2d(bn, num_components=2, generator=torch.Generator().manual_seed(0))
    assert layer.drop is bn.drop
    plain = UnMixTNS2d(nn.BatchNorm2d(3), num_components=2, generator=torch.Generator().manual_seed(0))
    assert isinstance(plain.drop, nn.Identity)
