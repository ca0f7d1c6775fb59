"""Plugins import only mixhub's public API: never ``mixhub._*``, never another plugin."""

import ast
from pathlib import Path

import mixhub

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIRS = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists())
PUBLIC_SUBMODULES = {"mixhub", "mixhub.metrics", "mixhub.models", "mixhub.data", "mixhub.bench", "mixhub.bench.suite", "mixhub.bench.runner", "mixhub.config", "mixhub.testing", "mixhub.trainer", "mixhub.testtime", "mixhub.continual", "mixhub.checkpoint"}


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
    return out


def test_every_plugin_uses_only_the_public_api():
    problems = []
    own_packages = {f"mixhub_{d.name}" for d in PLUGIN_DIRS}
    for d in PLUGIN_DIRS:
        mine = f"mixhub_{d.name}"
        for f in d.rglob("*.py"):
            if "tests" in f.relative_to(d).parts:
                continue
            for module, names in imports_of(f):
                top = module.split(".")[0]
                if top == "mixhub":
                    if any(part.startswith("_") for part in module.split(".")):
                        problems.append(f"{f}: imports private {module}")
                    elif module not in PUBLIC_SUBMODULES:
                        problems.append(f"{f}: imports non-public module {module}")
                    elif module == "mixhub" and any(n not in mixhub.__all__ for n in names):
                        problems.append(f"{f}: imports {[n for n in names if n not in mixhub.__all__]} not in mixhub.__all__")
                elif top in own_packages and top != mine:
                    problems.append(f"{f}: imports another plugin ({module})")
    assert not problems, "\n".join(problems)


def test_the_check_catches_violations(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from mixhub._util import closest\nimport mixhub_other.functional\n")
    mods = [m for m, _ in imports_of(bad)]
    assert mods == ["mixhub._util", "mixhub_other.functional"]


def test_public_names_exist():
    for name in mixhub.__all__:
        assert hasattr(mixhub, name), name
