"""UnMix-TNS plugin end to end in the core's test-time phase: swap and bitwise restore (also
on error), per-episode reset, metrics, state dict, inertness outside test time, composition
with TENT, and the quick bench suite through the harness."""

from __future__ import annotations

import pytest
import torch
from mixhub_unmixtns import UnMixTNS2d, unmix_layers
from torch import nn

from mixhub import PluginSpec, TestTimeConfig, hookimpl
from mixhub.protocols.testtime import evaluate_streams, load_for_testtime
from mixhub.testing import tiny_testtime_config, train_checkpoint

SOURCE = tiny_testtime_config()


@pytest.fixture(scope="module")
def unmix_checkpoint(tmp_path_factory):
    return train_checkpoint(SOURCE, tmp_path_factory.mktemp("unmix") / "run")


class Recorder:
    """Inner evaluate wrapper: records the UnMix-TNS components at the start of each episode."""

    PLUGIN = PluginSpec(name="recorder", task_kinds=("classification", "test-time"))

    def __init__(self, fail: bool = False) -> None:
        self.starts: list[dict[str, torch.Tensor]] = []
        self.fail = fail

    @hookimpl(wrapper=True)
    def mixhub_evaluate(self, model, state):
        if state.phase == "test-time":
            self.starts.append({n: m.component_means.clone() for n, m in unmix_layers(model).items()})
            if self.fail:
                raise RuntimeError("recorder failure")
        return (yield)


def _fingerprint(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model: nn.Module, fp: dict[str, torch.Tensor]) -> None:
    sd = model.state_dict()
    assert set(sd) == set(fp)
    for k, v in sd.items():
        assert torch.equal(v, fp[k]), k
    assert not any(isinstance(m, UnMixTNS2d) for m in model.modules())


def test_single_domain_episodes_start_from_the_same_components_and_restore(unmix_checkpoint):
    rec = Recorder()
    trainer = load_for_testtime(unmix_checkpoint, {"plugins": ["unmixtns", "recorder"], "unmixtns": {"seed": 3}},
                                extra_plugins={"recorder": rec})
    fp = _fingerprint(trainer.model)
    s = evaluate_streams(trainer, cfg=TestTimeConfig(setting="single", batch_size=32))
    assert len(rec.starts) == 2 and rec.starts[0].keys() == rec.starts[1].keys() and rec.starts[0]
    for n in rec.starts[0]:
        assert torch.equal(rec.starts[0][n], rec.starts[1][n])  # state reset between domains
    _same(trainer.model, fp)
    m = s["plugins"]
    assert 0 < m["unmixtns/assign_entropy"] <= m["unmixtns/assign_entropy_max"] + 1e-6
    assert 1 <= m["unmixtns/active_components"] <= 16 and m["unmixtns/drift"] > 0


def test_restore_after_the_wrapper_even_when_the_pass_raises(unmix_checkpoint):
    trainer = load_for_testtime(unmix_checkpoint, {"plugins": ["unmixtns", "recorder"]}, extra_plugins={"recorder": Recorder(fail=True)})
    fp = _fingerprint(trainer.model)
    with pytest.raises(Exception, match="recorder failure"):
        evaluate_streams(trainer, cfg=TestTimeConfig(batch_size=32))
    _same(trainer.model, fp)


def test_inert_outside_test_time_and_state_dict(unmix_checkpoint):
    trainer = load_for_testtime(unmix_checkpoint, {"plugins": ["unmixtns"]})
    plain = load_for_testtime(unmix_checkpoint, {})
    assert trainer.evaluate(trainer.bundle.test, "test")["acc"] == plain.evaluate(plain.bundle.test, "test")["acc"]
    from mixhub_unmixtns import plugin

    state = trainer.state
    state.phase = "test-time"
    state.batch_size = 16
    model = trainer.model
    with trainer.host.wrap("mixhub_evaluate", model=model, state=state), torch.no_grad():
        model(torch.randn(4, 3, 16, 16))
        sd = plugin.mixhub_state_dict(state)
        assert sd and all(set(v) == {"component_means", "component_vars"} for v in sd.values())
        name = next(iter(sd))
        sd[name]["component_means"] = sd[name]["component_means"] + 1
        plugin.mixhub_load_state_dict(sd, state)
        assert torch.equal(unmix_layers(model)[name].component_means, sd[name]["component_means"])
    state.phase = "eval"
    assert plugin.mixhub_state_dict(state) is None


def test_label_correlated_stream_with_tent(unmix_checkpoint):
    trainer = load_for_testtime(unmix_checkpoint, {"plugins": ["unmixtns", "tent"], "tent": {"lr": 1e-3}})
    fp = _fingerprint(trainer.model)
    s = evaluate_streams(trainer, cfg=TestTimeConfig(order="dirichlet", delta=0.1, batch_size=16))
    assert "tent/entropy" in s["plugins"] and "unmixtns/drift" in s["plugins"]
    assert s["stream"]["mean_run"] > 2
    _same(trainer.model, fp)


def test_batch_size_one_stream(unmix_checkpoint):
    trainer = load_for_testtime(unmix_checkpoint, {"plugins": ["unmixtns"], "data": {"options": {"corruptions": ["contrast"]}}})
    s = evaluate_streams(trainer, cfg=TestTimeConfig(batch_size=1, plot=False))
    assert s["overall"]["n"] == len(trainer.bundle.test)


def test_quick_bench_suite_through_the_harness(tmp_path):
    import dataclasses

    from mixhub_unmixtns.suites import suites

    from mixhub.bench.runner import run_suite

    full = suites()[0]
    keep = ("source", "unmixtns", "tent+unmixtns")
    suite = dataclasses.replace(full, arms=[a for a in full.arms if a.name in keep], baseline="source", comparisons=[])
    results = run_suite(suite, tmp_path / "bench", quick=True, progress=False)
    arms = {c["arm"] for c in results["cells"]}
    assert arms == {a.name for a in suite.arms}
    cell = next(c for c in results["cells"] if c["arm"] == "unmixtns")
    assert 0 <= cell["metrics"]["continual.iid.b64.error"] <= 1
    assert (tmp_path / "bench" / "REPORT.md").exists()
    assert (tmp_path / "bench" / "source-models" / "seed0" / "checkpoints" / "best.pt").exists()
