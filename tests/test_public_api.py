"""Plugins import only mixhub's public API: never ``mixhub._*``, never another plugin."""

import ast
from pathlib import Path

import mixhub

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIRS = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists())
PUBLIC_SUBMODULES = {"mixhub", "mixhub.metrics", "mixhub.models", "mixhub.data", "mixhub.bench", "mixhub.bench.suite", "mixhub.bench.runner", "mixhub.config", "mixhub.testing", "mixhub.trainer", "mixhub.protocols.testtime", "mixhub.engine", "mixhub.timm_task", "mixhub.checkpoint"}


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
    return out


def violations(plugin_dirs: list[Path]) -> list[str]:
    """Every import in the plugins' package code (not their tests) that leaves mixhub's public API."""
    problems = []
    own_packages = {f"mixhub_{d.name}" for d in plugin_dirs}
    for d in plugin_dirs:
        mine = f"mixhub_{d.name}"
        for f in sorted(d.rglob("*.py")):
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
    return problems


def test_every_plugin_uses_only_the_public_api():
    assert len(PLUGIN_DIRS) >= 2
    problems = violations(PLUGIN_DIRS)
    assert not problems, "\n".join(problems)


def test_the_check_catches_each_kind_of_violation(tmp_path):
    """A fake plugin tree: each forbidden import is reported once, allowed ones and test files are not."""
    a = tmp_path / "alpha" / "mixhub_alpha"
    (tmp_path / "beta" / "mixhub_beta").mkdir(parents=True)
    (a.parent / "tests").mkdir(parents=True)
    a.mkdir()
    (a / "ok.py").write_text("import torch\nfrom mixhub import MixPlan, hookimpl\nimport mixhub.metrics\nfrom mixhub_alpha import ok\n")
    (a / "bad.py").write_text(
        "from mixhub._util import closest\n"
        "import mixhub.trainer_internals\n"
        "from mixhub import MixPlan, not_exported_name\n"
        "import mixhub_beta.functional\n"
    )
    (a.parent / "tests" / "test_x.py").write_text("from mixhub._util import closest\nimport mixhub_beta\n")
    problems = violations([a.parent, tmp_path / "beta"])
    assert len(problems) == 4, problems
    assert all(p.startswith(str(a / "bad.py")) for p in problems)
    text = "\n".join(problems)
    assert "imports private mixhub._util" in text
    assert "imports non-public module mixhub.trainer_internals" in text
    assert "['not_exported_name'] not in mixhub.__all__" in text
    assert "imports another plugin (mixhub_beta.functional)" in text


def test_the_parser_sees_absolute_imports_only(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from mixhub._util import closest\nimport mixhub_other.functional\nfrom . import sibling\n")
    assert imports_of(f) == [("mixhub._util", ["closest"]), ("mixhub_other.functional", [])]


def test_public_names_exist():
    for name in mixhub.__all__:
        assert hasattr(mixhub, name), name
