"""Decoupled Mixup's official options: mixes of more than two classes, lam_scale_mode="exp" with
lam_thr, and class_weight, each against an independent computation of the official behaviour
(openmixup ``soft_mix_cross_entropy`` on a dense k-hot label, ``ClsMixupHead.loss`` /
``lambda_adjust`` for the eta list)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mixhub_decoupled import (
    decoupled_mixup_loss,
    decoupled_multimix_loss,
    eta_weights,
    lambda_adjust,
    multi_eta_weights,
)
from pydantic import ValidationError

from mixhub import ConfigError, MixPlan, PluginSpec, hookimpl
from mixhub.trainer import Trainer

Z = torch.tensor(
    [
        [2.0, 0.5, -1.0, 1.0, 0.0, 0.3],
        [0.1, 1.5, 0.3, -0.2, 0.4, -0.7],
        [-0.5, 0.2, 2.5, 0.0, 0.1, 0.9],
        [1.0, 1.0, 0.0, 0.8, -0.3, 0.2],
        [0.4, -1.2, 0.6, 0.3, 1.7, -0.1],
    ]
)


# ----------------------------------------------------------------------------- independent references
def head_lambda_adjust(lam, mode, thr, idx):
    """The head's rescaling, transcribed branch by branch."""
    if lam >= thr:
        return 1
    if mode == "pow":
        return (thr ** (-abs(idx))) * (lam ** abs(idx))
    b = (abs(idx) ** (-thr * 2)) * 1
    k = 1 / (1 - b)
    return ((abs(idx) ** (lam - thr * 2)) * (abs(idx) ** lam) - b) * k


def head_eta_list(lam, eta, mode, thr, scale_mode, lam_thr, idx):
    below = lam < thr
    if mode == "less":
        w = [lam, 0] if below else [0, 1 - lam]
    elif mode == "more":
        w = [lam, 0] if not below else [0, 1 - lam]
    else:
        w = [lam, 1 - lam]
    for i in range(2):
        if w[i] > 0:
            w[i] = eta * head_lambda_adjust(w[i], scale_mode, lam_thr, idx) if scale_mode != "none" else eta
    return w


def official_k_mix(logits, label, eta_list, class_weight=None, eps=1e-3):
    """The official loss on a dense [N, C] k-hot label, row by row with explicit index lists.

    Rows with fewer active classes than the most get the soft CE only; the eta list pairs with
    the active values of the first mixed row in class-index order; for each value, a row keeps
    the class holding it plus every inactive class. The decoupled term of a kept class is
    weighted by that class's weight (what the official [C]-weight product means).
    """
    logits = logits.double()
    n, c = logits.shape
    w = torch.ones(c, dtype=torch.float64) if class_weight is None else torch.tensor(class_weight).double()
    counts = (label > eps).sum(1)
    mixed = [r for r in range(n) if int(counts[r]) >= int(counts.max())]
    total = 0.0
    for r in range(n):
        total += -(label[r].double() * torch.log_softmax(logits[r], -1) * w).sum()
    first = label[mixed[0]]
    values = [float(first[j]) for j in range(c) if float(first[j]) > eps]
    if len(set(values)) == len(values) and len(values) > 1:
        assert len(eta_list) == len(values)
        for i, value in enumerate(values):
            for r in mixed:
                keep = [j for j in range(c) if float(label[r, j]) == value or float(label[r, j]) <= eps]
                logp = torch.log_softmax(logits[r, keep], -1)
                for pos, j in enumerate(keep):
                    if float(label[r, j]) > 0:
                        total += eta_list[i] * -(logp[pos] * w[j])
    return total / n


def dense_label(ys, lams, c):
    label = torch.zeros(ys.shape[0], c)
    for j, lam in enumerate(lams):
        label += torch.tensor(lam, dtype=torch.float32) * F.one_hot(ys[:, j], c).float()
    return label


