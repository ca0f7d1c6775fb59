"""``mixhub plugins list``: installed plugins and the registry's catalogue, robust to broken plugins."""

from __future__ import annotations

from typing import Any

from .hookspecs import SLOTS
from .plugins import discover, duplicate_message, duplicates, load_plugin
from .registry import load_registry

__all__ = ["plugin_rows", "dataset_rows", "format_table", "format_datasets"]

_SLOT_HOOKS = {v: k for k, v in SLOTS.items()}


def plugin_rows(import_plugins: bool = True) -> list[dict[str, Any]]:
    """One row per installed plugin, then one per registry entry not installed."""
    registry = load_registry()
    rows: list[dict[str, Any]] = []
    dup = duplicates()
    for name, info in sorted(discover().items()):
        entry = registry.get(name, {})
        row: dict[str, Any] = {
            "name": name,
            "distribution": info.distribution,
            "version": info.version,
            "installed": True,
            "entry_point": info.value,
            "status": "installed",
            "slots": list(entry.get("slots", [])),
            "collectors": [],
            "task_kinds": list(entry.get("task_kinds", [])),
            "in_registry": bool(entry),
            "error": None,
        }
        if name in dup:  # which one a run would get is undefined: neither is usable
            row["status"] = "conflict"
            row["distribution"] = ", ".join(i.distribution for i in dup[name])
            row["error"] = duplicate_message(name, dup[name])
        elif import_plugins:
            try:
                plugin = load_plugin(info)
            except Exception as exc:  # a broken plugin never breaks the listing
                row["status"] = "broken"
                row["error"] = str(exc)
            else:
                spec = plugin.spec
                hooks = sorted(a for a in dir(plugin.obj) if a.startswith("mixhub_") and hasattr(getattr(plugin.obj, a), "mixhub_impl"))
                row["status"] = "ok"
                row["slots"] = list(spec.slots) if spec.claims is None else sorted({_SLOT_HOOKS[h] for h in hooks if h in _SLOT_HOOKS})
                row["collectors"] = [h for h in hooks if h not in _SLOT_HOOKS]
                row["task_kinds"] = list(spec.task_kinds)
                row["description"] = spec.description
        rows.append(row)
    installed = {r["name"] for r in rows}
    for name, entry in sorted(registry.items()):
        if name in installed:
            continue
        rows.append(
            {
                "name": name,
                "distribution": entry["distribution"],
                "version": None,
                "installed": False,
                "entry_point": entry.get("entry_point"),
                "status": "not installed",
                "slots": list(entry.get("slots", [])),
                "collectors": [],
                "task_kinds": list(entry.get("task_kinds", [])),
                "in_registry": True,
                "install": entry.get("install", f"pip install {entry['distribution']}"),
                "error": None,
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ["name", "distribution", "version", "status", "slots", "task kinds"]
    body = []
    for r in rows:
        status = r["status"]
        if r.get("install"):
            status += f" ({r['install']})"
        body.append([r["name"], r["distribution"], r["version"] or "-", status, ",".join(r["slots"]) or "-", ",".join(r["task_kinds"])])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in body]
    for r in rows:
        if r["status"] in ("broken", "conflict"):
            lines.append(f"! {r['name']}: {r['error']}")
    return "\n".join(lines)


def dataset_rows() -> list[dict[str, Any]]:
    """Datasets registered by installed packages (entry-point group ``mixhub.datasets``), from
    metadata only: name, distribution, version and entry point."""
    from .data import plugin_datasets

    rows = []
    for name, ep in sorted(plugin_datasets().items()):
        dist = getattr(ep, "dist", None)
        rows.append(
            {
                "name": name,
                "distribution": dist.metadata["Name"] if dist is not None else "?",
                "version": dist.version if dist is not None else "?",
                "entry_point": ep.value,
                "usage": f"data.name={name}",
            }
        )
    return rows


def format_datasets(rows: list[dict[str, Any]]) -> str:
    """The datasets table printed under the plugins by ``mixhub plugins list``."""
    if not rows:
        return "datasets from installed packages: none"
    head = ["dataset", "distribution", "version", "entry point"]
    body = [[r["name"], r["distribution"], r["version"], r["entry_point"]] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["datasets from installed packages (data.name=<dataset>):", "  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in body]
    return "\n".join(lines)
