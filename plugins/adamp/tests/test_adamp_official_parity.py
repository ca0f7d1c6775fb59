"""The default (fused) step against the official ``adamp`` 0.3.0 on ResNet-18-sized tensors.

A 512x512x3x3 convolution (layer4 of resnet18, 2.36M elements): the official code sums the
layer view's cosine and projection in float32 over the whole tensor. The default step must take
the same projection decisions and stay within 1e-5 (max relative) of it; its layer-view steps,
which the official float32 sums decide, are the official step itself (bitwise).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import fused_or_skip
from mixhub_adamp import SGDP, AdamP

adamp = pytest.importorskip("adamp")

SHAPE = (512, 512, 3, 3)
DELTA = 0.1
SGDP_KW = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}
ADAMP_KW = {"lr": 1e-3, "weight_decay": 1e-2}


@pytest.fixture(autouse=True)
def _kernels() -> None:
    fused_or_skip()


def weight(seed: int = 0) -> torch.Tensor:
    w = torch.empty(SHAPE)
    torch.nn.init.kaiming_normal_(w, generator=torch.Generator().manual_seed(seed))
    return w


def orthogonal(g: torch.Tensor, w: torch.Tensor, rows: int) -> torch.Tensor:
    """``g`` without its component along ``w``, per row of the ``rows``-row view (float64 math)."""
    g64, w64 = g.double().reshape(rows, -1), w.double().reshape(rows, -1)
    g64 = g64 - (g64 * w64).sum(1, keepdim=True) / (w64 * w64).sum(1, keepdim=True) * w64
    return g64.reshape(g.shape).float()


def run(cls, w: torch.Tensor, grads: list[torch.Tensor], **kw):
    p = w.clone().requires_grad_()
    opt = cls([p], **kw)
    kinds = []
    for g in grads:
        p.grad = g.clone()
        opt.step()
        if hasattr(opt, "projection_kinds"):
            kinds.append(opt.projection_kinds()[p])
    return p.detach(), kinds


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize(
    "cls, official, kw",
    [
        (SGDP, adamp.SGDP, SGDP_KW),
        (SGDP, adamp.SGDP, {**SGDP_KW, "nesterov": True}),
        (AdamP, adamp.AdamP, ADAMP_KW),
    ],
    ids=["sgdp", "sgdp-nesterov", "adamp"],
)
def test_default_step_follows_the_official_code_on_a_resnet18_conv(cls, official, kw) -> None:
    """Steps of every kind on one 512x512x3x3 tensor: layer view (gradients orthogonal to the
    whole weight), channel view (orthogonal per output channel), none (random)."""
    w = weight()
    gen = torch.Generator().manual_seed(1)
    # each gradient is made orthogonal to the weight it meets (on the reference trajectory)
    p = w.clone().requires_grad_()
    opt = cls([p], impl="reference", **kw)
    grads = []
    for rows in (1, 1, SHAPE[0], None, None):
        g = torch.randn(SHAPE, generator=gen)
        if rows is None:  # a layer cosine 10x the threshold: no projection
            grads.append(_gradient_at(p.detach(), 10 * DELTA / math.sqrt(w.numel()), g))
        else:
            grads.append(orthogonal(g, p.detach(), rows))
        p.grad = grads[-1].clone()
        opt.step()
    ref, ref_kinds = run(cls, w, grads, impl="reference", **kw)
    off, _ = run(official, w, grads, **kw)
    assert torch.equal(ref, off)
    # after the two layer-view steps alone, the default is the official step bitwise
    two, kinds = run(cls, w, grads[:2], **kw)
    assert kinds == ["layer", "layer"]
    assert torch.equal(two, run(official, w, grads[:2], **kw)[0])
    got, kinds = run(cls, w, grads, **kw)
    assert kinds == ref_kinds == ["layer", "layer", "channel", "none", "none"]
    assert max_rel(got, off) <= 1e-5


def _gradient_at(w: torch.Tensor, cosine: float, g: torch.Tensor) -> torch.Tensor:
    """``g`` made orthogonal to ``w`` (layer view), plus the multiple of ``w`` that puts the layer
    view's float64 cosine with ``w`` at ``cosine`` (the channel test fails: rows stay random)."""
    noise = orthogonal(g, w, 1).double()
    w64 = w.double()
    # cos = a |w| / sqrt(a^2 |w|^2 + |noise|^2)  =>  a = cos |noise| / (|w| sqrt(1 - cos^2))
    a = cosine * noise.norm() / (w64.norm() * math.sqrt(1 - cosine**2))
    return (noise + a * w64).float()


def test_projection_decisions_near_the_threshold_are_the_official_ones() -> None:
    """Where the float32 cosine of the official code and the exact cosine fall on opposite sides
    of delta / sqrt(dim), the default step decides as the official code does, and its step is
    the official one."""
    w = weight()
    thr = DELTA / math.sqrt(w.numel())
    cases = []
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    for k in range(-10, 11):
        g = _gradient_at(w, (1 + 2e-5 * k) * thr, noise)
        exact = float((g.double() * w.double()).sum() / (g.double().norm() * w.double().norm()))
        official = float(F.cosine_similarity(g.reshape(1, -1), w.reshape(1, -1), dim=1, eps=1e-8).abs())
        assert abs(exact / thr - 1) < 1e-3  # within the band where the default leaves the call to float32
        cases.append((g, official < thr, abs(exact) < thr))
    disagree = [c for c in cases if c[1] != c[2]]
    assert disagree, "no case where the float32 and float64 cosines disagree: the test would prove nothing"
    for g, official_passes, _ in disagree[:2] + [c for c in cases if c[1] == c[2]][:1]:
        for cls, off_cls, kw in ((SGDP, adamp.SGDP, SGDP_KW), (AdamP, adamp.AdamP, ADAMP_KW)):
            got, kinds = run(cls, w, [g], **kw)
            assert kinds == ["layer" if official_passes else "none"], (cls.__name__, official_passes)
            assert torch.equal(got, run(off_cls, w, [g], **kw)[0])
