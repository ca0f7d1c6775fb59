"""One bench cell: an (arm, seed) run folder, started, resumed or reused, wherever it runs.

A cell lives in ``OUT/cells/<arm>/seed<k>/``: ``run/`` is an ordinary ``mixhub train`` run folder
(locked while it trains, checkpointed every epoch), ``key.json`` the key it was started under.
``run_cell(spec)`` is what every executor calls (in this process, in a child process through
``python -m mixhub.bench.cell SPEC.json``, or in a Ray worker):

* a finished run (``summary.json``) under the same key is read, not trained again;
* an unfinished run under the same key with a checkpoint is resumed from ``checkpoints/last.pt``;
* anything else in ``run/`` (another key, no checkpoint) is removed and the cell starts afresh.

The finished cell is written atomically to ``OUT/cells/<arm>/seed<k>.json`` (metrics, time,
key); the runner reads only those files.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .suite import RunFn

__all__ = ["CellSpec", "run_cell", "cell_paths", "train_cell", "flatten_summary", "write_json_atomic", "main"]

#: The pid of the bench that started a cell process (set by the local executor).
PARENT_ENV = "MIXHUB_BENCH_PARENT"

CellSpec = dict[str, Any]
"""``{"arm", "seed", "config", "key", "out", "threads"}``: plain data, so it crosses processes."""


def cell_paths(out: str | Path, arm: str, seed: int) -> tuple[Path, Path]:
    """``(cell folder, finished-cell file)`` of one cell."""
    folder = Path(out) / "cells" / arm / f"seed{seed}"
    return folder, folder.with_suffix(".json")


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, default=str))
    tmp.replace(path)


def flatten_summary(summary: dict[str, Any]) -> dict[str, float]:
    """``{"test": {"acc": .9}}`` -> ``{"test.acc": .9}`` (numbers only)."""
    out: dict[str, float] = {}
    for split, metrics in summary.items():
        if isinstance(metrics, dict) and split not in ("config", "plugins"):
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"{split}.{k}"] = float(v)
        elif isinstance(metrics, (int, float)) and not isinstance(metrics, bool):
            out[split] = float(metrics)
    return out


def train_cell(config: dict[str, Any], folder: Path, key: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume, or read) the cell's run folder; returns its summary."""
    from ..trainer import train

    run_dir = folder / "run"
    key_path = folder / "key.json"
    same_key = key_path.is_file() and json.loads(key_path.read_text()) == key
    if same_key and (run_dir / "summary.json").is_file():
        return json.loads((run_dir / "summary.json").read_text())
    resumable = same_key and any((run_dir / "checkpoints" / n).is_file() for n in ("last.pt", "last.prev.pt"))
    if not resumable:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        write_json_atomic(key_path, key)
    result = train(config, out=run_dir, quiet=True, resume=resumable)
    return result.summary


def run_cell(spec: CellSpec, run_fn: RunFn | None = None) -> dict[str, Any]:
    """Run one cell (see the module docstring) and write its finished-cell file; returns the cell.

    ``run_fn``: a suite's own cell function (``Suite.run``) instead of training a run folder."""
    threads = spec.get("threads")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    folder, cell_path = cell_paths(spec["out"], spec["arm"], spec["seed"])
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if run_fn is not None:
        metrics = run_fn(spec["config"], folder)
    else:
        metrics = flatten_summary(train_cell(spec["config"], folder, spec["key"]))
    cell = {"arm": spec["arm"], "seed": spec["seed"], "metrics": metrics, "time_s": time.time() - t0, "key": spec["key"]}
    write_json_atomic(cell_path, cell)
    return cell


def main(argv: list[str] | None = None) -> int:
    """``python -m mixhub.bench.cell SPEC.json``: one cell in its own process (local executor)."""
    import logging

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mixhub.bench.cell SPEC.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    spec = json.loads(Path(args[0]).read_text())
    _stop_when_orphaned(int(os.environ.get(PARENT_ENV) or os.getppid()))
    run_cell(spec)
    return 0


def _stop_when_orphaned(parent: int, every_s: float = 1.0) -> None:
    """Send this process SIGTERM once its parent (the bench) is gone, however the bench died.

    The run then checkpoints at its current step and stops, so a bench started again resumes the
    cell instead of finding its run folder locked by a cell nobody waits for.
    """
    import signal
    import threading

    def watch() -> None:
        while os.getppid() == parent:  # reparented (to init or a subreaper) once the parent is gone
            time.sleep(every_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="mixhub-cell-parent-watch", daemon=True).start()


if __name__ == "__main__":  # pragma: no cover - exercised through the local executor
    sys.exit(main())
