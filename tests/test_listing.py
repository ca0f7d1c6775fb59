import json
import subprocess
import sys

from mixhub.listing import plugin_rows
from mixhub.plugins import EntryPointInfo


def test_plugins_list_json_fields():
    p = subprocess.run([sys.executable, "-m", "mixhub", "plugins", "list", "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    for r in rows:
        assert {"name", "distribution", "version", "installed", "status", "slots"} <= set(r)
    mixup = next(r for r in rows if r["name"] == "mixup")
    assert mixup["installed"] and mixup["status"] == "ok" and mixup["slots"] == ["sample_pairs"]


def test_broken_plugin_does_not_break_listing(monkeypatch):
    import mixhub.listing as L

    real = L.discover()
    fake = {**real, "ghost": EntryPointInfo("ghost", "mixhub_ghost_missing.plugin", "mixhub-ghost", "1.0")}
    monkeypatch.setattr(L, "discover", lambda: fake)
    rows = {r["name"]: r for r in plugin_rows()}
    assert rows["ghost"]["status"] == "broken" and "ModuleNotFoundError" in rows["ghost"]["error"]
    assert rows["mixup"]["status"] == "ok"


def test_not_installed_registry_entries_show_install_line(monkeypatch):
    import mixhub.listing as L

    monkeypatch.setattr(L, "discover", lambda: {})
    rows = {r["name"]: r for r in plugin_rows()}
    assert rows["cmixup"]["installed"] is False and rows["cmixup"]["install"] == "pip install mixhub-cmixup"


def test_listing_without_import(monkeypatch):
    import importlib

    called = []
    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda *a, **k: called.append(a) or real(*a, **k))
    rows = plugin_rows(import_plugins=False)
    assert rows and not [c for c in called if str(c[0]).startswith("mixhub_")]
