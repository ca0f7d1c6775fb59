"""Checkpoints: atomic writes, ``weights_only`` loads, RNG capture, corruption fallback."""

from __future__ import annotations

import errno
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError

__all__ = ["check_plain_state", "first_unplain", "save_checkpoint", "load_checkpoint", "load_latest", "capture_rng", "restore_rng", "FORMAT"]

FORMAT = "mixhub-checkpoint-1"


def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Python, NumPy, torch (CPU and CUDA) and a plugin generator's states, as tensors and plain types."""
    np_state: Any = np.random.get_state()
    out: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()  # the current device only
    if generator is not None:
        out["generator"] = generator.get_state()
    return out


def restore_rng(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


_PLAIN_LEAVES = (type(None), bool, int, float, str, bytes, torch.Tensor, torch.Size, torch.dtype, torch.device)


def first_unplain(value: Any, key: str = "") -> tuple[str, str] | None:
    """``(key path, type name)`` of the first value a ``weights_only`` load would refuse, else ``None``.

    Plain: tensors, numbers, strings, bytes, ``None``, dtypes, devices and lists, tuples and
    dicts (string or integer keys) of them.
    """
    if isinstance(value, _PLAIN_LEAVES):
        return None
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            bad = first_unplain(v, f"{key}[{i}]")
            if bad is not None:
                return bad
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                return (f"{key}[{k!r}]" if key else repr(k)), f"key of type {type(k).__module__}.{type(k).__qualname__}"
            bad = first_unplain(v, f"{key}.{k}" if key else str(k))
            if bad is not None:
                return bad
        return None
    return key or "<the state itself>", f"{type(value).__module__}.{type(value).__qualname__}"


def check_plain_state(payload: dict[str, Any]) -> None:
    """Every plugin's state (and the core's extra state) must be plain data, or the checkpoint could
    never be loaded back: fail before anything is written, naming the plugin and the key."""
    for name, sd in (payload.get("plugins") or {}).items():
        bad = first_unplain(sd)
        if bad is not None:
            raise CheckpointError(
                f"plugin {name!r}: its state (mixhub_state_dict) holds a {bad[1]} at key {bad[0]!r}; "
                "checkpoints load with weights_only=True, so plugin state must be tensors, numbers, strings and "
                "lists/tuples/dicts of them"
            )
    for name, sd in (payload.get("extra") or {}).items():
        bad = first_unplain(sd)
        if bad is not None:
            raise CheckpointError(f"core state {name!r} (register_state) holds a {bad[1]} at key {bad[0]!r}; it must be plain data")


def _file_size_limit() -> int | None:
    """This process's file-size limit in bytes (``ulimit -f``), ``None`` when unlimited."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _write_failure(exc: BaseException, folder: Path, partial: Path | None = None) -> str:
    """Why a write failed, in words: the file-size limit or a full disk (by errno; for torch's
    archive writer, which reports a short write as ``enforce fail ... unexpected pos``, by the
    size the partial file reached and the free space left), else the error."""
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    limit = _file_size_limit()
    if code == errno.EFBIG:
        return "the file is too large: it reached the file-size limit" + (f" ({limit} bytes, `ulimit -f`)" if limit else "")
    try:
        written = partial.stat().st_size if partial is not None and partial.exists() else 0
    except OSError:
        written = 0
    if limit is not None and written >= limit:
        return f"the file is too large: it reached this process's file-size limit ({limit} bytes, `ulimit -f`)"
    try:
        st = os.statvfs(folder)
        if st.f_bavail * st.f_frsize < max(1 << 20, written):
            return "the disk is full"
    except OSError:
        pass
    first = str(exc).splitlines()[0] if str(exc) else ""
    if "unexpected pos" in first or "PytorchStreamWriter" in first:
        return f"the file system refused part of the file (too large for it, or out of space?): {first}"
    return f"{type(exc).__name__}: {first}"


def save_checkpoint(payload: dict[str, Any], path: str | Path, keep_previous: bool = True) -> Path:
    """Write atomically: temp file in the same folder, fsync, rename. The replaced file is kept as ``*.prev.pt``.

    State that could not be loaded back is refused before writing (``check_plain_state``); a
    failed write (a full disk) is a ``CheckpointError`` naming the file, leaves no temporary file
    and keeps the previous checkpoint.
    """
    path = Path(path)
    check_plain_state(payload)
    payload = {"format": FORMAT, **payload}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if keep_previous and path.exists():
            os.replace(path, path.with_suffix(".prev.pt"))
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except (OSError, RuntimeError) as exc:  # torch.save reports a failed write of its archive as RuntimeError
        kept = path if path.exists() else None
        reason = _write_failure(exc, path.parent, tmp)
        raise CheckpointError(
            f"could not write checkpoint {str(path)!r}: {reason}; "
            + (f"the last good checkpoint {str(kept)!r} is kept" if kept is not None else "no earlier checkpoint exists")
        ) from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _unsafe_message(path: Path, torch_message: str) -> str:
    """Why the safe (``weights_only``) unpickler refused a file, without torch's advice to load it
    unsafely: a file that names a function or class to call needs arbitrary code to load."""
    import re

    found = re.search(r"GLOBAL ([\w.]+)", torch_message)
    if found is not None:
        return (
            f"checkpoint {str(path)!r} needs arbitrary code to load: unpickling it would call {found.group(1)!r}. "
            "mixhub will not load it: its checkpoints hold tensors and plain data only (a file that calls code may be "
            "malicious; use it only if you wrote it, and then save its weights as a state dict)"
        )
    lines = [ln.strip() for ln in torch_message.replace("WeightsUnpickler error:", "\n").splitlines()]
    details = [ln for ln in lines if ln and "weights_only" not in ln and not ln.startswith(("(", "Check the documentation", "Please file"))]
    detail = details[-1] if details else "unreadable data"
    return (
        f"checkpoint {str(path)!r} cannot be read as tensors and plain data ({detail}); mixhub loads checkpoints "
        "with the safe unpickler only and will not run the code such a file may hold"
    )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``; any corruption or unsafe content is a ``CheckpointError`` naming the file."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {str(path)!r} is a directory, not a checkpoint file; give a .pt file "
            f"(a run folder keeps them as checkpoints/best.pt and checkpoints/last.pt)"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:2] != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip archive (a legacy file: a pickle)
        what = "an empty file" if not head else f"a file starting with bytes {head!r}"
        raise CheckpointError(f"checkpoint {str(path)!r} is not a checkpoint file ({what}; torch.save writes a zip archive)")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(_unsafe_message(path, str(exc))) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or truncated: {type(exc).__name__}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a mixhub checkpoint (format {data.get('format') if isinstance(data, dict) else type(data).__name__!r})")
    return data


def load_latest(folder: str | Path, name: str = "last", map_location: str | torch.device = "cpu", warn: Any = None) -> tuple[dict[str, Any], Path]:
    """``<name>.pt``, or, when it is corrupt, the previous good ``<name>.prev.pt`` (reported through ``warn``)."""
    folder = Path(folder)
    primary = folder / f"{name}.pt"
    previous = folder / f"{name}.prev.pt"
    try:
        return load_checkpoint(primary, map_location), primary
    except CheckpointError as exc:
        if not previous.is_file():
            raise
        if warn is not None:
            warn(f"{exc}; using the previous good checkpoint {str(previous)!r}")
        return load_checkpoint(previous, map_location), previous
