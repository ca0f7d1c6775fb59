"""The online class-incremental protocol: split-digits, the replay buffer, metrics, the task loop."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from mixhub import Batch, PluginSpec, hookimpl
from mixhub.config import DataConfig, load_config
from mixhub.continual_metrics import average_accuracy, average_forgetting, error_shares
from mixhub.data import build_data
from mixhub.errors import DataError
from mixhub.plan import MixPlan
from mixhub.replay_memory import ReplayBuffer, replay_loss
from mixhub.run.plots import plot_accuracy_matrix

TINY: dict[str, Any] = {
    "seed": 0,
    "data": {"name": "split-digits", "image_size": 8},
    "model": {"name": "smallcnn", "kwargs": {"widths": [4, 8, 8]}},
    "train": {"lr": 0.1, "sched": "none", "amp": False, "plots": False},
    "optimizer": {"name": "momentum", "momentum": 0.0},
    "continual": {"memory_size": 20},
}


def tiny(**over: Any) -> dict[str, Any]:
    from mixhub.config import apply_overrides

    return apply_overrides(copy.deepcopy(TINY), over)


# =============================================================================== data
def test_split_digits_tasks_are_disjoint_and_seeded() -> None:
    b = build_data(DataConfig(name="split-digits", image_size=8), 0)
    s = b.stream
    assert b.task == "continual" and s is not None and len(s.tasks) == 5
    flat = [c for t in s.task_classes for c in t]
    assert sorted(flat) == list(range(10)) and all(len(t) == 2 for t in s.task_classes)
    for t, classes in enumerate(s.task_classes):
        assert set(s.tasks[t].targets.tolist()) == set(classes)
        assert set(s.test[t].targets.tolist()) == set(classes)
    again = build_data(DataConfig(name="split-digits", image_size=8), 0).stream
    other = build_data(DataConfig(name="split-digits", image_size=8), 1).stream
    assert again.task_classes == s.task_classes and other.task_classes != s.task_classes
    assert len(b.train) == sum(len(t) for t in s.tasks)
    assert torch.equal(b.train_targets, torch.cat([torch.as_tensor(t.targets) for t in s.tasks]))


def test_split_digits_replicas_are_small_shifts() -> None:
    one = build_data(DataConfig(name="split-digits", image_size=8), 0).stream
    three = build_data(
        DataConfig(name="split-digits", image_size=8, options={"replicas": 3, "noise": 0.0}), 0
    ).stream
    assert len(three.tasks[0]) == 3 * len(one.tasks[0])
    x0 = one.tasks[0].inputs[0]
    copy_ = three.tasks[0].inputs[len(one.tasks[0])]  # the first image, second replica
    best = min(
        float(
            abs(torch.roll(torch.as_tensor(x0), (dy, dx), (0, 1)) - torch.as_tensor(copy_))[1:-1, 1:-1].max()
        )
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    )
    assert best < 1e-6
    with pytest.raises(DataError, match="augment"):
        build_data(DataConfig(name="split-digits", augment="light"), 0)
    with pytest.raises(DataError, match="unknown option"):
        build_data(DataConfig(name="split-digits", options={"replica": 2}), 0)


# =============================================================================== buffer
def _batch(start: int, n: int) -> Batch:
    idx = torch.arange(start, start + n)
    return Batch(
        inputs=idx.float()[:, None], targets=idx % 10, index=idx, task_id=torch.zeros(n, dtype=torch.long)
    )


def test_reservoir_fills_then_samples_uniformly() -> None:
    buf = ReplayBuffer(5)
    buf.reservoir_update(_batch(0, 3))
    assert len(buf) == 3 and buf.index[:3].tolist() == [0, 1, 2]
    counts = torch.zeros(100)
    for trial in range(400):
        b = ReplayBuffer(10)
        g = torch.Generator().manual_seed(trial)
        for k in range(10):
            b.reservoir_update(_batch(10 * k, 10), g)
        counts[b.index] += 1
        assert b.seen == 100 and len(b) == 10
        assert torch.equal(b.inputs[:, 0].long(), b.index)  # rows stay consistent
    # every stream sample is kept with probability 10/100, wherever it came in the stream:
    # counts ~ Binomial(400, 0.1) (mean 40, SD 6) for each of the 100 samples
    early, late = float(counts[:10].mean()), float(counts[90:].mean())
    assert abs(early - 40.0) < 6.0 and abs(late - 40.0) < 6.0, (early, late)  # SD of a 10-mean: 1.9
    chi2 = float(((counts - 40.0) ** 2 / 40.0).sum())  # about 90 for a uniform reservoir
    assert chi2 < 140.0, chi2
    assert float(counts.min()) > 15 and float(counts.max()) < 70


def test_random_retrieve_and_state_dict(tmp_path: Path) -> None:
    buf = ReplayBuffer(8)
    assert buf.random_retrieve(4) is None
    buf.reservoir_update(_batch(0, 6))
    mem = buf.random_retrieve(4, torch.Generator().manual_seed(0))
    assert mem is not None and mem.size == 4 and len(set(mem.index.tolist())) == 4
    assert buf.random_retrieve(50).size == 6
    torch.save(buf.state_dict(), tmp_path / "b.pt")
    other = ReplayBuffer(8)
    other.load_state_dict(torch.load(tmp_path / "b.pt", weights_only=True))
    assert torch.equal(other.inputs, buf.inputs) and other.seen == 6 and len(other) == 6
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(3).load_state_dict(buf.state_dict())


# =============================================================================== metrics
MATRIX = [
    [0.9, 0.0, 0.0],
    [0.6, 0.8, 0.0],
    [0.5, 0.4, 0.7],
]


def test_average_accuracy_and_forgetting() -> None:
    assert average_accuracy(MATRIX) == pytest.approx((0.5 + 0.4 + 0.7) / 3)
    assert average_accuracy(MATRIX, after=0) == pytest.approx(0.3)
    # paper Eq. 15: tasks j < T, max over rows l < T: ((0.9-0.5) + (0.8-0.4)) / 2
    assert average_forgetting(MATRIX) == pytest.approx(0.4)
    # mai: all T tasks, max over all rows: (0.4 + 0.4 + 0) / 3
    assert average_forgetting(MATRIX, "mai") == pytest.approx(0.8 / 3)
    assert average_forgetting(MATRIX, after=1) == pytest.approx(0.3)
    assert average_forgetting([[0.5]]) == 0.0
    with pytest.raises(ValueError):
        average_forgetting(MATRIX, "other")


def test_error_shares_by_hand() -> None:
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    pred = torch.tensor([0, 2, 3, 1, 0, 9, 3, 1])  # new classes {2, 3}, old {0, 1}
    s = error_shares(pred, targets, new_classes=[2, 3], old_classes=[0, 1])
    # new wrong: (2->0), (2->9), (3->1): 2 of 3 went to old classes
    assert s["er_no"] == pytest.approx(2 / 3)
    # old wrong: (0->2), (1->3): both went to new classes
    assert s["er_on"] == pytest.approx(1.0)
    first = error_shares(pred, targets, new_classes=[0, 1], old_classes=[])
    assert first["er_no"] is None


def test_accuracy_heat_map(tmp_path: Path) -> None:
    p = plot_accuracy_matrix(MATRIX, tmp_path / "m.png")
    assert p.read_bytes()[:4] == b"\x89PNG"


def test_replay_loss_is_stream_plus_memory_ce() -> None:
    g = torch.Generator().manual_seed(0)
    z, zm = torch.randn(4, 5, generator=g), torch.randn(3, 5, generator=g)
    y, ym = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 4, 0])
    mem = Batch(inputs=torch.zeros(3, 1), targets=ym, index=torch.arange(3))
    batch = Batch(inputs=torch.zeros(4, 1), targets=y, index=torch.arange(4), extras={"memory": mem})
    plan = MixPlan.identity(4).resolve(batch)
    ref = torch.nn.functional.cross_entropy(z, y) + torch.nn.functional.cross_entropy(zm, ym)
    assert torch.allclose(replay_loss({"logits": z, "memory_logits": zm}, batch, plan), ref)
    assert torch.allclose(replay_loss({"logits": z}, batch, plan), torch.nn.functional.cross_entropy(z, y))


def test_config_section() -> None:
    from mixhub.errors import ConfigError

    run = load_config({"continual": {"retrieve_size": 5, "forgetting": "mai"}})
    assert run.continual.retrieve_size == 5 and run.continual.forgetting == "mai"
    with pytest.raises(ConfigError, match="memory_sise"):
        load_config({"continual": {"memory_sise": 5}})


# =============================================================================== the task loop
def _probe() -> Any:
    """An in-process plugin that owns replay_update and records what the core hands it."""
    log: dict[str, list[Any]] = {"update": [], "memory": []}

    class Probe:
        PLUGIN = PluginSpec(name="probe", slots=("replay_update",), task_kinds=("continual",))

        @hookimpl
        def mixhub_replay_update(self, buffer: Any, batch: Batch, state: Any) -> bool:
            log["update"].append((state.step, batch.index.tolist(), "memory" in batch.extras))
            buffer.reservoir_update(batch, state.generator)
            return True

        @hookimpl
        def mixhub_aux_losses(self, outputs: Any, batch: Batch, plan: Any, state: Any) -> None:
            mem = batch.extras.get("memory")
            log["memory"].append(
                (state.step, batch.index.tolist(), None if mem is None else mem.index.tolist())
            )

    return Probe(), log


def test_fit_continual_er_order_and_summary(tmp_path: Path) -> None:
    from mixhub.trainer import train

    probe, log = _probe()
    res = train(
        tiny(plugins=["replay", "probe"], train={"plots": True}),
        extra_plugins={"probe": probe},
        out=tmp_path / "run",
    )
    s = res.summary
    m = s["continual"]["acc_matrix"]
    assert len(m) == 5 and all(len(r) == 5 for r in m)
    assert s["test"]["avg_acc"] == pytest.approx(average_accuracy(m))
    assert s["test"]["avg_forgetting"] == pytest.approx(average_forgetting(m))
    assert "er_on" in s["test"] and "avg_acc" in s["val"]
    assert (res.out / "accuracy_matrix.png").exists()
    # the update runs after each step with the raw stream batch (no memory attached)
    steps = [u[0] for u in log["update"]]
    assert steps == list(range(1, len(steps) + 1)) and not any(u[2] for u in log["update"])
    # retrieval happens before the update: the batch being learned is never in its own memory
    assert log["memory"][0][2] is None
    for _, idx, mem in log["memory"][1:]:
        assert mem is not None and not set(idx) & set(mem)
    # the buffer stores raw stream images
    buf = torch.load(res.out / "checkpoints" / "last.pt", weights_only=True)["extra"]["continual"]["buffer"]
    train_set = res.trainer.bundle.train
    for slot in range(3):
        x, y = train_set[int(buf["index"][slot])]
        assert torch.equal(buf["inputs"][slot], x) and int(buf["targets"][slot]) == int(y)


def test_fine_tune_forgets_and_er_helps() -> None:
    from mixhub.trainer import train

    ft = train(tiny(plugins=[]), write=False).summary["test"]
    er = train(tiny(plugins=["replay"]), write=False).summary["test"]
    assert ft["avg_forgetting"] > 0.8
    assert er["avg_acc"] > ft["avg_acc"] + 0.1


def test_iid_protocol_runs() -> None:
    from mixhub.trainer import train

    s = train(tiny(continual={"protocol": "iid"}), write=False).summary
    assert len(s["continual"]["acc_matrix"]) == 1 and "avg_forgetting" not in s["test"]
    assert 0.0 <= s["test"]["avg_acc"] <= 1.0


def test_resume_mid_stream_is_exact(tmp_path: Path) -> None:
    from mixhub.trainer import RunInterrupted, Trainer, train

    cfg = tiny(plugins=["replay"])
    full = train(copy.deepcopy(cfg), out=tmp_path / "full")
    t = Trainer(copy.deepcopy(cfg), out=tmp_path / "cut")
    step = t.train_step

    def stop_after(batch: Batch) -> Any:
        out = step(batch)
        if t.state.step == 35:  # in the middle of the second task
            t.guards.stop_signal = 15
        return out

    t.train_step = stop_after  # type: ignore[method-assign]
    with pytest.raises(RunInterrupted):
        t.fit()
    resumed = train(copy.deepcopy(cfg), out=tmp_path / "cut", resume=True)
    a, b = full.trainer.model.state_dict(), resumed.trainer.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.summary["continual"]["acc_matrix"] == full.summary["continual"]["acc_matrix"]


def test_replay_plugin_rejects_supervised_data() -> None:
    from mixhub.errors import PluginLoadError
    from mixhub.trainer import train

    with pytest.raises(PluginLoadError, match="continual"):
        train(
            {"data": {"name": "digits", "image_size": 8}, "plugins": ["replay"], "train": {"epochs": 1}},
            write=False,
        )


def test_continual_state_travels_in_checkpoints_with_fallback(tmp_path: Path) -> None:
    """The buffer and accuracy matrix live in last.pt's ``extra``, so the previous-good fallback covers them."""
    from mixhub.checkpoint import load_checkpoint
    from mixhub.trainer import Trainer, train

    cfg = tiny(plugins=["replay"])
    train(cfg, out=tmp_path / "run")
    last = tmp_path / "run/checkpoints/last.pt"
    prev = load_checkpoint(tmp_path / "run/checkpoints/last.prev.pt")
    assert "continual" in prev["extra"] and len(prev["extra"]["continual"]["buffer"]["index"]) > 0
    last.write_bytes(last.read_bytes()[:64])
    t = Trainer(cfg, out=tmp_path / "run")
    t.resume()  # falls back to last.prev.pt
    assert t.checkpoints._pending_extra["continual"]["buffer"]["index"].tolist() == prev["extra"]["continual"]["buffer"]["index"].tolist()
