"""Datasets: a registry of builders, bundled data (no downloads) and users' data.

Each builder takes the ``data`` config section and the split seed and returns a
``DataBundle``. Modules in this package register their builders with ``@register_dataset``;
every module here is imported on first use, so adding a dataset is adding a file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from .._util import did_you_mean
from ..errors import DataError
from .base import ArrayDataset, DataBundle, IndexedDataset, TaskStream, stratified_split

__all__ = [
    "ArrayDataset",
    "DataBundle",
    "IndexedDataset",
    "TaskStream",
    "register_dataset",
    "build_data",
    "list_datasets",
    "stratified_split",
]

Builder = Callable[[Any, int], DataBundle]
_REGISTRY: dict[str, Builder] = {}
_PREFIXED: dict[str, Builder] = {}
_LOADED = False


def register_dataset(name: str, *, prefix: bool = False) -> Callable[[Builder], Builder]:
    """Register ``builder(data_config, seed) -> DataBundle`` under ``name``.

    With ``prefix=True`` the name is a scheme: ``name:ARG`` (e.g. ``imagefolder:PATH``) and the
    builder reads ``ARG`` from ``data_config.name``.
    """

    def deco(fn: Builder) -> Builder:
        (_PREFIXED if prefix else _REGISTRY)[name] = fn
        return fn

    return deco


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for mod in pkgutil.iter_modules(__path__):
        if mod.name != "base":
            importlib.import_module(f"{__name__}.{mod.name}")


def list_datasets() -> list[str]:
    _load_all()
    return sorted(_REGISTRY) + sorted(f"{p}:..." for p in _PREFIXED)


def build_data(config: Any, seed: int) -> DataBundle:
    """Build the dataset named by ``config.name``."""
    _load_all()
    name = config.name
    if ":" in name:
        scheme = name.split(":", 1)[0]
        if scheme in _PREFIXED:
            return _PREFIXED[scheme](config, seed)
    if name in _REGISTRY:
        return _REGISTRY[name](config, seed)
    raise DataError(f"data.name: unknown dataset {name!r}{did_you_mean(name, list_datasets())} (known: {', '.join(list_datasets())})")
