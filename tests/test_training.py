import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mixhub import CheckpointError, ConfigError, DataError
from mixhub.checkpoint import load_checkpoint, load_latest
from mixhub.testing import Contract, model_fingerprint, tiny_config, tiny_regression_config
from mixhub.trainer import NonFiniteError, Trainer, train

ROOT = Path(__file__).resolve().parents[1]


def test_cli_trains_a_timm_model_and_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "mixhub", "train", "model.name=resnet10t", "data.name=digits", "data.image_size=16",
        "train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=16", "plugins=mixup", f"out={out}", "--quiet",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr
    assert "test: acc=" in p.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["test"]) >= {"acc", "nll", "ece", "adaece", "brier", "nll_ts", "ece_ts"}
    assert summary["plugins"] == {"mixup": "0.1.0"}
    for f in ("config.yaml", "metrics.jsonl", "metrics.csv", "loss.png", "reliability.png", "checkpoints/last.pt", "checkpoints/best.pt", "checkpoints/export.pt"):
        assert (out / f).exists(), f
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in lines} >= {"train", "val", "final_test"}
    ev = subprocess.run([sys.executable, "-m", "mixhub", "eval", str(out / "checkpoints/best.pt"), "--split", "val"], capture_output=True, text=True, cwd=ROOT)
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["val"]["acc"] == pytest.approx(summary["val"]["acc"], abs=1e-6)


def test_cli_reports_config_errors_cleanly(tmp_path):
    p = subprocess.run([sys.executable, "-m", "mixhub", "train", "train.epoks=1"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2
    assert "unknown key 'train.epoks'; did you mean 'epochs'" in p.stderr
    assert not (tmp_path / "runs").exists()


def test_same_seed_same_weights(tmp_path):
    Contract(tmp_path).determinism(tiny_config(plugins=["mixup"]))


def test_resume_is_exact(tmp_path):
    Contract(tmp_path).resume_equality(tiny_config(plugins=["mixup"]))


def test_resume_regression_exact(tmp_path):
    Contract(tmp_path).resume_equality(tiny_regression_config(plugins=["mixup"]))


def test_mid_epoch_interrupt_and_resume(tmp_path):
    import signal

    from mixhub.trainer import RunInterrupted

    cfg = tiny_config(plugins=["mixup"], train={"epochs": 2, "max_steps_per_epoch": 4})
    straight = train(cfg, out=tmp_path / "a").trainer

    class Stopper:
        from mixhub import PluginSpec, hookimpl

        PLUGIN = PluginSpec(name="stopper")

        @hookimpl
        def mixhub_after_step(self, state):  # noqa: ANN001
            if state.step == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    cfg2 = dict(cfg, plugins=["mixup", "stopper"])
    with pytest.raises(RunInterrupted, match="resume with"):
        train(cfg2, {"stopper": Stopper()}, out=tmp_path / "b")
    data = load_checkpoint(tmp_path / "b/checkpoints/last.pt")
    assert data["step"] == 3 and data["batch_in_epoch"] == 3
    class Nop:
        from mixhub import PluginSpec

        PLUGIN = PluginSpec(name="stopper")

    resumed = train(cfg2, {"stopper": Nop()}, out=tmp_path / "b", resume=True).trainer
    a, b = model_fingerprint(straight), model_fingerprint(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)



def test_epochs_in_the_run_files_are_1_based_and_a_resume_continues_them(tmp_path):
    """The first epoch's records say epoch 1 (metrics.jsonl, metrics.csv, steps.jsonl); a run
    stopped mid-way through its second epoch and resumed numbers on without duplicates."""
    import csv
    import signal

    from mixhub.trainer import RunInterrupted

    class Stopper:
        from mixhub import PluginSpec, hookimpl

        PLUGIN = PluginSpec(name="stopper")

        @hookimpl
        def mixhub_after_step(self, state):  # noqa: ANN001
            if state.step == 3:  # the first step of the second epoch
                os.kill(os.getpid(), signal.SIGTERM)

    class Nop:
        from mixhub import PluginSpec

        PLUGIN = PluginSpec(name="stopper")

    out = tmp_path / "r"
    cfg = tiny_config(plugins=["stopper"], train={"epochs": 3, "max_steps_per_epoch": 2, "log_every": 1})
    with pytest.raises(RunInterrupted):
        train(cfg, {"stopper": Stopper()}, out=out)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in recs] == [(1, "train"), (1, "val")]
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [(r["step"], r["epoch"]) for r in steps] == [(1, 1), (2, 1), (3, 2)]
    assert load_checkpoint(out / "checkpoints/last.pt")["epoch"] == 1  # the resume position stays 0-based (epochs done)

    summary = train(cfg, {"stopper": Nop()}, out=out, resume=True).summary
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in recs if not r["split"].startswith("final_")] == [
        (1, "train"), (1, "val"), (2, "train"), (2, "val"), (3, "train"), (3, "val")]
    assert {r["epoch"] for r in recs if r["split"].startswith("final_")} == {3}  # the final records: the last epoch
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [(r["step"], r["epoch"]) for r in steps] == [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 3)]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [(row["epoch"], row["split"]) for row in rows][:2] == [("1", "train"), ("1", "val")]
    assert [row["epoch"] for row in rows] == [str(r["epoch"]) for r in recs]
    assert summary["best_epoch"] in (1, 2, 3)
    assert json.loads((out / "summary.json").read_text())["best_epoch"] == summary["best_epoch"]
    assert load_checkpoint(out / "checkpoints/best.pt")["best"]["epoch"] == summary["best_epoch"]

