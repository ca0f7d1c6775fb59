"""DualMix plugin: the memory side it builds, its equivalence with ER, the protocol contract,
its diagnostics and the quick bench suite."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from mixhub_dualmix import plugin as dm
from mixhub_dualmix.suites import DIGITS_DA, suites

from mixhub import Batch, PluginSpec, hookimpl
from mixhub.config import apply_overrides

TINY: dict[str, Any] = {
    "seed": 0,
    "data": {"name": "split-digits", "image_size": 8},
    "model": {"name": "smallcnn", "kwargs": {"widths": [4, 8, 8]}},
    "train": {"lr": 0.1, "sched": "none", "amp": False, "plots": False, "checkpoint": False},
    "optimizer": {"name": "momentum", "momentum": 0.0},
    "continual": {"memory_size": 20},
}


def cfg(**over: Any) -> dict[str, Any]:
    return apply_overrides(copy.deepcopy(TINY), over)


def dualmix(parts: list[str], **opts: Any) -> dict[str, Any]:
    return cfg(plugins=["dualmix"], dualmix={"parts": parts, **DIGITS_DA, **opts})


@pytest.fixture(scope="module")
def trainer() -> Any:
    from mixhub.trainer import Trainer

    return Trainer(dualmix(["A", "B", "C", "D"]), write=False)


def _step_inputs(task: int) -> tuple[Batch, Batch]:
    g = torch.Generator().manual_seed(task)
    stream = Batch(
        inputs=torch.randn(10, 3, 8, 8, generator=g), targets=torch.tensor([2, 3] * 5), index=torch.arange(10)
    )
    mem = Batch(
        inputs=torch.randn(10, 3, 8, 8, generator=g),
        targets=torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1]),
        index=torch.arange(100, 110),
    )
    return stream.replace(extras={"memory": mem}), mem


def _set_task(state: Any, task: int) -> None:
    state.task_classes = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    state.task = task


def test_memory_side_parts(trainer: Any) -> None:
    state = trainer.state
    _set_task(state, 1)
    batch, mem = _step_inputs(1)
    plan = dm.mixhub_sample_pairs(batch, state)
    assert plan.is_identity  # the stream is never mixed
    adp = plan.extras["adpmix"]
    assert adp["memory_pos"].tolist() == [0, 1, 4, 5, 8, 9]  # old classes {0, 1} only
    plan.resolve(batch)
    out = dm.mixhub_mix_batch(batch, plan, state)
    assert out.inputs is batch.inputs  # stream inputs are never augmented
    side = out.extras["dualmix_memory"]
    assert [n for n, _ in out.extras["dualmix_parts"]] == ["A", "B", "C", "D"]
    assert side.size == 30 + 6 and side.targets.shape == (36, 10)
    assert torch.allclose(side.targets.sum(1), torch.ones(36))
    assert torch.equal(side.inputs[:10], mem.inputs)  # part A: raw memory
    assert not torch.allclose(side.inputs[10:20], mem.inputs)  # part B: augmented
    mu = adp["mu_x"].item()
    mp, sp = adp["memory_pos"], adp["stream_pos"]
    assert torch.allclose(
        side.inputs[30:], mu * mem.inputs[mp] + (1 - mu) * batch.inputs[sp], atol=1e-6
    )  # originals
    outputs = dm.mixhub_forward(trainer.model, out, plan, state)
    assert outputs["memory_logits"].shape == (36, 10)
    loss = dm.mixhub_compute_loss(outputs, out, plan, state)
    loss.backward()
    assert torch.isfinite(loss)


def test_no_adpmix_in_first_task(trainer: Any) -> None:
    state = trainer.state
    _set_task(state, 0)
    batch, _ = _step_inputs(0)
    plan = dm.mixhub_sample_pairs(batch, state)
    assert "adpmix" not in plan.extras


def test_gate_diagnostics(trainer: Any) -> None:
    state = trainer.state
    _set_task(state, 1)
    opts = state.options("dualmix")
    for kappa, expect_open in ((1e9, False), (-1.0, True)):
        dm.mixhub_task_start(state)
        opts.kappa, opts.tau, opts.mu_mode = kappa, -1.0, "sample"
        for k in range(3):
            batch, _ = _step_inputs(k + 1)
            plan = dm.mixhub_sample_pairs(batch, state).resolve(batch)
            dm.mixhub_mix_batch(batch, plan, state)
        m = dm.mixhub_metrics("train", state)
        assert m["dualmix/n_adp_pairs"] == 18
        assert m["dualmix/gate_open_frac"] == (1.0 if expect_open else 0.0)
        assert m["dualmix/mu_shift_mean"] > 0 if expect_open else m["dualmix/mu_shift_mean"] == 0
        assert m["dualmix/norm_ratio_pair_mean"] > 0 and m["dualmix/norm_ratio_group"] > 0
    opts.kappa, opts.tau, opts.mu_mode = 2.0, 0.5, "batch"


def test_parts_a_only_equals_core_er_bit_for_bit() -> None:
    from mixhub.trainer import train

    er = train(cfg(plugins=["replay"]), write=False)
    a_only = train(dualmix(["A"]), write=False)
    sa, sb = er.trainer.model.state_dict(), a_only.trainer.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert er.summary["continual"]["acc_matrix"] == a_only.summary["continual"]["acc_matrix"]


def test_buffer_gets_raw_stream_after_the_step() -> None:
    from mixhub.trainer import train

    seen: list[tuple[int, bool]] = []

    class Probe:
        PLUGIN = PluginSpec(name="probe", slots=("replay_update",), task_kinds=("continual",))

        @hookimpl
        def mixhub_replay_update(self, buffer: Any, batch: Batch, state: Any) -> bool:
            # the raw stream: no memory; only the host copy of its labels for the buffer's bookkeeping
            seen.append((state.step, bool(set(batch.extras) - {"host_targets"})))
            buffer.reservoir_update(batch, state.generator)
            return True

    res = train(
        apply_overrides(dualmix(["A", "B", "C", "D"]), {"plugins": ["dualmix", "probe"]}),
        extra_plugins={"probe": Probe()},
        write=False,
    )
    assert [s for s, _ in seen] == list(range(1, len(seen) + 1)) and not any(e for _, e in seen)
    assert res.summary["test"]["dualmix/n_adp_pairs"] > 0


def test_options_are_validated() -> None:
    from mixhub.errors import ConfigError
    from mixhub.trainer import train

    with pytest.raises(ConfigError, match="parts"):
        train(cfg(plugins=["dualmix"], dualmix={"parts": ["E"]}), write=False)
    with pytest.raises(Exception, match="replay"):
        train(cfg(plugins=["dualmix", "replay"]), write=False)


def _run_quick(tmp_path: Path, arm_names: list[str] | None) -> dict[str, dict[str, float]]:
    from dataclasses import replace

    from mixhub.bench.runner import run_suite

    suite = next(s for s in suites() if s.name == "dualmix-split-digits")
    if arm_names is not None:
        suite = replace(suite, arms=[a for a in suite.arms if a.name in arm_names], comparisons=[])
    results = run_suite(suite, tmp_path, seeds=1, quick=True, progress=False)
    assert (tmp_path / "REPORT.md").exists()
    by_arm = {c["arm"]: c["metrics"] for c in results["cells"]}
    assert set(by_arm) == {a.name for a in suite.arms}
    return by_arm


def test_quick_suite_through_the_harness(tmp_path: Path) -> None:
    by_arm = _run_quick(tmp_path, ["ER", "fine-tune", "ER+DualMix(kappa=0.5)"])
    assert by_arm["fine-tune"]["test.avg_forgetting"] > 0.8
    assert by_arm["ER"]["test.avg_acc"] > by_arm["fine-tune"]["test.avg_acc"]
    assert by_arm["ER+DualMix(kappa=0.5)"]["test.dualmix/gate_open_frac"] > 0


@pytest.mark.slow
def test_quick_suite_all_arms(tmp_path: Path) -> None:
    by_arm = _run_quick(tmp_path, None)
    assert by_arm["ER+DualMix"]["test.dualmix/n_adp_pairs"] > 0


def test_resume_mid_stream_is_exact(tmp_path: Path) -> None:
    from mixhub.trainer import RunInterrupted, Trainer, train

    c = apply_overrides(dualmix(["A", "B", "C", "D"]), {"train": {"checkpoint": True}})
    full = train(copy.deepcopy(c), out=tmp_path / "full")
    t = Trainer(copy.deepcopy(c), out=tmp_path / "cut")
    step = t.train_step

    def stop_after(batch: Batch) -> Any:
        out = step(batch)
        if t.state.step == 60:  # inside the third task: AdpMix pairs are being drawn
            t.guards.stop_signal = 15
        return out

    t.train_step = stop_after  # type: ignore[method-assign]
    with pytest.raises(RunInterrupted):
        t.fit()
    resumed = train(copy.deepcopy(c), out=tmp_path / "cut", resume=True)
    a, b = full.trainer.model.state_dict(), resumed.trainer.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.summary["test"] == full.summary["test"]
