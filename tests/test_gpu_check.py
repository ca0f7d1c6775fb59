"""``benchmarks/gpu_check.py --device cpu`` runs its CPU-checkable parts: the per-plugin step
checks (no host sync between log steps, bf16 + channels_last + compile, the timing table) on a
small model, and world size 1 through a real gloo process group."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _gpu_check():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("gpu_check_bench", BENCH / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_steps_check_prints_the_table(capsys):
    gc = _gpu_check()
    rc = gc.main(["--device", "cpu", "--only", "steps", "--arms", "erm,mixup-cutmix", "--model", "smallcnn", "--image-size", "16", "--batch", "8", "--timed", "2", "--steps", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = [line.split() for line in out.splitlines() if line.startswith(("erm", "mixup-cutmix"))]
    syncs = {row[0]: row[-1] for row in lines if "syncs" in row}
    assert syncs == {"erm": "0", "mixup-cutmix": "0"}, out
    assert sum("finite" in row for row in lines) == 2, out
    assert any("1.00x" in " ".join(row) for row in lines if row[0] == "erm"), out  # ERM is its own baseline


@pytest.mark.slow
def test_cpu_mode_every_check():
    gc = _gpu_check()
    assert gc.main(["--device", "cpu", "--model", "smallcnn", "--image-size", "16", "--batch", "8", "--timed", "2"]) == 0
