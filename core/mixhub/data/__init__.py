"""Datasets: a registry of builders, bundled data (no downloads) and users' data.

Each builder takes the ``data`` config section and the split seed and returns a
``DataBundle``. Modules in this package register their builders with ``@register_dataset``;
every module here is imported on first use, so adding a dataset is adding a file.
"""

from __future__ import annotations

import importlib
import inspect
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
    "plugin_datasets",
    "DATASET_GROUP",
    "stratified_split",
]

Builder = Callable[..., DataBundle]
_REGISTRY: dict[str, Builder] = {}
_PREFIXED: dict[str, Builder] = {}
#: accepted ``data.options`` keys per builder; ``None``: the builder checks its options itself
_OPTIONS: dict[Builder, tuple[str, ...] | None] = {}
_LOADED = False
#: entry-point group through which an installed package registers datasets
DATASET_GROUP = "mixhub.datasets"


def register_dataset(name: str, *, prefix: bool = False, options: tuple[str, ...] | None = ()) -> Callable[[Builder], Builder]:
    """Register ``builder(data_config, seed) -> DataBundle`` under ``name``.

    With ``prefix=True`` the name is a scheme: ``name:ARG`` (e.g. ``imagefolder:PATH``) and the
    builder reads ``ARG`` from ``data_config.name``. ``options`` lists the ``data.options`` keys
    the builder accepts (any other key is an error naming it); ``None`` leaves the check to the
    builder. A builder that takes a ``model`` keyword receives the ``model`` config section
    (e.g. for the pretrained mean and std).
    """

    def deco(fn: Builder) -> Builder:
        (_PREFIXED if prefix else _REGISTRY)[name] = fn
        _OPTIONS[fn] = options
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


def plugin_datasets() -> dict[str, Any]:
    """Datasets registered by installed packages (entry-point group ``mixhub.datasets``), by name;
    read from metadata only (nothing is imported)."""
    from importlib import metadata

    found: dict[str, Any] = {}
    for ep in metadata.entry_points(group=DATASET_GROUP):
        found[ep.name] = ep
    return found


def _plugin_builder(name: str) -> Builder | None:
    ep = plugin_datasets().get(name)
    if ep is None:
        return None
    dist = getattr(ep, "dist", None)
    where = f"dataset {name!r} from {dist.metadata['Name'] if dist is not None else 'an installed package'} (entry point {ep.value!r})"
    try:
        fn = ep.load()
    except Exception as exc:  # noqa: BLE001 - a broken package must name itself
        raise DataError(f"{where} failed to import: {type(exc).__name__}: {exc}") from exc
    if not callable(fn):
        raise DataError(f"{where} is not a callable builder(data_config, seed) -> DataBundle")
    _OPTIONS.setdefault(fn, getattr(fn, "mixhub_options", None))
    return fn


def list_datasets() -> list[str]:
    _load_all()
    own = set(_REGISTRY) | set(_PREFIXED)
    extra = sorted(n for n in plugin_datasets() if n not in own)
    return sorted(_REGISTRY) + sorted(f"{p}:..." for p in _PREFIXED) + extra


def _check_options(fn: Builder, config: Any) -> None:
    allowed = _OPTIONS.get(fn, ())
    if allowed is None:
        return
    for key in config.options:
        if key not in allowed:
            known = f" (known: {', '.join(sorted(allowed))})" if allowed else " (it takes no options)"
            raise DataError(f"data.options.{key}: unknown option for dataset {config.name!r}{did_you_mean(key, list(allowed))}{known}")


def build_data(config: Any, seed: int, model: Any | None = None) -> DataBundle:
    """Build the dataset named by ``config.name`` (``model``: the model section, for builders
    whose transforms follow the model's pretrained config)."""
    _load_all()
    name = config.name
    fn: Builder | None = None
    if ":" in name:
        fn = _PREFIXED.get(name.split(":", 1)[0])
    if fn is None:
        fn = _REGISTRY.get(name)
    if fn is None:
        fn = _plugin_builder(name.split(":", 1)[0] if ":" in name and name.split(":", 1)[0] in plugin_datasets() else name)
    if fn is None:
        raise DataError(f"data.name: unknown dataset {name!r}{did_you_mean(name, list_datasets())} (known: {', '.join(list_datasets())})")
    _check_options(fn, config)
    if model is not None and "model" in inspect.signature(fn).parameters:
        bundle = fn(config, seed, model=model)
    else:
        bundle = fn(config, seed)
    if not isinstance(bundle, DataBundle):
        raise DataError(f"dataset {name!r}: its builder returned {type(bundle).__name__}, not a mixhub.data.DataBundle")
    if getattr(config, "classes", None) is not None:
        from .base import apply_class_order

        apply_class_order(bundle, list(config.classes))
    from .subset import apply_subset

    return apply_subset(bundle, getattr(config, "subset", None), seed)
