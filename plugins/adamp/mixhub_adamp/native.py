"""Build and load the fused CPU kernels of ``_kernels.cpp`` as torch operators.

The kernels are registered with ``TORCH_LIBRARY`` as ``torch.ops.mixhub_adamp.adamp_step`` and
``torch.ops.mixhub_adamp.sgdp_step`` and built with torch's own extension builder
(``torch.utils.cpp_extension.load``, which needs a C++ compiler and ninja). The build happens
once per machine and source version (about 10 s) into torch's extension cache
(``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``); torch locks the build
directory, so concurrent processes wait for one build.

Fallback: when the build fails (no compiler, no ninja, no headers) or ``MIXHUB_ADAMP_NATIVE=0``,
``available()`` is False, ``build_error()`` says why, ``impl="auto"`` uses the multi-tensor
step (bitwise equal to the reference loop) and ``impl="fused"`` raises with that reason.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import threading
from pathlib import Path
from typing import Any

__all__ = ["available", "build_error", "ops"]

_SOURCE = Path(__file__).with_name("_kernels.cpp")
#: Compiler flags. -fno-math-errno lets sqrt vectorise; no fast-math: element arithmetic stays
#: IEEE, in the tensor's dtype. -fopenmp makes ``#pragma omp simd`` and ATen's OpenMP pool work.
_FLAGS = ["-O3", "-fno-math-errno", "-fopenmp", "-march=native"]
_LOCK = threading.Lock()
_OPS: Any = None
_ERROR: str | None = None
_TRIED = False


def _cpu_tag() -> str:
    """The machine and its CPU flags: ``-march=native`` builds must not be shared across CPUs."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return platform.machine() + ":" + flags


def _build() -> Any:
    import torch

    # importing cpp_extension on a machine without CUDA logs a warning about CUDA_HOME; it is
    # irrelevant to a CPU-only build
    ext_log = logging.getLogger("torch.utils.cpp_extension")
    level = ext_log.level
    ext_log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        ext_log.setLevel(level)
    if not hasattr(torch.ops.mixhub_adamp, "adamp_step"):
        key = hashlib.sha1((_cpu_tag() + " ".join(_FLAGS)).encode()).hexdigest()[:10]
        cpp_extension.load(
            name=f"mixhub_adamp_kernels_{key}",
            sources=[str(_SOURCE)],
            extra_cflags=_FLAGS,
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    return torch.ops.mixhub_adamp


def ops() -> Any:
    """``torch.ops.mixhub_adamp`` once the kernels are built and loaded; ``None`` when unavailable."""
    global _OPS, _ERROR, _TRIED
    if _TRIED:
        return _OPS
    with _LOCK:
        if not _TRIED:
            if os.environ.get("MIXHUB_ADAMP_NATIVE", "1") == "0":
                _ERROR = "disabled by MIXHUB_ADAMP_NATIVE=0"
            else:
                try:
                    _OPS = _build()
                except Exception as exc:  # noqa: BLE001 - reported through build_error()
                    _ERROR = f"{type(exc).__name__}: {str(exc).strip()[-500:]}"
            _TRIED = True
    return _OPS


def available() -> bool:
    """Whether the fused CPU kernels can be used in this process."""
    return ops() is not None


def build_error() -> str | None:
    """Why the kernels are unavailable (``None`` when they are)."""
    ops()
    return _ERROR
