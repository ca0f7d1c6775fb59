"""The plugin-author kit: third-party install flow, `plugins doctor`, `new-plugin`."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def mixhub(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "mixhub", *args], capture_output=True, text=True, cwd=cwd, env=ENV)


def pip(*args):
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=ENV)


def test_third_party_plugin_install_list_train_uninstall(tmp_path):
    # built from a copy: an in-tree build would leave mixhub_manifold.egg-info in the example's folder,
    # which the example's own tests put on sys.path, so the plugin would still be found after uninstalling
    src = tmp_path / "third_party_plugin"
    shutil.copytree(ROOT / "examples/third_party_plugin", src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    p = pip("install", "-q", "--no-deps", "--no-build-isolation", str(src))
    assert p.returncode == 0, p.stderr
    try:
        rows = {r["name"]: r for r in json.loads(mixhub("plugins", "list", "--json").stdout)}
        assert rows["manifold"]["status"] == "ok" and rows["manifold"]["distribution"] == "mixhub-manifold"
        t = mixhub("train", "plugins=manifold", "data.image_size=16", "model.kwargs.widths=[8,16]", "train.epochs=1", "train.max_steps_per_epoch=2", f"out={tmp_path / 'r'}", "--quiet")
        assert t.returncode == 0, t.stderr
        assert json.loads((tmp_path / "r/summary.json").read_text())["plugins"] == {"manifold": "0.1.0"}
    finally:
        u = pip("uninstall", "-y", "mixhub-manifold")
    assert u.returncode == 0, u.stderr
    rows = {r["name"]: r for r in json.loads(mixhub("plugins", "list", "--json").stdout)}
    assert "manifold" not in rows


def test_new_plugin_skeleton_passes_its_own_tests(tmp_path):
    r = mixhub("new-plugin", "demo", "--dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    root = tmp_path / "demo"
    assert (root / "pyproject.toml").exists() and (root / "mixhub_demo/plugin.py").exists()
    t = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root)], capture_output=True, text=True, cwd=root, env=ENV)
    assert t.returncode == 0, t.stdout[-2000:]
    again = mixhub("new-plugin", "demo", "--dir", str(tmp_path))
    assert again.returncode == 2 and "already exists" in again.stderr
    bad = mixhub("new-plugin", "Bad-Name", "--dir", str(tmp_path))
    assert bad.returncode == 2 and "lowercase" in bad.stderr


def test_doctor_checks_installed_plugins():
    from mixhub.doctor import check_plugin
    from mixhub.plugins import EntryPointInfo, discover

    row = check_plugin("mixup", discover()["mixup"])
    assert row["import"] == "ok" and row["hooks"] == "ok" and row["registry"] == "ok" and row["smoke"] == "ok", row
    ghost = check_plugin("ghost", EntryPointInfo("ghost", "mixhub_ghost.plugin", "mixhub-ghost", "1"))
    assert ghost["import"] == "FAIL" and "failed to import" in ghost["detail"]


def test_doctor_reports_progress_per_plugin(capsys):
    """A line as each plugin's check starts and ends (on stderr), the result alone on stdout."""
    import io
    import json

    from mixhub.doctor import run_doctor
    from mixhub.plugins import discover

    progress = io.StringIO()
    run_doctor(json_out=True, smoke=False, progress=progress)
    rows = json.loads(capsys.readouterr().out)
    names = sorted(discover())
    lines = progress.getvalue().splitlines()
    assert [r["name"] for r in rows] == names and len(lines) == 2 * len(names)
    for k, name in enumerate(names, start=1):
        assert lines[2 * k - 2] == f"doctor: [{k}/{len(names)}] {name} ..."
        assert lines[2 * k - 1].startswith(f"doctor: [{k}/{len(names)}] {name} ok (")
