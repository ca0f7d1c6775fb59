"""Starting a run: seeds, the data checks, the default folder, the labels of
the model's outputs and the lines a run prints at its start."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import RunConfig
from ..data import DataBundle
from ..errors import DataError

__all__ = ["seed_everything", "default_out", "check_bundle", "class_labels", "main_thread", "start_lines", "format_count"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def default_out(cfg: RunConfig) -> str:
    """``runs/<data>-<model>-<plugins>-s<seed>``; ``open_run_folder`` numbers it (``-1``, ``-2``, ...) when taken."""
    plugins = "-".join(cfg.plugins) or "erm"
    return str(Path("runs") / f"{cfg.data.name.replace(':', '_').replace('/', '_')}-{cfg.model.name}-{plugins}-s{cfg.seed}")


def check_bundle(bundle: DataBundle) -> None:
    if bundle.task == "continual":
        return
    for split in ("train", "val", "test"):
        ds = getattr(bundle, split)
        if len(ds) == 0:  # type: ignore[arg-type]
            raise DataError(f"the {split} split of the dataset is empty")
    t = bundle.train_targets
    if t.is_floating_point():
        if not torch.isfinite(t).all():
            bad = (~torch.isfinite(t.reshape(len(t), -1))).any(1).nonzero().flatten().tolist()[:10]
            raise DataError(f"non-finite training targets at dataset indices {bad}")
    elif bundle.num_classes is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= bundle.num_classes):
        raise DataError(f"training labels out of range [0, {bundle.num_classes})")


def class_labels(bundle: DataBundle) -> list[Any] | None:
    """The label of each model output (``data.classes``, or the labels the data were remapped
    from, e.g. ``[-1, 7]``), as ints and strings; ``None`` without named classes."""
    found = bundle.info.get("classes") if bundle.task == "classification" else None
    if not found:
        return None
    return [c if isinstance(c, (int, str)) and not isinstance(c, bool) else str(c) for c in found]


def main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def format_count(n: int) -> str:
    """``11689512`` -> ``11.69M``; ``2410`` -> ``2.41k``; ``950`` -> ``950``."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _size(ds: Any) -> str:
    try:
        return str(len(ds))
    except TypeError:
        return "?"


def start_lines(run: Any) -> list[str]:
    """What a run prints before its first step (the console's start lines), one fact per line:
    the run folder, the data (split sizes, classes, task kind), the model (parameters, device,
    processes), the steps (per epoch, in all, logging).

    This is the one place the start of a run is described: a decision the run takes at setup
    that a user should know about gets its line here.
    """
    cfg, bundle, state = run.config, run.bundle, run.state
    folder = str(run.folder.path) if run.folder.enabled else "none (the run writes no files)"
    lines = [
        f"run folder: {folder}"
        + (f" (resumed at step {state.step}, epoch {state.epoch + 1})" if run.checkpoints.resumed else "")
    ]
    kind = bundle.task
    if kind == "continual":
        tasks = len(bundle.stream.tasks) if bundle.stream is not None else "?"
        what = f"{bundle.num_classes} classes in {tasks} tasks"
    elif bundle.num_classes:
        what = f"{bundle.num_classes} classes"
    else:
        what = f"{bundle.target_dim} target{'s' if bundle.target_dim > 1 else ''}"
    sizes = f"train {_size(bundle.train)}, val {_size(bundle.val)}, test {_size(bundle.test)}"
    extra = "".join(f", {name} {_size(ds)}" for name, ds in bundle.extra_splits.items())
    lines.append(
        f"data {cfg.data.name}: {sizes}{extra}; {what}; task {kind}; input {'x'.join(map(str, bundle.input_shape))}"
    )
    reason = bundle.info.get("task_reason")
    if reason:
        lines.append(f"task {kind}: {reason}")
    labels = bundle.info.get("classes") if kind == "classification" else None
    if labels and [str(c) for c in labels] != [str(i) for i in range(len(labels))]:
        shown = ", ".join(f"{c}->{i}" for i, c in enumerate(labels[:12])) + (", ..." if len(labels) > 12 else "")
        lines.append(f"classes (label->output): {shown}; saved with the run and used by `mixhub eval`")
    params = list(run.model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    plugin_params = sum(p.numel() for spec in state.modules.values() for p in spec.module.parameters())
    model = f"model {cfg.model.name}: {format_count(total)} parameters"
    if trainable != total:
        model += f" ({format_count(trainable)} trainable)"
    if plugin_params:
        model += f" + {format_count(plugin_params)} in plugin modules"
    procs = f" x {run.world_size} processes" if run.world_size > 1 else ""
    amp = f", {str(run.amp_dtype).removeprefix('torch.')} autocast" if run.amp_dtype is not None else ""
    lines.append(
        f"{model}; device {run.device}{procs}{amp}; plugins: {', '.join(run.host.plugins) or 'none'}"
    )
    stem = getattr(run.model, "mixhub_stem", None)
    if stem:
        lines.append(f"stem: {stem}")
    if kind != "continual":
        lines.append(
            f"steps: {state.steps_per_epoch} per epoch x {cfg.train.epochs} epoch{'s' if cfg.train.epochs != 1 else ''} = {state.max_steps} (batch {cfg.train.batch_size}); "
            f"a step line every {cfg.train.log_every} steps"
            + (f", at the first and at least about every {run.records.meter.log_seconds:g} s" if run.records.meter.log_seconds > 0 else "")
        )
    return lines
