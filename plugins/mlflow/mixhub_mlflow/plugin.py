"""MLflow tracking for mixhub runs: a collector of ``mixhub_log`` records.

One MLflow run per mixhub run, through ``MlflowClient`` (not the fluent ``mlflow.start_run``
API, whose process-global active run would mix up runs trained in one process, e.g. a bench):

* ``config`` record: the resolved config flattened to dotted params, the plugin versions as
  tags, ``track.tags`` as tags;
* ``step``/``epoch``/``summary`` records: metrics by step under ``record.metrics()``'s names;
* ``artifact`` records: the files (plots under ``plots/``, the rest at the root).

Store: ``mlflow.tracking_uri`` when set; else a local store in the run folder: by default a
SQLite database ``<run>/mlflow/mlflow.db`` with the artefacts beside it in
``<run>/mlflow/artifacts`` (MLflow's recommended local backend), or with ``store: file`` MLflow's
file store ``<run>/mlflow/mlruns``; ``<track.dir>/mlflow/...`` when ``track.dir`` is set, so a
bench suite is one experiment. An experiment this plugin creates in a SQLite store keeps its
artefacts in ``artifacts/`` next to the database (MLflow's own default is ``./mlruns`` of the
working directory). MLflow 3 keeps the file store behind ``MLFLOW_ALLOW_FILE_STORE``; choosing
it sets that variable for the process (``os.environ.setdefault``), and reading it back needs it too.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Generator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from mixhub import LogRecord, PluginOptions, PluginSpec, State, hookimpl, track_info

NAME = "mlflow"
#: MLflow's batch limits (``log_batch``): params and metrics per call.
_MAX_PARAMS, _MAX_METRICS = 100, 1000
_PARAM_VALUE_MAX = 6000


class MlflowOptions(PluginOptions):
    tracking_uri: str | None = Field(None, description="tracking server or store URI (default: a local store inside the run folder)")
    store: Literal["sqlite", "file"] = Field("sqlite", description="kind of the default local store: a SQLite database (mlflow.db) or MLflow's file store (mlruns/)")
    experiment: str | None = Field(None, description="experiment name (default: track.experiment, else mixhub)")
    params: bool = Field(True, description="log the resolved config as params (dotted keys)")
    artifacts: bool = Field(True, description="log the run's artefacts (plots, summary.json, export.pt)")


PLUGIN = PluginSpec(
    name=NAME,
    options=MlflowOptions,
    task_kinds=("classification", "regression", "continual", "test-time"),
    description="MLflow: config as params, metrics by step, plots and checkpoints as artefacts",
)


def tracking_uri(state: State) -> str:
    """The tracking URI this run logs to (see the module docstring)."""
    opts: MlflowOptions = state.options(NAME)
    if opts.tracking_uri:
        return opts.tracking_uri
    root = track_info(state, NAME).require_root("mlflow.tracking_uri").resolve()
    root.mkdir(parents=True, exist_ok=True)
    if opts.store == "sqlite":
        return f"sqlite:///{root / 'mlflow.db'}"
    return (root / "mlruns").as_uri()


def artifact_location(uri: str) -> str | None:
    """Where a new experiment of the store ``uri`` keeps its artefacts: ``artifacts/`` beside a
    SQLite database file (``None``: the store's own default, e.g. a server's or a file store's)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri.endswith(":memory:"):
        return None
    return (Path(uri[len(prefix) :]).resolve().parent / "artifacts").as_uri()


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": "0.1"}``; lists as JSON; values cut to MLflow's limit."""
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten_params(v, key + "."))
        else:
            text = v if isinstance(v, str) else json.dumps(v, default=str)
            out[key] = text[:_PARAM_VALUE_MAX]
    return out


_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-. :/]")


def metric_key(name: str) -> str:
    """A metric name MLflow accepts (letters, digits, ``_-. :/``; anything else becomes ``_``)."""
    return _BAD_KEY.sub("_", name)


def _id_file(state: State) -> Path | None:
    return Path(state.run_dir) / "mlflow-run.json" if state.run_dir is not None else None


def _open(record: LogRecord, state: State) -> Any:
    from mlflow.tracking import MlflowClient

    sc = state.scratch(NAME)
    opts: MlflowOptions = state.options(NAME)
    uri = tracking_uri(state)
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=uri)
    info = track_info(state, NAME)
    experiment = opts.experiment or info.experiment
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment, artifact_location=artifact_location(uri))
    id_file = _id_file(state)
    resumed = record.kind == "config" and bool(record.data.get("resumed"))
    run_id = None
    if resumed and id_file is not None and id_file.is_file():
        saved = json.loads(id_file.read_text())
        if saved.get("tracking_uri") == uri:
            run_id = saved["run_id"]
            client.update_run(run_id, status="RUNNING")
    if run_id is None:
        tags = {str(k): str(v) for k, v in info.tags.items()}
        if state.run_dir is not None:
            tags["mixhub.run_dir"] = str(Path(state.run_dir).resolve())
        run_id = client.create_run(experiment_id, run_name=info.name, tags=tags).info.run_id
        if id_file is not None:
            id_file.write_text(json.dumps({"run_id": run_id, "tracking_uri": uri, "experiment_id": experiment_id}))
    sc.client, sc.run_id, sc.resumed = client, run_id, resumed
    return client


def _log_config(client: Any, run_id: str, record: LogRecord, opts: MlflowOptions, resumed: bool) -> None:
    from mlflow.entities import Param, RunTag

    tags = [RunTag(f"mixhub.plugin.{k}", str(v)) for k, v in record.data.get("plugins", {}).items()]
    params = [] if resumed or not opts.params else [Param(k, v) for k, v in flatten_params(record.data.get("config", {})).items()]
    for i in range(0, max(len(params), 1), _MAX_PARAMS):
        client.log_batch(run_id, params=params[i : i + _MAX_PARAMS], tags=tags if i == 0 else [])


def _log_metrics(client: Any, run_id: str, record: LogRecord) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(metric_key(k), v, now, record.step) for k, v in record.metrics().items() if not math.isnan(v)]
    for i in range(0, len(metrics), _MAX_METRICS):
        client.log_batch(run_id, metrics=metrics[i : i + _MAX_METRICS])


@hookimpl
def mixhub_log(record: LogRecord, state: State) -> None:
    sc = state.scratch(NAME)
    client = getattr(sc, "client", None) or _open(record, state)
    opts: MlflowOptions = state.options(NAME)
    if record.kind == "config":
        _log_config(client, sc.run_id, record, opts, sc.resumed)
    elif record.kind == "artifact":
        if opts.artifacts and record.path is not None:
            folder = "plots" if record.path.suffix.lower() in (".png", ".svg", ".pdf") else None
            name = record.name or record.path.name
            if name == record.path.name:
                client.log_artifact(sc.run_id, str(record.path), folder)
            else:  # MLflow names an artefact after its file: log a copy under the record's name
                import shutil
                import tempfile

                with tempfile.TemporaryDirectory() as tmp:
                    copy = Path(tmp) / name
                    shutil.copyfile(record.path, copy)
                    client.log_artifact(sc.run_id, str(copy), folder)
    else:
        _log_metrics(client, sc.run_id, record)


@hookimpl(wrapper=True)
def mixhub_fit(state: State) -> Generator[None, Any, Any]:
    status = "FAILED"
    try:
        result = yield
        status = "FINISHED"
        return result
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        sc = state.scratch(NAME)
        client = getattr(sc, "client", None)
        if client is not None:
            client.set_terminated(sc.run_id, status)
            sc.client = None
