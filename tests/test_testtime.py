"""The test-time phase: stream builders, episodes with resets, the evaluate wrapper's
teardown on error, no-grad (not inference) mode, digits-c, and checkpoint stream evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from mixhub import PluginSpec, hookimpl
from mixhub.data.digits_c import CORRUPTIONS, corrupt_images
from mixhub.protocol_sections import TestTimeConfig
from mixhub.protocols.testtime import evaluate_checkpoint_streams, evaluate_streams, load_for_testtime
from mixhub.testing import tiny_testtime_config, train_checkpoint
from mixhub.testtime_streams import build_episodes, dirichlet_order, iid_order, stream_stats

SOURCE = tiny_testtime_config()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return train_checkpoint(SOURCE, tmp_path_factory.mktemp("tt") / "run")


class Probe:
    """In-process plugin recording the test-time calls; optionally raising in eval_forward."""

    PLUGIN = PluginSpec(name="probe", slots=("eval_forward",), task_kinds=("classification", "test-time"))

    def __init__(self, raise_at: int | None = None) -> None:
        self.raise_at = raise_at
        self.events: list[tuple] = []
        self.calls = 0

    @hookimpl(wrapper=True)
    def mixhub_evaluate(self, model, state):
        if state.phase != "test-time":
            return (yield)
        self.events.append(("enter", state.domain, state.batch_size))
        first = next(model.parameters())
        saved = first.detach().clone()
        with torch.no_grad():
            first.add_(1.0)  # a "swap" the teardown must undo
        try:
            return (yield)
        finally:
            with torch.no_grad():
                first.copy_(saved)
            self.events.append(("exit", state.domain))

    @hookimpl
    def mixhub_eval_forward(self, model, batch, state):
        if state.phase != "test-time":
            return None
        self.calls += 1
        self.events.append(("batch", state.domain, torch.is_grad_enabled(), torch.is_inference_mode_enabled(), batch.size))
        if self.raise_at is not None and self.calls == self.raise_at:
            raise RuntimeError("probe failure")
        return {"logits": model(batch.inputs)}


def test_iid_order_is_a_seeded_permutation():
    a = iid_order(50, 3)
    assert sorted(a.tolist()) == list(range(50))
    assert np.array_equal(a, iid_order(50, 3)) and not np.array_equal(a, iid_order(50, 4))


def _runs(y):
    return int(np.sum(y[1:] != y[:-1]) + 1)


@pytest.mark.parametrize("delta", [0.01, 0.1, 1e4])
def test_dirichlet_order_is_a_class_blocked_permutation(delta):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 400)
    order = dirichlet_order(labels, delta, 10, seed=1)
    assert sorted(order.tolist()) == list(range(400))
    assert np.array_equal(order, dirichlet_order(labels, delta, 10, seed=1))
    # class-blocked for every delta: at most one block per (chunk, class), i.e. <= 100 runs
    assert _runs(labels[order]) <= 100
    if delta >= 1e4:  # large delta still is not i.i.d.: blocks of about N / C^2 samples
        assert stream_stats(labels[order], 64)["mean_run"] > 2.5
        assert stream_stats(labels[iid_order(400, 1)], 64)["mean_run"] < 1.5


def test_dirichlet_smaller_delta_gives_longer_runs():
    labels = np.repeat(np.arange(10), 40)
    runs = {d: np.mean([stream_stats(labels[dirichlet_order(labels, d, 10, s)], 64)["mean_run"] for s in range(5)])
            for d in (0.01, 1.0, 1e4)}
    assert runs[0.01] > runs[1.0] > runs[1e4]


def test_dirichlet_gives_up_with_a_clear_error():
    from mixhub.errors import DataError

    labels = np.repeat(np.arange(10), 5)
    with pytest.raises(DataError, match=r"delta=0.1, N=50, classes=10"):
        dirichlet_order(labels, 0.1, 10, seed=0, max_tries=3, min_chunk=10)


def test_stream_stats():
    s = stream_stats(np.array([0, 0, 1, 1, 1, 2]), 3)
    assert s == {"classes_per_batch": 2.0, "mean_run": 2.0}


def test_build_episodes_settings():
    doms = {d: TensorDataset(torch.zeros(10, 1), torch.arange(10) % 2) for d in ("a", "b")}
    single, _ = build_episodes(doms, TestTimeConfig(setting="single", batch_size=4), 0, 2)
    assert [e.name for e in single] == ["a", "b"] and [len(e.batches) for e in single] == [3, 3]
    cont, _ = build_episodes(doms, TestTimeConfig(setting="continual", batch_size=4), 0, 2)
    assert len(cont) == 1 and [b[0] for b in cont[0].batches] == ["a"] * 3 + ["b"] * 3
    assert all(len({d for d, _ in items}) == 1 for _, items in cont[0].batches)  # no batch straddles domains
    mixed, _ = build_episodes(doms, TestTimeConfig(setting="mixed", batch_size=4), 0, 2)
    assert len(mixed) == 1 and mixed[0].size == 20


def test_digits_c_is_deterministic_and_registered():
    from mixhub.data import list_datasets
    from mixhub.data.bundled import digits_images

    assert "digits-c" in list_datasets()
    x, _ = digits_images(16)
    for name in CORRUPTIONS:
        a = corrupt_images(x[:4], name, 5, seed=0)
        assert a.shape == x[:4].shape and a.dtype == np.float32
        assert np.array_equal(a, corrupt_images(x[:4], name, 5, seed=0))
        assert not np.allclose(a, x[:4], atol=1e-3), name
    assert not np.array_equal(corrupt_images(x[:4], "gaussian_noise", 5, 0), corrupt_images(x[:4], "gaussian_noise", 5, 1))
    assert np.abs(corrupt_images(x[:8], "gaussian_noise", 5, 0) - x[:8]).mean() > np.abs(corrupt_images(x[:8], "gaussian_noise", 1, 0) - x[:8]).mean()


def test_episodes_reset_per_domain_and_run_under_no_grad(checkpoint):
    probe = Probe()
    trainer = load_for_testtime(checkpoint, {"plugins": ["probe"], "testtime": {"setting": "single", "batch_size": 50}},
                                extra_plugins={"probe": probe})
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    summary = evaluate_streams(trainer)
    enters = [e for e in probe.events if e[0] == "enter"]
    assert [e[1] for e in enters] == ["gaussian_noise-5", "contrast-5"]  # one episode (reset) per domain
    assert all(e[2] == 50 for e in enters)
    batches = [e for e in probe.events if e[0] == "batch"]
    assert batches and all(not grad and not inf for _, _, grad, inf, _ in batches)
    assert set(summary["domains"]) == {"gaussian_noise-5", "contrast-5"}
    assert summary["episodes"] == 2 and summary["overall"]["n"] == sum(d["n"] for d in summary["domains"].values())
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert trainer.state.phase != "test-time"


def test_evaluate_wrapper_restores_even_when_the_pass_raises(checkpoint):
    probe = Probe(raise_at=2)
    trainer = load_for_testtime(checkpoint, {"plugins": ["probe"]}, extra_plugins={"probe": probe})
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(Exception, match="probe failure"):
        evaluate_streams(trainer)
    assert probe.events[-1][0] == "exit"
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert trainer.state.phase != "test-time"


def test_evaluate_checkpoint_streams_writes_outputs(checkpoint, tmp_path):
    s = evaluate_checkpoint_streams(checkpoint, {"testtime": {"order": "dirichlet", "delta": 0.1, "batch_size": 16}}, tmp_path)
    assert {"overall", "domains", "stream", "ms_per_batch"} <= set(s)
    assert 0 <= s["overall"]["err"] <= 100 and s["ms_per_batch"] > 0
    assert json.loads((tmp_path / "testtime.json").read_text())["order"] == "dirichlet"
    assert (tmp_path / "testtime_trace.png").stat().st_size > 0
    assert (tmp_path / "testtime_batches.csv").read_text().startswith("episode,batch,domain,acc,ms")


def test_stream_evaluation_is_a_tracked_run(checkpoint, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    s = evaluate_checkpoint_streams(checkpoint, {"plugins": ["tensorboard"], "testtime": {"batch_size": 16}}, tmp_path)
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    assert acc.Scalars("summary/overall/err")[0].value == pytest.approx(s["overall"]["err"])
    assert "plots/testtime_trace" in acc.Tags()["images"]
