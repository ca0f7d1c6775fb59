"""Time one optimizer step of AdamP/SGDP implementations side by side on a timm model's parameters.

    OMP_NUM_THREADS=2 python benchmarks/adamp_step.py [--model resnet18] [--regime orth] [--threads 2]

The last lines print the targets: the timm factory path (``create_optimizer_v2(params,
"mixhubadamp")``) and the class default (``AdamP(params)``) each >= 3x faster than
``timm.optim.AdamP``, and the default step within 2x of torch's fused AdamW.

Compared, on the same parameters and preset gradients (lr 1e-3, wd 1e-2 for the Adam family;
lr 0.1, momentum 0.9, wd 1e-4 for SGD/SGDP):
torch AdamW (for-loop, foreach, fused), timm AdamP, the official ``adamp`` 0.3.0 (when
installed), and mixhub-adamp's AdamP: the class default, the timm factory name ``mixhubadamp``,
and ``impl`` reference / foreach / fused (the capturable CUDA path is checked for equality
only: on CPU it is the slowest); then torch SGD,
timm SGDP and ours for SGDP. Protocol: every optimizer warmed up, then interleaved in shuffled
rounds; the median ms per step is reported with ratios against timm AdamP (SGDP: timm SGDP) and
against fused AdamW. Before any timing, an equality check runs: ours (reference) against the
official package bitwise and ours (fused) within 1e-5 relative, after a few steps.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable

import mixhub_adamp
import timm
import timm.optim
import torch
from mixhub_adamp import SGDP, AdamP

try:
    import adamp as official
except ImportError:  # optional
    official = None


def make_grads(params: list[torch.Tensor], regime: str, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    grads = []
    for p in params:
        g = torch.randn(p.shape, generator=gen)
        if regime == "orth" and p.dim() > 1:
            rows, gr = p.reshape(p.shape[0], -1), g.reshape(p.shape[0], -1)
            g = (gr - (gr * rows).sum(1, keepdim=True) / (rows * rows).sum(1, keepdim=True) * rows).reshape(
                p.shape
            )
        grads.append(g)
    return grads


def clone_with_grads(init: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
    params = [p.clone().requires_grad_() for p in init]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    return params


def check_equality(init: list[torch.Tensor], grads: list[torch.Tensor], steps: int) -> None:
    """Ours vs the official code (or ours reference, when ``adamp`` is missing); raises on mismatch."""
    cases = [
        (AdamP, official.AdamP if official else None, dict(lr=1e-3, weight_decay=1e-2)),
        (
            SGDP,
            official.SGDP if official else None,
            dict(lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True),
        ),
    ]
    for ours_cls, off_cls, kw in cases:
        runs = {}
        makers = {
            "reference": lambda ps, c=ours_cls, kw=kw: c(ps, impl="reference", **kw),
            "fused": lambda ps, c=ours_cls, kw=kw: c(ps, impl="fused", **kw),
            "default": lambda ps, c=ours_cls, kw=kw: c(ps, **kw),
            "capturable": lambda ps, c=ours_cls, kw=kw: c(ps, capturable=True, **kw),
        }
        if off_cls is not None:
            makers["official"] = lambda ps, c=off_cls, kw=kw: c(ps, **kw)
        for name, make in makers.items():
            ps = clone_with_grads(init, grads)
            opt = make(ps)
            for _ in range(steps):
                opt.step()
            runs[name] = [p.detach() for p in ps]
        ref = runs.get("official", runs["reference"])
        if "official" in runs:
            bitwise = sum(torch.equal(a, b) for a, b in zip(runs["reference"], ref))
            assert bitwise == len(ref), (
                f"{ours_cls.__name__} reference: only {bitwise}/{len(ref)} tensors bitwise equal"
            )
        rels = {}
        for name in ("fused", "default", "capturable"):
            rels[name] = max(
                float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(runs[name], ref)
            )
            assert rels[name] <= 1e-5, (
                f"{ours_cls.__name__} {name}: max relative difference {rels[name]:.2e} > 1e-5"
            )
        against = "official adamp 0.3.0" if "official" in runs else "our reference loop"
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in rels.items())
        print(
            f"equality {ours_cls.__name__}: reference bitwise; max rel diff {diffs} vs {against} ({steps} steps)"
        )


def time_all(
    init, grads, makers: dict[str, Callable], warmup: int, rounds: int, per_round: int
) -> dict[str, float]:
    """Median ms per step of each optimizer; all optimizers interleaved in shuffled rounds."""
    opts = {}
    for name, make in makers.items():
        opts[name] = make(clone_with_grads(init, grads))
        for _ in range(warmup):
            opts[name].step()
    times: dict[str, list[float]] = {n: [] for n in opts}
    for _ in range(rounds):
        names = list(opts)
        random.shuffle(names)
        for name in names:
            for _ in range(per_round):
                t0 = time.perf_counter()
                opts[name].step()
                times[name].append(time.perf_counter() - t0)
    return {n: 1e3 * statistics.median(v) for n, v in times.items()}


def report(title: str, ms: dict[str, float], ref: str, fused: str) -> None:
    print(f"\n{title}: median ms per step, ratio = reference time / this time")
    print(f"| optimizer | ms / step | speed-up vs {ref} | vs {fused} |")
    print("|---|---|---|---|")
    for name, v in ms.items():
        print(f"| {name} | {v:.2f} | {ms[ref] / v:.2f}x | {ms[fused] / v:.2f}x |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--regime", choices=["random", "orth"], default="orth")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--per-round", type=int, default=3)
    ap.add_argument("--check-steps", type=int, default=3)
    ap.add_argument("--skip-sgdp", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=10)
    init = [p.detach().clone() for p in model.parameters()]
    grads = make_grads(init, args.regime)
    n = sum(p.numel() for p in init)
    print(
        f"{args.model}: {len(init)} tensors ({sum(p.dim() > 1 for p in init)} >=2-D), {n / 1e6:.2f}M parameters; "
        f"gradients {args.regime}; torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads; "
        f"fused kernels: {mixhub_adamp.fused_available()}"
    )
    if not mixhub_adamp.fused_available():
        print(f"fused kernels unavailable: {mixhub_adamp.native.build_error()}", file=sys.stderr)
        return 1
    mixhub_adamp.register_timm()
    check_equality(init, grads, args.check_steps)
    adam = dict(lr=1e-3, weight_decay=1e-2)
    makers: dict[str, Callable] = {
        "torch AdamW for-loop": lambda ps: torch.optim.AdamW(ps, foreach=False, **adam),
        "torch AdamW foreach": lambda ps: torch.optim.AdamW(ps, foreach=True, **adam),
        "torch AdamW fused": lambda ps: torch.optim.AdamW(ps, fused=True, **adam),
        "timm AdamP": lambda ps: timm.optim.AdamP(ps, **adam),
    }
    if official is not None:
        makers["adamp 0.3.0 AdamP"] = lambda ps: official.AdamP(ps, **adam)
    makers["ours AdamP default"] = lambda ps: AdamP(ps, **adam)
    makers["ours timm factory mixhubadamp"] = lambda ps: timm.optim.create_optimizer_v2(
        ps, "mixhubadamp", **adam
    )
    for impl in ("reference", "foreach", "fused"):
        makers[f"ours AdamP {impl}"] = lambda ps, impl=impl: AdamP(ps, impl=impl, **adam)
    ms = time_all(init, grads, makers, args.warmup, args.rounds, args.per_round)
    report("AdamP", ms, "timm AdamP", "torch AdamW fused")
    timm_ms, fused_ms = ms["timm AdamP"], ms["torch AdamW fused"]
    print()
    for name in ("ours timm factory mixhubadamp", "ours AdamP default"):
        ratio = timm_ms / ms[name]
        print(
            f"target {name}: {ratio:.2f}x faster than timm AdamP (>= 3x: {'met' if ratio >= 3 else 'MISSED'})"
        )
    ratio = ms["ours AdamP default"] / fused_ms
    print(
        f"target ours AdamP default: {ratio:.2f}x the time of torch AdamW fused "
        f"(<= 2x: {'met' if ratio <= 2 else 'MISSED'})"
    )
    if not args.skip_sgdp:
        sgd = dict(lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
        makers = {
            "torch SGD for-loop": lambda ps: torch.optim.SGD(ps, foreach=False, **sgd),
            "torch SGD fused": lambda ps: torch.optim.SGD(ps, fused=True, **sgd),
            "timm SGDP": lambda ps: timm.optim.SGDP(ps, **sgd),
        }
        makers["ours SGDP default"] = lambda ps: SGDP(ps, **sgd)
        for impl in ("reference", "fused"):
            makers[f"ours SGDP {impl}"] = lambda ps, impl=impl: SGDP(ps, impl=impl, **sgd)
        ms = time_all(init, grads, makers, args.warmup, args.rounds, args.per_round)
        report("SGDP (nesterov)", ms, "timm SGDP", "torch SGD fused")
    return 0


if __name__ == "__main__":
    sys.exit(main())
