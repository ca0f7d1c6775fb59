"""The ``decoupled`` plugin in the trainer: validation, composition with samplers, metrics."""

from __future__ import annotations

from typing import Any, Literal

import pytest
import torch
from mixhub_decoupled import decoupled_mixup_loss, mixup_soft_cross_entropy
from pydantic import Field

from mixhub import ConfigError, MixPlan, PluginError, PluginOptions, PluginSpec, hookimpl
from mixhub.trainer import Trainer, train

BASE: dict[str, Any] = {
    "seed": 3,
    "plugins": ["mixup", "decoupled"],
    "data": {"name": "digits", "image_size": 16, "train_frac": 0.3},
    "model": {"name": "smallcnn", "kwargs": {"widths": [8, 16]}},
    "train": {
        "epochs": 1,
        "batch_size": 16,
        "lr": 0.05,
        "max_steps_per_epoch": 2,
        "plots": False,
        "checkpoint": False,
    },
    "optimizer": {"name": "momentum"},
}


def config(**sections: Any) -> dict[str, Any]:
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


class Spy:
    """An in-process plugin that records what the loss saw (logits and the plan)."""

    PLUGIN = PluginSpec(name="spy", task_kinds=("classification",))

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    @hookimpl
    def mixhub_aux_losses(self, outputs, batch, plan, state):
        self.seen.append(
            {
                "logits": outputs["logits"].detach().clone(),
                "y_a": plan.y_a.clone(),
                "y_b": plan.y_b.clone(),
                "lam": plan.lam.clone(),
                "mask": plan.mask,
            }
        )
        return None


class PairSamplerOptions(PluginOptions):
    lam: float = Field(0.7, ge=0.0, le=1.0)
    lam_mode: Literal["batch", "sample"] = "batch"
    pairing: Literal["flip", "self"] = "flip"


class PairSampler:
    """A tiny third-party sampler: timm-style pairing i <-> B-1-i (or self-pairs), fixed lam."""

    PLUGIN = PluginSpec(
        name="pairsampler",
        options=PairSamplerOptions,
        slots=("sample_pairs",),
        task_kinds=("classification",),
    )

    @hookimpl
    def mixhub_sample_pairs(self, batch, state):
        opts = state.options("pairsampler")
        b = batch.size
        index = torch.arange(b - 1, -1, -1) if opts.pairing == "flip" else torch.arange(b)
        lam = torch.full((b,), opts.lam)
        if opts.lam_mode == "sample":
            lam = torch.linspace(0.2, 0.8, b)
        return MixPlan.pairs(index.to(batch.inputs.device), lam.to(batch.inputs.device))


class DatasetPartnerSampler:
    """Partners drawn from the whole training set (as C-Mixup does): the core fetches them."""

    PLUGIN = PluginSpec(name="dspartner", slots=("sample_pairs",), task_kinds=("classification",))

    @hookimpl
    def mixhub_sample_pairs(self, batch, state):
        index = torch.randint(state.train_dataset_size, (batch.size,), generator=state.generator)
        return MixPlan.pairs(index.to(batch.inputs.device), 0.6, partner_source="dataset")


class NoFlagSampler(PairSampler):
    """A sampler with per-sample lam and no ``lam_mode`` option validation can see."""

    PLUGIN = PluginSpec(name="noflag", slots=("sample_pairs",), task_kinds=("classification",))

    @hookimpl
    def mixhub_sample_pairs(self, batch, state):
        b = batch.size
        return MixPlan.pairs(torch.arange(b - 1, -1, -1), torch.linspace(0.2, 0.8, b))


def first_step(
    cfg: dict[str, Any], spy: Spy | None = None, extra: dict[str, Any] | None = None
) -> tuple[Trainer, dict[str, float]]:
    plugins = dict(extra or {})
    if spy is not None:
        plugins["spy"] = spy
        cfg = {**cfg, "plugins": [*cfg["plugins"], "spy"]}
    trainer = Trainer(cfg, extra_plugins=plugins, write=False)
    batch = next(iter(trainer.loader))
    out = trainer.train_step(batch)
    assert out is not None
    return trainer, out


def recompute(seen: dict[str, Any], **kw: Any) -> float:
    lam = seen["lam"]
    lam_arg = float(lam[0]) if bool(torch.all(lam == lam[0])) else lam
    return float(decoupled_mixup_loss(seen["logits"], seen["y_a"], seen["y_b"], lam_arg, **kw))


# ----------------------------------------------------------------------------- validation
def test_per_sample_mixup_with_official_flags_fails_validation():
    with pytest.raises(ConfigError) as info:
        Trainer(config(mixup={"lam_mode": "sample"}), write=False)
    msg = str(info.value)
    assert "decoupled" in msg and "mixup.lam_mode" in msg and "official" in msg