# ----------------------------------------------------------------------------- lam_scale_mode / lam_thr
@pytest.mark.parametrize("mode", ["pow", "exp"])
@pytest.mark.parametrize("thr", [1.0, 0.6, 0.3])
@pytest.mark.parametrize("idx", [0.5, 2.0, 3.0])
def test_lambda_adjust_matches_the_head(mode, thr, idx):
    grid = np.linspace(0.0, 1.0, 41)
    for lam in grid:
        assert lambda_adjust(float(lam), mode, thr, idx) == pytest.approx(head_lambda_adjust(lam, mode, thr, idx), rel=1e-9, abs=1e-12)
    tensor = lambda_adjust(torch.tensor(grid), mode, thr, idx)
    assert torch.allclose(tensor, torch.tensor([head_lambda_adjust(v, mode, thr, idx) for v in grid], dtype=torch.float64))


@pytest.mark.parametrize("mode", ["both", "less", "more"])
@pytest.mark.parametrize("scale", [("exp", 0.8, 2.0), ("pow", 0.6, 0.5), ("none", 1.0, 1.0)])
@pytest.mark.parametrize("lam", [0.15, 0.55, 0.7])
def test_eta_weights_and_loss_follow_the_head_with_exp_and_lam_thr(mode, scale, lam):
    scale_mode, lam_thr, idx = scale
    expect = head_eta_list(lam, 0.2, mode, 0.5, scale_mode, lam_thr, idx)
    got = eta_weights(lam, 0.2, mode, 0.5, idx, lam_scale_mode=scale_mode, lam_thr=lam_thr)
    assert got == pytest.approx(tuple(expect), abs=1e-12)
    y_a, y_b = torch.tensor([0, 1, 2, 3, 4]), torch.tensor([3, 2, 2, 0, 1])  # first mixed row ascending
    loss = decoupled_mixup_loss(Z, y_a, y_b, lam, 0.2, mode, 0.5, idx, lam_scale_mode=scale_mode, lam_thr=lam_thr)
    label = dense_label(torch.stack([y_a, y_b], 1), [lam, 1 - lam], 6)
    assert float(loss) == pytest.approx(float(official_k_mix(Z, label, expect)), abs=1e-5)


def test_exp_mode_differs_from_pow():
    a = eta_weights(0.3, 1.0, "both", 0.5, 2.0, lam_scale_mode="exp", lam_thr=1.0)
    b = eta_weights(0.3, 1.0, "both", 0.5, 2.0, lam_scale_mode="pow", lam_thr=1.0)
    assert abs(a[0] - b[0]) > 0.01


def test_exp_with_base_one_is_rejected():
    with pytest.raises(ValueError, match="lam_pow"):
        eta_weights(0.3, lam_pow=1.0, lam_scale_mode="exp")
    with pytest.raises(ValueError, match="lam_thr"):
        eta_weights(0.3, lam_thr=0.0)


# ----------------------------------------------------------------------------- class_weight
CW = [1.0, 2.0, 0.5, 1.5, 0.25, 3.0]


@pytest.mark.parametrize("lam", [0.3, 0.8])
def test_class_weight_two_sources_matches_the_official_weighted_loss(lam):
    y_a, y_b = torch.tensor([4, 1, 2, 3, 0]), torch.tensor([3, 2, 2, 0, 1])  # first mixed row descending
    loss = decoupled_mixup_loss(Z, y_a, y_b, lam, 0.1, class_weight=CW)
    label = dense_label(torch.stack([y_a, y_b], 1), [lam, 1 - lam], 6)
    assert float(loss) == pytest.approx(float(official_k_mix(Z, label, [0.1 * lam, 0.1 * (1 - lam)], CW)), abs=1e-5)
    # the soft CE part alone is the official soft_cross_entropy with class weights
    no_reg = decoupled_mixup_loss(Z, y_a, y_b, lam, 0.0, class_weight=CW)
    soft = -(label * F.log_softmax(Z, -1) * torch.tensor(CW)).sum(1).mean()
    assert float(no_reg) == pytest.approx(float(soft), abs=1e-6)
    assert abs(float(loss) - float(decoupled_mixup_loss(Z, y_a, y_b, lam, 0.1))) > 1e-3


def test_class_weight_with_official_smoothing_weights_every_kept_class():
    y_a, y_b = torch.tensor([0, 1, 2, 3, 4]), torch.tensor([3, 2, 2, 0, 1])
    s = 0.1
    got = decoupled_mixup_loss(Z, y_a, y_b, 0.7, 0.1, label_smoothing=s, class_weight=CW)
    label = (1 - s) * dense_label(torch.stack([y_a, y_b], 1), [0.7, 0.3], 6) + s / 6
    expect = official_k_mix(Z, label, [0.1 * 0.7, 0.1 * 0.3], CW, eps=1e-3 + s / 6)
    assert float(got) == pytest.approx(float(expect), abs=1e-5)


