"""The contract every in-tree plugin passes: hooks in the documented order, same seed same weights,
exact resume, plain state dicts. Each runs the plugin's own example config (``PluginSpec.example``)."""

from pathlib import Path

import pytest

from mixhub.doctor import smoke_config
from mixhub.plugins import discover, load_plugin
from mixhub.testing import Contract, is_plain

ROOT = Path(__file__).resolve().parents[1]
IN_TREE = sorted(p.name for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists())


def spec_of(name):
    info = discover().get(name)
    if info is None:
        pytest.fail(f"in-tree plugin {name!r} is not installed (run `make setup`)")
    return load_plugin(info).spec


def supervised_config(name):
    spec = spec_of(name)
    if not set(spec.task_kinds) & {"classification", "regression"}:
        pytest.skip(f"{name} has no supervised task kind ({', '.join(spec.task_kinds)}); its own tests cover its protocol")
    cfg = smoke_config(spec)
    assert cfg is not None
    return cfg


@pytest.mark.parametrize("name", IN_TREE)
def test_hooks_in_order_and_plain_state(name, tmp_path):
    cfg = supervised_config(name)
    c = Contract(tmp_path)
    c.hooks_in_order(cfg)
    result = c.train(cfg)
    c.state_dict_is_plain(result.trainer)
    assert is_plain(result.trainer.state_payload()["plugins"])


@pytest.mark.parametrize("name", IN_TREE)
def test_determinism(name, tmp_path):
    Contract(tmp_path).determinism(supervised_config(name))


@pytest.mark.parametrize("name", IN_TREE)
def test_resume_equality(name, tmp_path):
    Contract(tmp_path).resume_equality(supervised_config(name))
