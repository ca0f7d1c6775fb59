"""registry.yaml: complete entries, shipped in the package, consistent with in-tree plugins."""

import re
from pathlib import Path

import tomllib

from mixhub.registry import load_registry, required_fields

ROOT = Path(__file__).resolve().parents[1]


def test_registry_is_packaged_and_complete():
    reg = load_registry()
    assert reg, "empty registry"
    for name, entry in reg.items():
        missing = [f for f in required_fields(entry) if f not in entry]
        assert not missing, f"{name}: missing {missing}"
        if entry.get("kind", "method") == "method":
            assert {"title", "venue", "link"} <= set(entry["paper"]), name
        else:
            assert {"name", "link"} <= set(entry["tool"]), name
    assert (ROOT / "registry.yaml").resolve() == (ROOT / "core/mixhub/registry.yaml").resolve()


def test_registry_matches_in_tree_entry_points():
    reg = load_registry()
    for pyproject in sorted(ROOT.glob("plugins/*/pyproject.toml")):
        data = tomllib.loads(pyproject.read_text())
        eps = data["project"]["entry-points"]["mixhub"]
        assert len(eps) == 1, f"{pyproject}: exactly one mixhub entry point"
        (name, value), = eps.items()
        assert name in reg, f"{name} ({pyproject.parent.name}) has no registry.yaml entry"
        entry = reg[name]
        assert entry["entry_point"] == value
        assert entry["distribution"] == data["project"]["name"]
        module = name.replace("-", "_")  # a hyphenated plugin name lives in an underscored folder and package
        assert pyproject.parent.name == module and re.fullmatch(rf"mixhub_{module}\.plugin", value)


def test_registry_slots_match_plugin_declarations():
    from mixhub.plugins import discover, load_plugin

    reg = load_registry()
    for name, info in discover().items():
        if name not in reg:
            continue
        plugin = load_plugin(info)
        declared = set(plugin.spec.slots)
        if plugin.spec.claims is None:
            assert declared == set(reg[name]["slots"]), f"{name}: registry slots {reg[name]['slots']} vs declared {sorted(declared)}"
        assert set(plugin.spec.task_kinds) == set(reg[name]["task_kinds"]), name


def test_unknown_registry_kind_is_named():
    import pytest

    with pytest.raises(ValueError, match="'x'.*unknown kind 'plugin'"):
        required_fields({"name": "x", "kind": "plugin"})
