"""Cost of Decoupled Mixup against plain mixup: the loss alone, and one full training step.

Prints ratios against the named baseline (``mixhub.mixed_cross_entropy``, the core's mixup
loss). The spec's target is a full-step ratio <= 1.02.

    python benchmarks/decoupled_speed.py [--device cpu] [--classes 100] [--threads 1]

Both parts time the two arms in interleaved rounds (best of each arm's rounds).
"""

from __future__ import annotations

import argparse
import time

import torch
from mixhub_decoupled import decoupled_mixup_loss

from mixhub import MixPlan, mixed_cross_entropy
from mixhub.models import SmallCNN


def timed(fn, repeats: int, device: torch.device) -> float:
    for _ in range(3):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / repeats)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per part")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    b, c = args.batch, args.classes
    y = torch.randint(c, (b,), generator=g).to(device)
    index = torch.randperm(b, generator=g).to(device)
    plan = MixPlan.pairs(index, 0.7)
    plan.y_a, plan.y_b = y, y[index]

    # 1. the loss alone (forward + backward through the logits)
    logits = torch.randn(b, c, generator=g).to(device).requires_grad_(True)

    def base_loss() -> None:
        mixed_cross_entropy(logits, plan).backward()

    def dm_loss() -> None:
        decoupled_mixup_loss(logits, plan.y_a, plan.y_b, 0.7, eta=0.1).backward()

    loss_base, loss_dm = [], []
    for _ in range(args.rounds):
        loss_base.append(timed(base_loss, args.repeats * 5, device))
        loss_dm.append(timed(dm_loss, args.repeats * 5, device))
    t_base, t_dm = min(loss_base), min(loss_dm)
    print(f"torch threads {torch.get_num_threads()}, {args.rounds} interleaved rounds per part")
    print(
        f"loss only   B={b} C={c}: mixup CE {t_base * 1e6:8.1f} us, DM {t_dm * 1e6:8.1f} us, ratio {t_dm / t_base:.3f}"
    )

    # 2. one full training step of the core's small CNN
    model = SmallCNN(in_chans=3, num_classes=c).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(b, 3, args.size, args.size, generator=g).to(device)

    def step(loss_fn) -> None:
        mixed = 0.7 * x + 0.3 * x[index]
        out = model(mixed)
        loss = loss_fn(out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def base_step() -> None:
        step(lambda out: mixed_cross_entropy(out, plan))

    def dm_step() -> None:
        step(lambda out: decoupled_mixup_loss(out, plan.y_a, plan.y_b, 0.7, eta=0.1))

    # interleave to share the machine's noise between the two
    t_base_s, t_dm_s = [], []
    for _ in range(args.rounds):
        t_base_s.append(timed(base_step, args.repeats, device))
        t_dm_s.append(timed(dm_step, args.repeats, device))
    tb, td = min(t_base_s), min(t_dm_s)
    print(
        f"full step   B={b} C={c} {args.size}x{args.size} SmallCNN on {device}: mixup {tb * 1e3:7.2f} ms, DM {td * 1e3:7.2f} ms, ratio {td / tb:.3f}"
    )


if __name__ == "__main__":
    main()