def test_class_weight_of_the_wrong_length_is_rejected():
    with pytest.raises(ValueError, match="one weight per class"):
        decoupled_mixup_loss(Z, torch.zeros(5, dtype=torch.long), torch.ones(5, dtype=torch.long), 0.3, class_weight=[1.0])


# ----------------------------------------------------------------------------- k-source mixes
YS3 = torch.tensor([[0, 3, 5], [2, 1, 4], [2, 2, 0], [5, 4, 1], [1, 0, 3]])  # row 2 repeats a class


@pytest.mark.parametrize("lams", [[0.5, 0.3, 0.2], [0.2, 0.45, 0.35], [0.1, 0.1, 0.8]])
@pytest.mark.parametrize("cw", [None, CW])
def test_three_source_mix_matches_the_official_k_hot_loss(lams, cw):
    ys = YS3
    label = dense_label(ys, lams, 6)
    eta = multi_eta_weights(lams, 0.3, 1.0)
    assert eta == pytest.approx([0.3 * v for v in lams])
    got = decoupled_multimix_loss(Z, ys, lams, 0.3, class_weight=cw)
    if len({float(np.float32(v)) for v in lams}) < 3:  # equal weights: the official "distinct values" test fails
        assert float(got) == pytest.approx(float(decoupled_multimix_loss(Z, ys, lams, 0.0, class_weight=cw)), abs=1e-6)
    # the official loss receives the eta list in source order and pairs it with the classes of the
    # first mixed row in class-index order
    assert float(got) == pytest.approx(float(official_k_mix(Z, label, eta, cw)), abs=1e-5)


def test_three_source_official_order_uses_the_first_mixed_row():
    ys = YS3[[2, 3, 0, 1, 4]]  # the first row repeats a class: row 1 ([5, 4, 1]) is the first mixed row
    lams = [0.5, 0.3, 0.2]
    label = dense_label(ys, lams, 6)
    eta = [0.05, 0.1, 0.2]
    got = decoupled_multimix_loss(Z, ys, lams, eta_weights=eta)
    assert float(got) == pytest.approx(float(official_k_mix(Z, label, eta)), abs=1e-5)
    # row 1 holds classes [5, 4, 1]: source 2 (class 1) gets eta[0], source 0 (class 5) eta[2]
    moved = decoupled_multimix_loss(Z, ys, lams, eta_weights=[0.2, 0.1, 0.05], official_eta_order=False)
    assert float(moved) == pytest.approx(float(got), abs=1e-6)
    intended = decoupled_multimix_loss(Z, ys, lams, eta_weights=eta, official_eta_order=False)
    assert abs(float(intended) - float(got)) > 1e-4


def test_two_sources_in_the_k_source_form_equal_the_two_source_loss():
    ys = YS3[:, :2]
    for lam in (0.3, 0.5, 0.8, 0.0005):
        got = decoupled_multimix_loss(Z, ys, [lam, 1 - lam], 0.1, 2.0, lam_scale_mode="exp", lam_thr=0.9)
        expect = decoupled_mixup_loss(Z, ys[:, 0], ys[:, 1], lam, 0.1, lam_pow=2.0, lam_scale_mode="exp", lam_thr=0.9)
        assert float(got) == pytest.approx(float(expect), abs=1e-6)


def test_three_source_skip_rules():
    base = float(decoupled_multimix_loss(Z, YS3, [0.5, 0.4995, 0.0005], 0.0))
    _, parts = decoupled_multimix_loss(Z, YS3, [0.5, 0.4995, 0.0005], 0.3, return_parts=True)
    assert bool(parts["skipped"]) and float(parts["reg"].abs().sum()) == 0.0  # an inactive source
    loss = decoupled_multimix_loss(Z, YS3, [0.5, 0.4995, 0.0005], 0.3, official_skip=False)
    assert float(loss) > base
    same = torch.tensor([[1, 1, 2]] * 5)
    _, parts = decoupled_multimix_loss(Z, same, [0.5, 0.3, 0.2], 0.3, return_parts=True)
    assert bool(parts["skipped"])  # no row has three distinct classes


