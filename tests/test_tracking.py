"""Tracking end to end: real training runs with the logger plugins, read back with each tracker's
own tools; the console in a pipe; ``mixhub bench --log``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mixhub import PluginSpec, hookimpl
from mixhub.bench.runner import run_suite
from mixhub.bench.suite import Arm, Suite
from mixhub.run.folder import read_jsonl
from mixhub.testing import tiny_config
from mixhub.trainer import train


class GradProbe:
    """Records the global gradient norm after every optimizer step (grads are still in place)."""

    PLUGIN = PluginSpec(name="probe")

    def __init__(self):
        self.norms = {}

    @hookimpl
    def mixhub_after_step(self, state):
        grads = [p.grad for p in state.model.parameters() if p.grad is not None]
        self.norms[state.step] = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        state.log["probe/step"] = float(state.step)


def tracked_config():
    return tiny_config(
        plugins=["mixup", "tensorboard", "mlflow", "wandb", "probe"],
        train={"epochs": 2, "max_steps_per_epoch": 4, "log_every": 3, "plots": True, "sched": "none", "lr": 0.01, "device": "cpu"},
        track={"name": "digits-mixup", "tags": {"arm": "mixup"}},
    )


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    probe = GradProbe()
    out = tmp_path_factory.mktemp("tracked") / "run"
    cwd = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)  # MLflow's default artefact root is ./mlruns of the working directory: nothing may land there
        result = train(tracked_config(), {"probe": probe}, out=out)
    assert list(cwd.iterdir()) == []
    return result, probe, out


def test_step_records_are_complete_and_consistent(tracked_run):
    result, probe, out = tracked_run
    steps = read_jsonl(out / "steps.jsonl")
    logged = [r["step"] for r in steps]
    # the first step, every log_every steps, the last step (and timed ones: none in a run this short)
    assert logged[0] == 1 and {3, 6, 8} <= set(logged) and logged == sorted(logged)
    epochs = [r for r in read_jsonl(out / "metrics.jsonl") if r["split"] == "train"]
    # the windows (1, 2, 3, 2 steps) and the epochs (4, 4 steps) average the same per-step losses
    windows = sum((b - a) * r["loss"] for a, b, r in zip([0, *logged], logged, steps))
    assert windows == pytest.approx(4 * epochs[0]["loss"] + 4 * epochs[1]["loss"], rel=1e-5)
    for r in steps:
        assert r["lr"] == pytest.approx(0.01)
        assert r["grad_norm"] == pytest.approx(probe.norms[r["step"]], rel=1e-5)
        assert r["images_per_s"] > 0 and r["data_wait_s"] >= 0 and r["step_time_s"] > 0
        assert {"loss_main", "eta_s"} <= set(r)
    # plugin scalars arrive as window means: steps 2-3 -> 2.5, 4-6 -> 5, 7-8 -> 7.5
    means = [(a + 1 + b) / 2 for a, b in zip([0, *logged], logged)]
    assert [r["probe/step"] for r in steps] == pytest.approx(means)
    assert steps[-1]["eta_s"] == 0.0
    assert {"loss.png", "lr.png", "val_metrics.png", "reliability.png"} <= {p.name for p in out.glob("*.png")}


def test_tensorboard_event_file(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result, _, out = tracked_run
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    steps = read_jsonl(out / "steps.jsonl")
    loss = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [s for s, _ in loss] == [r["step"] for r in steps]
    assert [v for _, v in loss] == pytest.approx([r["loss"] for r in steps], rel=1e-6)
    assert [e.step for e in acc.Scalars("train/grad_norm")] == [r["step"] for r in steps]
    val = [r for r in read_jsonl(out / "metrics.jsonl") if r["split"] == "val"]
    assert [(e.step, e.value) for e in acc.Scalars("val/acc")] == [(4, pytest.approx(val[0]["acc"])), (8, pytest.approx(val[1]["acc"]))]
    assert acc.Scalars("final_test/acc")[0].value == pytest.approx(result.summary["test"]["acc"])
    assert {"plots/loss", "plots/lr", "plots/reliability", "plots/val_metrics"} <= set(acc.Tags()["images"])


def test_mlflow_store(tracked_run):
    from mlflow.tracking import MlflowClient

    result, _, out = tracked_run
    saved = json.loads((out / "mlflow-run.json").read_text())
    assert saved["tracking_uri"] == f"sqlite:///{(out / 'mlflow' / 'mlflow.db').resolve()}"  # the default store: SQLite in the run folder
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("mixhub").experiment_id])
    # the artefacts sit beside the database, inside the run folder
    art_root = (out / "mlflow" / "artifacts").resolve()
    assert run.info.artifact_uri.startswith(art_root.as_uri())
    on_disk = {p.name for p in art_root.rglob("*") if p.is_file()}
    assert {"summary.json", "export.pt", "loss.png", "lr.png"} <= on_disk
    # only the config the run used: no section of a protocol a supervised run never reads
    assert not any(k.split(".")[0] in ("continual", "testtime") for k in run.data.params)
    assert run.info.status == "FINISHED" and run.info.run_name == "digits-mixup" and run.data.tags["arm"] == "mixup"
    assert run.data.params["train.lr"] == "0.01" and run.data.params["plugins"] == json.dumps(["mixup", "tensorboard", "mlflow", "wandb", "probe"])
    hist = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
    assert [m.step for m in hist] == [r["step"] for r in read_jsonl(out / "steps.jsonl")]
    assert [m.value for m in hist] == pytest.approx([r["loss"] for r in read_jsonl(out / "steps.jsonl")])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [4, 8]
    assert run.data.metrics["summary/test/acc"] == pytest.approx(result.summary["test"]["acc"])
    arts = {a.path for a in client.list_artifacts(run.info.run_id)} | {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/loss.png", "plots/lr.png", "plots/reliability.png", "summary.json", "export.pt"} <= arts


def test_wandb_offline_run(tracked_run):
    from mixhub_wandb import find_offline_runs, read_offline_run

    result, _, out = tracked_run
    (offline,) = find_offline_runs(out / "wandb")
    r = read_offline_run(offline)
    assert r.name == "digits-mixup" and r.tags == ["arm=mixup"] and r.exit_code == 0
    assert r.config["train"]["log_every"] == 3 and r.config["mixup"]["alpha"] > 0
    rows = {row["_step"]: row for row in r.history}
    assert [s for s in sorted(rows) if "train/loss" in rows[s]] == [r["step"] for r in read_jsonl(out / "steps.jsonl")]
    assert rows[8]["val/acc"] == pytest.approx([x for x in read_jsonl(out / "metrics.jsonl") if x["split"] == "val"][1]["acc"])
    assert r.summary["summary/test/acc"] == pytest.approx(result.summary["test"]["acc"])
    assert rows[8]["plots/reliability"]["_type"] == "image-file"


PIPE_OVERRIDES = [
    "data.name=digits", "data.image_size=16", "model.name=smallcnn", "model.kwargs={widths: [8, 16]}",
    "train.epochs=2", "train.batch_size=32", "train.max_steps_per_epoch=5", "train.log_every=2", "train.device=cpu",
    "train.plots=false",
]


def check_piped_log(text):
    assert "\r" not in text
    step_lines = [line for line in text.splitlines() if line.startswith("step ")]
    # the first step, then every log_every; epochs counted from 1, as on the epoch lines
    assert [line.split()[1] for line in step_lines] == ["1/10", "2/10", "4/10", "6/10", "8/10", "10/10"]
    assert [line.split()[3] for line in step_lines] == ["1/2", "1/2", "1/2", "2/2", "2/2", "2/2"]
    for part in ("loss ", "lr ", "img/s ", "eta "):
        assert all(part in line for line in step_lines), part
    # the start lines come before the first step: folder, data, model and device, steps
    head = text.split("\nstep ", 1)[0]
    assert "run folder: " in head and "data digits: train " in head and "10 classes; task classification" in head
    assert "model smallcnn: " in head and " parameters; device cpu" in head
    assert "steps: 5 per epoch x 2 epochs = 10 (batch 32); a step line every 2 steps, at the first and at least about every 30 s" in head
    assert sum(line.startswith("epoch ") for line in text.splitlines()) == 2


def test_console_piped_to_a_file_has_one_plain_line_per_log_step(tmp_path, monkeypatch):
    from mixhub.config import parse_overrides

    log_file = tmp_path / "train.log"
    with open(log_file, "w") as fh:
        monkeypatch.setattr(sys, "stderr", fh)  # what `mixhub train ... 2> train.log` gives the run
        train(parse_overrides(PIPE_OVERRIDES), quiet=False, out=tmp_path / "run")
    check_piped_log(log_file.read_text())


@pytest.mark.slow
def test_cli_piped_to_a_file(tmp_path):
    log_file = tmp_path / "train.log"
    cmd = [str(Path(sys.executable).with_name("mixhub")), "train", *PIPE_OVERRIDES, f"out={tmp_path / 'run'}"]
    with open(log_file, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    text = log_file.read_text()
    assert proc.returncode == 0, text[-2000:]
    check_piped_log(text)


def test_bench_logs_each_cell_as_a_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    base = tiny_config(train={"epochs": 1, "max_steps_per_epoch": 2, "device": "cpu", "plots": False})
    suite = Suite(
        name="tiny-suite", description="two arms", base=base, baseline="erm",
        arms=[Arm("erm"), Arm("mixup", {"plugins": ["mixup"]})], metrics=["test.acc"], seeds=2,
    )
    run_suite(suite, tmp_path / "bench", seeds=2, progress=False, log=["mlflow"])
    client = MlflowClient(tracking_uri=f"sqlite:///{(tmp_path / 'bench' / 'tracking' / 'mlflow' / 'mlflow.db').resolve()}")
    runs = client.search_runs([client.get_experiment_by_name("tiny-suite").experiment_id])
    cells = sorted((r.data.tags["arm"], r.data.tags["seed"], r.info.run_name) for r in runs)
    assert cells == [("erm", "0", "erm-seed0"), ("erm", "1", "erm-seed1"), ("mixup", "0", "mixup-seed0"), ("mixup", "1", "mixup-seed1")]
    assert all(r.data.tags["suite"] == "tiny-suite" and r.info.status == "FINISHED" for r in runs)
    assert all("summary/test/acc" in r.data.metrics for r in runs)
    with pytest.raises(Exception, match="--log 'tensorbord'.*tensorboard"):
        run_suite(suite, tmp_path / "bench2", seeds=1, progress=False, log=["tensorbord"])
