"""The baseline suites shipped with the core: ERM vs mixup vs CutMix, and ERM vs mixup in regression."""

from __future__ import annotations

from .suite import Arm, Suite


def core_suites() -> list[Suite]:
    digits = Suite(
        name="digits-cls",
        description="ERM vs mixup vs CutMix on bundled digits (32x32) with the core's small BN CNN.",
        base={
            "data": {"name": "digits"},
            "model": {"name": "smallcnn"},
            "train": {"epochs": 15, "batch_size": 64, "lr": 2e-3, "weight_decay": 0.05, "warmup_epochs": 1},
        },
        arms=[
            Arm("erm", {}, "plain cross-entropy"),
            Arm("mixup", {"plugins": ["mixup"], "mixup": {"mode": "mixup", "alpha": 1.0}}, "mixup, alpha 1"),
            Arm("cutmix", {"plugins": ["mixup"], "mixup": {"mode": "cutmix", "alpha": 1.0}}, "CutMix, alpha 1"),
        ],
        baseline="erm",
        metrics=["test.acc", "test.nll", "test.ece", "test.ece_ts"],
        seeds=3,
        # 16 px, a narrower CNN, two epochs at a higher lr without warm-up: every arm reaches
        # about 90% or more (chance: 10%) in seconds
        quick={"data": {"image_size": 16}, "model": {"kwargs": {"widths": [16, 32, 64]}}, "train": {"epochs": 2, "warmup_epochs": 0, "lr": 5e-3}},
        plots=["bars", "curves", "reliability"],
    )
    tanh = Suite(
        name="tanh-reg",
        description="ERM vs mixup (uniform in-batch partners) on the generated monotone tanh regression set, MLP 5-128-128-1.",
        base={
            "data": {"name": "synthetic-regression", "options": {"kind": "tanh"}, "val_frac": 0.1, "test_frac": 0.2},
            "model": {"name": "mlp"},
            "optimizer": {"name": "adam"},
            "train": {"epochs": 60, "batch_size": 16, "lr": 1e-2, "sched": "none", "select": "rmse"},
        },
        arms=[
            Arm("erm", {}, "plain MSE"),
            Arm("mixup", {"plugins": ["mixup"], "mixup": {"alpha": 2.0}}, "mixup, alpha 2, one lam per batch"),
        ],
        baseline="erm",
        metrics=["test.rmse", "test.mae"],
        seeds=3,
        quick={"train": {"epochs": 2}},
        plots=["bars", "curves"],
    )
    return [digits, tanh]
