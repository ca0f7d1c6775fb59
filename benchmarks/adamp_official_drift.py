"""How far the default (fused) AdamP/SGDP step drifts from the official ``adamp`` 0.3.0.

    python benchmarks/adamp_official_drift.py [--steps 20] [--configs sgdp sgdp-nesterov adamp adamp-nesterov]

On timm resnet18 (``torch.manual_seed(0)``), the 512x512x3x3 convolutions of layer4 get
``--steps`` random N(0, 1) gradients (drawn for every parameter in order from a generator seeded
0, as the slow test in ``plugins/adamp/tests`` does). For each tensor it prints the max relative
difference of the default step and of the official code from the exact result (the float64
reference), of the default from the official code, and each step's projection kind (n none,
c channel, l layer) for the reference loop and the default, which must be the same.
"""

from __future__ import annotations

import argparse

import adamp
import timm
import torch
from mixhub_adamp import SGDP, AdamP

CONFIGS = {
    "sgdp": (SGDP, adamp.SGDP, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}),
    "sgdp-nesterov": (SGDP, adamp.SGDP, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": True}),
    "adamp": (AdamP, adamp.AdamP, {"lr": 1e-3, "weight_decay": 1e-2}),
    "adamp-nesterov": (AdamP, adamp.AdamP, {"nesterov": True, "weight_decay": 1e-2}),
}


def run(cls, init, grads, **kw):
    params = [p.clone().requires_grad_() for p in init]
    opt = cls(params, **kw)
    kinds = []
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
        if hasattr(opt, "projection_kinds"):
            k = opt.projection_kinds()
            kinds.append([k[p][0] for p in params])
    return [p.detach() for p in params], kinds


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = ap.parse_args()
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10)
    named = list(model.named_parameters())
    chosen = [i for i, (_, p) in enumerate(named) if p.shape == (512, 512, 3, 3)]
    gen = torch.Generator().manual_seed(0)
    grads = []
    for _ in range(args.steps):
        every = [torch.randn(p.shape, generator=gen) for _, p in named]
        grads.append([every[i] for i in chosen])
    init = [named[i][1].detach().clone() for i in chosen]
    for name in args.configs:
        cls, official_cls, kw = CONFIGS[name]
        official, _ = run(official_cls, init, grads, **kw)
        _, ref_kinds = run(cls, init, grads, impl="reference", **kw)
        default, kinds = run(cls, init, grads, **kw)
        exact, _ = run(cls, [p.double() for p in init], [[g.double() for g in gs] for gs in grads], impl="reference", **kw)
        for j, i in enumerate(chosen):
            e = exact[j].float()
            print(
                f"{name:15s} {named[i][0]:24s} default-official {max_rel(default[j], official[j]):.2e} "
                f"official-exact {max_rel(official[j], e):.2e} default-exact {max_rel(default[j], e):.2e} "
                f"kinds {''.join(k[j] for k in ref_kinds)} "
                f"{'same' if [k[j] for k in ref_kinds] == [k[j] for k in kinds] else 'DIFFER: ' + ''.join(k[j] for k in kinds)}"
            )


if __name__ == "__main__":
    main()
