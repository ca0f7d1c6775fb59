"""The rankmixup plugin inside the core trainer: slots, two forward calls, CE on raw logits, clipping, errors."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from mixhub_rankmixup import mndcg_loss, mrl_loss, plugin

from mixhub import ConfigError, PluginSpec, SlotConflictError, hookimpl
from mixhub.trainer import Trainer, train

BASE = {
    "seed": 0,
    "plugins": ["rankmixup"],
    "data": {
        "name": "noisy-synthetic",
        "options": {"n_samples": 400, "n_features": 12, "n_informative": 6, "n_classes": 4},
    },
    "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
    "train": {
        "epochs": 1,
        "batch_size": 32,
        "lr": 0.1,
        "clip_grad_norm": 2.0,
        "checkpoint": False,
        "plots": False,
    },
    "optimizer": {"name": "momentum", "momentum": 0.9},
}


def cfg(**sections):
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


def first_batch(trainer: Trainer):
    return next(iter(trainer.loader))


def test_plugin_declares_its_slots_and_default_weight():
    spec = plugin.PLUGIN
    assert set(spec.slots) == {"sample_pairs", "mix_batch", "forward", "compute_loss"}
    assert spec.aux_loss_weights == {"rankmixup_mrl": 0.1, "rankmixup_mndcg": 0.1}
    assert spec.task_kinds == ("classification",)
    opts = plugin.RankMixupOptions()
    assert (opts.variant, opts.margin, opts.alpha, opts.copies) == ("mrl", 2.0, 2.0, 1)
    assert (opts.mrl_mask, opts.mrl_space, opts.mndcg_ratio) == ("official", "logit", "minmax")
    assert plugin.RankMixupOptions(variant="mndcg").copies == 3


def test_mrl_with_several_copies_is_a_config_error():
    with pytest.raises(ConfigError, match=r"rankmixup\.num_mixup.*exactly one"):
        Trainer(cfg(rankmixup={"num_mixup": 3}), write=False)


def test_missing_clipping_warns(caplog):
    raw = cfg()
    raw["train"] = {**raw["train"], "clip_grad_norm": None}
    with caplog.at_level(logging.WARNING, logger="mixhub"):
        Trainer(raw, write=False)
    msg = next(r.getMessage() for r in caplog.records if "clips the global gradient norm" in r.getMessage())
    # worded for any loop: mixhub's own option, timm train.py's flag, a plain loop's call
    assert "train.clip_grad_norm=2.0" in msg and "--clip-grad 2.0" in msg and "clip_grad_norm_(params, 2.0)" in msg


def test_another_loss_owner_is_a_startup_conflict():
    class OtherLoss:
        PLUGIN = PluginSpec(name="otherloss", slots=("compute_loss",))

        @staticmethod
        @hookimpl
        def mixhub_compute_loss(outputs, batch, plan, state):
            return outputs["logits"].sum() * 0

    with pytest.raises(SlotConflictError, match="rankmixup.*otherloss|otherloss.*rankmixup"):
        Trainer(cfg(plugins=["rankmixup", "otherloss"]), extra_plugins={"otherloss": OtherLoss}, write=False)


@pytest.mark.parametrize("variant,m", [("mrl", 1), ("mndcg", 3)])
def test_step_runs_two_forward_calls_and_logs_the_term(variant, m):
    trainer = Trainer(cfg(rankmixup={"variant": variant}), write=False)
    calls = []
    trainer.model.register_forward_hook(lambda mod, inp, out: calls.append(tuple(inp[0].shape)))
    batch = first_batch(trainer)
    b = batch.size
    out = {k: float(v) for k, v in trainer.train_step(batch).items()}
    assert calls == [(b, 12), (m * b, 12)]
    name = f"rankmixup_{variant}"
    assert out[name] > 0
    assert out["loss"] == pytest.approx(out["loss_main"] + 0.1 * out[name], rel=1e-5)


def test_sample_and_mix_build_copy_major_views():
    trainer = Trainer(cfg(rankmixup={"variant": "mndcg", "num_mixup": 3}), write=False)
    batch = first_batch(trainer)
    state = trainer.state
    plan = trainer.host.slot("sample_pairs", batch=batch, state=state)
    assert plan.is_identity and len(plan.extras["views"]) == 3
    lams = [float(v["lam"][0]) for v in plan.extras["views"]]
    assert len(set(lams)) == 3
    plan.resolve(batch)
    mixed = trainer.host.slot("mix_batch", batch=batch, plan=plan, state=state)
    assert torch.equal(mixed.inputs, batch.inputs)
    x, t = mixed.extras["rank_inputs"], mixed.extras["rank_targets"]
    b = batch.size
    assert x.shape == (3 * b, 12) and t.shape == (3 * b, 4)
    for k, view in enumerate(plan.extras["views"]):
        lam, idx = float(view["lam"][0]), view["index"]
        assert torch.allclose(x[k * b : (k + 1) * b], lam * batch.inputs + (1 - lam) * batch.inputs[idx])
        onehot = F.one_hot(batch.targets, 4).float()
        assert torch.allclose(t[k * b : (k + 1) * b], lam * onehot + (1 - lam) * onehot[idx])


def test_primary_loss_ignores_mixed_logits_and_aux_matches_functional():
    trainer = Trainer(cfg(), write=False)
    batch = first_batch(trainer)
    state = trainer.state
    plan = trainer.host.slot("sample_pairs", batch=batch, state=state).resolve(batch)
    mixed = trainer.host.slot("mix_batch", batch=batch, plan=plan, state=state)
    outputs = trainer.host.slot("forward", model=trainer.model, batch=mixed, plan=plan, state=state)
    outputs = {k: v.detach() for k, v in outputs.items()}
    ce = plugin.mixhub_compute_loss(outputs, mixed, plan, state)
    zeroed = {**outputs, "mixed_logits": torch.zeros_like(outputs["mixed_logits"])}
    assert float(plugin.mixhub_compute_loss(zeroed, mixed, plan, state)) == float(ce)
    assert float(ce) == pytest.approx(float(F.cross_entropy(outputs["logits"], batch.targets)))
    aux = plugin.mixhub_aux_losses(outputs, mixed, plan, state)
    expect = mrl_loss(outputs["logits"], outputs["mixed_logits"], mixed.extras["rank_targets"], 2.0)
    assert float(aux["rankmixup_mrl"]) == pytest.approx(float(expect))


def test_mndcg_aux_matches_functional():
    trainer = Trainer(cfg(rankmixup={"variant": "mndcg"}), write=False)
    batch = first_batch(trainer)
    state = trainer.state
    plan = trainer.host.slot("sample_pairs", batch=batch, state=state).resolve(batch)
    mixed = trainer.host.slot("mix_batch", batch=batch, plan=plan, state=state)
    outputs = trainer.host.slot("forward", model=trainer.model, batch=mixed, plan=plan, state=state)
    outputs = {k: v.detach() for k, v in outputs.items()}
    aux = plugin.mixhub_aux_losses(outputs, mixed, plan, state)
    expect = mndcg_loss(outputs["logits"], outputs["mixed_logits"], mixed.extras["rank_targets"], 3)
    assert float(aux["rankmixup_mndcg"]) == pytest.approx(float(expect))


def test_separate_forward_keeps_batchnorm_statistics_apart():
    raw = cfg(data={"name": "digits", "options": {}}, model={"name": "smallcnn", "kwargs": {"widths": [4, 8, 8]}})
    for options, expected in (({}, 2), ({"separate_forward": False}, 1), ({"mixed_bn_update": False}, 1)):
        raw["rankmixup"] = options
        trainer = Trainer(raw, write=False)
        bn = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        before = int(bn.num_batches_tracked)
        batch = first_batch(trainer)
        if options.get("mixed_bn_update") is False:  # running stats must equal those of the raw call alone
            probe = copy.deepcopy(trainer.model).train()
            with torch.no_grad():
                probe(batch.inputs)
            expect_mean = next(m for m in probe.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean
        trainer.train_step(batch)
        assert int(bn.num_batches_tracked) - before == expected
        if options.get("mixed_bn_update") is False:
            assert torch.allclose(bn.running_mean, expect_mean, atol=1e-6)


def _grad_norms(clip):
    raw = cfg(rankmixup={"margin": 50.0}, losses={"rankmixup_mrl": 50.0})
    raw["train"] = {**raw["train"], "clip_grad_norm": clip}
    trainer = Trainer(raw, write=False)
    norms = []
    for batch in list(trainer.loader)[:3]:
        trainer.train_step(batch)
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        norms.append(
            float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        )
    return norms


def test_gradient_norm_is_clipped_to_two():
    assert min(_grad_norms(None)) > 2.0  # the check below is not vacuous
    assert max(_grad_norms(2.0)) <= 2.0 + 1e-4


def test_tiny_run_reports_calibration_and_plugin_metrics(tmp_path):
    result = train(cfg(rankmixup={"variant": "mndcg"}), out=tmp_path / "run")
    test = result.summary["test"]
    for key in ("acc", "nll", "ece", "adaece", "brier", "temperature", "ece_ts", "nll_ts"):
        assert key in test
    records = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "rankmixup/same_class_frac" in records and "rankmixup/conf_gap" in records