def test_per_sample_third_party_sampler_fails_validation():
    cfg = config(
        plugins=["pairsampler", "decoupled"],
        pairsampler={"lam_mode": "sample"},
        decoupled={"official_skip": False},
    )
    with pytest.raises(ConfigError, match=r"decoupled.*pairsampler\.lam_mode"):
        Trainer(cfg, extra_plugins={"pairsampler": PairSampler()}, write=False)


def test_core_label_smoothing_is_rejected():
    with pytest.raises(ConfigError, match="decoupled.label_smoothing"):
        Trainer(config(train={**BASE["train"], "label_smoothing": 0.1}), write=False)


def test_per_sample_lam_at_run_time_names_the_plugin():
    cfg = config(plugins=["noflag", "decoupled"])
    trainer = Trainer(cfg, extra_plugins={"noflag": NoFlagSampler()}, write=False)
    with pytest.raises(PluginError) as info:
        trainer.train_step(next(iter(trainer.loader)))
    assert "decoupled" in str(info.value) and "per-sample" in str(info.value)


def test_plugin_is_discoverable():
    from mixhub.plugins import discover

    info = discover()["decoupled"]
    assert info.distribution == "mixhub-decoupled" and info.value == "mixhub_decoupled.plugin"


# ----------------------------------------------------------------------------- composition
@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_composes_with_mixup_plugin(mode):
    spy = Spy()
    opts = {"eta": 0.1, "mode": "less", "lam_pow": 0.5} if mode == "cutmix" else {"eta": 0.1}
    alpha = 0.2 if mode == "cutmix" else 1.0
    _, out = first_step(config(mixup={"mode": mode, "alpha": alpha}, decoupled=opts), spy)
    seen = spy.seen[0]
    assert bool(torch.all(seen["lam"] == seen["lam"][0]))  # one (area-corrected) lam per batch
    if mode == "cutmix":
        assert seen["mask"] is not None
        area = seen["mask"].float().flatten(1).mean(1)
        assert torch.allclose(area, seen["lam"], atol=1e-6)  # the plan's lam is the kept area
    assert out["loss_main"] == pytest.approx(recompute(seen, **opts), abs=1e-5)
    assert "decoupled/reg" in out and "decoupled/skipped_frac" in out


def test_per_sample_extension_with_official_flags_off():
    spy = Spy()
    opts = {"eta": 0.2, "official_eta_order": False, "official_skip": False}
    _, out = first_step(config(mixup={"lam_mode": "sample"}, decoupled=opts), spy)
    seen = spy.seen[0]
    assert not bool(torch.all(seen["lam"] == seen["lam"][0]))
    assert out["loss_main"] == pytest.approx(recompute(seen, **opts), abs=1e-5)
    assert out["decoupled/reg"] > 0


def test_composes_with_third_party_sampler():
    spy = Spy()
    cfg = config(plugins=["pairsampler", "decoupled"], pairsampler={"lam": 0.7})
    _, out = first_step(cfg, spy, {"pairsampler": PairSampler()})
    seen = spy.seen[0]
    assert torch.equal(seen["y_b"], seen["y_a"].flip(0))
    assert out["loss_main"] == pytest.approx(recompute(seen, eta=0.1), abs=1e-5)
    assert out["decoupled/reg"] > 0 and out["decoupled/skipped_frac"] == 0.0


def test_composes_with_dataset_partners():
    spy = Spy()
    cfg = config(plugins=["dspartner", "decoupled"])
    trainer, out = first_step(cfg, spy, {"dspartner": DatasetPartnerSampler()})
    seen = spy.seen[0]
    assert not torch.equal(seen["y_b"], seen["y_a"])
    assert out["loss_main"] == pytest.approx(recompute(seen, eta=0.1), abs=1e-5)


def test_same_class_pairs_give_plain_cross_entropy():
    spy = Spy()
    cfg = config(plugins=["pairsampler", "decoupled"], pairsampler={"pairing": "self", "lam": 0.7})
    _, out = first_step(cfg, spy, {"pairsampler": PairSampler()})
    seen = spy.seen[0]
    ce = float(torch.nn.functional.cross_entropy(seen["logits"], seen["y_a"]))
    assert out["loss_main"] == pytest.approx(ce, abs=1e-5)
    assert out["decoupled/reg"] == 0.0 and out["decoupled/skipped_frac"] == 1.0


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_lam_endpoints_in_the_trainer(lam):
    spy = Spy()
    cfg = config(plugins=["pairsampler", "decoupled"], pairsampler={"lam": lam})
    _, out = first_step(cfg, spy, {"pairsampler": PairSampler()})
    seen = spy.seen[0]
    ce = float(mixup_soft_cross_entropy(seen["logits"], seen["y_a"], seen["y_b"], lam).mean())
    assert out["loss_main"] == pytest.approx(ce, abs=1e-5)  # official skip: the mixup CE only
    assert out["decoupled/skipped_frac"] == 1.0