def test_corrupt_checkpoint_falls_back_to_previous(tmp_path):
    cfg = tiny_config(train={"epochs": 2})
    train(cfg, out=tmp_path / "r")
    last = tmp_path / "r/checkpoints/last.pt"
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="last.pt.*corrupt or truncated"):
        load_checkpoint(last)
    warnings = []
    data, used = load_latest(tmp_path / "r/checkpoints", warn=warnings.append)
    assert used.name == "last.prev.pt" and data["epoch"] == 1 and "previous good" in warnings[0]


def test_mismatched_checkpoint_is_refused(tmp_path):
    train(tiny_config(), out=tmp_path / "r")
    with pytest.raises(CheckpointError, match="plugins"):
        Trainer.from_checkpoint(tmp_path / "r/checkpoints/last.pt", {"plugins": ["mixup"]})
    with pytest.raises(CheckpointError, match="does not match the model"):
        Trainer.from_checkpoint(tmp_path / "r/checkpoints/last.pt", {"model": {"kwargs": {"widths": [4, 8]}}})


def test_existing_run_folder_is_not_overwritten(tmp_path):
    train(tiny_config(), out=tmp_path / "r")
    before = (tmp_path / "r/summary.json").read_text()
    with pytest.raises(ConfigError, match="holds a finished run.*--resume"):
        train(tiny_config(), out=tmp_path / "r")
    assert (tmp_path / "r/summary.json").read_text() == before


def test_nan_inputs_skip_before_any_plugin(tmp_path):
    """nan_policy=skip: a batch with NaN inputs is dropped before any plugin or the optimizer sees it."""
    from mixhub import MixPlan, PluginSpec, hookimpl

    class Poison:
        PLUGIN = PluginSpec(name="poison", slots=("sample_pairs",))

        def __init__(self):
            self.calls = 0

        @hookimpl
        def mixhub_sample_pairs(self, batch, state):  # noqa: ANN001
            self.calls += 1
            return MixPlan.identity(batch.size, batch.inputs.device)

    poison = Poison()
    t = Trainer(tiny_config(plugins=["poison"], train={"nan_policy": "skip"}), extra_plugins={"poison": poison}, out=tmp_path / "r")
    from mixhub.trainer import collate

    clean = collate([t.train_set[i] for i in range(8)])
    t.bundle.train.inputs[3] = float("nan")
    batch = collate([t.train_set[i] for i in range(8)])
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    assert t.train_step(batch) is None
    assert poison.calls == 0, "a plugin saw the non-finite batch"
    assert all(torch.equal(v, before[k]) for k, v in t.model.state_dict().items())
    assert t.train_step(clean) is not None and poison.calls == 1  # the plugin is active on a clean batch
    assert any(not torch.equal(v, before[k]) for k, v in t.model.state_dict().items())


@pytest.mark.parametrize("check_every", [1, 3])
def test_nan_inputs_stop_at_the_next_check(tmp_path, check_every):
    """nan_policy=stop: the check is a device flag read every train.check_every steps; the error
    names the dataset indices and the step of the bad batch, at most check_every steps later."""
    from mixhub.trainer import collate

    t = Trainer(tiny_config(train={"check_every": check_every, "log_every": 100, "max_steps_per_epoch": 10}), out=tmp_path / "r")
    clean = collate([t.train_set[i] for i in range(8, 16)])
    t.bundle.train.inputs[3] = float("nan")
    bad = collate([t.train_set[i] for i in range(8)])
    assert t.train_step(clean) is not None  # step 0
    raised_at = None
    with pytest.raises(NonFiniteError, match=r"non-finite inputs in the training batch at dataset indices \[3\] \(step 1\)"):
        for k, b in enumerate([bad, clean, clean, clean]):
            raised_at = k + 1
            t.train_step(b)
    assert raised_at == (1 if check_every == 1 else 2)  # verified after steps 1 and 3 (check_every=3: steps 3, 6, ...)


