"""The docs build with MkDocs in strict mode (broken references fail), from freshly generated pages."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    gen = subprocess.run([sys.executable, str(ROOT / "docs/gen_docs.py"), str(tmp_path / "docs")], capture_output=True, text=True)
    assert gen.returncode == 0, gen.stderr
    config = (tmp_path / "docs/config.md").read_text()
    assert "`train.lr`" in config and "`mixup.alpha`" in config
    assert "mixhub-cmixup" in (tmp_path / "docs/catalogue.md").read_text()
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(tmp_path / "mkdocs.yml"), "-d", str(tmp_path / "site")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    assert (tmp_path / "site/index.html").exists()


def test_generated_pages_are_current():
    """docs/config.md and docs/catalogue.md match the code (run `python docs/gen_docs.py`)."""
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import gen_docs
    finally:
        sys.path.pop(0)
    assert (ROOT / "docs/catalogue.md").read_text() == gen_docs.catalogue()
    assert (ROOT / "docs/config.md").read_text() == gen_docs.config_reference()


def test_readme_methods_table_lists_every_method_plugin():
    """Every in-tree plugin that is not a logger has a row in the README's methods table."""
    import yaml

    entries = yaml.safe_load((ROOT / "registry.yaml").read_text())["plugins"]
    in_tree = {p.parent.name.replace("_", "-") for p in ROOT.glob("plugins/*/pyproject.toml")}
    methods = {e["name"] for e in entries if e.get("kind") != "logger" and e["name"] in in_tree}
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Methods", 1)[1].split("\n\n", 2)[1]
    rows = {line.split("|")[1].strip().strip("`") for line in table.splitlines() if line.startswith("| `")}
    assert "timm-mixup" in methods and methods <= rows, f"missing from the README's methods table: {sorted(methods - rows)}"
    assert "checkpoints/last.prev.pt" in readme