def test_eta_zero_equals_core_default_loss():
    _, with_dm = first_step(config(decoupled={"eta": 0.0}))
    _, core = first_step(config(plugins=["mixup"]))
    assert float(with_dm["loss_main"]) == pytest.approx(float(core["loss_main"]), abs=1e-6)


# ----------------------------------------------------------------------------- metrics and the quick suite
def test_mixed_top2_metric_in_summary():
    cfg = config(decoupled={"top2_mixes": 64, "top2_stages": ["val", "test"]})
    result = train(cfg, write=False)
    for split in ("test",):
        value = result.summary[split]["decoupled/mixed_top2"]
        assert 0.0 <= value <= 1.0
    scratch = result.trainer.state.scratch("decoupled")
    assert ("test", "mixup") in scratch.top2_cache


# ----------------------------------------------------------------------------- the core's plugin contract
def contract_config(**extra: Any) -> dict[str, Any]:
    from mixhub.testing import tiny_config

    return tiny_config(plugins=["mixup", "decoupled"], decoupled={"top2_mixes": 32}, **extra)


def test_contract_hooks_and_state(mixhub_contract):
    calls = mixhub_contract.hooks_in_order(contract_config())
    assert "aux_losses" in calls
    result = mixhub_contract.train(contract_config(mixup={"mode": "cutmix"}))
    mixhub_contract.state_dict_is_plain(result.trainer)
    assert result.trainer.state.scratch("decoupled").saw_mask is True


def test_contract_determinism_and_resume(mixhub_contract):
    mixhub_contract.determinism(contract_config())
    mixhub_contract.resume_equality(contract_config())


def test_functional_matches_plugin(mixhub_contract):
    spy = Spy()
    _, out = first_step(config(decoupled={"eta": 0.3, "mode": "more", "lam_pow": 0.5}), spy)
    seen = spy.seen[0]
    mixhub_contract.functional_matches_plugin(
        lambda: decoupled_mixup_loss(
            seen["logits"], seen["y_a"], seen["y_b"], float(seen["lam"][0]), eta=0.3, mode="more", lam_pow=0.5
        ),
        lambda: torch.tensor(out["loss_main"]),
        atol=1e-5,
    )


def test_quick_suite_through_the_harness(tmp_path):
    from mixhub.bench.runner import collect_suites, run_suite

    suite = collect_suites()["decoupled"]
    assert suite.provider == "decoupled"
    shrink = {
        "data": {"image_size": 16},
        "model": {"kwargs": {"widths": [8, 16]}},
        "train": {"epochs": 1, "max_steps_per_epoch": 2},
    }
    suite.quick = {**suite.quick, **shrink, "decoupled": {"top2_mixes": 64}}
    results = run_suite(
        suite, tmp_path / "bench", quick=True, progress=False, command="mixhub bench decoupled --quick"
    )
    assert len(results["cells"]) == 4
    for cell in results["cells"]:
        assert "test.decoupled/mixed_top2" in cell["metrics"], cell["arm"]
    assert (tmp_path / "bench" / "REPORT.md").exists()


def test_validate_warnings():
    from types import SimpleNamespace

    from mixhub_decoupled.plugin import DecoupledOptions, validate

    cfg = SimpleNamespace(
        train=SimpleNamespace(label_smoothing=0.0), options={}, slots={}, plugins=["decoupled"]
    )
    warnings = validate(DecoupledOptions(label_smoothing=0.05), cfg)
    assert any("ignored" in w for w in warnings) and any("nothing mixes" in w for w in warnings)
    assert any("official bug" in w for w in validate(DecoupledOptions(label_smoothing=0.1), cfg))
    assert not any(
        "ignored" in w
        for w in validate(DecoupledOptions(label_smoothing=0.05, smoothing_target="onehot"), cfg)
    )
    # an explicitly named sampler is the one checked
    per_sample = SimpleNamespace(lam_mode="elem")
    cfg2 = SimpleNamespace(
        train=SimpleNamespace(label_smoothing=0.0),
        options={"other": per_sample, "decoupled": DecoupledOptions()},
        slots={"sample_pairs": "other"},
        plugins=["other", "decoupled"],
    )
    with pytest.raises(ConfigError, match="other.lam_mode='elem'"):
        validate(DecoupledOptions(), cfg2)
    assert validate(DecoupledOptions(official_eta_order=False, official_skip=False), cfg2) == []
