"""Every functional step (multi-tensor, branch-free, capturable, fused) against the reference step,
tensor by tensor, on small tensors whose projection kinds are known: channel, layer, none and 1-D.

The fused kernels build on first use; their tests skip where they cannot (see conftest.py).
"""

from __future__ import annotations

import itertools
import math

import mixhub_adamp.functional as Fn
import pytest
import torch

ADAMP_KW = dict(lr=0.05, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, delta=0.1, wd_ratio=0.1)
SGDP_KW = dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.1, eps=1e-8, delta=0.1, wd_ratio=0.1)
KINDS = ["channel", "layer", "none", "1d"]


def _tensors(
    dtype: torch.dtype = torch.float64, seed: int = 0
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Weights and gradients whose first step projects by channel, by layer, not at all, and a bias."""
    g = torch.Generator().manual_seed(seed)
    w_c = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    rows = w_c.reshape(4, -1)
    gr = torch.randn(4, 12, generator=g, dtype=torch.float64)
    g_c = (gr - (gr * rows).sum(1, keepdim=True) / (rows * rows).sum(1, keepdim=True) * rows).reshape(
        4, 3, 2, 2
    )
    # layer: rows 1..7 orthogonal, row 0 radial (its cosine is 1), the whole tensor's cosine small
    w_l = torch.randn(8, 16, generator=g, dtype=torch.float64)
    gl = torch.randn(8, 16, generator=g, dtype=torch.float64)
    gl = gl - (gl * w_l).sum(1, keepdim=True) / (w_l * w_l).sum(1, keepdim=True) * w_l
    gl[0] = 0.01 * w_l[0]
    w_n = torch.randn(3, 5, generator=g, dtype=torch.float64)
    g_n = w_n + 0.1 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    bias, g_b = (
        torch.randn(4, generator=g, dtype=torch.float64),
        torch.randn(4, generator=g, dtype=torch.float64),
    )
    ws = [w_c, w_l, w_n, bias]
    gs = [g_c, gl, g_n, g_b]
    return [w.to(dtype) for w in ws], [x.to(dtype) for x in gs]


def test_the_tensors_project_as_named() -> None:
    ws, gs = _tensors()
    kinds = [Fn.projection(w, g, g.clone(), 0.1, 0.1, 1e-8)[2] for w, g in zip(ws[:3], gs[:3])]
    assert kinds == KINDS[:3]


def _reference_adamp(ws, gs, steps, nesterov=False, **kw):
    ws = [w.clone() for w in ws]
    m, v = [torch.zeros_like(w) for w in ws], [torch.zeros_like(w) for w in ws]
    kinds = []
    for t in range(1, steps + 1):
        kinds.append(
            [Fn.adamp_update_(w, g, a, b, t, nesterov=nesterov, **kw) for w, g, a, b in zip(ws, gs, m, v)]
        )
    return ws, m, v, kinds


def _reference_sgdp(ws, gs, steps, nesterov=False, buffer_alias=True, **kw):
    ws = [w.clone() for w in ws]
    bufs = [torch.zeros_like(w) for w in ws]
    kinds = []
    for _ in range(steps):
        kinds.append(
            [
                Fn.sgdp_update_(w, g, b, nesterov=nesterov, buffer_alias=buffer_alias, **kw)
                for w, g, b in zip(ws, gs, bufs)
            ]
        )
    return ws, bufs, kinds


def _codes(kinds) -> list[str]:
    return [k if isinstance(k, str) else Fn.KINDS[int(k)] for k in kinds]


@pytest.mark.parametrize("branchless", [None, False, True])
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adamp_foreach_is_the_reference(branchless, nesterov, wd) -> None:
    ws, gs = _tensors(torch.float32)
    kw = {**ADAMP_KW, "weight_decay": wd}
    ref, m_ref, v_ref, kinds_ref = _reference_adamp(ws, gs, 3, nesterov, **kw)
    got = [w.clone() for w in ws]
    m, v = [torch.zeros_like(w) for w in ws], [torch.zeros_like(w) for w in ws]
    kinds = [
        Fn.adamp_foreach_update_(got, gs, m, v, t, nesterov=nesterov, branchless=branchless, **kw)
        for t in (1, 2, 3)
    ]
    for a, b in zip(got + m + v, ref + m_ref + v_ref):
        assert torch.equal(a, b)
    assert [_codes(k) for k in kinds] == kinds_ref and kinds_ref[0] == KINDS
    # the branch-free path returns device tensors (codes), the host path strings
    assert all(isinstance(k, str) for k in kinds[0]) == (branchless is not True)


@pytest.mark.parametrize("branchless", [None, True])
@pytest.mark.parametrize(
    "nesterov,alias,dampening", [(False, True, 0.0), (False, False, 0.0), (True, True, 0.2)]
)
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_sgdp_foreach_is_the_reference(branchless, nesterov, alias, dampening, wd) -> None:
    ws, gs = _tensors(torch.float32)
    kw = {**SGDP_KW, "weight_decay": wd, "dampening": dampening}
    ref, b_ref, kinds_ref = _reference_sgdp(ws, gs, 3, nesterov, alias, **kw)
    got = [w.clone() for w in ws]
    bufs = [torch.zeros_like(w) for w in ws]
    kinds = [
        Fn.sgdp_foreach_update_(
            got, gs, bufs, nesterov=nesterov, buffer_alias=alias, branchless=branchless, **kw
        )
        for _ in range(3)
    ]
    for a, b in zip(got + bufs, ref + b_ref):
        assert torch.equal(a, b)
    assert [_codes(k) for k in kinds] == kinds_ref and kinds_ref[0] == KINDS


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adamp_capturable_matches_the_reference(dtype, nesterov, wd) -> None:
    ws, gs = _tensors(dtype)
    kw = {**ADAMP_KW, "weight_decay": wd}
    ref, m_ref, v_ref, kinds_ref = _reference_adamp(ws, gs, 4, nesterov, **kw)
    got = [w.clone() for w in ws]
    m, v = [torch.zeros_like(w) for w in ws], [torch.zeros_like(w) for w in ws]
    steps = [torch.zeros((), dtype=torch.float64) for _ in ws]
    kinds = [Fn.adamp_capturable_update_(got, gs, m, v, steps, nesterov=nesterov, **kw) for _ in range(4)]
    assert all(float(s) == 4 for s in steps)
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    for a, b in zip(got + m + v, ref + m_ref + v_ref):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    assert [_codes(k) for k in kinds] == kinds_ref and kinds_ref[0] == KINDS
    assert kinds[0][3] == "1d" and all(isinstance(k, torch.Tensor) for k in kinds[0][:3])


def test_adamp_capturable_bias_corrections_are_the_formula() -> None:
    """One step of a zero weight (no projection, no decay) from step count 9: the step is
    -lr / (1 - beta1^10) * m / (sqrt(v) / sqrt(1 - beta2^10) + eps), in float64."""
    w, g = torch.zeros(3, dtype=torch.float64), torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    m, v = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    step = torch.full((), 9.0, dtype=torch.float64)
    kw = {**ADAMP_KW, "weight_decay": 0.0}
    Fn.adamp_capturable_update_([w], [g], [m], [v], [step], nesterov=False, **kw)
    bc1, bc2 = 1 - 0.9**10, 1 - 0.999**10
    expect = -0.05 / bc1 * (0.1 * g) / ((0.001 * g * g).sqrt() / math.sqrt(bc2) + 1e-8)
    torch.testing.assert_close(w, expect, rtol=1e-14, atol=0)
    assert float(step) == 10


def test_projection_branchless_is_projection() -> None:
    ws, gs = _tensors()
    for w, g, code in zip(ws[:3], gs[:3], (1, 2, 0)):
        d_ref, factor, kind = Fn.projection(w, g, g.clone() * 0.5, 0.1, 0.3, 1e-8)
        d, passed, c = Fn.projection_branchless(w, g, g.clone() * 0.5, 0.1, 0.3, 1e-8)
        assert torch.equal(d, d_ref) and int(c) == code and Fn.KINDS[int(c)] == kind
        assert c.dtype == torch.int64 and c.shape == () and passed.dtype == torch.bool
        assert bool(passed) == (factor == 0.3)


def test_projection_uses_its_eps() -> None:
    """A zero weight row: with a large eps the projected direction keeps visible radial terms."""
    w = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    g = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    d, _, kind = Fn.projection(w, g, torch.ones(2, 2, dtype=torch.float64), 0.1, 0.1, 0.5)
    assert kind == "channel"
    w_hat = w / (w.norm(dim=1, keepdim=True) + 0.5)
    torch.testing.assert_close(d, 1 - w_hat * (w_hat * 1).sum(1, keepdim=True), rtol=0, atol=1e-15)


# ---------------------------------------------------------------------------- fused (CPU)
def test_fused_supported_layouts_and_dtypes(monkeypatch: pytest.MonkeyPatch, fused_kernels: None) -> None:
    assert Fn.fused_supported(torch.zeros(4, 3))
    assert Fn.fused_supported(torch.zeros(4, 3, dtype=torch.float64))
    assert not Fn.fused_supported(torch.zeros(4, 3, dtype=torch.float16))
    assert not Fn.fused_supported(torch.zeros(4, 3, dtype=torch.bfloat16))
    assert not Fn.fused_supported(torch.zeros(4, 3, device="meta"))
    assert not Fn.fused_supported(torch.zeros(0, 3))
    assert Fn.fused_supported(torch.zeros(1))  # one element is a tensor like any other
    assert not Fn.fused_supported(torch.zeros(4, 3).to_sparse())
    assert not Fn.fused_supported(torch.zeros(3, 4).t())  # 2-D, not contiguous
    assert Fn.fused_supported(torch.zeros(2, 3, 4, 4).contiguous(memory_format=torch.channels_last))
    assert not Fn.fused_supported(torch.zeros(2, 4, 4, 3).permute(0, 2, 1, 3))  # 4-D, neither layout
    assert Fn.fused_supported(torch.zeros(2, 3, 2, 4, 4).contiguous(memory_format=torch.channels_last_3d))
    assert not Fn.fused_supported(torch.zeros(2, 3, 2, 4, 4).transpose(2, 3))  # 5-D, neither layout
    assert not Fn.fused_supported(torch.zeros(2, 3, 4, 5, 6, 7).transpose(4, 5))  # 6-D, not contiguous
    monkeypatch.setattr(Fn.native, "available", lambda: False)
    assert not Fn.fused_supported(torch.zeros(4, 3))


def test_like_copies_only_when_layout_or_dtype_differs() -> None:
    p = torch.zeros(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    same = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    assert Fn._like(same, p) is same
    g = torch.randn(2, 3, 4, 4)
    out = Fn._like(g, p)
    assert out is not g and out.stride() == p.stride() and torch.equal(out, g)
    g64 = torch.randn(2, 3, 4, 4, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    out64 = Fn._like(g64, p)
    assert out64.dtype == torch.float32 and torch.equal(out64, g64.float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_fused_adamp_matches_the_reference(dtype, nesterov, wd, fused_kernels) -> None:
    ws, gs = _tensors(dtype)
    kw = {**ADAMP_KW, "weight_decay": wd}
    ref, m_ref, v_ref, kinds_ref = _reference_adamp(ws, gs, 3, nesterov, **kw)
    got = [w.clone() for w in ws]
    m, v = [torch.zeros_like(w) for w in ws], [torch.zeros_like(w) for w in ws]
    kinds = []
    for t in (1, 2, 3):
        # a non-contiguous gradient (same values) is copied to the parameter's layout
        kinds.append(
            [
                Fn.fused_adamp_update_(
                    w, g.t().contiguous().t() if g.dim() == 2 else g, a, b, t, nesterov=nesterov, **kw
                )
                for w, g, a, b in zip(got, gs, m, v)
            ]
        )
        if t == 1:  # the layer-view tensor went through the reference step: bitwise
            one, m_one, v_one, _ = _reference_adamp(ws, gs, 1, nesterov, **kw)
            assert torch.equal(got[1], one[1]) and torch.equal(m[1], m_one[1]) and torch.equal(v[1], v_one[1])
    assert kinds == kinds_ref and kinds_ref[0] == KINDS
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    for a, b in zip(got + m + v, ref + m_ref + v_ref):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "nesterov,alias,dampening", [(False, True, 0.0), (False, False, 0.0), (True, True, 0.2)]
)
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_fused_sgdp_matches_the_reference(dtype, nesterov, alias, dampening, wd, fused_kernels) -> None:
    ws, gs = _tensors(dtype)
    kw = {**SGDP_KW, "weight_decay": wd, "dampening": dampening}
    ref, b_ref, kinds_ref = _reference_sgdp(ws, gs, 3, nesterov, alias, **kw)
    got = [w.clone() for w in ws]
    bufs = [torch.zeros_like(w) for w in ws]
    kinds = []
    for t in (1, 2, 3):
        kinds.append(
            [
                Fn.fused_sgdp_update_(
                    w,
                    g.t().contiguous().t() if g.dim() == 2 else g,
                    b,
                    nesterov=nesterov,
                    buffer_alias=alias,
                    **kw,
                )
                for w, g, b in zip(got, gs, bufs)
            ]
        )
        if t == 1:  # the layer-view tensor went through the reference step: bitwise
            one, b_one, _ = _reference_sgdp(ws, gs, 1, nesterov, alias, **kw)
            assert torch.equal(got[1], one[1]) and torch.equal(bufs[1], b_one[1])
    assert kinds == kinds_ref and kinds_ref[0] == KINDS
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    for a, b in zip(got + bufs, ref + b_ref):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_both_projections_use_their_eps() -> None:
    """Rows of norm 0.01 with parallel gradients: cosine 1 with eps 1e-8 (no projection), but
    1e-4 / eps^2 = 4e-4 with eps = 0.5 (channel projection)."""
    w = torch.tensor([[0.01, 0.0], [0.0, 0.01]], dtype=torch.float64)
    for eps, kind in ((1e-8, "none"), (0.5, "channel")):
        _, _, got = Fn.projection(w, w.clone(), torch.ones(2, 2, dtype=torch.float64), 0.1, 0.1, eps)
        _, _, code = Fn.projection_branchless(
            w, w.clone(), torch.ones(2, 2, dtype=torch.float64), 0.1, 0.1, eps
        )
        assert got == Fn.KINDS[int(code)] == kind, eps
    # the layer view's eps: products of norms below eps = 1 (delta = 1): a row fails the channel
    # test either way, the layer test only passes with the large eps
    w = torch.tensor([[0.498, -0.093, -0.640], [0.146, 0.006, -0.141]], dtype=torch.float64)
    g = torch.tensor([[-0.614, -0.190, 0.635], [0.799, -0.358, -0.459]], dtype=torch.float64)
    for eps, kind in ((1e-8, "none"), (1.0, "layer")):
        _, _, got = Fn.projection(w, g, torch.ones(2, 3, dtype=torch.float64), 1.0, 0.1, eps)
        _, _, code = Fn.projection_branchless(w, g, torch.ones(2, 3, dtype=torch.float64), 1.0, 0.1, eps)
        assert got == Fn.KINDS[int(code)] == kind, eps


def test_a_cosine_exactly_at_the_threshold_does_not_project() -> None:
    """One row of 4 (channel view = layer view, sqrt(4) = 2 exactly): with delta = 2 * cos the
    test ``cos < delta / 2`` fails in both views."""
    w = torch.tensor([[1.0, 2.0, -0.5, 0.25]], dtype=torch.float64)
    g = torch.tensor([[0.3, -0.1, 0.7, 0.2]], dtype=torch.float64)
    cos = float(torch.nn.functional.cosine_similarity(g, w, dim=1, eps=1e-8).abs().max())
    for delta, kind in ((2 * cos, "none"), (2 * cos * (1 + 1e-12), "channel")):
        _, _, got = Fn.projection(w, g, g.clone(), delta, 0.1, 1e-8)
        _, _, code = Fn.projection_branchless(w, g, g.clone(), delta, 0.1, 1e-8)
        assert got == Fn.KINDS[int(code)] == kind, delta


def _channel_case():
    ws, gs = _tensors(torch.float64)
    return ws[0], gs[0]


def test_sgdp_steps_alias_the_buffer_by_default() -> None:
    """Without nesterov the official step projects the momentum buffer itself: the default."""
    w, g = _channel_case()
    kw = {**SGDP_KW, "nesterov": False}
    results = {}
    for alias in (None, True, False):
        extra = {} if alias is None else {"buffer_alias": alias}
        # a radial momentum (the weight itself): projecting the buffer removes it
        p, buf = w.clone(), w.clone()
        assert Fn.sgdp_update_(p, g, buf, **kw, **extra) == "channel"
        pf, buff = [w.clone()], [w.clone()]
        Fn.sgdp_foreach_update_(pf, [g], buff, **kw, **extra)
        results[alias] = (p, buf, pf[0], buff[0])
    for a, b in zip(results[None], results[True]):
        assert torch.equal(a, b)
    assert torch.equal(results[False][1], 0.9 * w + g)  # the copy leaves the buffer unprojected
    assert float((results[True][1] - (0.9 * w + g)).abs().max()) > 0.1


def test_fused_sgdp_aliases_by_default_and_ignores_a_negative_decay(fused_kernels) -> None:
    w, g = _channel_case()
    p, buf = w.clone(), w.clone()  # a radial momentum, removed from the aliased buffer
    Fn.fused_sgdp_update_(p, g, buf, **{**SGDP_KW, "nesterov": False})
    p_ref, buf_ref = w.clone(), w.clone()
    Fn.sgdp_update_(p_ref, g, buf_ref, **{**SGDP_KW, "nesterov": False}, buffer_alias=True)
    torch.testing.assert_close(buf, buf_ref, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(p, p_ref, rtol=1e-13, atol=1e-13)
    # weight_decay <= 0 is no decay in the fused step, as in the reference, projected or not
    ws, gs = _tensors(torch.float64)
    for (w_i, g_i), wd in itertools.product(zip(ws, gs), (0.0, -0.1)):
        pf, bf = w_i.clone(), torch.zeros_like(w_i)
        Fn.fused_sgdp_update_(pf, g_i, bf, **{**SGDP_KW, "weight_decay": wd, "nesterov": False})
        pr, br = w_i.clone(), torch.zeros_like(w_i)
        Fn.sgdp_update_(pr, g_i, br, **{**SGDP_KW, "weight_decay": wd, "nesterov": False})
        torch.testing.assert_close(pf, pr, rtol=1e-13, atol=1e-13)
        pa, ma, va = w_i.clone(), torch.zeros_like(w_i), torch.zeros_like(w_i)
        Fn.fused_adamp_update_(pa, g_i, ma, va, 1, **{**ADAMP_KW, "weight_decay": wd}, nesterov=False)
        pr2, mr, vr = w_i.clone(), torch.zeros_like(w_i), torch.zeros_like(w_i)
        Fn.adamp_update_(pr2, g_i, mr, vr, 1, **{**ADAMP_KW, "weight_decay": wd}, nesterov=False)
        torch.testing.assert_close(pa, pr2, rtol=1e-13, atol=1e-13)
    # the fused steps require state in the parameter's layout
    p4 = w.clone().contiguous(memory_format=torch.channels_last)
    with pytest.raises(AssertionError):
        Fn.fused_sgdp_update_(p4, g, torch.zeros_like(w), **SGDP_KW, nesterov=False)
    with pytest.raises(AssertionError):
        Fn.fused_adamp_update_(
            p4, g, torch.zeros_like(w), torch.zeros_like(p4), 1, **ADAMP_KW, nesterov=False
        )


def test_multi_tensor_steps_with_a_bias_first() -> None:
    """A 1-D tensor ahead of the matrices: the others are still projected."""
    ws, gs = _tensors(torch.float32)
    ws, gs = ws[::-1], gs[::-1]
    ref, m_ref, v_ref, kinds_ref = _reference_adamp(ws, gs, 1, **ADAMP_KW)
    got = [w.clone() for w in ws]
    m, v = [torch.zeros_like(w) for w in ws], [torch.zeros_like(w) for w in ws]
    kinds = Fn.adamp_foreach_update_(got, gs, m, v, 1, nesterov=False, **ADAMP_KW)
    assert kinds == kinds_ref[0] == KINDS[::-1]
    assert all(torch.equal(a, b) for a, b in zip(got, ref))


def test_off_the_cpu_the_default_decision_is_branch_free() -> None:
    """On another device (meta: shapes only) the default multi-tensor step takes the
    branch-free projection, which never reads a value on the host."""
    ws = [torch.empty(4, 3, device="meta"), torch.empty(5, device="meta")]
    gs = [torch.empty_like(w) for w in ws]
    m, v = [torch.empty_like(w) for w in ws], [torch.empty_like(w) for w in ws]
    kinds = Fn.adamp_foreach_update_(ws, gs, m, v, 1, nesterov=False, **ADAMP_KW)
    assert isinstance(kinds[0], torch.Tensor) and kinds[0].device.type == "meta" and kinds[1] == "1d"
    bufs = [torch.empty_like(w) for w in ws]
    kinds = Fn.sgdp_foreach_update_(ws, gs, bufs, nesterov=False, **SGDP_KW)
    assert isinstance(kinds[0], torch.Tensor) and kinds[1] == "1d"
