"""TensorBoard logging for mixhub runs: a collector of ``mixhub_log`` records.

Scalars go to ``SummaryWriter.add_scalar`` under ``record.metrics()``'s names at ``record.step``;
the config and the summary as text; PNG artefacts (the run's plots) as images. Event files live
in ``<run>/tensorboard`` (or ``<track.dir>/tensorboard/<run name>`` for shared stores, e.g. a
bench suite), so ``tensorboard --logdir runs`` shows every run.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from mixhub import LogRecord, PluginOptions, PluginSpec, State, hookimpl, track_info

NAME = "tensorboard"


class TensorBoardOptions(PluginOptions):
    log_dir: str | None = Field(None, description="event-file folder (default: <run>/tensorboard, or <track.dir>/tensorboard/<run name>)")
    images: bool = Field(True, description="log the run's PNG plots as images")
    text: bool = Field(True, description="log the config and the summary as text")
    flush_secs: int = Field(30, ge=1, description="seconds between flushes of the event file")


PLUGIN = PluginSpec(
    name=NAME,
    options=TensorBoardOptions,
    task_kinds=("classification", "regression", "continual", "test-time"),
    description="TensorBoard: step and epoch scalars, plots as images, config and summary as text",
)


def log_dir(state: State) -> Path:
    """Where this run's event files go (see the module docstring)."""
    opts: TensorBoardOptions = state.options(NAME)
    if opts.log_dir:
        return Path(opts.log_dir)
    info = track_info(state, NAME)
    root = info.require_root("tensorboard.log_dir")
    return root / info.name if info.shared else root


def _writer(record: LogRecord, state: State) -> Any:
    sc = state.scratch(NAME)
    writer = getattr(sc, "writer", None)
    if writer is None:
        from torch.utils.tensorboard import SummaryWriter

        opts: TensorBoardOptions = state.options(NAME)
        resumed = record.kind == "config" and bool(record.data.get("resumed"))
        # on resume, events after the checkpoint's step were redone: hide the old ones
        purge = record.step + 1 if resumed else None
        writer = SummaryWriter(log_dir=str(log_dir(state)), purge_step=purge, flush_secs=opts.flush_secs)
        sc.writer = writer
    return writer


def _png(path: Path) -> Any:
    """An HxWx3 uint8 array of a PNG file."""
    import numpy as np
    from matplotlib import image

    img = image.imread(str(path))
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3]


@hookimpl
def mixhub_log(record: LogRecord, state: State) -> None:
    opts: TensorBoardOptions = state.options(NAME)
    writer = _writer(record, state)
    if record.kind == "config":
        if opts.text:
            cfg = yaml.safe_dump(record.data.get("config", {}), sort_keys=False)
            writer.add_text("config", "```\n" + cfg + "```", record.step)
            plugins = ", ".join(f"{k} {v}" for k, v in record.data.get("plugins", {}).items()) or "none"
            writer.add_text("plugins", plugins, record.step)
        return
    if record.kind == "artifact":
        assert record.path is not None
        if opts.images and record.path.suffix.lower() == ".png":
            writer.add_image(f"plots/{Path(record.name or record.path.name).stem}", _png(record.path), record.step, dataformats="HWC")
        return
    for key, value in record.metrics().items():
        writer.add_scalar(key, value, record.step)
    if record.kind == "summary" and opts.text:
        text = json.dumps({k: v for k, v in record.data.items() if k != "config"}, indent=1, default=str)
        writer.add_text("summary", "```\n" + text + "\n```", record.step)
    if record.kind != "step":
        writer.flush()


@hookimpl(wrapper=True)
def mixhub_fit(state: State) -> Generator[None, Any, Any]:
    try:
        return (yield)
    finally:
        sc = state.scratch(NAME)
        writer = getattr(sc, "writer", None)
        if writer is not None:
            writer.close()
            sc.writer = None
