"""``DeviceChecks`` and ``MixPlan.validate``'s device-side checks: nothing is read until
``verify``, the earliest failure's error is raised, and structure errors still raise at once."""

from __future__ import annotations

import pytest
import torch

from mixhub import MixPlan
from mixhub.checks import DeviceChecks
from mixhub.hostsync import HostSyncCounter


def test_verify_raises_the_earliest_failure_and_forgets():
    checks = DeviceChecks(every=4)
    checks.fail_if(torch.tensor(False), lambda: ValueError("first"), step=0)
    checks.fail_if(torch.tensor([False, True]), lambda: ValueError("second"), step=1)
    checks.fail_if(torch.tensor(True), lambda: ValueError("third"), step=2)
    assert not checks.due(3) and checks.due(4)
    with pytest.raises(ValueError, match="second"):
        checks.verify()
    assert len(checks) == 0
    checks.verify()  # nothing pending: nothing read, nothing raised
    checks.fail_if(torch.tensor(False), lambda: ValueError("never"))
    checks.verify(failed=False)  # a flag already read elsewhere (the step record's transfer)
    assert len(checks) == 0
    with pytest.raises(ValueError, match="check_every"):
        DeviceChecks(every=0)


def test_plan_values_become_flags_without_a_read():
    checks = DeviceChecks()
    bad = MixPlan.pairs(torch.tensor([0, 5, 1]), torch.tensor([0.5, 1.5, 0.2]))
    with HostSyncCounter() as counter:
        bad.validate(3, owner="sampler", checks=checks, error=RuntimeError)
    assert counter.count == 0 and len(checks) == 2  # lam range, index range
    with pytest.raises(RuntimeError, match=r"sampler: MixPlan.lam must lie in \[0, 1\]"):
        checks.verify()
    with pytest.raises(ValueError, match="index out of range"):  # without checks: read at once
        MixPlan.pairs(torch.tensor([0, 5, 1]), 0.5).validate(3)
    with pytest.raises(ValueError, match="differs from MixPlan.lam_value=0.5"):
        MixPlan.pairs(torch.tensor([0, 1]), torch.tensor([0.5, 0.7]), lam_value=0.5).validate(2)


def test_structure_errors_raise_at_once_and_identity_costs_nothing():
    checks = DeviceChecks()
    with pytest.raises(ValueError, match=r"shape \[4\]"):
        MixPlan.pairs(torch.arange(3), 0.5).validate(4, checks=checks)
    with pytest.raises(TypeError, match="integer tensor"):
        MixPlan(index=torch.zeros(2), lam=torch.ones(2)).validate(2, checks=checks)
    with HostSyncCounter() as counter:
        MixPlan.identity(8).validate(8, checks=checks)
    assert counter.count == 0 and len(checks) == 0
