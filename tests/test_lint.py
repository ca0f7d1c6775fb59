"""ruff (lint) over the whole repository, and mypy over the core package."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.fail("ruff is not installed (pip install -e '.[test]')")
    p = subprocess.run([ruff, "check", "core", "plugins", "tests", "benchmarks", "examples", "docs", "tools"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-4000:]


def test_mypy_core():
    pytest.importorskip("mypy")
    p = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "mixhub"], capture_output=True, text=True, cwd=ROOT / "core")
    assert p.returncode == 0, p.stdout[-4000:]
