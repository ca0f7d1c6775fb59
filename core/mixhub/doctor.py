"""``mixhub plugins doctor``: import each installed plugin, check its hooks and registry entry,
and run a two-step smoke training."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from typing import IO, Any

import pluggy

from . import hookspecs
from .plugins import GROUP, discover, duplicate_message, duplicates, load_plugin, unknown_hooks_message
from .registry import load_registry

__all__ = ["check_plugin", "run_doctor", "smoke_config"]


def smoke_config(spec: Any) -> dict[str, Any] | None:
    """A two-step config for the plugin (its ``example`` overlay on a tiny run of its task kind)."""
    from .config import apply_overrides
    from .testing import tiny_config, tiny_continual_config, tiny_regression_config

    kind = spec.task_kinds[0] if spec.task_kinds else "classification"
    if kind == "regression":
        base = tiny_regression_config()
    elif kind == "classification":
        base = tiny_config()
    elif kind == "continual":
        base = tiny_continual_config()
    elif spec.example is None:
        return None
    else:
        base = tiny_config()
    cfg = apply_overrides(base, spec.example or {})
    plugins = list(cfg.get("plugins", []))
    if spec.name not in plugins:
        plugins.append(spec.name)
    cfg["plugins"] = plugins
    return cfg


def check_plugin(name: str, info: Any, smoke: bool = True) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name, "distribution": info.distribution, "version": info.version, "import": "ok", "hooks": "-", "registry": "-", "smoke": "-", "detail": ""}
    try:
        plugin = load_plugin(info)
    except Exception as exc:
        row.update({"import": "FAIL", "detail": str(exc)})
        return row
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    try:
        pm.register(plugin.obj, name=name)
        pm.check_pending()
        plugin.spec.claimed_slots(plugin.spec.options())
        row["hooks"] = "ok"
    except pluggy.PluginValidationError as exc:
        row["hooks"] = "FAIL"
        row["detail"] = unknown_hooks_message(plugin.obj, exc)
        return row
    except Exception as exc:
        row["hooks"] = "FAIL"
        row["detail"] = str(exc)
        return row
    entry = load_registry().get(name)
    if entry is None:
        row["registry"] = "absent"
    elif entry.get("entry_point") != info.value or entry.get("distribution") != info.distribution:
        row["registry"] = "MISMATCH"
        row["detail"] = f"registry says {entry.get('distribution')} / {entry.get('entry_point')}"
    else:
        row["registry"] = "ok"
    if smoke:
        cfg = smoke_config(plugin.spec)
        if cfg is None:
            row["smoke"] = f"n/a ({plugin.spec.task_kinds[0]})"
        else:
            from .trainer import train

            try:
                with tempfile.TemporaryDirectory() as d:
                    train(cfg, out=d)  # writes and reloads best.pt, so checkpoints are smoke-tested too
                row["smoke"] = "ok"
            except Exception as exc:
                row["smoke"] = "FAIL"
                row["detail"] = f"{type(exc).__name__}: {exc}"
    return row


def run_doctor(json_out: bool = False, smoke: bool = True, progress: IO[str] | None = None) -> int:
    """Check every installed plugin; print the table (or JSON) and return 1 if any failed.

    ``progress`` (default ``sys.stderr``) gets a line as each plugin's check starts and ends,
    so a long doctor (a smoke training per plugin) is never silent; stdout keeps only the result.
    """
    dup = duplicates()
    rows = []
    found = sorted(discover().items())
    out = progress if progress is not None else sys.stderr
    for k, (name, info) in enumerate(found, start=1):
        if name in dup:
            rows.append({"name": name, "distribution": info.distribution, "version": info.version, "import": "FAIL", "hooks": "-",
                         "registry": "-", "smoke": "-", "detail": duplicate_message(name, dup[name])})
        else:
            print(f"doctor: [{k}/{len(found)}] {name} ...", file=out, flush=True)
            t0 = time.perf_counter()
            rows.append(check_plugin(name, info, smoke))
            r = rows[-1]
            status = "FAIL" if "FAIL" in (r["import"], r["hooks"], r["smoke"]) or r["registry"] == "MISMATCH" else "ok"
            print(f"doctor: [{k}/{len(found)}] {name} {status} ({time.perf_counter() - t0:.1f} s)", file=out, flush=True)
    if json_out:
        print(json.dumps(rows, indent=1))
    else:
        cols = ["name", "version", "import", "hooks", "registry", "smoke"]
        widths = [max(len(str(r[c])) for r in rows + [dict(zip(cols, cols))]) for c in cols]
        print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
        for r in rows:
            print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)))
        for r in rows:
            if r["detail"]:
                print(f"! {r['name']}: {r['detail']}")
    bad = [r for r in rows if "FAIL" in (r["import"], r["hooks"], r["smoke"]) or r["registry"] == "MISMATCH"]
    return 1 if bad else 0
