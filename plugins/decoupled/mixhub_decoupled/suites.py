"""The ``decoupled`` proxy benchmark: mixup vs mixup+DM and CutMix vs CutMix+DM in low data.

Hard mixed samples need few samples per class, so the suite keeps 20% of the digits training
split (stratified, about 23 images per class) and trains the core's small CNN with SGD. The
baseline arms activate ``decoupled`` with ``eta=0``, which is exactly the mixup soft CE (the
core's default loss, see the tests), so that they also report ``decoupled/mixed_top2``.
"""

from __future__ import annotations

from mixhub import Arm, Suite

#: The sampler/mixer: mixhub's baseline ``mixup`` plugin, one lam per batch (official DM setting).
_MIXUP = {"mode": "mixup", "alpha": 1.0, "lam_mode": "batch"}
_CUTMIX = {"mode": "cutmix", "alpha": 0.2, "lam_mode": "batch"}

BASE: dict = {
    "plugins": ["mixup", "decoupled"],
    "data": {"name": "digits", "image_size": 32, "train_frac": 0.2},
    "model": {"name": "smallcnn"},
    "optimizer": {"name": "momentum", "momentum": 0.9},
    "train": {
        "epochs": 50,
        "batch_size": 32,
        "lr": 0.1,
        "weight_decay": 5e-4,
        "sched": "cosine",
        "plots": False,
        "eval_every": 5,
    },
}

METRICS = ["test.acc", "test.ece", "test.decoupled/mixed_top2", "test.nll"]


def decoupled_suite() -> Suite:
    return Suite(
        name="decoupled",
        description=(
            "Decoupled Mixup on low-data digits (20% of the training split, small CNN, SGD, cosine): "
            "mixup a=1 vs mixup+DM (eta 0.1, both, p 1) and CutMix a=0.2 vs CutMix+DM (eta 0.1, less, p 0.5), "
            "paired by seed; accuracy, calibration and the mechanism metric mixed top-2."
        ),
        base=BASE,
        arms=[
            Arm(
                "mixup",
                {"mixup": _MIXUP, "decoupled": {"eta": 0.0}},
                "mixup alpha=1, plain mixup CE (DM with eta=0)",
            ),
            Arm(
                "mixup+dm",
                {"mixup": _MIXUP, "decoupled": {"eta": 0.1, "mode": "both", "lam_pow": 1.0}},
                "mixup + DM eta=0.1 both p=1",
            ),
            Arm(
                "cutmix",
                {"mixup": _CUTMIX, "decoupled": {"eta": 0.0}},
                "CutMix alpha=0.2, plain mixup CE (DM with eta=0)",
            ),
            Arm(
                "cutmix+dm",
                {"mixup": _CUTMIX, "decoupled": {"eta": 0.1, "mode": "less", "lam_pow": 0.5}},
                "CutMix + DM eta=0.1 less p=0.5 (the CIFAR-100 R18 CutMix recipe)",
            ),
        ],
        baseline="mixup",
        comparisons=[("mixup", "mixup+dm"), ("cutmix", "cutmix+dm")],
        metrics=METRICS,
        higher_is_better={
            "test.decoupled/mixed_top2": True,
            "test.acc": True,
            "test.ece": False,
            "test.nll": False,
        },
        seeds=5,
        quick_seeds=1,
        quick={"train": {"epochs": 2}, "decoupled": {"top2_mixes": 200}},
        plots=["bars"],
        notes=(
            "Baselines run the decoupled plugin with eta=0 (identical to the mixup soft CE) so that they report "
            "decoupled/mixed_top2. mixed_top2: share of 1000 fixed test mixes (pairs of different classes, "
            "lam ~ U(0.3, 0.7), the training mixer) whose two classes are the model's top-2."
        ),
    )


def suites() -> list[Suite]:
    return [decoupled_suite()]
