"""The timm-mixup plugin through mixhub's trainer: slots, equality with timm's Mixup through the
hooks, composition with Decoupled Mixup, contracts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mixhub_timm_mixup import MixupConfig, sample

from mixhub import ConfigError
from mixhub.testing import Contract, tiny_config
from mixhub.trainer import Trainer, collate

mixup_module = pytest.importorskip("timm.data.mixup")


def _trainer(tmp_path, plugins=("timm-mixup",), **options):
    cfg = tiny_config(plugins=list(plugins), **options)
    return Trainer(cfg, out=tmp_path / "r")


def _batch(t, n=8):
    return collate([t.train_set[i] for i in range(n)])


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_hooks_equal_timm_mixup(tmp_path, mode) -> None:
    """The plugin's plan, mixed inputs and soft targets equal timm's Mixup called with numpy
    seeded as the plugin seeds its step."""
    opts = {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "mode": mode}
    t = _trainer(tmp_path, **{"timm-mixup": opts})
    assert t.host.owner("sample_pairs") == "timm-mixup" and t.host.owner("mix_batch") == "timm-mixup"
    for _ in range(4):
        batch = _batch(t)
        saved = t.state.generator.get_state()
        plan = t.host.slot("sample_pairs", batch=batch, state=t.state)
        mixed = t.host.slot("mix_batch", batch=batch, plan=plan, state=t.state)
        t.state.generator.set_state(saved)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=t.state.generator))
        np.random.seed(seed)
        timm_mix = mixup_module.Mixup(**opts, label_smoothing=0.0, num_classes=t.state.num_classes)
        x_t, y_t = timm_mix(batch.inputs.clone(), batch.targets.clone())
        assert torch.equal(mixed.inputs, x_t)
        assert torch.equal(plan.extras["soft_targets"], y_t)
        assert torch.equal(plan.index, torch.arange(7, -1, -1))


def test_composes_with_decoupled(tmp_path) -> None:
    """Decoupled Mixup reads timm-mixup's plan: its loss equals the decoupled functional on the
    plan's lam and pairing, and a run trains."""
    from mixhub_decoupled.functional import decoupled_mixup_loss

    t = _trainer(tmp_path, plugins=("timm-mixup", "decoupled"), **{"timm-mixup": {"cutmix_alpha": 1.0}})
    assert t.host.owner("compute_loss") == "decoupled"
    batch = _batch(t)
    plan = t.host.slot("sample_pairs", batch=batch, state=t.state).resolve(batch)
    logits = torch.randn(8, t.state.num_classes, generator=torch.Generator().manual_seed(0))
    loss = t.host.slot("compute_loss", outputs={"logits": logits}, batch=batch, plan=plan, state=t.state)
    expected = decoupled_mixup_loss(logits, batch.targets, batch.targets.flip(0), plan.batch_lam, eta=0.1)
    torch.testing.assert_close(loss, expected)
    assert torch.isfinite(torch.tensor(t.fit()["test"]["nll"]))


def test_per_sample_modes_meet_decoupleds_official_flags(tmp_path) -> None:
    with pytest.raises(ConfigError, match="timm-mixup.lam_mode='elem'"):
        _trainer(tmp_path, plugins=("timm-mixup", "decoupled"), **{"timm-mixup": {"mode": "elem"}})
    t = _trainer(
        tmp_path,
        plugins=("timm-mixup", "decoupled"),
        **{"timm-mixup": {"mode": "elem"}, "decoupled": {"official_eta_order": False, "official_skip": False}},
    )
    assert torch.isfinite(torch.tensor(t.fit()["test"]["nll"]))


def test_off_epoch_and_bad_settings(tmp_path) -> None:
    t = _trainer(tmp_path, **{"timm-mixup": {"off_epoch": 1}})
    t.state.epoch = 1
    batch = _batch(t)
    plan = t.host.slot("sample_pairs", batch=batch, state=t.state)
    assert plan.is_identity
    assert t.host.slot("mix_batch", batch=batch, plan=plan, state=t.state).inputs is batch.inputs
    with pytest.raises(ConfigError, match="even"):
        _trainer(tmp_path, train={"batch_size": 31})
    with pytest.raises((ConfigError, ValueError), match="mixup_alpha"):
        _trainer(tmp_path, **{"timm-mixup": {"mixup_alpha": 0.0}})


def test_functional_matches_plugin_draw(tmp_path) -> None:
    t = _trainer(tmp_path, **{"timm-mixup": {"cutmix_minmax": [0.2, 0.8], "mode": "pair"}})
    batch = _batch(t)
    saved = t.state.generator.get_state()
    plan = t.host.slot("sample_pairs", batch=batch, state=t.state)
    t.state.generator.set_state(saved)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=t.state.generator))
    cfg = MixupConfig(mixup_alpha=1.0, cutmix_minmax=(0.2, 0.8), mode="pair")
    draw = sample(cfg, 8, tuple(batch.inputs.shape[-2:]), np.random.RandomState(seed))
    assert plan.extras["timm_mixup"].boxes == draw.boxes
    assert np.array_equal(plan.lam.numpy(), draw.lam_per_sample)


def test_contracts(tmp_path) -> None:
    c = Contract(tmp_path)
    cfg = tiny_config(plugins=["timm-mixup"], **{"timm-mixup": {"cutmix_alpha": 1.0, "mode": "pair"}})
    c.hooks_in_order(cfg)
    c.slot_types(cfg)
    c.determinism(cfg)
    c.resume_equality(tiny_config(plugins=["timm-mixup"], **{"timm-mixup": {"cutmix_alpha": 1.0, "prob": 0.6}}))
