"""Memory of lazily loaded image folders: 1,000 vs 10,000 real JPEG/PNG files at 128 px.

For each size a fresh process builds the run (``Trainer`` on ``imagefolder:PATH``: listing,
split, transforms, model, loader) and iterates one epoch of the training loader (every image
decoded and augmented by the workers). Prints the peak resident memory of that process and of
its loader workers, and the growth from 1k to 10k images (target: < 100 MB; an in-memory float32
array of the same images grows by ``9,000 x 128 x 128 x 3 x 4`` bytes, about 1.8 GB).

    python benchmarks/data_scale.py [--sizes 1000 10000] [--threads 1] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(folder: str, workers: int, threads: int) -> dict[str, float]:
    """In this process: build the run, one epoch of loading; peak RSS (MB) of self and workers."""
    import torch

    torch.set_num_threads(threads)
    from mixhub.trainer import Trainer

    cfg = {
        "seed": 0,
        "data": {"name": f"imagefolder:{folder}", "image_size": 128, "num_workers": workers},
        "model": {"name": "resnet18", "small_input": False},
        "train": {"epochs": 1, "batch_size": 64, "device": "cpu", "plots": False, "checkpoint": False},
    }
    trainer = Trainer(cfg, write=False)
    n = 0
    trainer.sampler.epoch = 0
    for batch in trainer.loader:
        n += batch.size
    del trainer
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"images": n, "peak_rss_mb": self_mb, "worker_peak_rss_mb": children_mb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.workers, args.threads)))
        return
    sys.path.insert(0, str(HERE))
    from image_data import make_image_folder

    print(f"threads {args.threads}, loader workers {args.workers}, 128 px images (JPEG, every 10th PNG), resnet18, batch 64")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            folder = make_image_folder(Path(tmp) / f"n{n}", n)
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            out = subprocess.run(
                [sys.executable, __file__, "--measure", str(folder), "--workers", str(args.workers), "--threads", str(args.threads)],
                capture_output=True, text=True, env=env, check=False,
            )
            if out.returncode != 0:
                sys.exit(out.stderr[-3000:])
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[n] = r
            array_mb = n * 128 * 128 * 3 * 4 / 2**20
            print(
                f"{n:>6} images: build + one epoch ({r['images']} loaded): peak RSS {r['peak_rss_mb']:.0f} MB, "
                f"loader workers {r['worker_peak_rss_mb']:.0f} MB (an in-memory float32 array: {array_mb:.0f} MB)"
            )
    lo, hi = min(results), max(results)
    growth = results[hi]["peak_rss_mb"] - results[lo]["peak_rss_mb"]
    growth_w = results[hi]["worker_peak_rss_mb"] - results[lo]["worker_peak_rss_mb"]
    print(f"growth {lo} -> {hi} images: {growth:.1f} MB (workers {growth_w:.1f} MB; target < 100 MB)")


if __name__ == "__main__":
    main()
