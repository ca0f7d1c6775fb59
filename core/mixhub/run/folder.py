"""The run folder: resolved config, metrics (JSON lines and CSV), summary, the epoch tally.

A ``RunFolder`` is owned by one process (an OS file lock), writes every file atomically and says
whether a new or a resumed run may use it; ``EpochTally`` is the epoch's running sums that travel
in every checkpoint. What a run draws into its folder is ``mixhub.run.plots``.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, MixhubError

__all__ = ["EpochTally", "RunFolder", "RunFolderBusy", "WriteError", "open_run_folder", "read_jsonl", "to_jsonable"]

log = logging.getLogger("mixhub")

#: Files that mark a folder as holding a run (a new run never writes into such a folder).
RUN_FILES = (
    "summary.json", "checkpoints/last.pt", "checkpoints/last.prev.pt", "checkpoints/best.pt", "metrics.jsonl", "steps.jsonl", "config.yaml",
)
LOCK_FILE = ".lock"


class RunFolderBusy(ConfigError):
    """Another live process holds the run folder's lock."""


class WriteError(MixhubError):
    """A run file could not be written (e.g. the disk is full); names the file."""


def write_error(path: Path, exc: OSError) -> WriteError:
    reason = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
    return WriteError(f"could not write {str(path)!r}: {reason} ({type(exc).__name__} errno {exc.errno})")


def to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "numel", lambda: 2)() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


#: Run folders this process holds: resolved path -> [lock file, owners] (flock is per open file,
#: so a second lock in one process would block on itself).
_HELD: dict[str, list[Any]] = {}


def _drop_locks_in_child() -> None:
    """A forked child (a DataLoader worker) shares the parent's lock files, and an flock lives as
    long as any process keeps the file open: the child closes its copies, so the folder is free
    once the parent releases it, even while persistent loader workers live on."""
    for fh, _ in _HELD.values():
        try:
            fh.close()
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_locks_in_child)


