"""examples/timm_loop.py: the functional APIs in a plain timm loop."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load():
    spec = importlib.util.spec_from_file_location("timm_loop", ROOT / "examples/timm_loop.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_classification_loops_train_and_restore_bn():
    mod = load()
    for method in mod.STEPS:
        r = mod.classification(8, method)
        assert r["last_loss"] < r["first_loss"], (method, r)
        assert 0.0 <= r["acc_unmixtns"] <= 1.0


def test_regression_loop_trains():
    r = load().regression(30)
    assert r["last_loss"] < r["first_loss"]
