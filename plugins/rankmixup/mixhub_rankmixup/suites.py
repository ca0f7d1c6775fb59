"""RankMixup's proxy benchmarks: CE vs mixup vs RankMixup (MRL, M-NDCG), judged on calibration."""

from __future__ import annotations

from typing import Any

from mixhub import Arm, Suite

__all__ = ["suites", "calib_suite", "digits_suite", "ARMS", "BN_ABLATIONS"]

#: Every arm clips the gradient norm at 2 (the official trainer does so for every method).
ARMS = [
    Arm("ce", {"plugins": []}, "cross-entropy"),
    Arm(
        "mixup",
        {"plugins": ["mixup"], "mixup": {"mode": "mixup", "alpha": 2.0}},
        "mixup, alpha 2, soft-label CE",
    ),
    Arm(
        "rankmixup-mrl",
        {
            "plugins": ["rankmixup"],
            "rankmixup": {"variant": "mrl", "margin": 2.0, "num_mixup": 1, "alpha": 2.0},
        },
        "CE + 0.1 x MRL (margin 2, one copy, alpha 2)",
    ),
    Arm(
        "rankmixup-mndcg",
        {"plugins": ["rankmixup"], "rankmixup": {"variant": "mndcg", "num_mixup": 3, "alpha": 2.0}},
        "CE + 0.1 x (1 - M-NDCG) (three copies, alpha 2)",
    ),
]

#: Where BatchNorm running statistics come from (only matters for BN models such as smallcnn).
BN_ABLATIONS = [
    Arm(
        "mrl-joint-forward",
        {"plugins": ["rankmixup"], "rankmixup": {"variant": "mrl", "separate_forward": False}},
        "MRL with one forward call on [x; x~] (shared BatchNorm statistics)",
    ),
    Arm(
        "mrl-raw-bn-stats",
        {"plugins": ["rankmixup"], "rankmixup": {"variant": "mrl", "mixed_bn_update": False}},
        "MRL, two calls, but the mixed call does not update BatchNorm running statistics",
    ),
]

METRICS = ["test.acc", "test.ece", "test.adaece", "test.nll", "test.brier", "test.ece_ts"]
SGD: dict[str, Any] = {"name": "momentum", "momentum": 0.9}  # classical momentum, no Nesterov (official)


def calib_suite() -> Suite:
    base = {
        # make_classification(6000 x 40, 10 classes, 5% flipped labels); 3000 train / 500 val / 2500 test
        "data": {"name": "noisy-synthetic", "test_frac": 5 / 12, "val_frac": 1 / 12},
        "model": {"name": "mlp", "kwargs": {"hidden": [512, 512]}},
        "train": {
            "epochs": 60,
            "batch_size": 128,
            "lr": 0.1,
            "weight_decay": 5e-4,
            "sched": "step",
            "step_decay_epochs": 30,
            "step_decay_rate": 0.1,
            "clip_grad_norm": 2.0,
            "checkpoint": False,  # the final-epoch model is evaluated
        },
        "optimizer": SGD,
    }
    return Suite(
        name="rankmixup-calib",
        description=(
            "Calibration on a noisy generated task (make_classification, 10 classes, 5% flipped labels) "
            "where a 512-512 MLP trained with CE is over-confident: CE vs mixup vs RankMixup (MRL, M-NDCG)."
        ),
        base=base,
        arms=list(ARMS),
        baseline="ce",
        metrics=METRICS,
        seeds=3,
        quick_seeds=1,
        quick={"train": {"epochs": 8, "step_decay_epochs": 6}},
        plots=["reliability", "bars"],
        comparisons=[("mixup", "rankmixup-mrl")],
        notes=(
            "Acceptance (spec): ECE(MRL) < ECE(CE) and < ECE(mixup), accuracy(MRL) at most 1 point below CE. "
            "M-NDCG has no pass criterion (the spec's prototype saw no ECE gain from it on this proxy). "
            "Deviations from the spec's proxy: the core `mlp` has no BatchNorm (LeakyReLU 0.1), and the core step "
            "schedule decays once, at epoch 30, instead of at [30, 45]. `*_ts`: after temperature scaling fitted "
            "on the 500 validation samples."
        ),
    )


def digits_suite() -> Suite:
    base = {
        "data": {
            "name": "digits",
            "image_size": 16,
        },  # 16x16 and a narrow CNN keep the suite near 10 CPU-minutes
        "model": {"name": "smallcnn", "kwargs": {"widths": [16, 32, 64]}},
        "train": {
            "epochs": 15,
            "batch_size": 64,
            "lr": 0.05,
            "weight_decay": 5e-4,
            "sched": "step",
            "step_decay_epochs": 10,
            "step_decay_rate": 0.1,
            "clip_grad_norm": 2.0,
        },
        "optimizer": SGD,
    }
    return Suite(
        name="rankmixup-digits",
        description=(
            "Smoke suite on bundled digits with the small BatchNorm CNN (best-validation-accuracy checkpoint, "
            "as the official recipe): wiring, shapes, and mixup's under-confidence."
        ),
        base=base,
        arms=[*ARMS, *BN_ABLATIONS],
        baseline="ce",
        metrics=METRICS,
        seeds=3,
        quick_seeds=1,
        quick={"train": {"epochs": 2, "max_steps_per_epoch": 4}},
        plots=["reliability", "bars"],
        comparisons=[("mixup", "rankmixup-mrl")],
        notes=(
            "Digits is nearly solved by every arm (about 98-99% accuracy), so it cannot rank calibration methods; "
            "use it for wiring. The last two arms ablate where BatchNorm running statistics come from: with the "
            "official two train-mode calls, the mixed call also updates them, so evaluation uses a blend of raw "
            "and mixed batch statistics. When validation is 100% correct the fitted temperature degenerates "
            "(T -> 0), which inflates some `ece_ts` cells."
        ),
    )


def suites() -> list[Suite]:
    return [calib_suite(), digits_suite()]
