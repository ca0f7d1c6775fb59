"""Short CUDA check (not part of CI): AMP training with every installed plugin that trains, on a GPU.

    python benchmarks/gpu_check.py [--steps 3]

For each plugin it runs a few steps with `train.amp=true` on `cuda`, checks that the loss is
finite and that checkpoints round-trip, and prints one line per plugin with the step time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import traceback

import torch

from mixhub.doctor import smoke_config
from mixhub.plugins import discover, load_plugin
from mixhub.trainer import train


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    cases = [("core", {"plugins": []})]
    for name, info in sorted(discover().items()):
        plugin = load_plugin(info)
        cfg = smoke_config(plugin.spec)
        if cfg is not None:
            cases.append((name, cfg))
    failures = 0
    for name, cfg in cases:
        base = smoke_config(load_plugin(discover()["mixup"]).spec) if name == "core" else cfg
        base = dict(base, plugins=cfg["plugins"])
        base.setdefault("train", {}).update({"device": "cuda", "amp": True, "max_steps_per_epoch": args.steps})
        try:
            with tempfile.TemporaryDirectory() as d:
                t0 = time.time()
                r = train(base, out=d)
                torch.cuda.synchronize()
                dt = (time.time() - t0) / max(1, r.summary.get("steps", 1))
                from mixhub.trainer import Trainer

                Trainer.from_checkpoint(f"{d}/checkpoints/last.pt")
            print(f"ok    {name:12s} {dt * 1000:8.1f} ms/step (incl. eval)  test {r.summary['test']}")
        except Exception:
            failures += 1
            print(f"FAIL  {name}\n{traceback.format_exc()}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
