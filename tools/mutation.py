"""Mutation testing of the math modules with mutmut (``make mutation``; not part of CI: it is long).

mutmut names a mutated module after its path relative to the folder it runs in (``src/`` stripped),
so it cannot mutate ``core/mixhub/plan.py`` in place (it would call it ``core.mixhub.plan``, while the
tests import ``mixhub.plan``). For each target this script therefore builds a small work folder::

    mutation-out/<target>/
        src/<package>/...        a copy of the target's package (mutmut mutates one file of it)
        tests/...                copies of the target's test selection (a few fast files)
        pyproject.toml           [tool.mutmut] + [tool.pytest.ini_options]

runs ``mutmut run`` there, and writes ``mutation-out/<target>/summary.json`` and one line per
target to ``mutation-out/scores.tsv`` (killed, survived, timeouts, no tests, score). The survivors'
diffs go to ``mutation-out/<target>/survivors.txt``: kill them with a test, or list them as
equivalent mutants (with the reason) in ``docs/testing.md``.

Usage::

    python tools/mutation.py                 # every target, in the order below
    python tools/mutation.py plan mixup      # some targets
    python tools/mutation.py --list
    MUTATION_JOBS=2 python tools/mutation.py tent
    python tools/mutation.py --rerun-survivors cmixup   # after adding tests: rerun the survivors only

``--rerun-survivors`` confirms the kills of tests written after a measured run: it refreshes the
copied tests (and the selection in ``pyproject.toml``) of ``mutation-out/<target>/`` from the
checkout, keeps the measured copy of the module, and reruns only the survivors listed in its
``summary.json`` (``mutmut run <names>``; a second rerun only those a first one left alive;
``--only PATTERN...`` only those whose names match). It
writes ``rerun.json`` (the commits of the reruns, the former survivors still alive and those now
killed) and ``survivors-rerun.txt``, and leaves ``summary.json`` (the measured run) as it was.

Each target names the fewest test files that exercise its module (mutmut runs, for every mutant,
only the tests that call the mutated function).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "mutation-out"

# target -> (package folder, module file inside it, test files relative to the repo root, extra pytest args)
TARGETS: dict[str, tuple[str, str, list[str], list[str]]] = {
    "plan": ("core/mixhub", "plan.py", ["tests/test_plan_batch.py", "tests/test_properties.py"], []),
    "metrics": ("core/mixhub", "metrics.py", ["tests/test_calibration_metrics.py"], []),
    "schedule": ("core/mixhub", "schedule.py", ["tests/test_schedule.py"], []),
    "mixup": ("plugins/mixup/mixhub_mixup", "functional.py", ["plugins/mixup/tests/test_mixup_functional.py"], []),
    "tent": ("plugins/tent/mixhub_tent", "functional.py", ["plugins/tent/tests/test_tent_functional.py"], []),
    "unmixtns": ("plugins/unmixtns/mixhub_unmixtns", "functional.py", ["plugins/unmixtns/tests/test_unmixtns_functional.py"], []),
    "replay": ("plugins/replay/mixhub_replay", "functional.py", ["plugins/replay/tests/test_replay_er.py"], ["-k", "not train"]),
    "rankmixup": ("plugins/rankmixup/mixhub_rankmixup", "functional.py", ["plugins/rankmixup/tests/test_rankmixup_functional.py", "plugins/rankmixup/tests/test_rankmixup_options.py"], []),
    "decoupled": ("plugins/decoupled/mixhub_decoupled", "functional.py", ["plugins/decoupled/tests/test_decoupled_functional.py", "plugins/decoupled/tests/test_decoupled_options.py"], []),
    # test_adautomix_no_repeat.py imports its config from test_adautomix_plugin.py
    "adautomix": ("plugins/adautomix/mixhub_adautomix", "functional.py", ["plugins/adautomix/tests/test_adautomix_functional.py", "plugins/adautomix/tests/test_adautomix_no_repeat.py", "plugins/adautomix/tests/test_adautomix_plugin.py"], []),
    "cmixup": ("plugins/cmixup/mixhub_cmixup", "functional.py", ["plugins/cmixup/tests/test_cmixup_functional.py", "plugins/cmixup/tests/test_cmixup_exact.py"], []),
    "dualmix": ("plugins/dualmix/mixhub_dualmix", "functional.py", ["plugins/dualmix/tests/test_dualmix_functional.py", "plugins/dualmix/tests/test_dualmix_color_jitter.py", "plugins/dualmix/tests/test_dualmix_exact.py"], []),
    # test_adamp_functional_paths.py imports fused_or_skip from the plugin's conftest.py
    "adamp": ("plugins/adamp/mixhub_adamp", "functional.py", ["plugins/adamp/tests/test_adamp_vectors.py", "plugins/adamp/tests/test_adamp_functional_paths.py"], []),
    "timm_mixup": ("plugins/timm_mixup/mixhub_timm_mixup", "functional.py", ["plugins/timm_mixup/tests/test_timm_mixup_functional.py"], []),
}

LAUNCHER = "import sys; from mutmut.__main__ import cli; sys.argv[0] = 'mutmut'; cli()"
STATUS = re.compile(r"^\s+(\S+__mutmut_\d+): (.+)$")


def _pyproject(pkg: str, module: str, tests: list[str], extra: list[str]) -> str:
    sel = [f"tests/{Path(t).name}" for t in tests] + extra
    return "\n".join([
        "[tool.mutmut]",
        'source_paths = ["src"]',
        f'only_mutate = ["src/{pkg}/{module}"]',
        f"pytest_add_cli_args_test_selection = {json.dumps(sel)}",
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-m", "not slow", "-x", "-q"]',
        "use_git_change_detection = false",
        "",
        "[tool.pytest.ini_options]",
        'markers = ["slow: long runs"]',
        "",
    ])


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def _copy_tests(name: str, work: Path) -> None:
    _, _, tests, _ = TARGETS[name]
    for t in tests:
        shutil.copy2(ROOT / t, work / "tests" / Path(t).name)
        # a plugin's own conftest.py (fixtures and helpers its tests import) goes with its tests
        if (ROOT / t).with_name("conftest.py").is_file() and not (work / "tests" / "conftest.py").exists():
            shutil.copy2((ROOT / t).with_name("conftest.py"), work / "tests" / "conftest.py")
    for helper in ("conftest.py", "helpers_plugins.py"):
        if (ROOT / "tests" / helper).exists() and not (work / "tests" / helper).exists():
            shutil.copy2(ROOT / "tests" / helper, work / "tests" / helper)


def _results(work: Path) -> dict[str, str]:
    """mutant name -> status, from ``mutmut results --all true``."""
    res = subprocess.run([sys.executable, "-c", LAUNCHER, "results", "--all", "true"], cwd=work, env=_env(),
                         capture_output=True, text=True)
    return {m.group(1): m.group(2).strip() for m in map(STATUS.match, res.stdout.splitlines()) if m}


def _diffs(work: Path, mutants: list[str]) -> str:
    diffs = []
    for mutant in mutants:
        show = subprocess.run([sys.executable, "-c", LAUNCHER, "show", mutant], cwd=work, env=_env(),
                              capture_output=True, text=True)
        diffs.append(show.stdout.strip())
    return "\n\n".join(diffs) + "\n"


def prepare(name: str) -> Path:
    pkg_dir, module, tests, extra = TARGETS[name]
    src = ROOT / pkg_dir
    if not (src / module).is_file():
        raise SystemExit(f"mutation target {name!r}: {pkg_dir}/{module} does not exist")
    work = OUT / name
    shutil.rmtree(work, ignore_errors=True)
    (work / "tests").mkdir(parents=True)
    shutil.copytree(src, work / "src" / src.name, ignore=shutil.ignore_patterns("__pycache__"))
    _copy_tests(name, work)
    (work / "pyproject.toml").write_text(_pyproject(src.name, module, tests, extra))
    return work


def run(name: str, jobs: int) -> dict:
    work = prepare(name)
    log = work / "mutmut.log"
    with log.open("w") as fh:
        rc = subprocess.call([sys.executable, "-c", LAUNCHER, "run", "--max-children", str(jobs)], cwd=work, env=_env(),
                             stdout=fh, stderr=subprocess.STDOUT)
    counts: dict[str, int] = {}
    survivors: list[str] = []
    for mutant, status in _results(work).items():
        counts[status] = counts.get(status, 0) + 1
        if status in ("survived", "no tests"):
            survivors.append(mutant)
    (work / "survivors.txt").write_text(_diffs(work, survivors))
    killed = counts.get("killed", 0) + counts.get("timeout", 0) + counts.get("caught by type check", 0)
    total = sum(counts.values())
    summary = {"target": name, "module": f"{TARGETS[name][0]}/{TARGETS[name][1]}", "rc": rc, "counts": counts,
               "killed": killed, "total": total, "survivors": survivors,
               "score": round(100.0 * killed / total, 1) if total else None}
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _commit() -> str:
    res = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return res.stdout.strip() or "unknown"


def rerun_survivors(name: str, jobs: int, only: list[str] | None = None) -> dict:
    """Rerun the survivors of a measured run against the checkout's current tests (``only``:
    those whose names match one of these patterns)."""
    work = OUT / name
    summary_path = work / "summary.json"
    if not summary_path.is_file():
        raise SystemExit(f"mutation target {name!r}: no measured run in {work} (run it first)")
    measured = json.loads(summary_path.read_text())
    survivors = list(measured["survivors"])
    earlier = json.loads((work / "rerun.json").read_text()) if (work / "rerun.json").is_file() else None
    killed_before = list(earlier["killed_since"]) if earlier else []
    pending = [m for m in survivors if m not in killed_before and (not only or any(fnmatch(m, pat) for pat in only))]
    pkg_dir, module, tests, extra = TARGETS[name]
    commit = _commit()  # the tests are the checkout's at this commit (plus any uncommitted change)
    _copy_tests(name, work)
    (work / "pyproject.toml").write_text(_pyproject(Path(pkg_dir).name, module, tests, extra))
    # the test -> function map is rebuilt: tests changed since the measured run may call other functions
    (work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    rc = 0
    if pending:
        with (work / "mutmut-rerun.log").open("w") as fh:
            rc = subprocess.call([sys.executable, "-c", LAUNCHER, "run", "--max-children", str(jobs), *pending],
                                 cwd=work, env=_env(), stdout=fh, stderr=subprocess.STDOUT)
    status = _results(work)
    alive = [m for m in survivors if m not in killed_before and status.get(m) in ("survived", "no tests")]
    commits = (earlier.get("commits", [earlier["commit"]]) if earlier else []) + [commit]
    out = {"target": name, "commit": commits[-1], "commits": commits, "rc": rc, "measured_survivors": len(survivors),
           "killed_since": [m for m in survivors if m not in alive], "still_alive": alive}
    (work / "rerun.json").write_text(json.dumps(out, indent=1))
    (work / "survivors-rerun.txt").write_text(_diffs(work, alive))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", help=f"targets (default: all): {', '.join(TARGETS)}")
    ap.add_argument("--list", action="store_true", help="list the targets and their tests")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("MUTATION_JOBS", "1")), help="mutants run in parallel")
    ap.add_argument("--rerun-survivors", action="store_true",
                    help="rerun only the survivors of the measured run, with the checkout's current tests")
    ap.add_argument("--only", nargs="+", metavar="PATTERN",
                    help="with --rerun-survivors: only the survivors whose names match (fnmatch)")
    args = ap.parse_args(argv)
    if args.list:
        for name, (pkg, module, tests, extra) in TARGETS.items():
            print(f"{name:10s} {pkg}/{module}  <- {' '.join(tests + extra)}")
        return 0
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        raise SystemExit(f"unknown mutation target(s) {unknown}; known: {', '.join(TARGETS)}")
    OUT.mkdir(exist_ok=True)
    bad = 0
    if args.rerun_survivors:
        for name in args.targets or list(TARGETS):
            r = rerun_survivors(name, args.jobs, args.only)
            print(f"{name}\trerun at {r['commit']}\tsurvivors={r['measured_survivors']}\t"
                  f"killed_since={len(r['killed_since'])}\tstill_alive={len(r['still_alive'])}", flush=True)
            bad += r["rc"] != 0
        return 1 if bad else 0
    for name in args.targets or list(TARGETS):
        s = run(name, args.jobs)
        line = f"{name}\t{s['module']}\tkilled={s['killed']}\ttotal={s['total']}\tscore={s['score']}\t{json.dumps(s['counts'])}"
        print(line, flush=True)
        with (OUT / "scores.tsv").open("a") as fh:
            fh.write(line + "\n")
        bad += s["rc"] != 0 or s["total"] == 0
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
