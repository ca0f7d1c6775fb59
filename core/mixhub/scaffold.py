"""``mixhub new-plugin NAME``: a plugin package skeleton that passes its own tests out of the box."""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from .errors import MixhubError

__all__ = ["new_plugin"]

PYPROJECT = '''[build-system]
requires = ["setuptools>=68", "wheel"]
build-backend = "setuptools.build_meta"

[project]
name = "mixhub-{name}"
version = "0.1.0"
description = "mixhub plugin {name}"
requires-python = ">=3.10"
dependencies = ["mixhub>=0.1"]

[project.entry-points.mixhub]
{name} = "mixhub_{name}.plugin"

[tool.setuptools.packages.find]
include = ["mixhub_{name}*"]
'''

INIT = '''"""mixhub plugin {name}."""

from .functional import reverse_pairs_plan

__all__ = ["reverse_pairs_plan"]
'''

FUNCTIONAL = '''"""The method's math as pure functions (usable in any training loop).

This skeleton pairs sample i with sample B-1-i at a fixed lam. Replace it with your method.
"""

from __future__ import annotations

import torch

from mixhub import MixPlan


def reverse_pairs_plan(batch_size: int, lam: float, device: torch.device | str = "cpu") -> MixPlan:
    """A two-source plan: partner of i is B-1-i, anchor weight ``lam``."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {{lam}}")
    index = torch.arange(batch_size - 1, -1, -1, device=device)
    return MixPlan.pairs(index, lam)
'''

PLUGIN = '''"""Hooks only: the math lives in ``functional``."""

from __future__ import annotations

from pydantic import Field

from mixhub import Batch, MixPlan, PluginOptions, PluginSpec, State, hookimpl

from .functional import reverse_pairs_plan


class Options(PluginOptions):
    lam: float = Field(0.7, ge=0.0, le=1.0, description="weight of the anchor")


PLUGIN = PluginSpec(
    name="{name}",
    options=Options,
    slots=("sample_pairs",),
    task_kinds=("classification", "regression"),
    description="(describe your method in one line)",
)


@hookimpl
def mixhub_sample_pairs(batch: Batch, state: State) -> MixPlan:
    return reverse_pairs_plan(batch.size, state.options("{name}").lam, device=batch.inputs.device)
'''

TESTS = '''import torch

from mixhub.testing import Contract, tiny_config

import mixhub_{name}.plugin as plugin
from mixhub_{name} import reverse_pairs_plan


def test_functional_against_formula():
    plan = reverse_pairs_plan(4, 0.25)
    assert torch.equal(plan.index, torch.tensor([3, 2, 1, 0]))
    assert torch.allclose(plan.lam, torch.full((4,), 0.25))


def test_contracts(tmp_path):
    c = Contract(tmp_path)
    cfg = tiny_config(plugins=["{name}"])
    c.hooks_in_order(cfg, {{"{name}": plugin}})
    c.slot_types(cfg, {{"{name}": plugin}})
    c.determinism(cfg, lambda: {{"{name}": plugin}})
    c.resume_equality(cfg, lambda: {{"{name}": plugin}})
'''

README = '''# mixhub-{name}

What it does, when to use it, its options (`{name}.*`) with defaults, and measured results
with the command that reproduces them.

| option | default | meaning |
|---|---|---|
| `lam` | `0.7` | weight of the anchor |

```bash
pip install -e .
mixhub train plugins={name} {name}.lam=0.6
pytest tests
```
'''

CONFTEST = '''import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
'''


def check_plugin_name(name: str) -> None:
    """A new plugin's name: an identifier that is no keyword, no core config section and no installed plugin."""
    from .config import Config, core_sections
    from .plugins import discover

    if not re.fullmatch(r"[a-z][a-z0-9]*", name):
        raise MixhubError(f"plugin name {name!r} must be lowercase letters and digits, starting with a letter")
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise MixhubError(f"plugin name {name!r} is a Python keyword; a plugin's name must be usable as a Python identifier (e.g. its section as a keyword argument, `tiny_config({name}=...)`), so choose another")
    if name == "core":
        raise MixhubError("plugin name 'core' is reserved: it names mixhub's own defaults (slot owner `core`)")
    reserved = set(Config.model_fields) | set(core_sections())
    if name in reserved:
        raise MixhubError(f"plugin name {name!r} is a core config section ({', '.join(sorted(reserved))}); a plugin's name is its config section, so choose another")
    installed = discover()
    if name in installed:
        info = installed[name]
        raise MixhubError(f"plugin name {name!r} is taken by the installed plugin from {info.distribution} {info.version}; two plugins of one name shadow each other, so choose another")


def new_plugin(name: str, directory: Path) -> Path:
    check_plugin_name(name)
    root = Path(directory) / name
    if root.exists():
        raise MixhubError(f"{str(root)!r} already exists")
    pkg = root / f"mixhub_{name}"
    (root / "tests").mkdir(parents=True)
    pkg.mkdir()
    files = {
        root / "pyproject.toml": PYPROJECT,
        root / "README.md": README,
        pkg / "__init__.py": INIT,
        pkg / "functional.py": FUNCTIONAL,
        pkg / "plugin.py": PLUGIN,
        root / "tests" / f"test_{name}_plugin.py": TESTS,
        root / "tests" / "conftest.py": CONFTEST,
    }
    for path, template in files.items():
        path.write_text(template.format(name=name))
    return root
