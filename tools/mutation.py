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
    "cmixup": ("plugins/cmixup/mixhub_cmixup", "functional.py", ["plugins/cmixup/tests/test_cmixup_functional.py"], []),
    "dualmix": ("plugins/dualmix/mixhub_dualmix", "functional.py", ["plugins/dualmix/tests/test_dualmix_functional.py", "plugins/dualmix/tests/test_dualmix_color_jitter.py"], []),
    "adamp": ("plugins/adamp/mixhub_adamp", "functional.py", ["plugins/adamp/tests/test_adamp_vectors.py"], []),
    "timm_mixup": ("plugins/timm_mixup/mixhub_timm_mixup", "functional.py", ["plugins/timm_mixup/tests/test_timm_mixup_functional.py"], []),
}

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


def prepare(name: str) -> Path:
    pkg_dir, module, tests, extra = TARGETS[name]
    src = ROOT / pkg_dir
    if not (src / module).is_file():
        raise SystemExit(f"mutation target {name!r}: {pkg_dir}/{module} does not exist")
    work = OUT / name
    shutil.rmtree(work, ignore_errors=True)
    (work / "tests").mkdir(parents=True)
    shutil.copytree(src, work / "src" / src.name, ignore=shutil.ignore_patterns("__pycache__"))
    for t in tests:
        shutil.copy2(ROOT / t, work / "tests" / Path(t).name)
    for helper in ("conftest.py", "helpers_plugins.py"):
        if (ROOT / "tests" / helper).exists() and not (work / "tests" / helper).exists():
            shutil.copy2(ROOT / "tests" / helper, work / "tests" / helper)
    (work / "pyproject.toml").write_text(_pyproject(src.name, module, tests, extra))
    return work


def run(name: str, jobs: int) -> dict:
    work = prepare(name)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    launcher = "import sys; from mutmut.__main__ import cli; sys.argv[0] = 'mutmut'; cli()"
    log = work / "mutmut.log"
    with log.open("w") as fh:
        rc = subprocess.call([sys.executable, "-c", launcher, "run", "--max-children", str(jobs)], cwd=work, env=env,
                             stdout=fh, stderr=subprocess.STDOUT)
    res = subprocess.run([sys.executable, "-c", launcher, "results", "--all", "true"], cwd=work, env=env,
                         capture_output=True, text=True)
    counts: dict[str, int] = {}
    survivors: list[str] = []
    for line in res.stdout.splitlines():
        m = STATUS.match(line)
        if m:
            status = m.group(2).strip()
            counts[status] = counts.get(status, 0) + 1
            if status in ("survived", "no tests"):
                survivors.append(m.group(1))
    diffs = []
    for mutant in survivors:
        show = subprocess.run([sys.executable, "-c", launcher, "show", mutant], cwd=work, env=env, capture_output=True, text=True)
        diffs.append(show.stdout.strip())
    (work / "survivors.txt").write_text("\n\n".join(diffs) + "\n")
    killed = counts.get("killed", 0) + counts.get("timeout", 0) + counts.get("caught by type check", 0)
    total = sum(counts.values())
    summary = {"target": name, "module": f"{TARGETS[name][0]}/{TARGETS[name][1]}", "rc": rc, "counts": counts,
               "killed": killed, "total": total, "survivors": survivors,
               "score": round(100.0 * killed / total, 1) if total else None}
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", help=f"targets (default: all): {', '.join(TARGETS)}")
    ap.add_argument("--list", action="store_true", help="list the targets and their tests")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("MUTATION_JOBS", "1")), help="mutants run in parallel")
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
