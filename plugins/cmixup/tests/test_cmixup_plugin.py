"""C-Mixup plugin: the plan contract, manifold mixing, limits and the quick acceptance suite."""

from __future__ import annotations

import copy

import pytest
import torch
from mixhub_cmixup.suites import cmixup_suites

from mixhub import Batch, MixPlan
from mixhub.config import apply_overrides
from mixhub.trainer import Trainer, train


def _cfg(tmp_path, epochs: int = 1, **cmixup) -> dict:
    suite = {s.name: s for s in cmixup_suites()}["cmixup-tanh"]
    cfg = apply_overrides(
        suite.base, {"train": {"epochs": epochs, "checkpoint": False}, "out": str(tmp_path / "run")}
    )
    if cmixup is not None:
        cfg = apply_overrides(cfg, {"plugins": ["cmixup"], "cmixup": dict(cmixup)})
    return cfg


def _first_batch(trainer: Trainer) -> Batch:
    return next(iter(trainer.loader)).to(trainer.device)


def test_plan_contract(tmp_path):
    tr = Trainer(_cfg(tmp_path, bandwidth=0.05), write=False)
    batch = _first_batch(tr)
    plan = tr.host.slot("sample_pairs", expected=MixPlan, batch=batch, state=tr.state)
    assert plan.partner_source == "dataset"
    assert plan.index.shape == (batch.size,) and plan.index.dtype == torch.long
    assert int(plan.index.min()) >= 0 and int(plan.index.max()) < tr.state.train_dataset_size
    assert plan.batch_lam is not None  # one lam per batch
    plan.validate(batch.size, tr.state.train_dataset_size)
    logs = tr.train_step(batch)
    assert 0 <= logs["cmixup/self_pair_frac"] <= 1 and logs["cmixup/mean_label_gap"] >= 0


def test_partners_follow_the_label_kernel(tmp_path):
    """Partners are label-near: the mean gap at sigma 0.05 is far below uniform pairing's."""
    gaps = {}
    for kernel in ("gaussian", "uniform"):
        tr = Trainer(_cfg(tmp_path, bandwidth=0.05, kernel=kernel), write=False)
        batch = _first_batch(tr)
        vals = []
        for _ in range(20):
            plan = tr.host.slot("sample_pairs", expected=MixPlan, batch=batch, state=tr.state)
            y = tr.state.train_targets
            vals.append((y[batch.index] - y[plan.index]).abs().mean())
        gaps[kernel] = float(torch.stack(vals).mean())
    assert gaps["gaussian"] < 0.1 < gaps["uniform"]


def test_sample_lam_mode_and_exclusion(tmp_path):
    tr = Trainer(_cfg(tmp_path, bandwidth=1e-6, lam_mode="sample", include_self=False), write=False)
    batch = _first_batch(tr)
    plan = tr.host.slot("sample_pairs", expected=MixPlan, batch=batch, state=tr.state)
    assert plan.batch_lam is None
    assert not torch.any(plan.index == batch.index)


def test_tiny_bandwidth_pairs_with_self_and_equals_erm(tmp_path):
    """sigma -> 0 keeps every anchor with itself (self-pairs included), which is ERM."""
    cm = train(_cfg(tmp_path / "cm", epochs=2, bandwidth=1e-6))
    erm_cfg = _cfg(tmp_path / "erm", epochs=2)
    erm_cfg.pop("cmixup")
    erm_cfg["plugins"] = []
    erm = train(erm_cfg)
    rec = [r for r in cm.trainer.folder.records() if r.get("split") == "train"]
    assert all(r["cmixup/self_pair_frac"] == 1.0 for r in rec)
    for p, q in zip(cm.trainer.model.parameters(), erm.trainer.model.parameters()):
        assert torch.allclose(p, q, atol=1e-4)
    assert cm.summary["test"]["rmse"] == pytest.approx(erm.summary["test"]["rmse"], abs=1e-4)


def test_manifold_forward_mixes_after_first_block(tmp_path):
    tr = Trainer(_cfg(tmp_path, bandwidth=0.05, mix_on="manifold"), write=False)
    assert tr.host.owner("forward") == "cmixup" and tr.host.owner("mix_batch") == "cmixup"
    batch = _first_batch(tr)
    plan = tr.host.slot("sample_pairs", expected=MixPlan, batch=batch, state=tr.state)
    plan.partner = tr.fetch(plan.index)
    plan.resolve(batch)
    mixed = tr.host.slot("mix_batch", expected=Batch, batch=batch, plan=plan, state=tr.state)
    assert torch.equal(mixed.inputs, batch.inputs)  # features are mixed, not inputs
    out = tr.host.slot("forward", expected=dict, model=tr.net, batch=mixed, plan=plan, state=tr.state)
    m = tr.model
    lam = plan.lam[:, None]
    h = lam * m.blocks[0](batch.inputs) + (1 - lam) * m.blocks[0](plan.partner.inputs)
    for block in m.blocks[1:]:
        h = block(h)
    assert torch.allclose(out["logits"], m.head(h), atol=1e-6)


