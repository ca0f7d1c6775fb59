"""Whole `mixhub train` processes against a hand-written PyTorch training script.

Both arms are complete processes, started alternately (hand, mixhub, hand, mixhub, ...), timed
from start to exit: imports, data, model, training, the validation pass and the final
validation and test passes. Same data (bundled digits), model (smallcnn), batch size, optimizer
(AdamW), schedule (constant lr), epochs and evaluation work; mixhub runs with checkpoints and
plots off and no plugin. Prints the ratio hand-written time / mixhub time (1.0: no overhead;
target >= 0.97), best of ``--repeats`` per arm, with the thread count set for both.

    python benchmarks/trainer_overhead.py [--epochs 10] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def hand_written(epochs: int, batch_size: int, seed: int) -> int:
    """The baseline: a plain loop a user would write (the arm run by ``--run hand``)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from mixhub.config import DataConfig, ModelConfig
    from mixhub.data import build_data
    from mixhub.models import build_model

    torch.manual_seed(seed)
    bundle = build_data(DataConfig(name="digits"), seed)
    model = build_model(ModelConfig(name="smallcnn"), bundle.input_shape, 10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    loader = DataLoader(bundle.train, batch_size=batch_size, shuffle=True, drop_last=True)
    steps = 0
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1

    @torch.no_grad()
    def evaluate(ds: torch.utils.data.Dataset) -> float:
        model.eval()
        correct = total = 0
        for x, y in DataLoader(ds, batch_size=128):
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
        return correct / max(total, 1)

    evaluate(bundle.val)  # the epoch's validation pass
    evaluate(bundle.val)  # final: validation (temperature fit) and test
    evaluate(bundle.test)
    return steps


def run_hand(args: argparse.Namespace) -> tuple[float, int]:
    cmd = [sys.executable, __file__, "--run", "hand", "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(args), check=True)
    return time.perf_counter() - t0, int(p.stdout.strip().splitlines()[-1])


def run_mixhub(args: argparse.Namespace) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "run"
        cmd = [
            sys.executable, "-m", "mixhub", "train", "--quiet", f"out={out}", "seed=0", "data.name=digits", "model.name=smallcnn",
            "optimizer.name=adamw", f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}", "train.lr=0.001",
            "train.sched=none", "train.checkpoint=false", "train.plots=false", f"train.eval_every={args.epochs}", "train.device=cpu",
        ]
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, text=True, env=_env(args), check=True)
        elapsed = time.perf_counter() - t0
        steps = int(json.loads((out / "summary.json").read_text())["steps"])
    return elapsed, steps


def _env(args: argparse.Namespace) -> dict[str, str]:
    n = str(args.threads)
    return {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--run", choices=["hand"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run == "hand":
        import torch

        torch.set_num_threads(args.threads)
        print(hand_written(args.epochs, args.batch_size, 0))
        return
    best_hand = best_mix = float("inf")
    for r in range(args.repeats):
        th, sh = run_hand(args)
        tm, sm = run_mixhub(args)
        if sh != sm:
            raise SystemExit(f"the arms ran different step counts: hand {sh}, mixhub {sm}")
        best_hand, best_mix = min(best_hand, th), min(best_mix, tm)
        print(f"repeat {r}: hand-written {th:.2f} s, mixhub train {tm:.2f} s ({sm} steps each)")
    print(
        f"whole-process ratio hand-written / mixhub train: {best_hand / best_mix:.3f} (target >= 0.97; "
        f"best of {args.repeats}, {args.epochs} epochs, torch threads {args.threads})"
    )


if __name__ == "__main__":
    main()
