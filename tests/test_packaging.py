"""Every distribution of the repository (core, plugins, the third-party example) declares its
license as an SPDX expression, and setuptools reads each pyproject without a warning."""

import warnings
from pathlib import Path

import pytest
from setuptools.config.pyprojecttoml import apply_configuration, load_file
from setuptools.dist import Distribution

ROOT = Path(__file__).resolve().parents[1]
PYPROJECTS = sorted([ROOT / "pyproject.toml", *ROOT.glob("plugins/*/pyproject.toml"), *ROOT.glob("examples/*/pyproject.toml")])


def test_every_distribution_is_found():
    names = {p.parent.name for p in PYPROJECTS}
    assert {"mixup", "mlflow", "timm_mixup", "third_party_plugin"} <= names and len(PYPROJECTS) >= 16


@pytest.mark.parametrize("path", PYPROJECTS, ids=lambda p: str(p.parent.relative_to(ROOT)) or "core")
def test_license_is_an_spdx_expression_and_setuptools_does_not_warn(path):
    data = load_file(path)
    assert data["project"]["license"] == "Apache-2.0", f"{path}: project.license must be the SPDX string 'Apache-2.0'"
    assert not any(c.startswith("License ::") for c in data["project"].get("classifiers", [])), f"{path}: a license classifier next to an SPDX expression"
    assert any(r.startswith("setuptools>=") and int(r.split(">=")[1].split(".")[0]) >= 77 for r in data["build-system"]["requires"]), (
        f"{path}: SPDX license expressions need setuptools>=77 to build"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), path)
    messages = [str(w.message) for w in caught if "license" in str(w.message).lower()]
    assert messages == [], f"{path}: {messages}"
    assert dist.metadata.license_expression == "Apache-2.0"


def _make_dry_run(target):
    """The commands ``make TARGET`` runs on a fresh machine (``-n -B``: printed, not run)."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    proc = subprocess.run(["make", "-n", "-B", target, "VENV=/nonexistent-venv"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _installed_plugins(commands):
    return {word.rstrip("/").removeprefix("plugins/") for line in commands.splitlines() if "pip install" in line for word in line.split() if word.startswith("plugins/")}


def test_make_run_installs_no_logger_and_make_test_installs_everything():
    import yaml

    loggers = {e["name"] for e in yaml.safe_load((ROOT / "registry.yaml").read_text())["plugins"] if e.get("kind") == "logger"}
    in_tree = {p.parent.name for p in ROOT.glob("plugins/*/pyproject.toml")}
    assert loggers == {"tensorboard", "mlflow", "wandb"} and loggers <= in_tree
    run = _make_dry_run("run")
    assert _installed_plugins(run) == in_tree - loggers  # the method plugins, no tracker library
    assert ".[test]" not in run and "mixhub train examples/configs/digits-mixup.yaml" in run
    assert _installed_plugins(_make_dry_run("loggers")) >= loggers
    test = _make_dry_run("test")
    assert _installed_plugins(test) == in_tree and '-e ".[test]"' in test and "pytest" in test
    readme = (ROOT / "README.md").read_text()
    assert "make loggers" in readme
