"""Run a suite: every (arm, seed) cell, resumable; then the report.

Each finished cell is written to ``OUT/cells/<arm>/seed<k>.json`` atomically, together with
its **key**: the cell's resolved config (suite base + arm overrides + quick overrides + seed,
loggers included), the arm, the seed and the code that ran it (``code_identity``: versions of
mixhub, every installed plugin distribution, torch, timm and numpy, and the git commit of the
source tree with a hash of its uncommitted changes, when it is a git checkout). A bench run
again reuses a cell only when its stored key equals the key it would run now; any other cell
(an edited suite, other code, an older cell without a key) is run again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from ..config import apply_overrides
from ..errors import PluginError
from .suite import Suite

__all__ = ["collect_suites", "run_suite", "default_run", "cell_config", "tracked_config", "flatten_summary", "code_identity", "cell_key"]

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


def flatten_summary(summary: dict[str, Any]) -> dict[str, float]:
    """``{"test": {"acc": .9}}`` -> ``{"test.acc": .9}`` (numbers only)."""
    out: dict[str, float] = {}
    for split, metrics in summary.items():
        if isinstance(metrics, dict) and split not in ("config", "plugins"):
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"{split}.{k}"] = float(v)
        elif isinstance(metrics, (int, float)) and not isinstance(metrics, bool):
            out[split] = float(metrics)
    return out


def default_run(config: dict[str, Any], out: Path) -> dict[str, float]:
    from ..trainer import train

    run_dir = out / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished cell: start it again
    result = train(config, out=run_dir, quiet=True)
    return flatten_summary(result.summary)


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


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        p = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout if p.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_identity() -> dict[str, Any]:
    """What identifies the code a cell ran: package versions and, for a git checkout, the commit.

    ``git`` is the commit of the checkout holding the ``mixhub`` package (``None`` when it is not
    one, e.g. an installed wheel); ``dirty`` is a hash of ``git diff HEAD`` (``None`` when clean),
    so uncommitted edits count as other code too.
    """
    from importlib import metadata

    from ..plugins import discover

    names = {"mixhub", "torch", "timm", "numpy"} | {info.distribution for info in discover().values() if info.distribution}
    versions: dict[str, str | None] = {}
    for name in sorted(names):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    here = Path(__file__).resolve().parent
    commit = _git(["rev-parse", "HEAD"], here)
    dirty = None
    if commit is not None:
        diff = _git(["diff", "HEAD"], here) or ""
        dirty = hashlib.sha256(diff.encode()).hexdigest()[:16] if diff.strip() else None
    return {"versions": versions, "git": commit.strip() if commit else None, "dirty": dirty}


def cell_key(config: dict[str, Any], arm: str, seed: int, code: dict[str, Any] | None = None) -> dict[str, Any]:
    """The key a finished cell is stored with (see the module docstring); JSON-canonical."""
    key = {"config": config, "arm": arm, "seed": seed, "code": code if code is not None else code_identity()}
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


def run_suite(
    suite: Suite,
    out: str | Path,
    *,
    seeds: int | None = None,
    quick: bool = False,
    progress: bool = True,
    command: str = "",
    log: list[str] | None = None,
) -> dict[str, Any]:
    """Run every cell not yet finished, then write ``results.json``, ``REPORT.md`` and plots.

    ``log`` names logger plugins (``tensorboard``, ``mlflow``, ``wandb``) that record each
    cell as a run (see ``tracked_config``). Each cell run prints a line when it starts and one
    when it ends (time, first metric): above the bar on a terminal, plain in a pipe, through the
    ``mixhub.bench`` logger at INFO when ``progress`` is off.
    """
    from tqdm.auto import tqdm

    from .report import write_report

    out = Path(out)
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
    out.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(meta))
    run = suite.run or default_run
    bar = tqdm(cells, desc=suite.name, disable=None if progress else True)  # None: no bar off a terminal
    code = code_identity()
    rerun: list[str] = []
    for k, (arm, seed) in enumerate(bar, start=1):
        cell_path = out / "cells" / arm / f"seed{seed}.json"
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
        bar.set_postfix(arm=arm, seed=seed)
        where = f"bench {suite.name}: cell {k}/{len(cells)} (arm {arm}, seed {seed})"
        _say(f"{where} ...", progress)
        t0 = time.time()
        metrics = run(config, out / "cells" / arm / f"seed{seed}")
        cell = {"arm": arm, "seed": seed, "metrics": metrics, "time_s": time.time() - t0, "key": key}
        shown = next((m for m in suite.metrics if m in metrics), None)
        _say(f"{where} done in {cell['time_s']:.1f} s" + (f": {shown} {metrics[shown]:.4g}" if shown else ""), progress)
        cell_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cell_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cell))
        tmp.replace(cell_path)
    results = load_cells(suite, out, n_seeds)
    results["code"] = code
    results["rerun"] = rerun
    write_report(suite, results, out, command=command, quick=quick)
    return results


def _say(text: str, progress: bool) -> None:
    """A progress line: above the bar (or plain, in a pipe) with ``progress``, else logged at INFO."""
    if progress:
        import sys

        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stderr)
    else:
        log.info("%s", text)


def load_cells(suite: Suite, out: Path, n_seeds: int) -> dict[str, Any]:
    cells = []
    for arm in suite.arms:
        for seed in range(n_seeds):
            p = out / "cells" / arm.name / f"seed{seed}.json"
            if p.exists():
                cells.append(json.loads(p.read_text()))
    return {"suite": suite.name, "seeds": n_seeds, "cells": cells}