class RunFolder:
    """A run's folder, owned by one process at a time.

    An enabled folder takes an OS file lock (``flock`` on ``.lock``) that lives as long as the
    folder object (or the process: the OS drops it on exit or crash), so two runs never share a
    folder (within one process, folder objects of one path share the lock); on taking it, partial files a killed process left behind (``.*.tmp-*``) are removed.
    ``check_new``/``check_resume`` tell whether a new run, or a resumed one, may use the folder.
    """

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._lock_fh: Any = None
        if enabled:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                (self.path / "checkpoints").mkdir(exist_ok=True)
            except OSError as exc:
                raise write_error(self.path, exc) from exc
            self._lock()
            self._remove_partial_files()

    # ------------------------------------------------------------------ ownership
    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return
        key = str(self.path.resolve())
        if key in _HELD:  # this process already owns it (e.g. an interrupted Trainer still in memory)
            _HELD[key][1] += 1
            self._lock_fh = key
            return
        fh = open(self.path / LOCK_FILE, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise RunFolderBusy(
                f"run folder {str(self.path)!r} is in use by another run (process {holder}); "
                "wait for it to end or choose another `out`"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        _HELD[key] = [fh, 1]
        self._lock_fh = key

    def release(self) -> None:
        """Give up the folder's lock (at the end of a run; the OS also drops it when the process ends)."""
        key, self._lock_fh = self._lock_fh, None
        if key is not None and key in _HELD:
            _HELD[key][1] -= 1
            if _HELD[key][1] <= 0:
                _HELD.pop(key)[0].close()

    def __del__(self) -> None:
        self.release()

    def _remove_partial_files(self) -> None:
        for folder in (self.path, self.checkpoints):
            for f in folder.glob(".*.tmp*"):
                log.warning("removing %s, a partial file an interrupted write left behind", f)
                if f.is_dir() and not f.is_symlink():  # a sharded checkpoint's folder
                    import shutil

                    shutil.rmtree(f, ignore_errors=True)
                else:
                    f.unlink(missing_ok=True)

    def run_files(self) -> list[str]:
        return [name for name in RUN_FILES if (self.path / name).exists()]

    def check_new(self) -> None:
        """A new run may use this folder only when it holds no other run's files."""
        if not self.enabled:
            return
        held = self.run_files()
        if not held:
            return
        where = str(self.path)
        fresh = "choose another `out` (or leave `out` unset: each run then gets a fresh numbered folder under runs/)"
        if "summary.json" in held:
            raise ConfigError(
                f"run folder {where!r} holds a finished run; to continue it with more epochs run "
                f"`mixhub train --resume {where} train.epochs=N`, or {fresh}"
            )
        if any(h.startswith("checkpoints/last") for h in held):
            raise ConfigError(f"run folder {where!r} already holds a run; resume it with `mixhub train --resume {where}`, or {fresh}")
        if not any(h.startswith("checkpoints/") for h in held) and self._checkpointing_run():
            # a run that meant to checkpoint but never wrote one (its first write failed, or it was
            # killed before): nothing there can be resumed, so a new run takes the folder over
            log.warning(
                "run folder %r holds files of a run that never wrote a checkpoint (%s); nothing there can be resumed: "
                "this run replaces them", where, ", ".join(held),
            )
            for name in held:
                (self.path / name).unlink(missing_ok=True)
            return
        import shlex

        rm = "rm " + " ".join(shlex.quote(str(self.path / h)) for h in held)
        raise ConfigError(
            f"run folder {where!r} holds files of another run ({', '.join(held)}) and no checkpoint to resume from; "
            f"{fresh}, or delete them: `{rm}`"
        )

    def _checkpointing_run(self) -> bool:
        """Whether the folder's run was set to write checkpoints (its ``config.yaml``; a run with
        ``train.checkpoint=false`` keeps only its logs, which a new run must not delete)."""
        try:
            saved = yaml.safe_load((self.path / "config.yaml").read_text())
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            return False
        train = saved.get("train") if isinstance(saved, dict) else None
        return isinstance(train, dict) and train.get("checkpoint", True) is not False

    def check_resume(self) -> None:
        if self.enabled and not any((self.checkpoints / n).is_file() for n in ("last.pt", "last.prev.pt")):
            raise ConfigError(f"--resume {str(self.path)!r}: there is no checkpoints/last.pt to resume from (was the run started with train.checkpoint=false?)")

    # ------------------------------------------------------------------ files
    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def _write_text(self, name: str, text: str) -> None:
        """Write a whole file atomically (temp file, rename); a failure names the file and leaves no partial file."""
        path = self.path / name
        tmp = self.path / f".{name}.tmp-{os.getpid()}"
        try:
            tmp.write_text(text)
            os.replace(tmp, path)
        except OSError as exc:
            raise write_error(path, exc) from exc
        finally:
            tmp.unlink(missing_ok=True)

    def write_config(self, config: dict[str, Any]) -> None:
        if self.enabled:
            self._write_text("config.yaml", yaml.safe_dump(config, sort_keys=False))

    def log(self, record: dict[str, Any]) -> None:
        """Append an epoch record to ``metrics.jsonl`` (its ``epoch`` 1-based: 1 is the first epoch)."""
        self.append_jsonl("metrics.jsonl", record)

    def log_step(self, record: dict[str, Any]) -> None:
        """Append a step record to ``steps.jsonl`` (its ``epoch`` 1-based: the epoch in progress)."""
        self.append_jsonl("steps.jsonl", record)

    def steps(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path / "steps.jsonl")

    def truncate_steps(self, after_step: int) -> None:
        """Keep only step records up to ``after_step`` (resume: later steps are redone)."""
        if self.enabled and (self.path / "steps.jsonl").is_file():
            kept = [r for r in self.steps() if int(r.get("step", 0)) <= after_step]
            self._write_text("steps.jsonl", "".join(json.dumps(r) + "\n" for r in kept))

    def append_jsonl(self, name: str, record: dict[str, Any]) -> None:
        """Append one JSON line to ``name``; a failed write leaves no half line and names the file."""
        if not self.enabled:
            return
        path = self.path / name
        line = json.dumps(to_jsonable(record)) + "\n"
        try:
            with open(path, "a") as fh:
                size = fh.tell()
                try:
                    fh.write(line)
                    fh.flush()
                except OSError:
                    fh.truncate(size)  # no half line
                    raise
        except OSError as exc:
            raise write_error(path, exc) from exc

    def records(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path / "metrics.jsonl")

    def truncate_log(self, epochs_done: int) -> None:
        """Keep only the records of the first ``epochs_done`` epochs (resume; the records' epochs
        are 1-based, so ``epochs_done`` is also the 0-based index of the epoch the run redoes or
        starts); the final records (``final_<split>``) go: a resumed run writes its own."""
        if not self.enabled:
            return
        kept = [r for r in self.records() if r.get("epoch", 0) <= epochs_done and not str(r.get("split", "")).startswith("final_")]
        self._write_text("metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))

    def write_csv(self) -> None:
        recs = self.records()
        if not self.enabled or not recs:
            return
        keys: list[str] = []
        for r in recs:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        for r in recs:
            w.writerow(r)
        self._write_text("metrics.csv", buf.getvalue())

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.enabled:
            self._write_text("summary.json", json.dumps(to_jsonable(summary), indent=2))


class EpochTally:
    """An epoch's running sums of the step scalars, its counted steps and its elapsed seconds.

    Part of every checkpoint (``CheckpointKeeper.register``), so a run interrupted mid-epoch and
    resumed logs the epoch's means over all of its steps, summed in the same order (bitwise the
    uninterrupted run's), and a ``time_s`` that adds the time before the interruption to the
    time after it.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self._before = 0.0
        self._t0 = time.perf_counter()

    def add(self, scalars: dict[str, float]) -> None:
        self.count += 1
        for k, v in scalars.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    def seconds(self) -> float:
        return self._before + (time.perf_counter() - self._t0)

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "count": self.count, "seconds": self.seconds()}

    def reduce_ranks(self) -> None:
        """Under DDP, before an interrupted epoch is checkpointed: every rank's sums and count become
        the sums over all ranks (rank 0 saves them; ``load_state_dict`` gives them back to rank 0 only)."""
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        keys = sorted(self.sums)
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor([self.sums[k] for k in keys] + [float(self.count)], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        vals = t.tolist()
        self.sums = dict(zip(keys, vals[:-1]))
        self.count = int(vals[-1])

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        import torch.distributed as dist

        self.reset()
        self._before = float(sd["seconds"])
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return  # rank 0 holds the sums of all ranks (``reduce_ranks``): counting them again would double them
        self.sums = {str(k): float(v) for k, v in sd["sums"].items()}
        self.count = int(sd["count"])


def open_run_folder(explicit: str | Path | None, default: str | Path, enabled: bool = True) -> RunFolder:
    """The folder of an explicit ``out``, or, without one, the first free folder ``default``, ``default-1``, ...

    Free: no run files and no live owner; taking the lock decides, so runs started together
    without ``out`` get different folders.
    """
    if explicit is not None or not enabled:
        return RunFolder(explicit if explicit is not None else default, enabled)
    base = Path(default)
    k = 0
    while True:
        path = base if k == 0 else base.with_name(f"{base.name}-{k}")
        k += 1
        if path.exists() and any((path / n).exists() for n in RUN_FILES):
            continue
        try:
            folder = RunFolder(path, enabled)
        except RunFolderBusy:
            continue
        if folder.run_files():  # written between the look and the lock
            folder.release()
            continue
        return folder


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (``[]`` when it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
