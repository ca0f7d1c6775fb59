"""Checkpoints: atomic writes, ``weights_only`` loads, RNG capture, corruption fallback."""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError

__all__ = ["save_checkpoint", "load_checkpoint", "load_latest", "capture_rng", "restore_rng", "FORMAT"]

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


def save_checkpoint(payload: dict[str, Any], path: str | Path, keep_previous: bool = True) -> Path:
    """Write atomically: temp file in the same folder, fsync, rename. The replaced file is kept as ``*.prev.pt``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, **payload}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
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
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


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
        msg = str(exc)
        detail = msg.split("WeightsUnpickler error:")[-1].strip()
        detail = detail.splitlines()[0] if detail else msg
        if "Unsupported global" in msg or "Unsupported class" in msg:
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds objects that need arbitrary unpickling ({detail.split(' was not')[0]}); "
                "mixhub refuses it (plugin state must be tensors and plain types)"
            ) from exc
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: its data cannot be read ({detail})") from exc
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
