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
