"""Build and load the fused CPU kernels of ``_kernels.c`` with the system C compiler.

The shared library is compiled once per machine and source version (about a second) into
``$MIXHUB_ADAMP_CACHE`` (default ``~/.cache/mixhub/adamp``) and loaded with ``ctypes``; it
has no Python or torch headers to build against. ``MIXHUB_ADAMP_NATIVE=0`` disables it. When
no compiler is found, ``available()`` is False and the optimizers fall back to the reference
loop (``impl="auto"``) or raise (``impl="fused"``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

__all__ = ["available", "build_error", "library"]

_SOURCE = Path(__file__).with_name("_kernels.c")
_FLAGS_VERSION = b"flags-2"  # part of the cache key: bump when the compiler flags change
_LOCK = threading.Lock()
_LIB: ctypes.CDLL | None = None
_ERROR: str | None = None
_TRIED = False

_C_INT64 = ctypes.c_int64
_C_INT = ctypes.c_int
_C_DBL = ctypes.c_double
_C_PTR = ctypes.c_void_p

_ADAMP_ARGS = [_C_PTR, _C_PTR, _C_PTR, _C_PTR, _C_INT64, _C_INT64, _C_INT]
_ADAMP_ARGS += [_C_DBL] * 8 + [_C_INT, _C_INT, _C_PTR]
_SGDP_ARGS = [_C_PTR, _C_PTR, _C_PTR, _C_INT64, _C_INT64, _C_INT]
_SGDP_ARGS += [_C_DBL] * 7 + [_C_INT, _C_INT, _C_INT, _C_PTR]


def _cpu_tag() -> str:
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return platform.machine() + ":" + hashlib.sha1(flags.encode()).hexdigest()[:8]


def _cache_dir() -> Path:
    root = os.environ.get("MIXHUB_ADAMP_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "mixhub" / "adamp"


def _compile(out: Path) -> None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    out.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    # -fno-math-errno lets sqrt vectorise; no other fast-math: element arithmetic stays IEEE.
    base = ["-O3", "-fno-math-errno"]
    for flags in ([*base, "-march=native", "-fopenmp"], [*base, "-fopenmp"], base):
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        cmd = [cc, *flags, "-fPIC", "-shared", "-o", tmp, str(_SOURCE), "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            os.replace(tmp, out)  # atomic: concurrent builders never see a partial file
            return
        os.unlink(tmp)
        errors.append(f"{' '.join(cmd)}: {proc.stderr.strip()[-300:]}")
    raise RuntimeError("compiling the fused kernels failed: " + " | ".join(errors))


def _load() -> ctypes.CDLL:
    digest = hashlib.sha1(_SOURCE.read_bytes() + _FLAGS_VERSION + _cpu_tag().encode()).hexdigest()[:16]
    path = _cache_dir() / f"kernels-{digest}.so"
    if not path.exists():
        _compile(path)
    lib = ctypes.CDLL(str(path))
    for suffix in ("f32", "f64"):
        fn = getattr(lib, f"adamp_step_{suffix}")
        fn.argtypes, fn.restype = _ADAMP_ARGS, _C_INT
        fn = getattr(lib, f"sgdp_step_{suffix}")
        fn.argtypes, fn.restype = _SGDP_ARGS, _C_INT
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, building it on first use; ``None`` when unavailable."""
    global _LIB, _ERROR, _TRIED
    if _TRIED:
        return _LIB
    with _LOCK:
        if not _TRIED:
            if os.environ.get("MIXHUB_ADAMP_NATIVE", "1") == "0":
                _ERROR = "disabled by MIXHUB_ADAMP_NATIVE=0"
            else:
                try:
                    _LIB = _load()
                except Exception as exc:  # noqa: BLE001 - reported through build_error()
                    _ERROR = f"{type(exc).__name__}: {exc}"
            _TRIED = True
    return _LIB


def available() -> bool:
    """Whether the fused CPU kernels can be used in this process."""
    return library() is not None


def build_error() -> str | None:
    """Why the kernels are unavailable (``None`` when they are)."""
    library()
    return _ERROR
