"""The run folder: resolved config, metrics (JSON lines and CSV), summary and plots.

Length: the folder's lock, atomic writes, the epoch tally and the plots share the folder's
file layout.
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

from .errors import ConfigError, MixhubError

__all__ = ["EpochTally", "RunFolder", "RunFolderBusy", "WriteError", "open_run_folder", "plot_curves", "plot_reliability", "binned_ece", "to_jsonable"]

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
        p = self.path / "steps.jsonl"
        if not p.is_file():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

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
        p = self.path / "metrics.jsonl"
        if not p.is_file():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

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

    Part of every checkpoint (``Trainer.register_state``), so a run interrupted mid-epoch and
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


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(ax: Any, xs: list[Any], ys: list[Any], **kw: Any) -> None:
    """A line with markers, so a curve of one point (a one-epoch run) still shows."""
    ax.plot(xs, ys, marker="o", markersize=4 if len(xs) < 60 else 0, **kw)


def _epoch_axis(ax: Any) -> None:
    """Whole epochs only on an epoch axis (1-based: epoch ``k`` is the ``k``-th epoch)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def plot_curves(
    records: list[dict[str, Any]],
    out: Path,
    steps: list[dict[str, Any]] | None = None,
    schedule: dict[str, list[float]] | None = None,
    steps_per_epoch: int | None = None,
) -> list[Path]:
    """Loss and validation metric curves per epoch, and the learning rate per step; one PNG each.

    Epochs are 1-based on every plot, as on the console and in ``metrics.jsonl``: a record of
    ``"epoch": k`` (the ``k``-th epoch) is drawn at ``k``, with integer ticks. ``lr.png`` draws ``schedule``
    (``{"lr" or "lr/<group>": [lr of optimizer step 1, 2, ...]}``, every step's learning rate) as
    lines and the step records' ``lr`` / ``lr/<group>`` (``steps``) as points, against the steps
    done, with the epochs on a second axis when ``steps_per_epoch`` is given (epoch ``k`` ends at
    ``k * steps_per_epoch``).
    """
    plt = _plt()
    written = []
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    if train:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        _series(ax, [r["epoch"] for r in train], [r.get("loss", float("nan")) for r in train], label="train loss")
        if val and "loss" in val[0]:
            _series(ax, [r["epoch"] for r in val], [r["loss"] for r in val], label="val loss")
        _epoch_axis(ax)
        ax.set_ylabel("loss")
        ax.legend()
        fig.tight_layout()
        p = out / "loss.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p)
    if val:
        keys = [k for k in val[-1] if k not in ("epoch", "split", "step", "time_s", "loss") and isinstance(val[-1][k], (int, float))][:6]
        if keys:
            fig, axes = plt.subplots(1, len(keys), figsize=(3 * len(keys), 3), squeeze=False)
            for ax, k in zip(axes[0], keys):
                _series(ax, [r["epoch"] for r in val], [r.get(k, float("nan")) for r in val])
                ax.set_title(f"val {k}")
                _epoch_axis(ax)
            fig.tight_layout()
            p = out / "val_metrics.png"
            fig.savefig(p, dpi=100)
            plt.close(fig)
            written.append(p)
    steps = steps or []
    lr_keys = list(schedule or {}) or sorted({k for r in steps for k in r if k == "lr" or k.startswith("lr/")})
    if lr_keys:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for i, k in enumerate(lr_keys):
            color = f"C{i}"
            label: str | None = k.removeprefix("lr/")
            curve = (schedule or {}).get(k)
            if curve:
                stride = max(1, len(curve) // 2000)  # at most ~2000 points per line
                idx = sorted(set(range(0, len(curve), stride)) | {len(curve) - 1})
                # curve[s] drives optimizer step s + 1: drawn where a step record after that step is
                ax.plot([s + 1 for s in idx], [curve[s] for s in idx], color=color, label=label)
                label = None
            pts = [(r["step"], r[k]) for r in steps if k in r]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], "o", color=color, markersize=3, label=label)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("learning rate")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        if steps_per_epoch:
            top = ax.secondary_xaxis("top", functions=(lambda s: s / steps_per_epoch, lambda e: e * steps_per_epoch))
            _epoch_axis(top)
        if len(lr_keys) > 1:
            ax.legend(fontsize=8)
        fig.tight_layout()
        p = out / "lr.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p)
    return written


def binned_ece(conf: Any, acc: Any, counts: Any) -> float:
    """ECE from reliability bins: ``sum_b n_b / n * |acc_b - conf_b|`` (0 for no samples)."""
    n = sum(float(c) for c in counts)
    if n == 0:
        return 0.0
    return sum(float(c) / n * abs(float(a) - float(f)) for f, a, c in zip(conf, acc, counts))


def plot_reliability(conf: Any, acc: Any, counts: Any, out: Path, title: str = "reliability", ece: float | None = None) -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with the bin counts.

    The title carries the ECE (``ece``, else computed from the bins with ``binned_ece``); a
    second panel shows how many samples fall in each bin.
    """
    plt = _plt()
    n = len(conf)
    centers = [(i + 0.5) / n for i in range(n)]
    value = binned_ece(conf, acc, counts) if ece is None else float(ece)
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(4, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    mask = [float(c) > 0 for c in counts]
    ax.bar([c for c, m in zip(centers, mask) if m], [float(a) for a, m in zip(acc, mask) if m], width=1 / n, edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", label="perfect")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"{title} (ECE {100 * value:.2f}%)")
    ax.legend(loc="upper left")
    ax_n.bar(centers, [float(c) for c in counts], width=1 / n, edgecolor="k", color="tab:gray")
    for x, c in zip(centers, counts):
        if float(c) > 0:
            ax_n.annotate(f"{int(c)}", (x, float(c)), ha="center", va="bottom", fontsize=6)
    ax_n.set_ylim(0, 1.3 * max([float(c) for c in counts] + [1.0]))  # room for the count labels
    ax_n.set_xlabel("confidence")
    ax_n.set_ylabel("samples")
    ax_n.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
