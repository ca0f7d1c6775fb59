"""The catalogue of known plugins (``registry.yaml``, shipped inside the package)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

__all__ = ["load_registry", "required_fields", "REQUIRED_FIELDS", "KINDS"]

#: Fields every entry has.
REQUIRED_FIELDS = ("name", "distribution", "entry_point", "slots", "task_kinds", "code", "license", "status", "install")
#: ``kind`` of an entry (default ``method``) and the fields that kind adds: a training method
#: cites its paper; a logger (a tracker plugin implementing ``mixhub_log``) names the tool.
KINDS: dict[str, tuple[str, ...]] = {"method": ("paper",), "logger": ("tool",)}


def required_fields(entry: dict[str, Any]) -> tuple[str, ...]:
    """The fields ``entry`` must have, by its ``kind``."""
    kind = entry.get("kind", "method")
    if kind not in KINDS:
        raise ValueError(f"registry entry {entry.get('name')!r}: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    return REQUIRED_FIELDS + KINDS[kind]


@lru_cache(maxsize=1)
def load_registry() -> dict[str, dict[str, Any]]:
    """``{name: entry}`` from the packaged ``registry.yaml``."""
    text = resources.files("mixhub").joinpath("registry.yaml").read_text()
    data = yaml.safe_load(text) or {}
    return {e["name"]: e for e in data.get("plugins", [])}
