"""The contract every in-tree plugin passes: hooks in the documented order, same seed same weights,
exact resume, plain state dicts, and the plugin actually takes part (the run without it differs). Each runs the plugin's own
example config (``PluginSpec.example`` on the tiny run of its first task kind: supervised or
continual). Plugins with a test-time task kind also pass the test-time contract on a trained
checkpoint; in training they must be inert."""

import copy
from pathlib import Path

import pytest
import tomllib

from mixhub.doctor import smoke_config
from mixhub.plugins import discover, load_plugin
from mixhub.registry import load_registry
from mixhub.testing import Contract, is_plain, tiny_testtime_config, train_checkpoint

ROOT = Path(__file__).resolve().parents[1]
IN_TREE = sorted(
    name  # the entry-point names (a folder is the name with "-" as "_")
    for pyproject in (ROOT / "plugins").glob("*/pyproject.toml")
    for name in tomllib.loads(pyproject.read_text())["project"]["entry-points"]["mixhub"]
)


def spec_of(name):
    info = discover().get(name)
    if info is None:
        pytest.fail(f"in-tree plugin {name!r} is not installed (run `make setup`)")
    return load_plugin(info).spec


def kind_of(name):
    """The registry kind: ``method`` (changes training or test-time predictions) or ``logger`` (never does)."""
    return (load_registry().get(name) or {}).get("kind", "method")


def contract_config(name):
    spec = spec_of(name)
    cfg = smoke_config(spec)
    assert cfg is not None, f"{name}: no contract config for task kinds {spec.task_kinds}"
    return cfg


def without(cfg, name):
    out = copy.deepcopy(cfg)
    out["plugins"] = [p for p in out["plugins"] if p != name]
    out.pop(name, None)  # its options section too
    return out


def is_continual(cfg):
    return cfg["data"]["name"] == "split-digits"


@pytest.mark.parametrize("name", IN_TREE)
def test_hooks_in_order_and_plain_state(name, tmp_path):
    cfg = contract_config(name)
    c = Contract(tmp_path)
    calls = c.hooks_in_order(cfg)
    if is_continual(cfg):
        assert calls.count("task_start") == calls.count("task_end") == 2, calls
    result = c.train(cfg)
    c.state_dict_is_plain(result.trainer)
    assert is_plain(result.trainer.checkpoints.payload()["plugins"])
    # the plugin takes part: the same run without it ends with other weights (test-time methods
    # act only in the test-time phase, so there they must be inert, their own contract is below;
    # loggers must never change the run)
    inert = "test-time" in spec_of(name).task_kinds or kind_of(name) == "logger"
    c.changes_training(cfg, without(cfg, name), expect=not inert, trained=result.trainer)


@pytest.mark.parametrize("name", IN_TREE)
def test_determinism(name, tmp_path):
    Contract(tmp_path).determinism(contract_config(name))


@pytest.mark.parametrize("name", IN_TREE)
def test_resume_equality(name, tmp_path):
    cfg = contract_config(name)
    c = Contract(tmp_path)
    if is_continual(cfg):
        c.resume_after_interrupt(cfg, at_step=60)  # inside the second task's stream (about 54 steps per task)
    else:
        c.resume_equality(cfg)


@pytest.fixture(scope="module")
def source_checkpoint(tmp_path_factory):
    return train_checkpoint(tiny_testtime_config(), tmp_path_factory.mktemp("contract-tt") / "source")


def _testtime_plugins():
    found = discover()
    return [n for n in IN_TREE if n in found and "test-time" in load_plugin(found[n]).spec.task_kinds and kind_of(n) == "method"]


@pytest.mark.parametrize("name", _testtime_plugins())
def test_testtime_contract(name, source_checkpoint, tmp_path):
    summary = Contract(tmp_path).testtime(source_checkpoint, {"testtime": {"setting": "single", "batch_size": 50}}, name)
    assert summary["episodes"] == 2  # one per corruption domain
