"""Read an offline W&B run directory back: history, summary, config, name and tags.

W&B writes an offline run as one transaction log (``run-<id>.wandb``): protocol-buffer records
(``wandb.proto.wandb_internal_pb2.Record``) in a LevelDB-style log of 32 KiB blocks. The SDK
(0.31) has no public Python reader for it (``wandb sync`` reads it from the Go core), so this
module parses the log framing itself and decodes each record with W&B's own protobuf classes.
It is what the tests use to check what a run logged, and lets users inspect an offline run
before syncing it.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["OfflineRun", "read_offline_run", "iter_records", "find_offline_runs", "wait_until_complete"]

_MAGIC = b":W&B"
_HEADER = 7  # magic (4) + file magic number (2) + version (1)
_BLOCK = 32 * 1024
_RECORD_HEADER = 7  # crc32 (4) + length (2) + type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What an offline run directory holds.

    ``history`` is one dict per logged step (``_step`` plus the values logged at it, merged);
    ``summary`` the final summary; ``config`` the run config (values unwrapped).
    """

    path: Path
    run_id: str = ""
    name: str = ""
    project: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    exit_code: int | None = None


def find_offline_runs(root: str | Path) -> list[Path]:
    """Offline run directories (``offline-run-*``) under ``root`` (searched recursively), oldest first."""
    return sorted(p for p in Path(root).rglob("offline-run-*") if p.is_dir())


def _payloads(data: bytes, where: str) -> Iterator[bytes]:
    if data[:4] != _MAGIC:
        raise ValueError(f"{where}: not a W&B transaction log (bad magic {data[:4]!r})")
    pos, pending = _HEADER, b""
    while pos < len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _RECORD_HEADER:  # block trailer: zero padding
            pos += left
            continue
        if pos + _RECORD_HEADER > len(data):
            break
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += left
            continue
        body = data[pos + _RECORD_HEADER : pos + _RECORD_HEADER + length]
        if len(body) < length:
            break  # a record cut short (the run is still being written)
        if zlib.crc32(body, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise ValueError(f"{where}: checksum mismatch at byte {pos}")
        pos += _RECORD_HEADER + length
        if kind == _FULL:
            yield body
        elif kind == _FIRST:
            pending = body
        elif kind == _MIDDLE:
            pending += body
        elif kind == _LAST:
            yield pending + body
            pending = b""
        else:
            raise ValueError(f"{where}: unknown record type {kind} at byte {pos}")


def iter_records(path: str | Path) -> Iterator[Any]:
    """Every ``Record`` (W&B protobuf) of a ``run-<id>.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    for payload in _payloads(path.read_bytes(), str(path)):
        record = pb.Record()
        record.ParseFromString(payload)
        yield record


def wait_until_complete(log_file: str | Path, timeout: float = 60.0, poll: float = 0.05) -> bool:
    """Wait until a run's transaction log holds its ``exit`` record; ``False`` on timeout.

    ``run.finish()`` can return while W&B's core process is still writing the log, so a run
    that must be readable (or syncable) as soon as it ends waits for the record here.
    """
    deadline = time.monotonic() + timeout
    path = Path(log_file)
    while True:
        try:
            if path.is_file() and any(r.WhichOneof("record_type") == "exit" for r in iter_records(path)):
                return True
        except ValueError:
            pass  # a record being written: read again
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def _put(target: dict[str, Any], item: Any) -> None:
    """Set an item's JSON value in ``target``; nested keys (``["plots/loss", "_type"]``) nest."""
    parts = [item.key] if item.key else list(item.nested_key)
    for part in parts[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = target[part] = {}
        target = nxt
    target[parts[-1]] = json.loads(item.value_json)


def read_offline_run(run_dir: str | Path) -> OfflineRun:
    """Parse an offline run directory (``.../wandb/offline-run-<time>-<id>``)."""
    run_dir = Path(run_dir)
    logs = sorted(run_dir.glob("run-*.wandb"))
    if not logs:
        raise FileNotFoundError(f"{str(run_dir)!r} holds no run-*.wandb transaction log")
    out = OfflineRun(path=run_dir)
    by_step: dict[int, dict[str, Any]] = {}
    for record in iter_records(logs[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            out.run_id, out.name, out.project, out.group = r.run_id, r.display_name, r.project, r.run_group
            out.tags = list(r.tags)
            for item in r.config.update:
                _put(out.config, item)
        elif kind == "config":
            for item in record.config.update:
                _put(out.config, item)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _put(row, item)
            step = int(row.get("_step", record.history.step.num))
            by_step.setdefault(step, {"_step": step}).update(row)
        elif kind == "summary":
            for item in record.summary.update:
                _put(out.summary, item)
            for item in record.summary.remove:
                out.summary.pop(_key(item), None)
        elif kind == "files":
            out.files += [f.path for f in record.files.files]
        elif kind == "exit":
            out.exit_code = record.exit.exit_code
    out.config = {k: (v["value"] if isinstance(v, dict) and set(v) == {"value"} else v) for k, v in out.config.items()}
    out.history = [by_step[s] for s in sorted(by_step)]
    return out
