"""MLflow plugin: records written through the dispatcher into a local store, queried back with
``MlflowClient`` and ``mlflow.search_runs``."""

import json

import pytest
from mixhub_mlflow import artifact_location, flatten_params, metric_key
from mlflow.tracking import MlflowClient

from mixhub import PluginHookError
from mixhub.testing import logging_run, tiny_config
from mixhub.trainer import train


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No MLFLOW_ALLOW_FILE_STORE from outside (the plugin sets it itself when it uses a file
    store), and a working directory where nothing may appear (MLflow's default ``./mlruns``)."""
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield
    assert list(cwd.iterdir()) == [], "the plugin wrote into the working directory"


def history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def log_a_run(run_dir, config=None, fail=False):
    export = run_dir.parent / f"{run_dir.name}-export.pt"
    export.write_bytes(b"weights")
    png = run_dir.parent / f"{run_dir.name}-loss.png"
    png.write_bytes(b"\x89PNG")
    with logging_run(["mlflow"], run_dir, config=config) as log:
        log.config({"seed": 3, "train": {"lr": 0.1, "milestones": [2, 4]}, "model": {"kwargs": {}}}, {"mlflow": "0.1.0"})
        for step, loss in ((5, 2.0), (10, 1.0)):
            log.state.step = step
            log.step({"loss": loss, "lr/model": 0.1, "lr/head": 0.01, "odd[key]": 1.0})
        log.epoch({"epoch": 1, "split": "val", "acc": 0.5, "ece": float("nan")})
        log.summary({"test": {"acc": 0.75}})
        log.artifact(png, "loss.png")
        log.artifact(export, "export.pt")
        if fail:
            raise RuntimeError("stop")


def test_params_metrics_by_step_and_artifacts(tmp_path):
    run = tmp_path / "run"
    log_a_run(run, config={"track": {"experiment": "suite", "name": "mixup-seed0", "tags": {"arm": "mixup", "seed": "0"}}})
    saved = json.loads((run / "mlflow-run.json").read_text())
    assert saved["tracking_uri"] == f"sqlite:///{(run / 'mlflow' / 'mlflow.db').resolve()}"  # the default store
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    import mlflow

    mlflow.set_tracking_uri(saved["tracking_uri"])
    exp = client.get_experiment_by_name("suite")
    runs = mlflow.search_runs(experiment_ids=[exp.experiment_id], output_format="list")
    assert len(runs) == 1
    r = runs[0]
    assert r.info.run_name == "mixup-seed0" and r.info.status == "FINISHED"
    assert r.data.tags["arm"] == "mixup" and r.data.tags["seed"] == "0" and r.data.tags["mixhub.plugin.mlflow"] == "0.1.0"
    assert r.data.params == {"seed": "3", "train.lr": "0.1", "train.milestones": "[2, 4]", "model.kwargs": "{}"}
    assert history(client, r.info.run_id, "train/loss") == [(5, 2.0), (10, 1.0)]
    assert history(client, r.info.run_id, "train/lr/head") == [(5, 0.01), (10, 0.01)]
    assert history(client, r.info.run_id, "train/odd_key_") == [(5, 1.0), (10, 1.0)]
    assert history(client, r.info.run_id, "val/acc") == [(10, 0.5)]
    assert client.get_metric_history(r.info.run_id, "val/ece") == []  # NaN is not logged
    assert history(client, r.info.run_id, "summary/test/acc") == [(10, 0.75)]
    arts = {a.path for a in client.list_artifacts(r.info.run_id)} | {a.path for a in client.list_artifacts(r.info.run_id, "plots")}
    assert {"plots", "plots/loss.png", "export.pt"} <= arts
    # the artefacts are files beside the database, inside the run folder
    art_dir = run.resolve() / "mlflow" / "artifacts" / r.info.run_id / "artifacts"
    assert r.info.artifact_uri == art_dir.as_uri()
    assert (art_dir / "export.pt").read_bytes() == b"weights" and (art_dir / "plots" / "loss.png").is_file()


@pytest.mark.parametrize("store", ["sqlite", "file"])
def test_a_training_run_with_several_parameter_groups_in_each_store(tmp_path, store):
    """weight_decay splits the model into a decay and a no-decay group: the learning rate of each
    is logged under names every store can hold (MLflow's file store cannot hold a metric
    ``train/lr`` next to ``train/lr/group0``)."""
    out = tmp_path / "run"
    cfg = tiny_config(plugins=["mlflow"], mlflow={"store": store}, train={"weight_decay": 0.05, "plots": True, "device": "cpu"})
    result = train(cfg, out=out)
    saved = json.loads((out / "mlflow-run.json").read_text())
    expected = f"sqlite:///{(out / 'mlflow' / 'mlflow.db').resolve()}" if store == "sqlite" else (out / "mlflow" / "mlruns").resolve().as_uri()
    assert saved["tracking_uri"] == expected
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    r = client.get_run(saved["run_id"])
    assert r.info.status == "FINISHED"
    lr_keys = sorted(k for k in r.data.metrics if k.startswith("train/lr"))
    assert lr_keys == ["train/lr/group0", "train/lr/group1"]
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    for key in lr_keys:
        assert history(client, r.info.run_id, key) == [(s["step"], pytest.approx(s[key.removeprefix("train/")])) for s in steps]
    assert r.data.metrics["summary/test/acc"] == pytest.approx(result.summary["test"]["acc"])
    arts = {a.path for a in client.list_artifacts(r.info.run_id)} | {a.path for a in client.list_artifacts(r.info.run_id, "plots")}
    assert {"summary.json", "export.pt", "plots/lr.png"} <= arts
    assert r.info.artifact_uri.startswith(out.resolve().as_uri() + "/mlflow/")


def test_artifact_location_beside_a_sqlite_database(tmp_path):
    db = tmp_path / "x" / "mlflow.db"
    assert artifact_location(f"sqlite:///{db}") == (tmp_path / "x" / "artifacts").as_uri()
    assert artifact_location("http://host:5000") is None and artifact_location(tmp_path.as_uri()) is None


def test_failed_run_is_marked_and_resume_continues_the_same_run(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="stop"):
        log_a_run(run, fail=True)
    uri = json.loads((run / "mlflow-run.json").read_text())["tracking_uri"]
    client = MlflowClient(tracking_uri=uri)
    run_id = json.loads((run / "mlflow-run.json").read_text())["run_id"]
    assert client.get_run(run_id).info.status == "FAILED"
    with logging_run(["mlflow"], run) as log:
        log.state.step = 10
        log.config({"seed": 3}, {}, resumed=True)
        log.state.step = 15
        log.step({"loss": 0.5})
    assert client.get_run(run_id).info.status == "FINISHED"
    assert history(client, run_id, "train/loss") == [(5, 2.0), (10, 1.0), (15, 0.5)]
    assert len(client.search_runs([client.get_experiment_by_name("mixhub").experiment_id])) == 1


def test_tracking_uri_option_and_no_folder(tmp_path):
    with pytest.raises(PluginHookError, match="set mlflow.tracking_uri"):
        with logging_run(["mlflow"], None) as log:
            log.config({}, {})
    uri = (tmp_path / "elsewhere").as_uri()
    with logging_run(["mlflow"], None, config={"mlflow": {"tracking_uri": uri, "experiment": "x"}}) as log:
        log.step({"loss": 1.0})
    client = MlflowClient(tracking_uri=uri)
    (r,) = client.search_runs([client.get_experiment_by_name("x").experiment_id])
    assert history(client, r.info.run_id, "train/loss") == [(0, 1.0)]


def test_flatten_params_and_metric_keys():
    assert flatten_params({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": "x" * 7000}) == {"a.b": "1", "a.c": "[1, 2]", "d": "null", "e": "x" * 6000}
    assert metric_key("val/acc_top-1 (x)") == "val/acc_top-1 _x_"
