"""Registration into timm's optimizer registry: names, defaults, idempotence and pitfalls."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import timm
import torch
from mixhub_adamp import SGDP, AdamP, register_timm
from timm.optim import AdamP as TimmAdamP
from timm.optim import Lookahead, create_optimizer_v2
from timm.optim._optim_factory import OptimizerRegistry, default_registry


@pytest.fixture(scope="module", autouse=True)
def registered() -> None:
    register_timm()


def _model() -> torch.nn.Module:
    return timm.create_model("test_resnet", num_classes=10)


def test_import_and_plugin_module_do_not_register() -> None:
    code = (
        "import mixhub_adamp, mixhub_adamp.plugin\n"
        "from timm.optim._optim_factory import default_registry as r\n"
        "assert 'mixhubadamp' not in r._optimizers and 'mixhubsgdp' not in r._optimizers\n"
        "assert r._optimizers['adamp'].opt_class.__module__.startswith('timm')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_register_is_idempotent_and_silent(caplog: pytest.LogCaptureFixture) -> None:
    reg = OptimizerRegistry()
    assert register_timm(reg) == ["mixhubadamp", "mixhubsgdp"]
    with caplog.at_level(logging.WARNING):
        assert register_timm(reg) == []
    assert "already registered" not in caplog.text
    assert register_timm() == []  # the module fixture registered in timm's default registry
    assert default_registry.get_optimizer_info("adamp").opt_class is TimmAdamP  # timm's own untouched


def test_factory_builds_ours_with_official_defaults_and_timm_groups() -> None:
    opt = create_optimizer_v2(_model(), "mixhubadamp", lr=1e-3, weight_decay=1e-2)
    assert type(opt) is AdamP
    assert len(opt.param_groups) == 2
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 1e-2}
    no_decay = next(g for g in opt.param_groups if g["weight_decay"] == 0.0)
    assert all(p.dim() <= 1 for p in no_decay["params"])
    g = opt.param_groups[0]
    assert g["nesterov"] is False and g["wd_ratio"] == 0.1 and g["delta"] == 0.1


def test_factory_lookahead_sgdp_momentum_and_foreach() -> None:
    la = create_optimizer_v2(_model(), "lookahead_mixhubadamp", lr=1e-3)
    assert isinstance(la, Lookahead) and type(la._base_optimizer) is AdamP
    sgdp = create_optimizer_v2(_model(), "mixhubsgdp", lr=0.1)
    assert type(sgdp) is SGDP and sgdp.param_groups[0]["momentum"] == 0.9  # the factory's, not the class's 0
    assert sgdp.param_groups[0]["nesterov"] is False
    ours = create_optimizer_v2(_model(), "mixhubadamp", lr=1e-3, foreach=True)
    assert ours.param_groups[0]["foreach"] is True
    with pytest.raises(TypeError):
        create_optimizer_v2(_model(), "adamp", lr=1e-3, foreach=True)  # timm's AdamP has no foreach


def test_underscore_names_are_a_trap() -> None:
    # timm keeps the last `_` token: "mixhub_adamp" silently means timm's AdamP with its factory defaults.
    opt = create_optimizer_v2(_model(), "mixhub_adamp", lr=1e-3)
    assert (
        type(opt) is TimmAdamP
        and opt.param_groups[0]["nesterov"] is True
        and opt.param_groups[0]["wd_ratio"] == 0.01
    )
    with pytest.raises(ValueError, match="official"):
        create_optimizer_v2(_model(), "adamp_official", lr=1e-3)
