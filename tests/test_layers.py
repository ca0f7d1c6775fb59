"""The core's layers: every module imports only from its own layer or the ones below, with no
import cycle, and stays under ~400 lines unless its docstring says why. Every core module imports
on its own.

An import is any ``import``/``from ... import`` in a module: at module level, inside a function,
or under ``if TYPE_CHECKING:`` (an annotation's import never runs, but it still ties the two
modules together: records below the hook specifications must not need the layers above)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "core" / "mixhub"

#: bottom to top (see docs/architecture.md); a module may import its own layer and those below.
LAYERS: list[tuple[str, set[str]]] = [
    ("contract", {"errors", "_util", "records", "checks", "batch", "plan", "state", "hookspecs", "spec", "plugins", "defaults", "config", "registry", "norm"}),
    ("services", {"hostsync", "data", "data.*", "models", "metrics", "checkpoint", "tracking", "console", "distributed", "schedule", "optim", "sampling", "selection", "protocol_sections", "replay_memory", "continual_metrics", "testtime_streams", "bench.suite"}),
    ("engine", {"engine", "taskmodule", "timm_task"}),
    ("run", {"run", "run.*"}),
    ("protocols", {"protocols", "protocols.*"}),
    ("trainer", {"trainer"}),
    ("commands", {"", "__main__", "cli", "doctor", "listing", "scaffold", "testing", "bench", "bench.runner", "bench.report", "bench.core_suites", "bench.cell", "bench.codeid", "bench.executors", "bench.suitefile", "bench.tune"}),
]
MAX_LINES = 400


def core_modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join(parts)] = (f, is_pkg)
    return mods


def layer_of(mod: str) -> int:
    for i, (_, names) in enumerate(LAYERS):
        for n in names:
            if mod == n or (n.endswith(".*") and mod.startswith(n[:-1])):
                return i
    raise AssertionError(f"core module mixhub.{mod} has no layer in tests/test_layers.py (place it in docs/architecture.md's layers)")


def imports_of(mod: str, path: Path, is_pkg: bool, mods: dict[str, tuple[Path, bool]]) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if mod else []
                if not is_pkg:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                pkg = ["mixhub", *base, *([node.module] if node.module else [])]
                target = ".".join(pkg)
            else:
                target = node.module or ""
            for a in node.names:  # ``from . import x``: the submodule x, else the package itself
                sub = f"{target}.{a.name}".removeprefix("mixhub").removeprefix(".")
                targets.append(f"{target}.{a.name}" if sub in mods else target)
        for t in targets:
            if t != "mixhub" and not t.startswith("mixhub."):
                continue
            name = t.removeprefix("mixhub").removeprefix(".")
            while name and name not in mods:
                name = name.rsplit(".", 1)[0] if "." in name else ""
            if name != mod and (name in mods):
                out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    mods = core_modules()
    return {m: imports_of(m, p, pkg, mods) for m, (p, pkg) in mods.items()}


def test_every_import_goes_down_or_sideways() -> None:
    bad = []
    for mod, deps in graph().items():
        for dep in deps:
            if layer_of(dep) > layer_of(mod):
                bad.append(f"mixhub.{mod} ({LAYERS[layer_of(mod)][0]}) imports mixhub.{dep} ({LAYERS[layer_of(dep)][0]})")
    assert not bad, "\n".join(sorted(bad))


def find_cycles(g: dict[str, set[str]]) -> list[str]:
    """Every cycle a depth-first walk of ``g`` closes, each as ``a -> b -> ... -> a``."""
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> None:
        state[v] = 1
        stack.append(v)
        for w in sorted(g.get(v, ())):
            if state.get(w) == 1:
                cycles.append(" -> ".join(stack[stack.index(w) :] + [w]))
            elif w not in state:
                visit(w)
        stack.pop()
        state[v] = 2

    for v in sorted(g):
        if v not in state:
            visit(v)
    return cycles


def test_no_import_cycles() -> None:
    cycles = find_cycles(graph())
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_cycles_and_upward_imports(tmp_path: Path) -> None:
    """The two checks above can fail: a protocol importing the trainer is both, at module level,
    in a function, or for annotations only."""
    mods = {"trainer": (tmp_path / "trainer.py", False), "protocols.supervised": (tmp_path / "s.py", False)}
    for body in (
        "from ..trainer import Trainer\n",
        "def f():\n    from ..trainer import Trainer\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..trainer import Trainer\n",
        "import mixhub.trainer\n",
    ):
        (tmp_path / "s.py").write_text(body)
        deps = imports_of("protocols.supervised", tmp_path / "s.py", False, mods)
        assert deps == {"trainer"} and layer_of("trainer") > layer_of("protocols.supervised"), body


def test_the_checker_sees_the_records_circle(tmp_path: Path) -> None:
    """The circle the records once closed (hookspecs -> runlog -> plugins -> defaults -> hookspecs,
    through an annotation import, a module import and a function-level import) is reported."""
    files = {
        "hookspecs": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .runlog import LogRecord\n",
        "runlog": "from .plugins import PluginHost\n",
        "plugins": "def host():\n    from . import defaults\n",
        "defaults": "from .hookspecs import hookimpl\n",
        "records": "from .errors import ConfigError\n",
        "errors": "",
    }
    mods = {name: (tmp_path / f"{name}.py", False) for name in files}
    for name, body in files.items():
        (tmp_path / f"{name}.py").write_text(body)
    g = {m: imports_of(m, p, pkg, mods) for m, (p, pkg) in mods.items()}
    assert find_cycles(g) == ["defaults -> hookspecs -> runlog -> plugins -> defaults"]
    (tmp_path / "hookspecs.py").write_text(files["hookspecs"].replace(".runlog", ".records"))
    g = {m: imports_of(m, p, pkg, mods) for m, (p, pkg) in mods.items()}
    assert find_cycles(g) == []


def test_modules_stay_small_or_say_why() -> None:
    long = []
    for mod, (path, _) in core_modules().items():
        text = path.read_text()
        n = text.count("\n")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if n > MAX_LINES and "Length:" not in doc:
            long.append(f"mixhub.{mod}: {n} lines and no 'Length:' reason in its docstring")
    assert not long, "\n".join(long)


@pytest.mark.parametrize("mod", sorted(m for m in core_modules() if m not in ("__main__",)))
def test_every_core_module_imports(mod: str) -> None:
    importlib.import_module("mixhub" + (f".{mod}" if mod else ""))


def test_records_are_plain_data_below_the_contract() -> None:
    """``LogRecord`` and ``TrackInfo`` live in ``records`` (which imports only ``errors`` of the core)
    and stay importable from ``mixhub`` and ``mixhub.run.recorder``."""
    import mixhub
    from mixhub import records
    from mixhub.run import recorder

    assert graph()["records"] <= {"errors"}
    assert recorder.LogRecord is records.LogRecord is mixhub.LogRecord
    assert recorder.TrackInfo is records.TrackInfo is mixhub.TrackInfo
    assert recorder.RECORD_KINDS is records.RECORD_KINDS


def test_no_module_name_twice_in_the_core() -> None:
    """One name per concept: no two core modules share a file name across layers or packages
    (protocol loops are ``protocols.continual``/``protocols.testtime``; what they use is named apart)."""
    seen: dict[str, list[str]] = {}
    for mod, (_, is_pkg) in core_modules().items():
        if not is_pkg and mod:
            seen.setdefault(mod.rsplit(".", 1)[-1], []).append(f"mixhub.{mod}")
    twice = {name: mods for name, mods in seen.items() if len(mods) > 1}
    assert not twice, twice
