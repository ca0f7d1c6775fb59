"""Training throughput on an image folder: `mixhub train` against a plain timm loop, and C-Mixup
against mixup.

Both loops train the same model (timm ``resnet18``, no small-input stem), on the same generated
``train/`` folder of real JPEG/PNG files, at the same input size, batch size, worker count and
optimizer (AdamW), with timm's default training transform (RandomResizedCrop, flip, colour
jitter) for the same number of steps. The plain loop is written with timm's own
``create_dataset`` + ``create_loader``; mixhub runs ``Trainer.fit`` on ``imagefolder:PATH``.
Images/s is measured over the steps after a warm-up, alternating the two loops ``--rounds``
times in this process; the medians are compared.

Then mixhub trains image regression (an image-path CSV over the same files) with ``mixup`` and
with ``cmixup`` (partners drawn from the whole training set by label, decoded in the loader
workers with the anchors), alternating; prints the C-Mixup / mixup step-time ratio (target
<= 1.1). The last line is ``ratio R`` (mixhub / timm images/s; target >= 0.95).

Each mixhub round also prints the main process's CPU time per step (the step with all its
intra-op threads), and the run starts by timing the loading of one training sample (decode and
augmentation, one core): the loader workers spend that per anchor, and C-Mixup as much again per
partner. By default the workers get half the cores and the step's threads the rest (on 2 cores:
``--workers 1 --threads 1``), as on a GPU machine, where the host's cores feed the loader while
the step runs on the device. With more threads + workers than cores (``--threads 2 --workers 2``
on 2 cores) the workers' decoding competes with the step, and C-Mixup's doubled loading shows up
in its step time.

    python benchmarks/data_throughput.py [--steps 30] [--rounds 3] [--threads T] [--workers W] [--device cpu]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent


class StepClock:
    """An in-process mixhub plugin: a timestamp after every optimizer step."""

    from mixhub import PluginSpec, hookimpl

    PLUGIN = PluginSpec(name="stepclock", task_kinds=("classification", "regression"))

    def __init__(self, device: torch.device) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []  # this process's CPU time (all its threads)
        self.device = device

    @hookimpl
    def mixhub_after_step(self, state: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())


def rate(times: list[float], warmup: int, batch: int) -> float:
    timed = times[warmup:]
    return (len(timed) - 1) * batch / (timed[-1] - timed[0])


#: the main process's CPU milliseconds per timed step in the last ``mixhub_run``
LAST_CPU: dict[str, float] = {}


def mixhub_run(data: dict[str, Any], plugins: list[str], args: argparse.Namespace, extra: dict[str, Any] | None = None) -> float:
    from mixhub.trainer import Trainer

    clock = StepClock(torch.device(args.device))
    cfg = {
        "seed": 0,
        "plugins": [*plugins, "stepclock"],
        "data": {"image_size": args.size, "num_workers": args.workers, **data},
        "model": {"name": "resnet18", "small_input": False},
        "optimizer": {"name": "adamw"},
        "train": {"epochs": 1, "batch_size": args.batch, "max_steps_per_epoch": args.steps, "device": args.device, "plots": False, "checkpoint": False, "sched": "none"},
        **(extra or {}),
    }
    trainer = Trainer(cfg, extra_plugins={"stepclock": clock}, write=False)
    trainer.fit()
    del trainer
    gc.collect()
    timed = clock.cpu[args.warmup:]
    LAST_CPU["main"] = (timed[-1] - timed[0]) / (len(timed) - 1) * 1e3
    return rate(clock.times, args.warmup, args.batch)


def cpu_line() -> str:
    return f"(main process CPU {LAST_CPU['main']:.0f} ms/step)"


def sample_ms(data: dict[str, Any], args: argparse.Namespace, n: int = 200) -> float:
    """Milliseconds of one core to load one training sample (read, decode, timm's training
    transform, per-sample seeding), as a loader worker does."""
    from mixhub.config import DataConfig
    from mixhub.data import IndexedDataset, build_data

    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(1)
        try:
            ds = IndexedDataset(build_data(DataConfig(image_size=args.size, **data), 0).train)
            n = min(n, len(ds))
            ds[0]
            t = time.perf_counter()
            for i in range(n):
                ds[i]
            return (time.perf_counter() - t) / n * 1e3
        finally:
            torch.set_num_threads(args.threads)


def timm_run(train_dir: Path, args: argparse.Namespace) -> float:
    import timm
    from timm.data import create_dataset, create_loader, resolve_data_config

    device = torch.device(args.device)
    torch.manual_seed(0)
    dataset = create_dataset("", root=str(train_dir), split="train", is_training=True)
    model = timm.create_model("resnet18", num_classes=len(dataset.reader.class_to_idx)).to(device)
    cfg = resolve_data_config({"input_size": (3, args.size, args.size)}, model=model)
    loader = create_loader(
        dataset, input_size=cfg["input_size"], batch_size=args.batch, is_training=True, use_prefetcher=False,
        interpolation=cfg["interpolation"], mean=cfg["mean"], std=cfg["std"], crop_pct=cfg["crop_pct"],
        num_workers=args.workers, pin_memory=device.type == "cuda", persistent_workers=True,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    times = []
    model.train()
    for step, (x, y) in enumerate(loader):
        if step == args.steps:
            break
        x, y = x.to(device), y.to(device)
        with amp:
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
    del loader
    gc.collect()
    return rate(times, args.warmup, args.batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="loader workers (default: half the cores, at least 1)")
    ap.add_argument("--threads", type=int, default=None, help="the step's intra-op threads (default: the cores the workers leave, at least 1)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if args.workers is None:
        args.workers = max(1, cores // 2)
    if args.threads is None:
        args.threads = max(1, cores - args.workers)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    from image_data import make_regression_csv, make_train_val

    print(
        f"threads {args.threads}, device {args.device}, resnet18 at {args.size} px, batch {args.batch}, workers {args.workers}, "
        f"{args.steps} steps ({args.steps - args.warmup - 1} timed) x {args.rounds} rounds, {args.images} images of 96 px"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = make_train_val(Path(tmp) / "folder", args.images, 20, size=96)
        table = make_regression_csv(root / "train", Path(tmp) / "folder" / "train.csv")
        mix, timm_rates = [], []
        for r in range(args.rounds):
            mix.append(mixhub_run({"name": f"imagefolder:{root}"}, [], args))
            cpu = cpu_line()
            timm_rates.append(timm_run(root / "train", args))
            print(f"round {r + 1}: mixhub {mix[-1]:.1f} images/s {cpu}   timm create_dataset+create_loader {timm_rates[-1]:.1f} images/s")
        reg = {"name": f"csv:{table}", "image_column": "file", "target": "y"}
        ms = sample_ms(reg, args)
        print(
            f"loading one training sample: {ms:.2f} ms of one core; per step the workers load {args.batch} "
            f"samples for mixup ({ms * args.batch:.0f} ms) and {2 * args.batch} for cmixup ({2 * ms * args.batch:.0f} ms)"
        )
        mixup, cmixup = [], []
        for r in range(args.rounds):
            mixup.append(mixhub_run(reg, ["mixup"], args))
            cpu_mixup = cpu_line()
            cmixup.append(mixhub_run(reg, ["cmixup"], args))
            print(f"round {r + 1}: image regression, mixup {mixup[-1]:.1f} images/s {cpu_mixup}   cmixup {cmixup[-1]:.1f} images/s {cpu_line()}")
    m, t = statistics.median(mix), statistics.median(timm_rates)
    step_ratio = statistics.median(mixup) / statistics.median(cmixup)
    print(f"mixhub {m:.1f} images/s, timm {t:.1f} images/s (medians)")
    print(f"cmixup step / mixup step: {step_ratio:.3f} (target <= 1.1)")
    print(f"ratio {m / t:.3f}")


if __name__ == "__main__":
    main()