def test_three_source_regulariser_removes_only_the_other_mixed_classes():
    ys = torch.tensor([[0, 3, 5]])
    z = Z[:1]
    _, parts = decoupled_multimix_loss(z, ys, [0.5, 0.3, 0.2], eta_weights=[1.0, 0.0, 0.0], official_eta_order=False, return_parts=True)
    keep = [0, 1, 2, 4]  # class 0 and every class outside the mix
    assert float(parts["reg"][0]) == pytest.approx(float(-torch.log_softmax(z[0, keep], -1)[0]), abs=1e-6)


def test_k_source_input_errors():
    with pytest.raises(ValueError, match="sum to 1"):
        decoupled_multimix_loss(Z, YS3, [0.5, 0.3, 0.3])
    with pytest.raises(ValueError, match="shape"):
        decoupled_multimix_loss(Z, YS3[:, :2], [0.5, 0.3, 0.2])
    with pytest.raises(ValueError, match="one weight per source"):
        decoupled_multimix_loss(Z, YS3, [0.5, 0.3, 0.2], eta_weights=[0.1, 0.1])


# ----------------------------------------------------------------------------- the plugin
BASE: dict[str, Any] = {
    "seed": 3,
    "plugins": ["threemix", "decoupled"],
    "data": {"name": "digits", "image_size": 16, "train_frac": 0.3},
    "model": {"name": "smallcnn", "kwargs": {"widths": [8, 16]}},
    "train": {"epochs": 1, "batch_size": 16, "lr": 0.05, "max_steps_per_epoch": 2, "plots": False, "checkpoint": False},
    "optimizer": {"name": "momentum"},
}


class ThreeMix:
    """A third-party sampler mixing three samples with fixed weights (the core mixes N sources)."""

    PLUGIN = PluginSpec(name="threemix", slots=("sample_pairs",), task_kinds=("classification",))

    def __init__(self, source_lams: list[float] | None = None) -> None:
        self.seen: list[dict[str, Any]] = []
        self.source_lams = source_lams

    @hookimpl
    def mixhub_sample_pairs(self, batch, state):
        b = batch.size
        perms = [torch.arange(b), torch.randperm(b, generator=state.generator), torch.randperm(b, generator=state.generator)]
        sources = [(p, torch.full((b,), w)) for p, w in zip(perms, (0.5, 0.3, 0.2))]
        return MixPlan.pairs(perms[1], 0.5, sources=sources, source_lams=self.source_lams)

    @hookimpl
    def mixhub_aux_losses(self, outputs, batch, plan, state):
        ys = torch.stack([batch.targets[i] for i, _ in plan.sources], 1)
        self.seen.append({"logits": outputs["logits"].detach().clone(), "ys": ys})


@pytest.mark.parametrize("source_lams", [None, [0.5, 0.3, 0.2]])
def test_plugin_three_source_plan_uses_the_k_source_loss(source_lams):
    """Weights read from the plan's tensors, or given on the host by the sampler (no device read)."""
    sampler = ThreeMix(source_lams)
    options = {"eta": 0.2, "lam_scale_mode": "exp", "lam_pow": 2.0, "lam_thr": 0.8, "class_weight": [1.0 + 0.1 * c for c in range(10)]}
    trainer = Trainer({**BASE, "decoupled": options}, extra_plugins={"threemix": sampler}, write=False)
    out = trainer.train_step(next(iter(trainer.loader)))
    seen = sampler.seen[-1]
    expect = decoupled_multimix_loss(
        seen["logits"], seen["ys"], [0.5, 0.3, 0.2], 0.2, 2.0, lam_scale_mode="exp", lam_thr=0.8, class_weight=options["class_weight"]
    )
    assert float(out["loss"]) == pytest.approx(float(expect), abs=1e-5)


def test_source_lams_that_disagree_with_the_weights_are_an_error():
    from mixhub import PluginHookError

    trainer = Trainer({**BASE, "train": {**BASE["train"], "check_every": 1}}, extra_plugins={"threemix": ThreeMix([0.5, 0.2, 0.3])}, write=False)
    with pytest.raises(PluginHookError, match=r"sources\[1\] weights differ from MixPlan.source_lams\[1\]=0.2"):
        trainer.train_step(next(iter(trainer.loader)))


