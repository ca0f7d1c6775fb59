"""GroupScheduler against an independent table of learning rates for each schedule kind."""

from __future__ import annotations

import math

import pytest
import torch

from mixhub.schedule import GroupScheduler


def _opt(*groups):
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], **g} for g in groups], lr=1.0)


def _expected_cosine(step, base, floor, total, warm):
    if step < warm:
        return floor + (base - floor) * (step + 1) / (warm + 1)
    t = min(1.0, (step - warm) / max(1, total - warm))
    return floor + (base - floor) * (1 + math.cos(math.pi * t)) / 2


@pytest.mark.parametrize("warm", [0, 3])
def test_cosine_with_warmup_matches_the_formula_per_group(warm):
    opt = _opt({"lr": 2.0}, {"lr": 0.5, "min_lr": 0.1})
    s = GroupScheduler(opt, 20, kind="cosine", warmup_steps=warm, min_lr=0.05)
    for step in range(0, 25):
        s.step(step)
        assert opt.param_groups[0]["lr"] == pytest.approx(_expected_cosine(step, 2.0, 0.05, 20, warm), abs=1e-12), step
        assert opt.param_groups[1]["lr"] == pytest.approx(_expected_cosine(step, 0.5, 0.1, 20, warm), abs=1e-12), step
    # the constructor sets step 0 (the first warm-up step, or the base lr)
    fresh = _opt({"lr": 2.0})
    GroupScheduler(fresh, 20, kind="cosine", warmup_steps=warm, min_lr=0.05)
    assert fresh.param_groups[0]["lr"] == pytest.approx(_expected_cosine(0, 2.0, 0.05, 20, warm))


def test_cosine_fixed_points():
    s = GroupScheduler(_opt({"lr": 1.0}), 10, kind="cosine")
    assert [s.lr_at(t, 1.0, 0.0) for t in (0, 5, 10, 15)] == pytest.approx([1.0, 0.5, 0.0, 0.0], abs=1e-12)
    assert s.lr_at(5, 1.0, 0.2) == pytest.approx(0.6)
    # warm-up ramps from the floor to the base, never reaching the base before it ends
    w = GroupScheduler(_opt({"lr": 1.0}), 10, kind="cosine", warmup_steps=4)
    assert [w.lr_at(t, 1.0, 0.0) for t in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert w.lr_at(4, 1.0, 0.0) == pytest.approx(1.0)
    # total shorter than the warm-up: the span is clamped to one step
    z = GroupScheduler(_opt({"lr": 1.0}), 2, kind="cosine", warmup_steps=2)
    assert z.lr_at(2, 1.0, 0.0) == pytest.approx(1.0) and z.lr_at(3, 1.0, 0.0) == pytest.approx(0.0, abs=1e-12)
    # zero total steps count as one
    one = GroupScheduler(_opt({"lr": 1.0}), 0, kind="cosine")
    assert one.total_steps == 1 and one.lr_at(1, 1.0, 0.0) == pytest.approx(0.0, abs=1e-12)


def test_step_decay_and_floor():
    s = GroupScheduler(_opt({"lr": 1.0}), 100, kind="step", step_every=10, step_rate=0.5)
    assert [s.lr_at(t, 1.0, 0.0) for t in (0, 9, 10, 19, 20, 35)] == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25, 0.125])
    assert s.lr_at(35, 1.0, 0.2) == pytest.approx(0.2)
    # step_every below one counts as one
    e = GroupScheduler(_opt({"lr": 1.0}), 100, kind="step", step_every=0, step_rate=0.5)
    assert e.step_every == 1 and e.lr_at(2, 1.0, 0.0) == pytest.approx(0.25)


def test_multistep_sorts_milestones_and_floors():
    s = GroupScheduler(_opt({"lr": 1.0}), 100, kind="multistep", milestones=[45, 30], step_rate=0.1)
    assert s.milestones == [30, 45]
    assert [s.lr_at(t, 1.0, 0.0) for t in (29, 30, 44, 45, 99)] == pytest.approx([1.0, 0.1, 0.1, 0.01, 0.01])
    assert s.lr_at(99, 1.0, 0.05) == pytest.approx(0.05)
    assert GroupScheduler(_opt({"lr": 1.0}), 10, kind="multistep").lr_at(9, 1.0, 0.0) == pytest.approx(1.0)


def test_none_is_constant_after_warmup():
    s = GroupScheduler(_opt({"lr": 0.3}), 10, kind="none", warmup_steps=2, min_lr=0.0)
    assert [s.lr_at(t, 0.3, 0.0) for t in (0, 1, 2, 50)] == pytest.approx([0.1, 0.2, 0.3, 0.3])


def test_state_dict_round_trip_sets_the_lr():
    opt = _opt({"lr": 1.0})
    s = GroupScheduler(opt, 10, kind="cosine")
    s.step(5)
    sd = s.state_dict()
    assert sd == {"last_step": 5}
    opt2 = _opt({"lr": 1.0})
    s2 = GroupScheduler(opt2, 10, kind="cosine")
    assert s2.last_step == 0
    s2.load_state_dict(sd)
    assert s2.last_step == 5 and opt2.param_groups[0]["lr"] == pytest.approx(0.5)
    # initial_lr is kept, so a second construction on the same optimizer does not compound
    s3 = GroupScheduler(opt, 10, kind="cosine")
    assert opt.param_groups[0]["initial_lr"] == 1.0 and opt.param_groups[0]["lr"] == pytest.approx(1.0)
    assert s3.last_step == 0


def test_defaults_are_cosine_and_a_tenfold_decay_every_step():
    s = GroupScheduler(_opt({"lr": 1.0}), 10)
    assert s.kind == "cosine" and s.lr_at(5, 1.0, 0.0) == pytest.approx(0.5)
    d = GroupScheduler(_opt({"lr": 1.0}), 10, kind="step")
    assert [d.lr_at(t, 1.0, 0.0) for t in (0, 1, 2)] == pytest.approx([1.0, 0.1, 0.01])


def test_decay_after_warmup_counts_from_step_zero():
    # the warm-up covers steps [0, warmup); at step == warmup the decay rule already applies
    s = GroupScheduler(_opt({"lr": 1.0}), 100, kind="step", warmup_steps=10, step_every=5, step_rate=0.5)
    assert s.lr_at(9, 1.0, 0.0) == pytest.approx(10 / 11)
    assert s.lr_at(10, 1.0, 0.0) == pytest.approx(0.25)
    m = GroupScheduler(_opt({"lr": 1.0}), 100, kind="multistep", warmup_steps=4, milestones=[2])
    assert m.lr_at(4, 1.0, 0.0) == pytest.approx(0.1)


def test_lr_scale_multiplies_the_schedule_and_curve_lists_what_step_sets():
    """A group's ``lr_scale`` (timm's layer decay) multiplies the scheduled value, floor included."""
    opt = _opt({"lr": 1.0, "lr_scale": 0.25, "min_lr": 0.2}, {"lr": 0.5})
    s = GroupScheduler(opt, 10, kind="cosine", warmup_steps=2, min_lr=0.1)
    want = [[0.25 * _expected_cosine(k, 1.0, 0.2, 10, 2) for k in range(12)],
            [_expected_cosine(k, 0.5, 0.1, 10, 2) for k in range(12)]]
    curve = s.curve(12)
    assert [len(c) for c in curve] == [12, 12]
    for got, ref in zip(curve, want):
        assert got == pytest.approx(ref, abs=1e-12)
    for k in range(12):
        s.step(k)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([want[0][k], want[1][k]], abs=1e-12)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25 * 0.2)  # the floor is scaled too
