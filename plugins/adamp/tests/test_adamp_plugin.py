"""The plugin through the real trainer: the optimizer slot, metrics, config errors, resume,
and the quick bench suite."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mixhub_adamp import SGDP, AdamP
from mixhub_adamp.plugin import PLUGIN
from timm.optim import Lookahead

from mixhub.errors import ConfigError
from mixhub.testing import tiny_config
from mixhub.trainer import Trainer


def _trainer(tmp_path: Path, **extra) -> Trainer:
    cfg = tiny_config(plugins=["adamp"], **extra)
    return Trainer(cfg, out=tmp_path / "run", write=False)


def test_spec_claims_the_optimizer_slot() -> None:
    assert PLUGIN.name == "adamp" and PLUGIN.claimed_slots(PLUGIN.options()) == ("create_optimizer",)


def test_adamp_from_optimizer_name(tmp_path: Path) -> None:
    t = _trainer(tmp_path, optimizer={"name": "adamp"}, train={"lr": 2e-3, "weight_decay": 0.05})
    opt = t.optimizer
    assert type(opt) is AdamP
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.05}  # the core's groups
    assert all(g["lr"] == 2e-3 and g["wd_ratio"] == 0.1 and g["nesterov"] is False for g in opt.param_groups)
    assert opt.param_groups[0]["impl"] == "auto"


def test_sgdp_options_and_lookahead(tmp_path: Path) -> None:
    t = _trainer(
        tmp_path, optimizer={"name": "lookahead_sgdp", "momentum": 0.8},
        adamp={"nesterov": True, "buffer_alias": False, "impl": "reference", "wd_ratio": 0.2},
    )  # fmt: skip
    assert isinstance(t.optimizer, Lookahead)
    base = t.optimizer._base_optimizer
    assert type(base) is SGDP
    g = base.param_groups[0]
    assert (g["momentum"], g["nesterov"], g["buffer_alias"], g["impl"], g["wd_ratio"]) == (
        0.8,
        True,
        False,
        "reference",
        0.2,
    )


def test_other_optimizer_names_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="adamp or sgdp"):
        _trainer(tmp_path, optimizer={"name": "sgd"})
    with pytest.raises(ConfigError):
        _trainer(tmp_path, adamp={"wd_ratio": -1})
    t = _trainer(tmp_path, optimizer={"name": "sgd"}, adamp={"optimizer": "sgdp"})
    assert type(t.optimizer) is SGDP


def test_train_step_logs_projection_metrics(tmp_path: Path) -> None:
    t = _trainer(tmp_path, optimizer={"name": "adamp"})
    batch = next(iter(t.loader)).to(t.device)
    t.train_step(batch)
    [metrics] = [
        m for m in t.host.collect("mixhub_metrics", stage="train", state=t.state) if "adamp/channel_frac" in m
    ]
    # tiny smallcnn: 4 convs (each feeds a BatchNorm) and the linear head
    assert metrics["adamp/channel_frac"] == pytest.approx(4 / 5)
    assert metrics["adamp/none_frac"] == pytest.approx(1 / 5)
    assert metrics["adamp/invariant_norm"] > 0


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_plugin_matches_functional_optimizer(tmp_path: Path, impl: str) -> None:
    t = _trainer(tmp_path, optimizer={"name": "adamp"}, adamp={"impl": impl}, train={"weight_decay": 0.01})
    model_copy = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    batch = next(iter(t.loader)).to(t.device)
    t.train_step(batch)
    grads = {n: p.grad.clone() for n, p in t.model.named_parameters()}
    # Same step by hand with the class and the core's groups (no decay on 1-D tensors).
    params = {n: p.clone().requires_grad_() for n, p in model_copy.items()}
    groups = [
        {"params": [params[n] for n in params if params[n].dim() > 1], "weight_decay": 0.01},
        {"params": [params[n] for n in params if params[n].dim() <= 1], "weight_decay": 0.0},
    ]
    opt = AdamP(groups, lr=t.optimizer.param_groups[0]["lr"], impl=impl)
    for n, p in params.items():
        p.grad = grads[n]
    opt.step()
    for n, p in t.model.named_parameters():
        assert torch.equal(p.detach(), params[n].detach()), n


def test_resume_equality(mixhub_contract) -> None:
    cfg = tiny_config(plugins=["adamp"], optimizer={"name": "sgdp"}, train={"lr": 0.05})
    mixhub_contract.resume_equality(cfg)


def test_quick_suite_runs(tmp_path: Path) -> None:
    from mixhub_adamp.suites import adamp_suites

    from mixhub.bench.runner import run_suite

    [suite] = adamp_suites()
    suite.arms = [a for a in suite.arms if a.name in ("adamw", "adamp")]
    suite.comparisons = []
    suite.quick = {"train": {"epochs": 2, "max_steps_per_epoch": 2}, "data": {"image_size": 16}}
    results = run_suite(suite, tmp_path / "bench", quick=True, progress=False)
    metrics = {c["arm"]: c["metrics"] for c in results["cells"]}
    assert set(metrics) == {"adamw", "adamp"}
    for m in metrics.values():
        assert 0.0 <= m["test.acc"] <= 1.0 and m["norm.ratio"] > 0
    assert metrics["adamp"]["proj.channel_frac_epoch1"] == pytest.approx(6 / 7)
    assert (tmp_path / "bench" / "adamp_norms.png").exists()
    assert "adamp - adamw" in (tmp_path / "bench" / "REPORT.md").read_text()
