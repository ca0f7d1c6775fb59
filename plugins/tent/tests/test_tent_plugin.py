"""TENT plugin in the core's test-time phase: TBN, adaptation, episodic reset, bitwise restore,
inertness outside test time, slot conflicts."""

from __future__ import annotations

import pytest
import torch

from mixhub import PluginSpec, SlotConflictError, TestTimeConfig, hookimpl
from mixhub.protocols.testtime import evaluate_streams, load_for_testtime
from mixhub.testing import tiny_testtime_config, train_checkpoint

SOURCE = tiny_testtime_config(("contrast",))


@pytest.fixture(scope="module")
def tent_checkpoint(tmp_path_factory):
    return train_checkpoint(SOURCE, tmp_path_factory.mktemp("tent") / "run")


def _run(ckpt, overrides, **cfg):
    trainer = load_for_testtime(ckpt, overrides)
    fp = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    s = evaluate_streams(trainer, cfg=TestTimeConfig(plot=False, **cfg))
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, fp[k]), k
    assert all(p.requires_grad for p in trainer.model.parameters())
    return s


def test_tbn_adapt_and_episodic(tent_checkpoint):
    src = _run(tent_checkpoint, {}, batch_size=32)
    tbn = _run(tent_checkpoint, {"plugins": ["tent"], "tent": {"steps": 0}}, batch_size=32)
    tent = _run(tent_checkpoint, {"plugins": ["tent"], "tent": {"lr": 1e-2}}, batch_size=32)
    epi = _run(tent_checkpoint, {"plugins": ["tent"], "tent": {"lr": 1e-2, "episodic": True}}, batch_size=32)
    assert tbn["overall"]["nll"] != pytest.approx(src["overall"]["nll"])
    # the first batch is predicted before any update, so it matches TBN's
    assert tent["plugins"]["tent/entropy"] != tbn["plugins"]["tent/entropy"]
    # episodic: every batch starts from the source affine -> the prediction equals TBN's
    assert epi["overall"]["nll"] == pytest.approx(tbn["overall"]["nll"], rel=1e-5)
    assert epi["plugins"]["tent/entropy"] == pytest.approx(tbn["plugins"]["tent/entropy"], rel=1e-5)


def test_inert_outside_test_time(tent_checkpoint):
    with_tent = load_for_testtime(tent_checkpoint, {"plugins": ["tent"]})
    plain = load_for_testtime(tent_checkpoint, {})
    a = with_tent.evaluate(with_tent.bundle.test, "test")
    b = plain.evaluate(plain.bundle.test, "test")
    assert a["acc"] == b["acc"] and a["nll"] == pytest.approx(b["nll"])


class OtherOwner:
    PLUGIN = PluginSpec(name="other", slots=("eval_forward",), task_kinds=("classification", "test-time"))

    @hookimpl
    def mixhub_eval_forward(self, model, batch, state):
        return None


def test_conflicts_with_another_eval_forward_owner(tent_checkpoint):
    with pytest.raises(SlotConflictError, match="eval_forward"):
        load_for_testtime(tent_checkpoint, {"plugins": ["tent", "other"]}, extra_plugins={"other": OtherOwner()})
