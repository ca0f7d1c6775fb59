"""AdamP/SGDP: projection on hand-made gradients, parity between implementations and with
independent computations, edge cases the official code fails on, and state round trips."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from mixhub_adamp import SGDP, AdamP, projection


# ============================================================================ independent math
def independent_projection(
    w: torch.Tensor, g: torch.Tensor, u: torch.Tensor, delta: float, wd_ratio: float, eps: float
):
    """Algorithm 1 written row by row in float64 with explicit dot products."""
    w64, g64, u64 = (t.detach().double().reshape(t.shape[0], -1) for t in (w, g, u))
    for kind, rows in (("channel", w64.shape[0]), ("layer", 1)):
        wr, gr, ur = w64.reshape(rows, -1), g64.reshape(rows, -1), u64.reshape(rows, -1)
        d = wr.shape[1]
        cos = [
            abs(float(gr[i] @ wr[i])) / (max(gr[i].norm().item(), eps) * max(wr[i].norm().item(), eps))
            for i in range(rows)
        ]
        if max(cos) < delta / math.sqrt(d):
            out = ur.clone()
            for i in range(rows):
                w_hat = wr[i] / (wr[i].norm() + eps)
                out[i] = ur[i] - w_hat * (w_hat @ ur[i])
            return out.reshape(u.shape), wd_ratio, kind
    return u64.reshape(u.shape), 1.0, "none"


def independent_adamp(w, grads, lr, betas, eps, wd, delta, wd_ratio, nesterov):
    """Plain float64 AdamP (Algorithm 2) for one tensor over a list of gradients."""
    w = w.double().clone()
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    b1, b2 = betas
    for t, g in enumerate(grads, start=1):
        g = g.double()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        denom = v.sqrt() / math.sqrt(1 - b2**t) + eps
        u = ((b1 * m + (1 - b1) * g) if nesterov else m) / denom
        r = 1.0
        if w.dim() > 1:
            u, r, _ = independent_projection(w, g, u, delta, wd_ratio, eps)
        w = w * (1 - lr * wd * r) - lr / (1 - b1**t) * u
    return w


def independent_sgdp(w, grads, lr, mu, damp, wd, nesterov, delta, wd_ratio, eps, alias=True):
    w = w.double().clone()
    buf = torch.zeros_like(w)
    for g in grads:
        g = g.double()
        buf = mu * buf + (1 - damp) * g
        d = g + mu * buf if nesterov else buf
        r = 1.0
        if w.dim() > 1:
            d, r, _ = independent_projection(w, g, d, delta, wd_ratio, eps)
            if not nesterov and alias:
                buf = d
        w = w * (1 - lr * wd * r / (1 - mu)) - lr * d
    return w


# ============================================================================ projection
def test_projection_channel_view_on_orthogonal_rows() -> None:
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    g = torch.randn_like(w)
    rows = w.reshape(4, -1)
    g = (
        g.reshape(4, -1)
        - (g.reshape(4, -1) * rows).sum(1, keepdim=True) / (rows * rows).sum(1, keepdim=True) * rows
    ).reshape(w.shape)
    u = torch.randn_like(w)
    expected, r_exp, k_exp = independent_projection(w, g, u, 0.1, 0.1, 1e-8)
    got, r, kind = projection(w, g, u.clone(), 0.1, 0.1, 1e-8)
    assert (kind, r) == ("channel", 0.1) == (k_exp, r_exp)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # no radial component left in any row
    assert (got.reshape(4, -1) * rows).sum(1).abs().max() < 1e-6  # radial part gone (up to eps)


def test_projection_layer_view_when_one_row_fails() -> None:
    torch.manual_seed(1)
    w = torch.randn(8, 16, dtype=torch.float64)
    flat = w.reshape(1, -1)
    g = torch.randn_like(w)
    g = g - (g * w).sum() / (w * w).sum() * w  # orthogonal to the whole tensor
    g[0] = w[0] * 0.05 + g[0]  # one row now correlates with its weights
    g = g - (g * w).sum() / (w * w).sum() * w  # keep the layer view orthogonal
    cos_rows = F.cosine_similarity(g, w, dim=1).abs()
    assert cos_rows.max() >= 0.1 / math.sqrt(16)
    u = torch.randn_like(w)
    got, r, kind = projection(w, g, u.clone(), 0.1, 0.1, 1e-8)
    expected, _, k_exp = independent_projection(w, g, u, 0.1, 0.1, 1e-8)
    assert kind == k_exp == "layer" and r == 0.1
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert abs(float((got.reshape(1, -1) * flat).sum())) < 1e-6


@pytest.mark.parametrize("scale, kind", [(0.9, "channel"), (1.1, "none")])
def test_projection_threshold_is_delta_over_sqrt_dim(scale: float, kind: str) -> None:
    # rows of length d = 4 with |cos| = scale * delta / sqrt(d) exactly
    d, delta = 4, 0.1
    w = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]], dtype=torch.float64)
    c = scale * delta / math.sqrt(d)
    s = math.sqrt(1 - c * c)
    g = torch.tensor([[c, 0, s, 0], [0, c, 0, s]], dtype=torch.float64)
    # the layer view has d = 8 and the same |cos|, so it fails whenever the channel view fails
    _, r, got = projection(w, g, torch.ones_like(w), delta, 0.1, 1e-8)
    assert got == kind and r == (0.1 if kind == "channel" else 1.0)


def test_projection_zero_gradient_and_zero_weight() -> None:
    w = torch.zeros(3, 4)
    u = torch.randn(3, 4)
    out, r, kind = projection(w, torch.randn(3, 4), u.clone(), 0.1, 0.1, 1e-8)
    assert kind == "channel" and r == 0.1 and torch.equal(out, u)  # zero weight: passes, u unchanged
    w = torch.randn(3, 4)
    out, r, kind = projection(w, torch.zeros(3, 4), u.clone(), 0.1, 0.1, 1e-8)
    assert kind == "channel" and torch.isfinite(out).all()


def test_rows_of_length_one_never_pass_the_channel_test() -> None:
    w = torch.randn(6, 1, 1, 1)
    g = torch.randn(6, 1, 1, 1)
    _, _, kind = projection(w, g, torch.randn_like(w), 0.1, 0.1, 1e-8)
    assert kind in ("layer", "none")


# ============================================================================ parity
def _net_params(seed: int = 0):
    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", num_classes=10)
    return model, [p.detach().clone() for p in model.parameters()]


def _grads(params, regime: str, steps: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        gs = []
        for p in params:
            g = torch.randn(p.shape, generator=gen)
            if regime == "orth" and p.dim() > 1:
                rows, gr = p.reshape(p.shape[0], -1), g.reshape(p.shape[0], -1)
                gr = gr - (gr * rows).sum(1, keepdim=True) / (rows * rows).sum(1, keepdim=True) * rows
                g = gr.reshape(p.shape)
            gs.append(g)
        out.append(gs)
    return out


def _run(cls, init, grads, memory_format=None, **kw):
    params = [p.clone() for p in init]
    if memory_format is not None:
        params = [p.contiguous(memory_format=memory_format) if p.dim() == 4 else p for p in params]
    params = [p.requires_grad_() for p in params]
    opt = cls(params, **kw)
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = (
                g.clone().contiguous(memory_format=memory_format or torch.contiguous_format)
                if g.dim() == 4
                else g.clone()
            )
        opt.step()
    return [p.detach() for p in params], opt


def _max_rel(a, b):
    return max(float((x - y).abs().max() / y.abs().max().clamp_min(1e-12)) for x, y in zip(a, b))


CONFIGS = [
    (AdamP, {}),
    (AdamP, {"lr": 1e-3, "weight_decay": 1e-2}),
    (AdamP, {"nesterov": True, "weight_decay": 1e-2}),
    (SGDP, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}),
    (SGDP, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": True}),
]


@pytest.mark.parametrize("impl", ["foreach", "fused", "capturable"])
@pytest.mark.parametrize("regime", ["random", "orth"])
@pytest.mark.parametrize("cls, kw", CONFIGS)
def test_implementations_agree_on_a_network(cls, kw, regime, impl) -> None:
    """Every implementation against the reference loop: the host-decided multi-tensor step
    bitwise; the fused kernel, the capturable step (tensor step counts, branch-free) and the
    class default within rounding (1e-5 max relative after 8 steps)."""
    _, init = _net_params()
    grads = _grads(init, regime, 8)
    ref, ref_opt = _run(cls, init, grads, impl="reference", **kw)
    if impl == "capturable":
        got, opt = _run(cls, init, grads, capturable=True, **kw)
        if cls is AdamP:
            steps = [s["step"] for s in opt.state.values()]
            assert all(torch.is_tensor(t) and t.dim() == 0 and float(t) == 8 for t in steps)
    else:
        got, opt = _run(cls, init, grads, impl=impl, **kw)
    if impl == "foreach" or (impl == "capturable" and cls is SGDP):
        assert all(torch.equal(a, b) for a, b in zip(ref, got))
    else:
        assert _max_rel(got, ref) <= 1e-5
    # the same projection decisions at the last step
    ref_kinds, kinds = ref_opt.projection_kinds(), opt.projection_kinds()
    assert [ref_kinds[p] for p in ref_opt.param_groups[0]["params"]] == [
        kinds[p] for p in opt.param_groups[0]["params"]
    ]


@pytest.mark.parametrize("cls, kw", [CONFIGS[1], CONFIGS[3]])
def test_reference_matches_independent_float64(cls, kw) -> None:
    _, init = _net_params()
    init = [p.double() for p in init[:6]]
    grads = [[g.double() for g in gs[:6]] for gs in _grads(init, "orth", 5)]
    ours, _ = _run(cls, init, grads, impl="reference", **kw)
    for i, w in enumerate(init):
        gs = [g[i] for g in grads]
        if cls is AdamP:
            exp = independent_adamp(w, gs, kw["lr"], (0.9, 0.999), 1e-8, kw["weight_decay"], 0.1, 0.1, False)
        else:
            exp = independent_sgdp(
                w, gs, kw["lr"], kw["momentum"], 0.0, kw["weight_decay"], False, 0.1, 0.1, 1e-8
            )
        torch.testing.assert_close(ours[i], exp, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls, kw", CONFIGS)
def test_reference_bitwise_equal_to_official_package(cls, kw) -> None:
    adamp = pytest.importorskip("adamp")
    _, init = _net_params()
    grads = _grads(init, "random", 5)
    ours, _ = _run(cls, init, grads, impl="reference", **kw)
    official, _ = _run(adamp.AdamP if cls is AdamP else adamp.SGDP, init, grads, **kw)
    assert all(torch.equal(a, b) for a, b in zip(ours, official))


@pytest.mark.parametrize("impl", ["reference", "auto"])
def test_delta_zero_is_adamw(impl: str) -> None:
    _, init = _net_params()
    grads = _grads(init, "random", 20)
    ours, _ = _run(AdamP, init, grads, lr=1e-3, weight_decay=1e-2, delta=0.0, impl=impl)
    adamw, _ = _run(torch.optim.AdamW, init, grads, lr=1e-3, weight_decay=1e-2, foreach=False)
    for a, b in zip(ours, adamw):
        torch.testing.assert_close(a, b, rtol=1e-6 if impl == "auto" else 0, atol=1e-6)


def test_sgdp_buffer_alias_false_matches_timm() -> None:
    import timm.optim

    _, init = _net_params()
    grads = _grads(init, "random", 5)
    ours, _ = _run(SGDP, init, grads, lr=0.1, momentum=0.9, buffer_alias=False, impl="reference")
    theirs, _ = _run(timm.optim.SGDP, init, grads, lr=0.1, momentum=0.9)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("impl", ["reference", "foreach", "fused"])
@pytest.mark.parametrize("cls, kw", [CONFIGS[1], CONFIGS[3]])
def test_channels_last_runs_and_matches_contiguous(cls, kw, impl) -> None:
    _, init = _net_params()
    grads = _grads(init, "orth", 4)
    base, _ = _run(cls, init, grads, impl=impl, **kw)
    cl, _ = _run(cls, init, grads, memory_format=torch.channels_last, impl=impl, **kw)
    assert any(p.dim() == 4 and not p.is_contiguous() for p in cl)
    for a, b in zip(cl, base):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_official_package_fails_on_channels_last() -> None:
    adamp = pytest.importorskip("adamp")
    _, init = _net_params()
    with pytest.raises(RuntimeError, match="view"):
        _run(adamp.AdamP, init, _grads(init, "orth", 1), memory_format=torch.channels_last)


# ============================================================================ edge cases
@pytest.mark.parametrize("impl", ["reference", "foreach", "fused", "auto"])
@pytest.mark.parametrize("cls", [AdamP, SGDP])
def test_missing_grads_zero_rows_and_mixed_groups(cls, impl) -> None:
    torch.manual_seed(0)
    w_zero_rows = torch.randn(4, 3)
    w_zero_rows[1] = 0.0
    frozen = torch.randn(5, 5, requires_grad=True)
    params = [w_zero_rows.requires_grad_(), torch.randn(7, requires_grad=True), frozen]
    extra = torch.randn(3, 2, 2, requires_grad=True)
    kw = {"lr": 0.01, "momentum": 0.9} if cls is SGDP else {"lr": 0.01}
    opt = cls(
        [{"params": params}, {"params": [extra], "weight_decay": 0.1, "lr": 0.1, "impl": "reference"}],
        **kw,
        impl=impl,
    )
    before = frozen.detach().clone()
    for step in range(3):
        for p in (params[0], params[1], extra):
            p.grad = torch.randn_like(p) if step else torch.zeros_like(p)  # zero-norm gradients first
        params[0].grad[2] = 0.0
        opt.step()
    assert frozen not in opt.state and torch.equal(frozen.detach(), before)
    for p in (params[0], params[1], extra):
        assert torch.isfinite(p).all()
    assert sum(opt.last_projection.values()) == 3


@pytest.mark.parametrize("impl", ["reference", "foreach", "fused"])
@pytest.mark.parametrize("cls, kw", [CONFIGS[2], CONFIGS[3]])
def test_state_dict_round_trip(cls, kw, impl) -> None:
    _, init = _net_params()
    grads = _grads(init, "random", 6)
    straight, _ = _run(cls, init, grads, impl=impl, **kw)
    half, opt = _run(cls, init, grads[:3], impl=impl, **kw)
    sd = copy.deepcopy(opt.state_dict())
    params = [p.clone().requires_grad_() for p in half]
    opt2 = cls(params, impl=impl, **kw)
    opt2.load_state_dict(sd)
    for gs in grads[3:]:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt2.step()
    assert all(torch.equal(a, b.detach()) for a, b in zip(straight, params))
    if cls is AdamP:
        assert all(type(s["step"]) is int for s in opt2.state.values())


def test_official_state_loads_and_tensor_steps_become_ints() -> None:
    adamp = pytest.importorskip("adamp")
    _, init = _net_params()
    grads = _grads(init, "random", 4)
    half, official = _run(adamp.AdamP, init, grads[:2], weight_decay=1e-2)
    sd = official.state_dict()
    for st in sd["state"].values():
        st["step"] = torch.tensor(float(st["step"]))
    params = [p.clone().requires_grad_() for p in half]
    ours = AdamP(params, weight_decay=1e-2, impl="reference")
    ours.load_state_dict(sd)
    assert all(type(s["step"]) is int for s in ours.state.values())
    straight, _ = _run(adamp.AdamP, init, grads, weight_decay=1e-2)
    for gs in grads[2:]:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        ours.step()
    assert all(torch.equal(a, b.detach()) for a, b in zip(straight, params))


def test_closure_and_argument_checks() -> None:
    w = torch.randn(3, 3, requires_grad=True)
    opt = AdamP([w])

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    assert torch.is_tensor(opt.step(closure))
    with pytest.raises(ValueError):
        AdamP([w], lr=-1)
    with pytest.raises(ValueError):
        AdamP([w], betas=(1.0, 0.999))
    with pytest.raises(ValueError):
        AdamP([w], wd_ratio=-0.1)
    with pytest.raises(ValueError):
        AdamP([w], impl="triton")
    with pytest.raises(ValueError, match="momentum=1"):
        SGDP([w], lr=0.1, momentum=1.0, weight_decay=1e-4)
    with pytest.raises(ValueError, match="required optimization parameter lr"):
        SGDP([w])
    e = torch.nn.Embedding(5, 3, sparse=True)
    e(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        SGDP(e.parameters(), lr=0.1).step()


@pytest.mark.slow
@pytest.mark.parametrize("regime", ["random", "orth", "real"])
def test_resnet18_parity_and_projection_counts(regime: str) -> None:
    """The issue's acceptance check: 20 steps on timm resnet18, every configuration.

    The reference loop must equal ``adamp`` 0.3.0 bitwise. The default (fused) step must take
    the official projection decisions and stay within 1e-5 (max relative) of the official code,
    and within max(1e-5, the official code's own float32 error) of the exact (float64) result:
    the official float32 layer-view sums over up to 2.4M elements miss the exact result by
    ~1e-4 under random gradients (SGDP without nesterov), and the default follows them.
    """
    adamp = pytest.importorskip("adamp")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10)
    init = [p.detach().clone() for p in model.parameters()]
    if regime == "real":
        grads = []
        for step in range(20):
            model.zero_grad()
            gen = torch.Generator().manual_seed(step)
            x, y = torch.randn(8, 3, 64, 64, generator=gen), torch.randint(0, 10, (8,), generator=gen)
            F.cross_entropy(model(x), y).backward()
            grads.append([p.grad.clone() for p in model.parameters()])
    else:
        grads = _grads(init, regime, 20)
    for cls, kw in CONFIGS:
        _, opt = _run(cls, init, grads[:1], **kw)
        if cls is AdamP and not kw:
            counts = opt.last_projection
            expected = {"real": (20, 0, 1), "orth": (21, 0, 0)}.get(regime)
            if expected:
                assert (counts["channel"], counts["layer"], counts["none"], counts["1d"]) == (*expected, 41)
        official, _ = _run(adamp.AdamP if cls is AdamP else adamp.SGDP, init, grads, **kw)
        ours, ref_opt = _run(cls, init, grads, impl="reference", **kw)
        assert all(torch.equal(a, b) for a, b in zip(ours, official))
        fused, fused_opt = _run(cls, init, grads, impl="fused", **kw)
        exact, _ = _run(
            cls,
            [p.double() for p in init],
            [[g.double() for g in gs] for gs in grads],
            impl="reference",
            **kw,
        )
        exact = [p.float() for p in exact]
        assert _max_rel(fused, official) <= 1e-5
        assert _max_rel(fused, exact) <= max(1e-5, 1.1 * _max_rel(official, exact))
        kinds, ref_kinds = fused_opt.projection_kinds(), ref_opt.projection_kinds()
        assert [kinds[p] for p in fused_opt.param_groups[0]["params"]] == [
            ref_kinds[p] for p in ref_opt.param_groups[0]["params"]
        ]


def test_resnet18_parity_small() -> None:
    """The default suite's version of the slow resnet18 check: real gradients of timm's resnet18
    on two 32x32 images, 2 steps, on the stem, layer1 and the head (the official code and ours
    over 23 tensors, both projection views and 1-D tensors): the reference loop bitwise equal to
    ``adamp`` 0.3.0; the default (fused) and capturable steps within 1e-5 of the float64 result."""
    adamp = pytest.importorskip("adamp")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10)
    names = [n for n, _ in model.named_parameters() if n.startswith(("conv1", "bn1", "layer1", "fc"))]
    grads = []
    for step in range(2):
        model.zero_grad()
        gen = torch.Generator().manual_seed(step)
        x, y = torch.randn(2, 3, 32, 32, generator=gen), torch.randint(0, 10, (2,), generator=gen)
        F.cross_entropy(model(x), y).backward()
        named = dict(model.named_parameters())
        grads.append([named[n].grad.clone() for n in names])
    named = dict(model.named_parameters())
    init = [named[n].detach().clone() for n in names]
    for cls, kw in (CONFIGS[2], CONFIGS[4]):
        official, _ = _run(adamp.AdamP if cls is AdamP else adamp.SGDP, init, grads, **kw)
        ours, _ = _run(cls, init, grads, impl="reference", **kw)
        assert all(torch.equal(a, b) for a, b in zip(ours, official))
        exact, _ = _run(
            cls,
            [p.double() for p in init],
            [[g.double() for g in gs] for gs in grads],
            impl="reference",
            **kw,
        )
        exact = [p.float() for p in exact]
        default, _ = _run(cls, init, grads, **kw)
        capturable, _ = _run(cls, init, grads, capturable=True, **kw)
        assert _max_rel(default, exact) <= 1e-5 and _max_rel(capturable, exact) <= 1e-5


def test_without_the_kernels_the_default_is_the_multi_tensor_step() -> None:
    """The documented fallback (no compiler, or ``MIXHUB_ADAMP_NATIVE=0``): ``auto`` uses the
    multi-tensor step, bitwise equal to the reference; ``impl="fused"`` says why it cannot run."""
    import subprocess
    import sys

    code = (
        "import torch, pytest\n"
        "from mixhub_adamp import AdamP, native\n"
        "assert not native.available() and 'MIXHUB_ADAMP_NATIVE=0' in native.build_error()\n"
        "w = torch.randn(4, 3, requires_grad=True)\n"
        "opt = AdamP([w])\n"
        "assert opt._impl_for(opt.param_groups[0], w) == 'foreach'\n"
        "w.grad = torch.randn(4, 3); opt.step()\n"
        "with pytest.raises(RuntimeError, match='MIXHUB_ADAMP_NATIVE=0'):\n"
        "    w.grad = torch.randn(4, 3); AdamP([w], impl='fused').step()\n"
    )
    env = {**__import__("os").environ, "MIXHUB_ADAMP_NATIVE": "0"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