def test_nan_loss_is_named_at_the_check(tmp_path):
    """A non-finite loss (clean inputs) stops the run at the next check, naming its step; a
    pending failure also stops a checkpoint from being written."""
    from mixhub.trainer import collate

    t = Trainer(tiny_config(train={"check_every": 50, "log_every": 50, "max_steps_per_epoch": 10}), out=tmp_path / "r")
    batch = collate([t.train_set[i] for i in range(8)])
    t.train_step(batch)
    with torch.no_grad():
        next(t.model.parameters()).fill_(float("inf"))
    t.train_step(batch)  # step 1: inf weights, NaN loss; not read yet
    assert len(t.session.checks) > 0
    with pytest.raises(NonFiniteError, match=r"non-finite loss \(nan\) at step 1 \(epoch 0\), batch dataset indices \[0, 1"):
        t.save_checkpoint("last")
    assert not (t.folder.checkpoints / "last.pt").exists()


def test_wrong_shaped_batch(tmp_path):
    from mixhub import Batch

    t = Trainer(tiny_config(train={"check_every": 1}), out=tmp_path / "r")
    bad = Batch(inputs=torch.zeros(4, 1, 16, 16), targets=torch.zeros(4, dtype=torch.long), index=torch.arange(4))
    with pytest.raises(DataError, match=r"input shape \(1, 16, 16\), the model expects \(3, 16, 16\)"):
        t.train_step(bad)
    bad = Batch(inputs=torch.zeros(4, 3, 16, 16), targets=torch.tensor([0, 1, 2, 12]), index=torch.arange(4))
    with pytest.raises(DataError, match=r"labels out of range \[0, 10\) at dataset indices \[3\]"):
        t.train_step(bad)


def test_pretrained_without_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="model.pretrained: could not load pretrained weights"):
        train(tiny_config(model={"name": "resnet10t", "pretrained": True}), out=tmp_path / "r")


def test_ema_and_grad_clip_run(tmp_path):
    r = train(tiny_config(train={"ema": True, "ema_decay": 0.9, "clip_grad_norm": 1.0}), out=tmp_path / "r")
    assert r.trainer.ema is not None and "acc" in r.summary["test"]


def test_schedules_per_group_floor_and_multistep():
    from mixhub.schedule import GroupScheduler

    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p1], "lr": 1.0}, {"params": [p2], "lr": 0.5, "min_lr": 0.1}], lr=1.0)
    s = GroupScheduler(opt, 100, kind="cosine", warmup_steps=10, min_lr=0.0)
    s.step(99)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-3) and opt.param_groups[1]["lr"] == pytest.approx(0.1, abs=1e-3)
    s.step(0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0 / 11)
    m = GroupScheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 100, kind="multistep", milestones=[30, 45])
    assert [m.lr_at(t, 1.0, 0.0) for t in (29, 30, 44, 45)] == pytest.approx([1.0, 0.1, 0.1, 0.01])


def test_mlp_options():
    from mixhub.config import ModelConfig
    from mixhub.models import build_model

    m = build_model(ModelConfig(name="mlp", kwargs={"norm": "batchnorm", "act": "relu", "hidden": [8]}), (5,), 3)
    assert isinstance(m.blocks[0][1], torch.nn.BatchNorm1d) and isinstance(m.blocks[0][2], torch.nn.ReLU)
    with pytest.raises(ConfigError, match="model.kwargs.act"):
        build_model(ModelConfig(name="mlp", kwargs={"act": "tanh"}), (5,), 3)


def test_export_file_is_not_a_training_checkpoint(tmp_path):
    train(tiny_config(), out=tmp_path / "r")
    with pytest.raises(CheckpointError, match="export file.*load last.pt or best.pt"):
        Trainer.from_checkpoint(tmp_path / "r/checkpoints/export.pt")


def test_best_weights_kept_in_memory_without_a_run_folder(tmp_path):
    r = train(tiny_config(train={"epochs": 2}), out=tmp_path / "r", write=False)
    assert r.trainer.checkpoints.best_in_memory is not None and r.summary["best_epoch"] in (1, 2)


def test_select_mode_overrides_the_guess(tmp_path):
    from mixhub.protocols.supervised import SupervisedProtocol

    t = SupervisedProtocol(Trainer(tiny_config(train={"select": "nll", "select_mode": "min"}), out=tmp_path / "a"))
    assert t.select_key == "nll" and t.select_high is False
    t = SupervisedProtocol(Trainer(tiny_config(train={"select": "f1", "select_mode": "max"}), out=tmp_path / "b"))
    assert t.select_high is True


def test_unknown_aux_loss_weight_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"losses.rankmixup_mlr: no active plugin .* did you mean 'rankmixup_mrl'"):
        train(tiny_config(plugins=["rankmixup"], losses={"rankmixup_mlr": 0.2}, train={"clip_grad_norm": 2.0}), out=tmp_path / "r")
    r = train(tiny_config(plugins=["rankmixup"], losses={"rankmixup_mrl": 0.2}, train={"clip_grad_norm": 2.0}), out=tmp_path / "ok")
    assert r.trainer.aux_weight("rankmixup_mrl") == 0.2
