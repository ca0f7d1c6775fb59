"""Spec test vectors TV-A (three steps, same gradient each step) for every implementation."""

from __future__ import annotations

import mixhub_adamp.functional as Fn
import pytest
import torch
from mixhub_adamp import SGDP, AdamP

W = {
    "P0": [[1.0, 2.0], [3.0, -1.0]],
    "P1": [[1.0, 2.0], [3.0, -1.0]],
    "P2": [[1.0, 0.0], [0.0, 1.0]],
    "P3": [0.5, -0.5],
}
G = {
    "P0": [[0.2, -0.1], [0.1, 0.3]],
    "P1": [[0.5, 1.0], [0.3, -0.1]],
    "P2": [[0.1, 0.05], [0.05, -0.1]],
    "P3": [0.1, 0.2],
}

ADAMP = dict(lr=0.1, weight_decay=0.1)
SGDP_KW = dict(lr=0.1, momentum=0.9, weight_decay=0.1)

CASES = {
    "adamp": (AdamP, ADAMP, {}, [("channel", "none", "layer"), ("channel", "none", "none"), ("none", "none", "none")], {
        "P0": [0.649853059, 2.186416993, 2.779330225, -1.326071850],
        "P1": [0.673289006, 1.643588003, 2.613887010, -0.673289030],
        "P2": [0.682109930, -0.297009941, -0.297009941, 1.276129870],
        "P3": [0.188139530, -0.782159485],
    }),
    "adamp-nesterov": (AdamP, {**ADAMP, "nesterov": True}, {}, [("channel", "none", "layer"), ("none",) * 3, ("none",) * 3], {
        "P0": [0.487551496, 2.338076799, 2.594766498, -1.470688312],
        "P1": [0.515974377, 1.486273372, 2.456572383, -0.515974413],
        "P2": [0.524795313, -0.454324541, -0.454324541, 1.433444487],
        "P3": [0.030824913, -0.939474109],
    }),
    "sgdp": (SGDP, SGDP_KW, {}, [("channel", "none", "layer")] * 3, {
        "P0": [0.857932663, 1.994309719, 2.852242382, -1.136377056],
        "P1": [0.467500000, 0.935000000, 2.030100000, -0.676700000],
        "P2": [0.913380083, -0.027841676, -0.027841676, 1.024746787],
        "P3": [0.312200000, -0.469100000],
    }),
    "sgdp-copy": (SGDP, SGDP_KW, {"buffer_alias": False}, None, {
        "P0": [0.857939454, 1.994306571, 2.852246024, -1.136367117],
        "P1": [0.467500000, 0.935000000, 2.030100000, -0.676700000],
        "P2": [0.913384419, -0.027839585, -0.027839585, 1.024742760],
        "P3": [0.312200000, -0.469100000],
    }),
    "sgdp-nesterov": (SGDP, {**SGDP_KW, "nesterov": True}, {}, [("channel", "none", "layer")] * 2 + [("channel", "none", "none")], {
        "P0": [0.808665050, 2.016108508, 2.824773558, -1.207443458],
        "P1": [0.358150000, 0.716300000, 1.964490000, -0.654830000],
        "P2": [0.805807380, -0.037848888, -0.037848888, 0.957202931],
        "P3": [0.290330000, -0.512840000],
    }),
}  # fmt: skip

IMPLS = ["reference", "foreach", "fused", "branchless"]


