"""Throughput of `mixhub train` (no plugin) against a minimal hand-written PyTorch loop.

Same model (the core's smallcnn), data (bundled digits), batch size, optimizer (AdamW) and
epochs, measured side by side in one process, alternating (interleaved), best of several repeats.
Prints the ratio mixhub / hand-written (target: >= 0.97) and the torch thread count.

    python benchmarks/trainer_overhead.py [--epochs 2] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mixhub.config import DataConfig, ModelConfig
from mixhub.data import build_data
from mixhub.models import build_model
from mixhub.trainer import Trainer


def hand_loop(epochs: int, batch_size: int, seed: int) -> tuple[float, int]:
    torch.manual_seed(seed)
    bundle = build_data(DataConfig(name="digits"), seed)
    model = build_model(ModelConfig(name="smallcnn"), bundle.input_shape, 10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    loader = DataLoader(bundle.train, batch_size=batch_size, shuffle=True, drop_last=True)
    steps = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    return time.perf_counter() - t0, steps


def mixhub_loop(epochs: int, batch_size: int, seed: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as d:
        raw = {
            "seed": seed,
            "data": {"name": "digits"},
            "model": {"name": "smallcnn"},
            "optimizer": {"name": "adamw"},
            "train": {"epochs": epochs, "batch_size": batch_size, "lr": 1e-3, "sched": "none", "checkpoint": False, "plots": False},
        }
        t = Trainer(raw, out=d, write=False)
        t0 = time.perf_counter()
        steps = 0
        for epoch in range(epochs):
            t.state.epoch = epoch
            for batch in t._epoch_batches(epoch):
                t.train_step(batch)
                steps += 1
        return time.perf_counter() - t0, steps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    best_hand = best_mix = float("inf")
    for r in range(args.repeats):
        th, sh = hand_loop(args.epochs, args.batch_size, r)
        tm, sm = mixhub_loop(args.epochs, args.batch_size, r)
        best_hand = min(best_hand, th / sh)
        best_mix = min(best_mix, tm / sm)
        print(f"repeat {r}: hand {sh / th:.1f} steps/s, mixhub {sm / tm:.1f} steps/s")
    ratio = best_hand / best_mix
    print(f"throughput ratio mixhub / hand-written loop: {ratio:.3f} (target >= 0.97; torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
