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


def new_plugin(name: str, directory: Path) -> Path:
    if not re.fullmatch(r"[a-z][a-z0-9]*", name) or keyword.iskeyword(name):
        raise MixhubError(f"plugin name {name!r} must be lowercase letters and digits, starting with a letter")
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