def test_manifold_on_a_cnn_uses_two_calls(tmp_path):
    """smallcnn: the last feature_info stage is mixed; BatchNorm sees anchors and partners separately."""
    cfg = {
        "data": {"name": "rotdigits", "image_size": 16, "options": {"copies": 1}},
        "model": {"name": "smallcnn", "kwargs": {"widths": [8, 8, 8]}},
        "train": {
            "epochs": 1,
            "batch_size": 32,
            "max_steps_per_epoch": 2,
            "checkpoint": False,
            "plots": False,
            "device": "cpu",
        },
        "plugins": ["cmixup"],
        "cmixup": {"bandwidth": 0.2, "pool": "batch2B", "mix_on": "manifold"},
        "out": str(tmp_path / "cnn"),
    }
    tr = Trainer(cfg, write=False)
    seen = []
    tr.model.stages[0][1].register_forward_hook(lambda mod, a, o: seen.append(a[0].shape[0]))
    logs = tr.train_step(_first_batch(tr))
    assert seen == [32, 32] and torch.isfinite(torch.tensor(logs["loss"]))


def test_bidirectional_doubles_the_batch(tmp_path):
    tr = Trainer(_cfg(tmp_path, bandwidth=0.05, bidirectional=True), write=False)
    batch = _first_batch(tr)
    plan = tr.host.slot("sample_pairs", expected=MixPlan, batch=batch, state=tr.state)
    plan.partner = tr.fetch(plan.index)
    plan.resolve(batch)
    lam1, lam2 = plan.lam.clone(), plan.extras["lam2"]
    mixed = tr.host.slot("mix_batch", expected=Batch, batch=batch, plan=plan, state=tr.state)
    b = batch.size
    assert mixed.size == 2 * b and plan.lam.shape == (2 * b,)
    x, xj = batch.inputs, plan.partner.inputs
    assert torch.allclose(mixed.inputs[:b], lam1[:, None] * x + (1 - lam1[:, None]) * xj)
    assert torch.allclose(mixed.inputs[b:], lam2[:, None] * xj + (1 - lam2[:, None]) * x, atol=1e-6)
    target = plan.mixed_regression_target()
    y, yj = batch.targets.float(), plan.partner.targets.float()
    assert torch.allclose(target[b:], lam2 * yj + (1 - lam2) * y, atol=1e-6)
    assert torch.isfinite(torch.tensor(tr.train_step(batch)["loss"]))


def test_in_batch_pool(tmp_path):
    tr = Trainer(_cfg(tmp_path, bandwidth=0.05, pool="batch"), write=False)
    batch = _first_batch(tr)
    plan = tr.host.slot("sample_pairs", expected=MixPlan, batch=batch, state=tr.state)
    assert plan.partner_source == "batch" and int(plan.index.max()) < batch.size
    assert torch.isfinite(torch.tensor(tr.train_step(batch)["loss"]))


def test_classification_is_rejected(tmp_path):
    from mixhub import ConfigError, MixhubError

    cfg = {
        "data": {"name": "digits"},
        "plugins": ["cmixup"],
        "train": {"epochs": 1, "device": "cpu"},
        "out": str(tmp_path / "c"),
    }
    with pytest.raises((ConfigError, MixhubError), match="cmixup"):
        Trainer(cfg, write=False)


def test_bad_options_are_rejected(tmp_path):
    from mixhub import ConfigError

    with pytest.raises(ConfigError, match="bandwidth"):
        Trainer(_cfg(tmp_path, bandwidth=0.0), write=False)
    with pytest.raises(ConfigError, match="bidirectional"):
        Trainer(_cfg(tmp_path, bidirectional=True, mix_on="manifold"), write=False)


def test_quick_tanh_suite_shows_the_effect(tmp_path):
    """Seeded quick version of `cmixup-tanh` (1 seed, 12 epochs). Thresholds calibrated from our runs:
    this seeded run gave ERM 0.073, mixup 0.201, C-Mixup (sigma 0.05) 0.073 test RMSE."""
    suite = {s.name: s for s in cmixup_suites()}["cmixup-tanh"]
    arms = {a.name: a for a in suite.arms}
    rmse = {}
    for name in ("erm", "mixup", "cmixup-0.05"):
        cfg = apply_overrides(apply_overrides(copy.deepcopy(suite.base), suite.quick), arms[name].overrides)
        cfg = apply_overrides(cfg, {"out": str(tmp_path / name), "train": {"plots": False}})
        rmse[name] = train(cfg).summary["test"]["rmse"]
    print("quick cmixup-tanh test RMSE:", rmse)
    assert rmse["cmixup-0.05"] < 0.5 * rmse["mixup"], rmse
    assert rmse["cmixup-0.05"] < 1.25 * rmse["erm"], rmse


@pytest.mark.parametrize(
    "opts",
    [
        {"kernel": "tophat", "bandwidth": 0.1},
        {"bandwidth_units": "std", "bandwidth": 0.1, "sampler": "sorted"},
        {"bandwidth": 0.05, "sampler": "gumbel", "include_self": False},
    ],
)
def test_option_variants_train(tmp_path, opts):
    tr = Trainer(_cfg(tmp_path, **opts), write=False)
    batch = _first_batch(tr)
    logs = tr.train_step(batch)
    assert torch.isfinite(torch.tensor(logs["loss"]))
    if not opts.get("include_self", True):
        assert logs["cmixup/self_pair_frac"] == 0.0
