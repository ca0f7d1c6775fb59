"""The core's plugin contract (``mixhub.testing``): hook order, determinism, exact resume."""

from __future__ import annotations

import pytest

from mixhub.testing import tiny_config


@pytest.fixture(params=["mrl", "mndcg"])
def config(request):
    return tiny_config(
        plugins=["rankmixup"], rankmixup={"variant": request.param}, train={"clip_grad_norm": 2.0}
    )


def test_contract_hooks_and_determinism(config, mixhub_contract):
    calls = mixhub_contract.hooks_in_order(config)
    assert calls.count("aux_losses") == 2
    mixhub_contract.determinism(config)


def test_contract_resume_is_exact(config, mixhub_contract):
    mixhub_contract.resume_equality(config)
