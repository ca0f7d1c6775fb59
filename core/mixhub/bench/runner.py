"""Run a suite: every (arm, seed) cell, resumable, through an executor; then the report.

Each cell is an ordinary run folder ``OUT/cells/<arm>/seed<k>/run`` (see ``mixhub.bench.cell``);
a finished cell is written to ``OUT/cells/<arm>/seed<k>.json`` atomically, together with its
**key**: the cell's resolved config (suite base + arm overrides + quick overrides + seed,
loggers included), the arm, the seed and the code that ran it (``mixhub.bench.codeid``: package
versions, a content hash of the source checkout including untracked source files, and a content
hash of plugins installed from elsewhere). A bench run again reuses a cell only when its stored
key equals the key it would run now; an unfinished cell under the same key resumes from its
checkpoint; any other cell (an edited suite, other code, an older cell without a key) runs again.
The cells go to an executor (``mixhub.bench.executors``: this process, a local process pool, or
Ray); ``cells.jsonl`` lists every finished cell once, and the report reads only the cell files.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from ..config import apply_overrides
from ..errors import PluginError
from . import codeid
from .cell import cell_paths, flatten_summary, train_cell
from .codeid import code_identity, key_part
from .executors import Progress, make_executor
from .suite import Suite

__all__ = ["collect_suites", "run_suite", "default_run", "cell_config", "tracked_config", "flatten_summary", "code_identity", "cell_key", "load_cells"]

log = logging.getLogger("mixhub.bench")


def collect_suites(strict: bool = False) -> dict[str, Suite]:
    """Suites of the core and of every installed plugin (a broken plugin is skipped with a warning)."""
    from ..plugins import discover, load_plugin
    from .core_suites import core_suites

    suites = {s.name: s for s in core_suites()}
    for name, info in sorted(discover().items()):
        try:
            plugin = load_plugin(info)
            fn = getattr(plugin.obj, "mixhub_bench_suites", None)
            provided = fn() if fn is not None else None
        except Exception as exc:
            if strict:
                raise
            log.warning("plugin %r: could not collect its bench suites: %s", name, exc)
            continue
        for suite in provided or []:
            if suite.name in suites:
                raise PluginError(f"plugin {name!r} provides bench suite {suite.name!r}, which {suites[suite.name].provider!r} already provides")
            suite.provider = name
            suites[suite.name] = suite
    return suites


def cell_config(suite: Suite, arm_name: str, seed: int, quick: bool) -> dict[str, Any]:
    arm = next(a for a in suite.arms if a.name == arm_name)
    cfg = apply_overrides(suite.base, arm.overrides)
    if quick:
        cfg = apply_overrides(cfg, suite.quick)
    cfg["seed"] = seed
    cfg.setdefault("train", {})
    return cfg


def tracked_config(config: dict[str, Any], suite: Suite, arm: str, seed: int, loggers: list[str], out: Path) -> dict[str, Any]:
    """``config`` with the logger plugins added and the cell filed as one tracked run.

    One experiment per suite (``track.experiment``), the cell's run named ``<arm>-seed<k>`` and
    tagged with suite, arm and seed, every cell in one shared store ``OUT/tracking``.
    """
    cfg = dict(config)
    plugins = list(cfg.get("plugins") or [])
    cfg["plugins"] = plugins + [name for name in loggers if name not in plugins]
    cfg["track"] = {
        **(cfg.get("track") or {}),
        "experiment": suite.name,
        "name": f"{arm}-seed{seed}",
        "tags": {"suite": suite.name, "arm": arm, "seed": str(seed)},
        "dir": str(Path(out).resolve() / "tracking"),
    }
    return cfg


def cell_key(config: dict[str, Any], arm: str, seed: int, code: dict[str, Any] | None = None) -> dict[str, Any]:
    """The key a finished cell is stored with (see the module docstring); JSON-canonical."""
    key = {"config": config, "arm": arm, "seed": seed, "code": key_part(code if code is not None else code_identity())}
    return json.loads(json.dumps(key, sort_keys=True, default=str))


def _reusable(cell_path: Path, key: dict[str, Any]) -> tuple[bool, str]:
    """Whether the stored cell was made under ``key``; else the reason it is run again."""
    if not cell_path.exists():
        return False, ""
    try:
        stored = json.loads(cell_path.read_text()).get("key")
    except (OSError, ValueError):
        return False, "unreadable cell"
    if stored is None:
        return False, "cell without a key (older format)"
    if stored == key:
        return True, ""
    changed = [k for k in ("config", "arm", "seed", "code") if stored.get(k) != key.get(k)]
    return False, "changed: " + ", ".join(changed)


def _check_loggers(loggers: list[str]) -> None:
    from .._util import did_you_mean
    from ..plugins import discover

    installed = discover()
    for name in loggers:
        if name not in installed:
            raise PluginError(f"--log {name!r}: no installed plugin of that name{did_you_mean(name, installed)}")


def default_run(config: dict[str, Any], out: Path) -> dict[str, float]:
    """Train one cell in ``out`` (resuming its run folder when it was started under the same config)."""
    return flatten_summary(train_cell(config, Path(out), {"config": config}))


def run_suite(
    suite: Suite,
    out: str | Path,
    *,
    seeds: int | None = None,
    quick: bool = False,
    progress: bool = True,
    command: str = "",
    log: list[str] | None = None,
    executor: str = "local",
    jobs: int | None = None,
    ray_address: str | None = None,
    cpus_per_cell: float | None = None,
    gpus_per_cell: float | None = None,
) -> dict[str, Any]:
    """Run every cell not yet finished, then write ``cells.jsonl``, ``results.json``, ``REPORT.md`` and plots.

    ``log`` names logger plugins (``tensorboard``, ``mlflow``, ``wandb``) that record each
    cell as a run (see ``tracked_config``). ``executor`` (``local`` or ``ray``), ``jobs``,
    ``ray_address``, ``cpus_per_cell`` and ``gpus_per_cell`` choose where cells run
    (``mixhub.bench.executors.make_executor``). Cells that fail twice are listed in
    ``results["failed"]`` and in REPORT.md; the others still run.
    """
    from .report import write_report

    out = Path(out).resolve()
    loggers = list(log or [])
    _check_loggers(loggers)
    n_seeds = seeds if seeds is not None else (suite.quick_seeds if quick else suite.seeds)
    cells = [(arm.name, s) for s in range(n_seeds) for arm in suite.arms]  # seed-major: an interrupted bench keeps whole paired seeds
    meta_path = out / "bench.json"
    meta = {"suite": suite.name, "quick": quick, "seeds": n_seeds}
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old.get("quick") != quick:
            raise PluginError(f"{str(out)!r} holds a {'quick' if old.get('quick') else 'full'} run of {old.get('suite')!r}; use another --out")
    ex, n_jobs = make_executor(executor, jobs=jobs, run_fn=suite.run, ray_address=ray_address, cpus_per_cell=cpus_per_cell, gpus_per_cell=gpus_per_cell)
    out.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(meta))
    codeid.code_identity.cache_clear()  # the code as it is when this bench starts (a long-lived process may have installed plugins since)
    code = code_identity()
    rerun: list[str] = []
    pending = []
    for arm, seed in cells:
        _, cell_path = cell_paths(out, arm, seed)
        config = cell_config(suite, arm, seed, quick)
        if loggers:
            config = tracked_config(config, suite, arm, seed, loggers, out)
        key = cell_key(config, arm, seed, code)
        ok, why = _reusable(cell_path, key)
        if ok:
            continue
        if why:
            logging.getLogger("mixhub.bench").warning("bench %s: cell %s seed %d is run again (%s)", suite.name, arm, seed, why)
            rerun.append(f"{arm}/seed{seed}: {why}")
        pending.append({"arm": arm, "seed": seed, "config": config, "key": key, "out": str(out)})
    bar = Progress(suite.name, len(cells), n_jobs, done=len(cells) - len(pending), stream=sys.stderr, enabled=progress)
    bar.show()
    failed = ex.execute(pending, bar) if pending else []
    results = load_cells(suite, out, n_seeds)
    results["code"] = code
    results["rerun"] = rerun
    results["failed"] = failed
    write_report(suite, results, out, command=command, quick=quick)
    return results


def load_cells(suite: Suite, out: Path, n_seeds: int) -> dict[str, Any]:
    """Every finished cell of the suite (one per arm and seed), also written to ``OUT/cells.jsonl``."""
    cells = []
    for seed in range(n_seeds):
        for arm in suite.arms:
            _, p = cell_paths(out, arm.name, seed)
            if p.exists():
                cells.append(json.loads(p.read_text()))
    tmp = Path(out) / ".cells.jsonl.tmp"
    tmp.write_text("".join(json.dumps({k: v for k, v in c.items() if k != "key"}) + "\n" for c in cells))
    tmp.replace(Path(out) / "cells.jsonl")
    return {"suite": suite.name, "seeds": n_seeds, "cells": cells}
