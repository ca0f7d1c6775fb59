"""Proxy benchmark suites of C-Mixup (``mixhub bench cmixup-tanh`` ...).

* ``cmixup-tanh`` (acceptance): monotone synthetic regression, where label-similar pairs are
  also input-similar; ERM vs mixup (uniform partner from the training set, official
  ``mixtype=random``) vs C-Mixup (input, sigma 0.05 and 0.2; manifold sigma 0.05).
* ``cmixup-sin``: the periodic target, where label-similar pairs are far apart in x; the spec
  expects no gain, and it is reported as such.
* ``cmixup-rotdigits``: rotation-angle regression on digits with a colour cue that is reversed
  in ``test_ood``; the official RCF-MNIST recipe (sigma 0.2, 2B pool, manifold), scaled down.

Setup of the synthetic suites (spec section 8): MLP 5-128-128-1 with LeakyReLU(0.1), Adam
lr 1e-2, no weight decay, no schedule, batch 16, drop_last, 60 epochs, alpha 2, test score of
the best-validation-RMSE model, 70/10/20 split permuted by seed.
"""

from __future__ import annotations

from typing import Any

from mixhub import Arm, Suite


def _synthetic_base(kind: str) -> dict[str, Any]:
    return {
        "data": {
            "name": "synthetic-regression",
            "options": {"kind": kind, "n": 1000, "dims": 5, "noise": 0.05, "data_seed": 0},
            "val_frac": 0.1,
            "test_frac": 0.2,
        },
        "model": {"name": "mlp", "kwargs": {"hidden": [128, 128]}},
        "optimizer": {"name": "adam"},
        "train": {
            "epochs": 60,
            "batch_size": 16,
            "lr": 1e-2,
            "weight_decay": 0.0,
            "sched": "none",
            "drop_last": True,
            "shuffle": "epoch",
            "checkpoint": True,
            "plots": False,
            "device": "cpu",
        },
    }


def _cm(**opts: Any) -> dict[str, Any]:
    return {"plugins": ["cmixup"], "cmixup": {"alpha": 2.0, **opts}}


def _synthetic_arms() -> list[Arm]:
    return [
        Arm("erm", {}, "no mixing"),
        Arm(
            "mixup",
            _cm(kernel="uniform"),
            "uniform partner from the training set, one lam per batch (official mixtype=random)",
        ),
        Arm("cmixup-0.05", _cm(bandwidth=0.05), "C-Mixup, input mixing, sigma 0.05"),
        Arm("cmixup-0.2", _cm(bandwidth=0.2), "C-Mixup, input mixing, sigma 0.2"),
        Arm(
            "mixup-manifold",
            _cm(kernel="uniform", mix_on="manifold"),
            "uniform partner, features mixed after the first block",
        ),
        Arm(
            "cmixup-manifold-0.05",
            _cm(bandwidth=0.05, mix_on="manifold"),
            "C-Mixup, features mixed after the first block, sigma 0.05",
        ),
    ]


QUICK_SYNTHETIC = {"train": {"epochs": 12}}


def _rotdigits_base() -> dict[str, Any]:
    return {
        "data": {
            "name": "rotdigits",
            "image_size": 16,
            "options": {"color": True, "spurious_ratio": 0.9, "copies": 1, "data_seed": 0},
            "val_frac": 0.15,
            "test_frac": 0.2,
        },
        "model": {"name": "smallcnn", "kwargs": {"widths": [16, 32, 64]}},
        "optimizer": {"name": "adam"},
        "train": {
            "epochs": 20,
            "batch_size": 64,
            "lr": 2e-3,
            "weight_decay": 0.0,
            "sched": "none",
            "drop_last": True,
            "shuffle": "once",
            "checkpoint": True,
            "plots": False,
            "device": "cpu",
        },
    }


def cmixup_suites() -> list[Suite]:
    tanh = Suite(
        name="cmixup-tanh",
        description=(
            "C-Mixup on y = tanh(8(x0 - 0.5)) + 0.2 x1 + 0.05 eps (x ~ U[0,1]^5, N = 1000): label-similar pairs are "
            "input-similar, so C-Mixup should keep mixup's regularisation without its label noise."
        ),
        base=_synthetic_base("tanh"),
        arms=_synthetic_arms(),
        baseline="erm",
        metrics=["test.rmse"],
        seeds=3,
        quick_seeds=1,
        quick=QUICK_SYNTHETIC,
        comparisons=[("mixup", "cmixup-0.05"), ("mixup-manifold", "cmixup-manifold-0.05")],
        notes="Acceptance: RMSE(cmixup-0.05) < 0.5 x RMSE(mixup) and <= 1.15 x RMSE(erm), mean over seeds.",
    )
    sin = Suite(
        name="cmixup-sin",
        description=(
            "The known limitation: y = sin(4 pi x0) + 0.2 x1 + 0.05 eps. Label-similar pairs lie far apart in x, "
            "so C-Mixup is not expected to beat mixup here."
        ),
        base=_synthetic_base("sin"),
        arms=_synthetic_arms(),
        baseline="erm",
        metrics=["test.rmse"],
        seeds=3,
        quick_seeds=1,
        quick=QUICK_SYNTHETIC,
        comparisons=[("mixup", "cmixup-0.05"), ("mixup-manifold", "cmixup-manifold-0.05")],
        notes="Expected: no gain from C-Mixup over mixup (spec section 8, known limitations).",
    )
    rcf = {"bandwidth": 0.2, "pool": "batch2B", "mix_on": "manifold"}
    rot = Suite(
        name="cmixup-rotdigits",
        description=(
            "RCF-MNIST-like: regress angle/360 of rotated digits painted with a colour cue that follows the angle for "
            "90% of training images and is reversed in test_ood. Official RCF-MNIST recipe (sigma 0.2, 2B pool, "
            "manifold), scaled down (16x16 images, small CNN, 20 epochs)."
        ),
        base=_rotdigits_base(),
        arms=[
            Arm("erm", {}, "no mixing"),
            Arm("mixup", _cm(kernel="uniform"), "uniform partner from the training set, input mixing"),
            Arm("cmixup-input", _cm(bandwidth=0.2), "C-Mixup, whole-set pool, input mixing, sigma 0.2"),
            Arm(
                "cmixup-rcf",
                _cm(**rcf),
                "official RCF-MNIST recipe: 2B pool, manifold (last stage), sigma 0.2",
            ),
        ],
        baseline="erm",
        metrics=["test.rmse", "test_ood.rmse"],
        seeds=3,
        quick_seeds=1,
        quick={"train": {"epochs": 3}},
        comparisons=[("mixup", "cmixup-input")],
        notes="Scaled-down proxy; report ID and OOD RMSE whatever they show.",
    )
    return [tanh, sin, rot]