def _branchless_steps(name: str, params: list[torch.Tensor], dtype: torch.dtype) -> list[tuple[str, ...]]:
    """Three steps through the functional multi-tensor API with the device-side decision
    forced on CPU (the path a CUDA step takes)."""
    cls, kw, extra, _, _ = CASES[name]
    grads = [torch.tensor(G[k], dtype=dtype) for k in G]
    kinds = []
    with torch.no_grad():
        if cls is AdamP:
            m = [torch.zeros_like(p) for p in params]
            v = [torch.zeros_like(p) for p in params]
            for step in (1, 2, 3):
                out = Fn.adamp_foreach_update_(
                    params,
                    grads,
                    m,
                    v,
                    step,
                    lr=kw["lr"],
                    beta1=0.9,
                    beta2=0.999,
                    eps=1e-8,
                    weight_decay=kw["weight_decay"],
                    delta=0.1,
                    wd_ratio=0.1,
                    nesterov=kw.get("nesterov", False),
                    branchless=True,
                )
                kinds.append(tuple(Fn.KINDS[int(k)] for k in out[:3]))
        else:
            bufs = [torch.zeros_like(p) for p in params]
            for _ in range(3):
                out = Fn.sgdp_foreach_update_(
                    params,
                    grads,
                    bufs,
                    lr=kw["lr"],
                    momentum=kw["momentum"],
                    dampening=0.0,
                    weight_decay=kw["weight_decay"],
                    nesterov=kw.get("nesterov", False),
                    eps=1e-8,
                    delta=0.1,
                    wd_ratio=0.1,
                    buffer_alias=extra.get("buffer_alias", True),
                    branchless=True,
                )
                kinds.append(tuple(Fn.KINDS[int(k)] for k in out[:3]))
    return kinds


def run_case(name: str, impl: str, dtype: torch.dtype = torch.float64):
    """Three steps of configuration ``name``; returns the parameters and the kinds per step."""
    cls, kw, extra, _, _ = CASES[name]
    params = [torch.tensor(W[k], dtype=dtype, requires_grad=True) for k in W]
    if impl == "branchless":
        return params, _branchless_steps(name, params, dtype)
    if impl == "capturable":  # tensor step counts, branch-free projection, on CPU tensors
        opt = cls(params, **kw, **extra, capturable=True)
    else:
        opt = cls(params, **kw, **extra, impl=impl)
    kinds = []
    for _ in range(3):
        for p, k in zip(params, G):
            p.grad = torch.tensor(G[k], dtype=dtype)
        opt.step()
        got = opt.projection_kinds()
        kinds.append(tuple(got[p] for p in params[:3]))
    return params, kinds


@pytest.mark.parametrize("impl", [*IMPLS, "capturable"])
@pytest.mark.parametrize("name", list(CASES))
def test_tv_a_float64(name: str, impl: str) -> None:
    params, kinds = run_case(name, impl)
    expected_kinds, expected = CASES[name][3], CASES[name][4]
    for p, k in zip(params, W):
        torch.testing.assert_close(
            p.detach().flatten(), torch.tensor(expected[k], dtype=torch.float64), rtol=0, atol=1e-9
        )
    if expected_kinds is not None:
        assert kinds == expected_kinds


@pytest.mark.parametrize("name", list(CASES))
def test_tv_a_float32_foreach_bitwise_equal_to_reference(name: str) -> None:
    ref, _ = run_case(name, "reference", torch.float32)
    fe, _ = run_case(name, "foreach", torch.float32)
    bl, _ = run_case(name, "branchless", torch.float32)
    for a, b, c in zip(ref, fe, bl):
        assert torch.equal(a, b)
        assert torch.equal(a, c)


@pytest.mark.parametrize("name", list(CASES))
def test_tv_a_float32_bitwise_equal_to_official(name: str) -> None:
    adamp = pytest.importorskip("adamp")
    cls, kw, extra, _, _ = CASES[name]
    if extra.get("buffer_alias") is False:
        pytest.skip("the official code always aliases the buffer")
    ours, _ = run_case(name, "reference", torch.float32)
    official_cls = adamp.AdamP if cls is AdamP else adamp.SGDP
    params = [torch.tensor(W[k], dtype=torch.float32, requires_grad=True) for k in W]
    opt = official_cls(params, **kw)
    for _ in range(3):
        for p, k in zip(params, G):
            p.grad = torch.tensor(G[k], dtype=torch.float32)
        opt.step()
    for a, b in zip(ours, params):
        assert torch.equal(a, b)
