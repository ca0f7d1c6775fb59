"""Two CPU processes with gloo through torchrun give the same training as one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "data.name=synthetic-regression", "data.options.n=400", "model.name=mlp", "optimizer.name=momentum", "optimizer.momentum=0.0",
    "train.epochs=3", "train.batch_size=32", "train.lr=0.05", "train.sched=none", "train.plots=false", "train.device=cpu", "--quiet",
]


def run(cmd, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd + [f"out={out}"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert p.stdout.count("run folder:") == 1, p.stdout  # under torchrun only rank 0 prints
    return recs


@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process test runs on Linux")
def test_two_process_gloo_matches_single_process(tmp_path):
    single = run([sys.executable, "-m", "mixhub", "train", *ARGS], tmp_path / "single")
    ddp = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mixhub", "train", *ARGS], tmp_path / "ddp")
    for split in ("train", "val"):
        a = [r["loss"] for r in single if r["split"] == split]
        b = [r["loss"] for r in ddp if r["split"] == split]
        assert len(a) == len(b) == 3
        for x, y in zip(a, b):
            assert abs(x - y) <= 1e-4 * max(1.0, abs(x)), (split, a, b)
    assert not (tmp_path / "ddp" / "rank1").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process test runs on Linux")
@pytest.mark.parametrize(
    "plugins",
    [["mixup"], ["adautomix"], ["rankmixup"]],
    ids=lambda p: "+".join(p),
)
def test_replicas_stay_identical_with_plugins(plugins, tmp_path):
    """Plugins that run several forward calls, or reach features outside model(x), stay in sync."""
    from mixhub.testing import tiny_config

    cfg = tiny_config(plugins=plugins, train={"device": "cpu", "checkpoint": False})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "tests/ddp_worker.py"), json.dumps(cfg), str(tmp_path)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    sums = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert sums[0] == sums[1], sums
