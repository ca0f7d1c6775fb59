"""Forward cost of UnMix-TNS layers against eval-mode BatchNorm (and train-mode BN, "TBN").

timm resnet18 (10 classes), input [B, 3, 32, 32], CPU, ``torch.no_grad()``, eval mode. The
variants are timed in interleaved rounds (so machine load hits them alike); the median per
variant is reported with its ratio to eval BN measured in the same run. Also times
``torch.var_mean`` against the two-pass variance on the layer's typical shapes.

    OMP_NUM_THREADS=1 python benchmarks/unmixtns_layer.py [--batch 64] [--rounds 12] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import timm
import torch
from mixhub_unmixtns.functional import instance_stats, replace_batchnorm


def time_call(fn, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--reps", type=int, default=3, help="forwards per variant per round")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--model", default="resnet18")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = timm.create_model(args.model, num_classes=10, pretrained=False).eval()
    with torch.no_grad():  # give the BNs non-trivial source statistics
        base.train()
        for _ in range(3):
            base(torch.randn(32, 3, 32, 32))
        base.eval()
    x = torch.randn(args.batch, 3, 32, 32)
    variants = {"eval BN": base}
    tbn = copy.deepcopy(base)
    for m in tbn.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.train()
    variants["train-mode BN (TBN)"] = tbn
    for k in (16, 128):
        m = replace_batchnorm(copy.deepcopy(base), k, torch.Generator().manual_seed(0), batch_size=args.batch)
        variants[f"UnMix-TNS K={k}"] = m
    times: dict[str, list[float]] = {n: [] for n in variants}
    with torch.no_grad():
        for m in variants.values():  # warm-up
            m(x)
        for _ in range(args.rounds):
            for name, m in variants.items():
                times[name].append(time_call(lambda m=m: m(x), args.reps))
    med = {n: statistics.median(t) for n, t in times.items()}
    ref = med["eval BN"]
    print(f"# {args.model}, input {args.batch}x3x32x32, CPU threads={torch.get_num_threads()}, torch {torch.__version__}, "
          f"timm {timm.__version__}, median of {args.rounds} interleaved rounds x {args.reps} forwards")
    print(f"{'variant':<24} {'ms/forward':>10} {'ratio':>7}")
    for n, v in med.items():
        print(f"{n:<24} {v:10.2f} {v / ref:6.2f}x")
    print("targets: K=16 <= 1.60x, K=128 <= 2.00x eval BN")
    print("\n# per-instance variance over (H, W): torch.var_mean vs two passes (ms per call)")
    for shape in ((args.batch, 64, 8, 8), (args.batch, 256, 2, 2), (args.batch, 512, 1, 1)):
        t = torch.randn(shape)
        with torch.no_grad():
            vm = statistics.median(time_call(lambda t=t: torch.var_mean(t, dim=(2, 3), correction=0), 5) for _ in range(5))
            tp = statistics.median(time_call(lambda t=t: instance_stats(t), 5) for _ in range(5))
        print(f"{str(shape):<20} var_mean {vm:7.3f}  two-pass {tp:7.3f}")


if __name__ == "__main__":
    main()
