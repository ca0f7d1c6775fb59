"""Step time of AdAutoMix (N = 2 and N = 3) against plain mixup, through the trainer's hooks.

    python benchmarks/adautomix_step.py [--steps 20] [--batch 50] [--device cpu] [--threads 1]

Builds each run with ``mixhub.trainer.Trainer`` (smallcnn 16/32/64 on 32x32 digits, SGD), warms
each up, then times ``train_step`` on the same batch in interleaved rounds (every arm once per
round, so machine load hits all arms alike) and prints the median ms/step and the ratio to
mixup, with the torch thread count (set by ``--threads``). The method card quotes an estimate of about 3.8x (N = 2) and 5.2x (N = 3) mixup's FLOPs.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from mixhub.trainer import Trainer

BASE = {
    "seed": 0,
    "data": {"name": "digits", "image_size": 32},
    "model": {"name": "smallcnn", "kwargs": {"widths": [16, 32, 64]}},
    "train": {"epochs": 1, "lr": 0.1, "weight_decay": 1e-4, "plots": False, "checkpoint": False},
    "optimizer": {"name": "sgd", "momentum": 0.9},
}

ARMS = {
    "erm": {},
    "mixup": {"plugins": ["mixup"]},
    "adautomix-n2": {"plugins": ["adautomix"], "adautomix": {"mix_samples": 2, "beta_radio": 0.1}},
    "adautomix-n3": {"plugins": ["adautomix"]},
    "adautomix-n3-cos-adv-only": {"plugins": ["adautomix"], "adautomix": {"cosine_every_step": False}},
}


def build_arm(overrides: dict, batch_size: int, device: str) -> tuple[Trainer, object]:
    cfg = copy.deepcopy(BASE)
    cfg.update(copy.deepcopy(overrides))
    cfg["train"] = {**cfg["train"], "batch_size": batch_size, "device": device}
    trainer = Trainer(cfg, write=False)
    batch = next(iter(trainer.loader))
    for _ in range(3):
        trainer.train_step(batch)
    return trainer, batch


def time_steps(trainer: Trainer, batch: object, steps: int) -> float:
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(batch)
    sync()
    return (time.perf_counter() - t0) / steps * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    built = {name: build_arm(o, args.batch, args.device) for name, o in ARMS.items()}
    times: dict[str, list[float]] = {name: [] for name in ARMS}
    for _ in range(args.repeats):
        for name, (trainer, batch) in built.items():
            times[name].append(time_steps(trainer, batch, args.steps))
    results = {name: statistics.median(t) for name, t in times.items()}
    ref = results["mixup"]
    print(
        f"device {args.device}, batch {args.batch}, threads {torch.get_num_threads()}, "
        f"median of {args.repeats} interleaved rounds x {args.steps} steps"
    )
    print(f"{'arm':28s} {'ms/step':>9s} {'x mixup':>8s}")
    for name, ms in results.items():
        print(f"{name:28s} {ms:9.1f} {ms / ref:8.2f}")


if __name__ == "__main__":
    main()
