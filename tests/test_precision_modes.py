"""bf16 autocast, torch.compile and channels_last with ERM and every in-tree training plugin.

For each arm of ``benchmarks/host_syncs.py`` (ERM, every training plugin, CutMix, Decoupled's
per-sample and k-source paths) and each mode, three optimizer steps run on CPU from the same
seed as an fp32 reference run: every loss is finite, and the first step's loss (same weights,
same batch, same plan) is within the mode's tolerance of the fp32 one:

* ``bf16``: ``train.amp_dtype=bfloat16`` (CPU autocast), relative tolerance 5e-2 (bfloat16
  keeps 8 bits of mantissa; the forward's rounding errors stay within a few percent);
* ``compile``: ``train.compile=true`` with ``train.compile_backend=aot_eager``, tolerance 1e-4.
  aot_eager traces the model through dynamo and AOTAutograd exactly as inductor does (graph
  breaks, functionalisation, the backward graph) but runs the traced ops eagerly instead of
  generating C++ kernels, so the test needs no compiler toolchain and compiles in seconds; the
  default backend stays inductor. A graph break is allowed, a crash is not;
* ``channels_last``: ``data.channels_last=true`` (model and batches), tolerance 1e-4.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers_scripts import load_script

from mixhub.config import apply_overrides
from mixhub.trainer import Trainer

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "host_syncs.py"
MODES: dict[str, tuple[dict[str, Any], float]] = {
    "bf16": ({"train": {"amp": True, "amp_dtype": "bfloat16"}}, 5e-2),
    "compile": ({"train": {"compile": True, "compile_backend": "aot_eager"}}, 1e-4),
    "channels_last": ({"data": {"channels_last": True}}, 1e-4),
}
STEPS = 3


def _bench() -> Any:
    return load_script(BENCH, "host_syncs_bench")


ARMS = {label: (plugin, overrides) for label, plugin, overrides in _bench().arms()}
_REFERENCE: dict[str, list[float]] = {}


def _config(arm: str, mode: dict[str, Any]) -> dict[str, Any]:
    plugin, overrides = ARMS[arm]
    cfg = _bench().arm_config(arm, plugin, overrides)
    cfg = apply_overrides(cfg, {"train": {"device": "cpu", "checkpoint": False, "max_steps_per_epoch": STEPS, "batch_size": 16}})
    return apply_overrides(cfg, mode) if mode else cfg


def _losses(arm: str, mode: dict[str, Any]) -> list[float]:
    torch.manual_seed(0)
    trainer = Trainer(_config(arm, mode), extra_plugins={"three-sources": _bench().ThreeSources()}, write=False)
    continual = trainer.state.task_kind == "continual"
    batches = iter(trainer.loader)
    losses = []
    for _ in range(STEPS):
        batch = next(batches)
        if continual:  # the replay slot's part: a memory batch beside the stream batch
            memory = next(batches)
            batch.extras["memory"] = memory.to(trainer.device)
        logs = trainer.train_step(batch)
        assert logs is not None, f"{arm}: a step was skipped"
        losses.append(float(logs["loss"]))
    trainer.close()
    return losses


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("arm", list(ARMS))
def test_mode_runs_and_matches_fp32(arm: str, mode: str) -> None:
    overrides, tol = MODES[mode]
    plugin, _ = ARMS[arm]
    if mode == "channels_last" and plugin == "regression":
        pytest.skip("channels_last needs image inputs (the regression arm is tabular)")
    if arm not in _REFERENCE:
        _REFERENCE[arm] = _losses(arm, {})
    ref = _REFERENCE[arm]
    got = _losses(arm, overrides)
    assert all(math.isfinite(v) for v in got), f"{arm}/{mode}: non-finite loss {got}"
    assert abs(got[0] - ref[0]) <= tol * max(1.0, abs(ref[0])), f"{arm}/{mode}: first loss {got[0]} vs fp32 {ref[0]}"
