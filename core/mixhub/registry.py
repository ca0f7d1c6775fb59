"""The catalogue of known plugins (``registry.yaml``, shipped inside the package)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

__all__ = ["load_registry", "REQUIRED_FIELDS"]

REQUIRED_FIELDS = ("name", "distribution", "entry_point", "slots", "task_kinds", "paper", "code", "license", "status", "install")


@lru_cache(maxsize=1)
def load_registry() -> dict[str, dict[str, Any]]:
    """``{name: entry}`` from the packaged ``registry.yaml``."""
    text = resources.files("mixhub").joinpath("registry.yaml").read_text()
    data = yaml.safe_load(text) or {}
    return {e["name"]: e for e in data.get("plugins", [])}
