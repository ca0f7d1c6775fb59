"""Weights & Biases logging for mixhub runs: a collector of ``mixhub_log`` records.

Offline by default (``wandb.mode: offline``): the run is written under ``<run>/wandb`` (or
``<track.dir>/wandb``) and nothing leaves the machine until ``wandb sync`` is run on it;
``mode: online`` sends it, ``mode: disabled`` turns the calls into no-ops. The mode and folder
are passed to ``wandb.init`` (and its ``Settings``) rather than through ``WANDB_*`` environment
variables, so one process can train several runs with different settings; console capture, git
and code saving are off, so W&B never wraps the run's stdout or prompts.

* ``config`` record: ``wandb.init(config=<resolved config>, tags=[track.tags as key=value])``;
* ``step``/``epoch`` records: ``run.log(record.metrics(), step=record.step)``;
* ``summary`` record: the run summary (``summary/<split>/<metric>``);
* ``artifact`` records: PNG plots as ``wandb.Image`` under ``plots/``, other files saved with
  the run (``run.save``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from mixhub import LogRecord, PluginOptions, PluginSpec, State, hookimpl, track_info

from .offline import wait_until_complete

NAME = "wandb"
log = logging.getLogger("mixhub.wandb")


class WandbOptions(PluginOptions):
    mode: Literal["offline", "online", "disabled"] = Field("offline", description="offline (default: nothing is sent), online, or disabled")
    project: str | None = Field(None, description="project (default: track.experiment, else mixhub)")
    entity: str | None = Field(None, description="team or user (online mode)")
    group: str | None = Field(None, description="run group (default: the project)")
    dir: str | None = Field(None, description="folder holding the wandb/ run directories (default: <run>, or track.dir)")
    images: bool = Field(True, description="log the run's PNG plots as images")
    save_files: bool = Field(True, description="save non-image artefacts (summary.json, export.pt) with the run")
    system_metrics: bool = Field(False, description="sample CPU/GPU/memory usage in the background")
    finish_timeout: float = Field(60.0, ge=0.0, description="seconds to wait at the end for W&B to finish writing the run's files")


PLUGIN = PluginSpec(
    name=NAME,
    options=WandbOptions,
    task_kinds=("classification", "regression", "continual", "test-time"),
    description="Weights & Biases (offline by default): config, metrics by step, summary, plots",
)


def run_root(state: State) -> Path:
    """The folder under which W&B creates its ``wandb/`` directory for this run."""
    opts: WandbOptions = state.options(NAME)
    if opts.dir:
        return Path(opts.dir)
    return track_info(state, NAME).require_root("wandb.dir").parent  # W&B adds its own ``wandb/`` folder


def _id_file(state: State) -> Path | None:
    return Path(state.run_dir) / "wandb-run.json" if state.run_dir is not None else None


def _open(record: LogRecord, state: State) -> Any:
    import wandb

    sc = state.scratch(NAME)
    opts: WandbOptions = state.options(NAME)
    info = track_info(state, NAME)
    root = run_root(state).resolve()
    root.mkdir(parents=True, exist_ok=True)
    resumed = record.kind == "config" and bool(record.data.get("resumed"))
    id_file = _id_file(state)
    run_id = None
    if resumed and id_file is not None and id_file.is_file():
        run_id = json.loads(id_file.read_text()).get("id")
    settings = wandb.Settings(
        mode=opts.mode,
        console="off",
        silent=True,
        disable_git=True,
        save_code=False,
        x_disable_stats=not opts.system_metrics,
        x_save_requirements=False,
    )
    project = opts.project or info.experiment
    run = wandb.init(
        project=project,
        entity=opts.entity,
        group=opts.group or (project if info.shared else None),
        name=info.name,
        tags=[f"{k}={v}" for k, v in info.tags.items()],
        config=dict(record.data.get("config", {})) if record.kind == "config" else None,
        dir=str(root),
        id=run_id,
        resume="allow" if run_id else None,
        reinit="create_new",
        settings=settings,
    )
    if id_file is not None and run_id is None:
        id_file.write_text(json.dumps({"id": run.id, "mode": opts.mode, "dir": str(getattr(run, "dir", root))}))
    sc.run = run
    return run


@hookimpl
def mixhub_log(record: LogRecord, state: State) -> None:
    sc = state.scratch(NAME)
    run = getattr(sc, "run", None) or _open(record, state)
    opts: WandbOptions = state.options(NAME)
    if record.kind == "config":
        run.config.update({"mixhub_plugins": dict(record.data.get("plugins", {}))}, allow_val_change=True)
    elif record.kind == "summary":
        run.summary.update(record.metrics())
    elif record.kind == "artifact":
        assert record.path is not None
        if record.path.suffix.lower() == ".png":
            if opts.images:
                import wandb

                run.log({f"plots/{record.path.stem}": wandb.Image(str(record.path))}, step=record.step)
        elif opts.save_files:
            run.save(str(record.path), base_path=str(record.path.parent), policy="now")
    elif record.scalars:
        run.log(record.metrics(), step=record.step)


@hookimpl(wrapper=True)
def mixhub_fit(state: State) -> Generator[None, Any, Any]:
    code = 1
    try:
        result = yield
        code = 0
        return result
    finally:
        sc = state.scratch(NAME)
        run = getattr(sc, "run", None)
        if run is not None:
            sc.run = None
            sync_file = getattr(run.settings, "sync_file", None)
            run.finish(exit_code=code)
            opts: WandbOptions = state.options(NAME)
            if opts.mode != "disabled" and sync_file and not wait_until_complete(sync_file, opts.finish_timeout):
                log.warning("wandb: the run's files in %s were not complete after %.0f s", sync_file, opts.finish_timeout)