def test_plugin_three_sources_reject_less_and_more():
    trainer = Trainer({**BASE, "decoupled": {"mode": "less"}}, extra_plugins={"threemix": ThreeMix()}, write=False)
    with pytest.raises(Exception, match="decoupled.mode") as info:
        trainer.train_step(next(iter(trainer.loader)))
    assert isinstance(info.value, ConfigError) or isinstance(info.value.__cause__, ConfigError)


def test_plugin_option_validation():
    with pytest.raises((ConfigError, ValidationError), match="lam_pow"):
        Trainer({**BASE, "decoupled": {"lam_scale_mode": "exp", "lam_pow": 1.0}}, extra_plugins={"threemix": ThreeMix()}, write=False)
    trainer = Trainer({**BASE, "decoupled": {"class_weight": [1.0, 2.0]}}, extra_plugins={"threemix": ThreeMix()}, write=False)
    with pytest.raises(Exception, match="decoupled.class_weight: 2 weights for 10 classes"):
        trainer.train_step(next(iter(trainer.loader)))


# ----------------------------------------------------------------------------- k-source details
def _dense64(ys, lams, c):
    return sum(lam * F.one_hot(ys[:, j], c).double() for j, lam in enumerate(lams))


def test_multimix_label_smoothing_smooths_the_soft_ce_only():
    lams, s = [0.5, 0.3, 0.2], 0.1
    _, parts = decoupled_multimix_loss(Z, YS3, lams, 0.3, label_smoothing=s, return_parts=True)
    _, plain = decoupled_multimix_loss(Z, YS3, lams, 0.3, return_parts=True)
    target = (1 - s) * dense_label(YS3, lams, 6) + s / 6
    torch.testing.assert_close(parts["ce"], -(target * F.log_softmax(Z, 1)).sum(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(parts["reg"], plain["reg"])
    assert parts["ce"].shape == (5,) and parts["skipped"].dtype == torch.bool and not bool(parts["skipped"])


def test_multimix_defaults_one_row_and_float64():
    lams = [0.5, 0.3, 0.2]
    default = decoupled_multimix_loss(Z, YS3, lams)  # eta 0.1, the official default
    assert float(default) == pytest.approx(float(official_k_mix(Z, dense_label(YS3, lams, 6), multi_eta_weights(lams, 0.1))), abs=1e-5)
    one = decoupled_multimix_loss(Z[:1], YS3[:1], lams, 0.3)
    assert float(one) == pytest.approx(float(official_k_mix(Z[:1], dense_label(YS3[:1], lams, 6), multi_eta_weights(lams, 0.3))), abs=1e-5)
    lams64 = [0.3, 0.45, 0.25]  # not float32 numbers: a float32 lam or weight would show at 1e-8
    got = decoupled_multimix_loss(Z.double(), YS3, lams64, 0.3)
    want = official_k_mix(Z.double(), _dense64(YS3, lams64, 6), multi_eta_weights(lams64, 0.3))
    assert got.dtype == torch.float64 and float(got) == pytest.approx(float(want), rel=1e-12)


def test_multimix_regulariser_on_and_off():
    lams = [0.5, 0.3, 0.2]
    _, off = decoupled_multimix_loss(Z, YS3, lams, 0.0, return_parts=True)
    assert bool(off["skipped"]) and off["skipped"].dtype == torch.bool and float(off["reg"].abs().sum()) == 0.0
    _, ones = decoupled_multimix_loss(Z, YS3, lams, eta_weights=[1.0, 1.0, 1.0], official_eta_order=False, return_parts=True)
    assert float(ones["reg"].abs().sum()) > 0 and not bool(ones["skipped"])
    # lam at the ends of [0, 1] is accepted (the official skip then drops the regulariser)
    _, ends = decoupled_multimix_loss(Z, YS3[:, :2], [1.0, 0.0], 0.3, return_parts=True)
    assert bool(ends["skipped"])


def _message(func, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        func(*args, **kwargs)
    return str(info.value)


def test_multimix_errors_say_what_is_wrong():
    assert _message(decoupled_multimix_loss, Z[0], YS3, [0.5, 0.5]) == "logits must have shape [B, C], got (6,)"
    assert _message(decoupled_multimix_loss, Z, YS3, [0.5, 0.5]) == "ys must have shape [B, k] = [5, 2], got (5, 3)"
    assert _message(decoupled_multimix_loss, Z, YS3[:, :1], [1.0]) == "decoupled_multimix_loss needs at least two sources, got 1"
    assert _message(decoupled_multimix_loss, Z, YS3[:, :2], [1.00005, 0.0]) == "lams must lie in [0, 1] and sum to 1, got [1.00005, 0.0]"
    assert _message(decoupled_multimix_loss, Z, YS3[:, :2], [0.6, 0.6]) == "lams must lie in [0, 1] and sum to 1, got [0.6, 0.6]"
    assert _message(decoupled_multimix_loss, Z, YS3, [0.5, 0.3, 0.2], eta_weights=[0.1]) == (
        "eta_weights must hold one weight per source (3), got 1"
    )


# ----------------------------------------------------------------------------- two-source details
YA, YB = torch.tensor([0, 3, 2, 5, 1]), torch.tensor([4, 1, 2, 0, 3])  # row 2 is not mixed


def test_two_source_parts_default_eta_one_row_and_float64():
    lam = 0.7
    loss, parts = decoupled_mixup_loss(Z, YA, YB, lam, return_parts=True)
    assert float(loss) == pytest.approx(float(decoupled_mixup_loss(Z, YA, YB, lam, 0.1)), abs=0)  # eta 0.1 by default
    assert float(loss) != pytest.approx(float(decoupled_mixup_loss(Z, YA, YB, lam, 1.1)), abs=1e-4)
    assert parts["skipped"].dtype == torch.bool and not bool(parts["skipped"]) and float(parts["reg"][2]) == 0.0
    one = decoupled_mixup_loss(Z[:1], YA[:1], YB[:1], lam)  # row 0 is the first mixed row in both batches
    assert float(one) == pytest.approx(float(parts["ce"][0] + parts["reg"][0]), abs=1e-6)
    # k = 2 mixes are the two-source loss (documented); in float64 the weights stay float64
    lam64 = 0.3
    got = decoupled_mixup_loss(Z.double(), YA, YB, lam64, 0.3)
    want = decoupled_multimix_loss(Z.double(), torch.stack([YA, YB], 1), [lam64, 1 - lam64], 0.3)
    assert got.dtype == torch.float64 and float(got) == pytest.approx(float(want), rel=1e-12)


def test_two_source_skips_and_the_smoothed_skip_rule():
    _, off = decoupled_mixup_loss(Z, YA, YB, 0.7, 0.0, return_parts=True)
    assert bool(off["skipped"]) and off["skipped"].dtype == torch.bool and float(off["reg"].abs().sum()) == 0.0
    _, one = decoupled_mixup_loss(Z, YA, YB, 0.7, 1.0, return_parts=True)
    assert not bool(one["skipped"]) and float(one["reg"].abs().sum()) > 0
    _, same = decoupled_mixup_loss(Z, YA, YA, 0.7, return_parts=True)
    assert bool(same["skipped"])
    # lam = 0.00105: above eps alone, but (1 - s) lam <= eps once the official smoothing (s = 0.1) shifts
    # the label values; the one-hot smoothing target leaves the skip rule alone
    lam = 0.00105
    _, official = decoupled_mixup_loss(Z, YA, YB, lam, label_smoothing=0.1, return_parts=True)
    _, onehot = decoupled_mixup_loss(Z, YA, YB, lam, label_smoothing=0.1, smoothing_target="onehot", return_parts=True)
    assert bool(official["skipped"]) and not bool(onehot["skipped"])


def test_two_source_errors_say_what_is_wrong():
    assert _message(decoupled_mixup_loss, Z[0], YA, YB, 0.7) == "logits must have shape [B, C], got (6,)"
    assert _message(decoupled_mixup_loss, Z, YA, YB[:4], 0.7) == "y_a and y_b must have shape [5], got (5,) and (4,)"
    assert _message(decoupled_mixup_loss, Z, YA[:3], YB, 0.7) == "y_a and y_b must have shape [5], got (3,) and (5,)"


# ----------------------------------------------------------------------------- the official skip rule
@pytest.mark.parametrize(
    "lam, s, ys, reason",
    [
        (0.3, 0.0, "mixed", None),
        (0.0005, 0.0, "mixed", "one-class"),
        (0.9995, 0.0, "mixed", "one-class"),
        (0.5, 0.0, "mixed", "equal"),
        (0.3, 0.0, "same", "no-mixed-rows"),
        (0.0005, 0.0, "same", "one-class"),  # the lam reason comes first
        # smoothing s = 0.1 over 6 classes: label values (1 - s) v + s/6, eps + s/6
        (0.00105, 0.1, "mixed", "one-class"),  # 0.017612 <= 0.017667
        (0.00105, 0.0, "mixed", None),
        (0.03, 0.1, "mixed", None),
        (0.99895, 0.1, "mixed", "one-class"),
        (0.97, 0.1, "mixed", None),
        (0.5, 0.1, "mixed", "equal"),
        (0.3, 0.1, "same", "no-mixed-rows"),
    ],
)
def test_official_skip_reason_follows_the_float32_label_values(lam, s, ys, reason):
    from mixhub_decoupled import official_skip_reason

    y_b = YB if ys == "mixed" else YA
    # independent: the official float32 label values of a two-class row (lam on one class, 1 - lam
    # on another) and its active values above eps + s/C; then whether any row mixes two classes
    onehot = lambda y: F.one_hot(torch.tensor([y]), 6).float()[0]  # noqa: E731
    row = torch.tensor(lam, dtype=torch.float32) * onehot(0) + torch.tensor(1 - lam, dtype=torch.float32) * onehot(1)
    if s > 0:
        row = row * (1 - s) + s / 6
    values = [float(v) for v in row if float(v) > 1e-3 + s / 6]
    want = "one-class" if len(values) < 2 else ("equal" if values[0] == values[1] else None)
    if want is None and not bool((YA != y_b).any()):
        want = "no-mixed-rows"
    assert want == reason
    assert official_skip_reason(lam, YA, y_b, 6, s) == reason


def test_the_skip_rule_is_inclusive_at_eps():
    from mixhub_decoupled import official_skip_reason

    assert official_skip_reason(0.25, YA, YB, 6, eps=0.25) == "one-class"
    assert official_skip_reason(0.75, YA, YB, 6, eps=0.25) == "one-class"
    assert official_skip_reason(0.3, YA, YB, 6, eps=0.25) is None


def test_scale_options_are_checked_with_exact_messages():
    assert _message(multi_eta_weights, [0.5, 0.5], lam_scale_mode="log") == (
        "lam_scale_mode must be one of ('pow', 'exp', 'none'), got 'log'"
    )
    assert _message(multi_eta_weights, [0.5, 0.5], lam_thr=1.5) == "lam_thr must lie in (0, 1], got 1.5"
    for base in (0.0, 1.0, -1.0):
        assert _message(multi_eta_weights, [0.5, 0.5], 0.1, base, lam_scale_mode="exp") == (
            f"lam_scale_mode='exp' needs lam_pow (the base) other than 0 and 1, got {base!r} "
            "(the rescaling divides by 1 - lam_pow**(-2 * lam_thr))"
        )
    assert _message(decoupled_mixup_loss, Z, YA, YB, torch.full((3,), 0.5)) == "lam must be a scalar or have shape [5], got (3,)"


def test_multi_eta_weights_default_and_gated_zero_source():
    assert multi_eta_weights([0.25, 0.75]) == pytest.approx([0.025, 0.075], abs=1e-15)
    # a source of weight 0 gets no regulariser weight, even where lambda_adjust(0) is 1 (power 0)
    assert multi_eta_weights([0.0, 0.4, 0.6], 0.1, 0.0) == [0.0, 0.1, 0.1]
    assert multi_eta_weights([0.0, 1.0], 0.1, 1.0) == [0.0, 0.1]


def test_multimix_targets_follow_the_logits_device_and_skipped_is_there_too():
    z = torch.randn(3, 5, generator=torch.Generator().manual_seed(0)).to("meta")
    ys = torch.tensor([[0, 1, 2], [1, 2, 3], [4, 0, 1]])
    loss, parts = decoupled_multimix_loss(z, ys, [0.2, 0.3, 0.5], official_eta_order=False, return_parts=True)
    assert loss.device.type == "meta" and parts["reg"].device.type == "meta"
    y = torch.tensor([0, 1, 2])
    _, parts = decoupled_mixup_loss(
        z, y, y.flip(0), 0.3, eta=0.0, official_eta_order=False, return_parts=True
    )
    assert parts["skipped"].device.type == "meta"  # not applied: a constant on the logits' device


def test_multimix_without_smoothing_tolerates_a_masked_class():
    """A class no source uses at -inf (masked out): without smoothing its log-probability is
    never weighted, so the loss stays finite."""
    z = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    z[:, 5] = float("-inf")
    ys = torch.tensor([[0, 1, 2], [1, 2, 3], [4, 0, 1]])
    loss = decoupled_multimix_loss(z, ys, [0.2, 0.3, 0.5])
    assert torch.isfinite(loss)
    finite = decoupled_multimix_loss(z[:, :5], ys, [0.2, 0.3, 0.5])
    torch.testing.assert_close(loss, finite)


def test_lambda_adjust_defaults_modes_and_threshold():
    # defaults: mode "pow", thr 1, idx 1: the identity below 1
    assert lambda_adjust(0.5) == 0.5 and lambda_adjust(1.0) == 1.0
    w = torch.tensor([0.25, 0.7, 0.9], dtype=torch.float64)
    got = lambda_adjust(w.float(), "pow", 0.7, 2.0)
    assert got.dtype == torch.float64  # computed in float64 whatever the input
    # at the threshold exactly 1 (0.7**-2 * 0.7**2 is 0.9999999999999999 in floating point)
    assert (0.7**-2.0) * (0.7**2.0) != 1.0
    assert lambda_adjust(w, "pow", 0.7, 2.0).tolist()[1:] == [1.0, 1.0] and lambda_adjust(0.7, "pow", 0.7, 2.0) == 1.0
    assert got.tolist()[0] == pytest.approx((0.25 / 0.7) ** 2.0, rel=1e-7)
    assert torch.equal(lambda_adjust(w, "none", 0.5, 2.0), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^lam_scale_mode must be one of .*, got 'log'$"):
        lambda_adjust(0.5, "log")


def test_class_weights_take_the_logits_dtype_and_device():
    z = torch.randn(4, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y_a, y_b = torch.tensor([0, 1, 2, 3]), torch.tensor([3, 2, 2, 0])
    cw = [0.1, 0.7, 1.3, 0.9, 2.1]  # not float32-exact
    ce = decoupled_mixup_loss(z, y_a, y_b, 0.3, eta=0.0, class_weight=cw, return_parts=True)[1]["ce"]
    logp = torch.log_softmax(z, -1)
    w = torch.tensor(cw, dtype=torch.float64)
    ref = -(0.3 * w[y_a] * logp[torch.arange(4), y_a] + 0.7 * w[y_b] * logp[torch.arange(4), y_b])
    torch.testing.assert_close(ce, ref, rtol=1e-14, atol=0)
    zm = z.float().to("meta")
    assert decoupled_mixup_loss(zm, y_a, y_b, 0.3, official_eta_order=False, class_weight=cw).device.type == "meta"


def test_multimix_skip_rule_inclusive_at_eps_and_empty_batch():
    z = torch.randn(2, 5, generator=torch.Generator().manual_seed(3))
    ys = torch.tensor([[0, 1], [2, 3]])
    _, parts = decoupled_multimix_loss(z, ys, [0.25, 0.75], eps=0.25, return_parts=True)
    assert bool(parts["skipped"]) and float(parts["reg"].abs().sum()) == 0.0
    _, parts = decoupled_multimix_loss(z, ys, [0.25, 0.75], eps=0.2, return_parts=True)
    assert not bool(parts["skipped"])
    empty = torch.zeros(0, 2, dtype=torch.long)
    loss, parts = decoupled_multimix_loss(torch.zeros(0, 5), empty, [0.25, 0.75], return_parts=True)
    assert float(loss) == 0.0 and bool(parts["skipped"])
    zm = z.to("meta")
    _, parts = decoupled_multimix_loss(zm, ys, [0.25, 0.75], eta=0.0, official_eta_order=False, return_parts=True)
    assert parts["skipped"].device.type == "meta"
