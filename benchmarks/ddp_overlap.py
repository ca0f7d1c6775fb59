"""Gradient synchronisation: the old explicit all-reduce step against DistributedDataParallel.

    python benchmarks/ddp_overlap.py [--rounds 5] [--steps 10] [--width 1024] [--depth 6] [--threads 1]

Starts itself under ``torchrun`` with 2 gloo processes on the CPU. Both arms train the same MLP
(same initial weights, same per-rank batches):

* ``explicit``: the pattern mixhub used before DDP: an all-reduced "bad batch" flag before the
  forward, an all-reduced "non-finite loss" flag before backward, the whole backward, an
  all-reduce of which parameters have gradients, one flat all-reduce of every gradient, and an
  all-reduced stop flag after the step (five collectives, four of them host-synchronised);
* ``ddp``: ``mixhub.distributed.wrap_ddp`` (bucketed all-reduces overlapped with backward), no
  per-step flags.

The arms alternate round by round (interleaved); rank 0 prints the median step time of each,
their ratio (explicit / ddp, > 1 means DDP is faster) and the collectives per step of each arm.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.distributed as dist
from torch import nn


def build(width: int, depth: int) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def flag(value: bool) -> bool:
    t = torch.tensor([1.0 if value else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def explicit_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, world: int) -> None:
    if flag(not bool(torch.isfinite(x).all())):
        return
    loss = nn.functional.cross_entropy(model(x), y)
    if flag(not bool(torch.isfinite(loss))):
        return
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in opt.param_groups for p in g["params"]]
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
    dist.all_reduce(has)
    live = [p for p, h in zip(params, has.tolist()) if h > 0]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in live]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world)
    offset = 0
    for p, g in zip(live, grads):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()
    opt.step()
    flag(False)  # stop requested?


def ddp_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def worker(args: argparse.Namespace) -> None:
    from mixhub.distributed import count_collectives, init_distributed, wrap_ddp

    torch.set_num_threads(args.threads)
    ctx = init_distributed("cpu")
    world = ctx.world_size
    plain = build(args.width, args.depth)
    plain_opt = torch.optim.SGD(plain.parameters(), lr=1e-3)
    inner = build(args.width, args.depth)
    ddp = wrap_ddp(inner, ctx)
    ddp_opt = torch.optim.SGD(inner.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1 + ctx.rank)
    data = [(torch.randn(args.batch, args.width, generator=g), torch.randint(0, 10, (args.batch,), generator=g)) for _ in range(args.steps)]
    arms = {
        "explicit": lambda x, y: explicit_step(plain, plain_opt, x, y, world),
        "ddp": lambda x, y: ddp_step(ddp, ddp_opt, x, y),
    }
    for fn in arms.values():  # warm-up (DDP rebuilds its buckets after the first step)
        for x, y in data[:2]:
            fn(x, y)
    counts = {}
    for name, fn in arms.items():
        with count_collectives() as c:
            fn(*data[0])
        counts[name] = dict(c)
    times: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(args.rounds):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        for name in order:
            dist.barrier()
            t0 = time.perf_counter()
            for x, y in data:
                arms[name](x, y)
            dist.barrier()
            times[name].append((time.perf_counter() - t0) / len(data))
    diff = max(float((a.detach() - b.detach()).abs().max()) for a, b in zip(plain.parameters(), inner.parameters()))
    if ctx.rank == 0:
        params = sum(p.numel() for p in plain.parameters())
        print(f"2 gloo processes, {args.threads} thread(s) each, MLP {args.depth}x{args.width} ({params / 1e6:.1f}M params), batch {args.batch} per process")
        for name in arms:
            print(f"{name:9s} median {statistics.median(times[name]) * 1000:8.2f} ms/step  (rounds: {', '.join(f'{t * 1000:.1f}' for t in times[name])})  collectives/step {counts[name]}")
        ratio = statistics.median(times["explicit"]) / statistics.median(times["ddp"])
        print(f"ratio explicit/ddp: {ratio:.3f}  (max |weight difference| between the arms: {diff:.2e})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if "LOCAL_RANK" not in os.environ:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__, *sys.argv[1:]]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        return subprocess.call(cmd, env=env)
    worker(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
