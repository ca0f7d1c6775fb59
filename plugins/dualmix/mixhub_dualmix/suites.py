"""The ``dualmix-split-digits`` proxy benchmarks (spec section 8)."""

from __future__ import annotations

from typing import Any

from mixhub import Arm, Suite

DIGITS_NORM = {"da_mean": [0.19, 0.19, 0.19], "da_std": [0.31, 0.31, 0.31]}
#: DA for digits: RandomResizedCrop(0.6-1.0) + brightness/contrast jitter; no flip, no grayscale.
DIGITS_DA = {
    "da_crop_scale": [0.6, 1.0],
    "da_hflip": False,
    "da_jitter": [0.4, 0.4, 0.0, 0.0],
    "da_jitter_p": 0.8,
    "da_grayscale_p": 0.0,
    **DIGITS_NORM,
}


def base_config(memory_size: int) -> dict[str, Any]:
    return {
        "data": {"name": "split-digits", "image_size": 16, "options": {"replicas": 3}},
        "model": {"name": "smallcnn", "kwargs": {"widths": [8, 16, 32]}},
        "train": {
            "lr": 0.1,
            "sched": "none",
            "weight_decay": 0.0,
            "amp": False,
            "checkpoint": False,
            "plots": False,
        },
        "optimizer": {"name": "momentum", "momentum": 0.0},
        "continual": {"batch_size": 10, "retrieve_size": 10, "memory_size": memory_size},
    }


def _dm(parts: list[str], **extra: Any) -> dict[str, Any]:
    return {"plugins": ["dualmix"], "dualmix": {"parts": parts, **DIGITS_DA, **extra}}


def arms(with_bounds: bool) -> list[Arm]:
    out = [
        Arm("ER", {"plugins": ["replay"]}, "experience replay (Mai et al.)"),
        Arm("ER+DA", _dm(["A", "B"]), "ER with augmented memory copies (part B)"),
        Arm("ER+DA+EnMix", _dm(["A", "B", "C"]), "ER+DA with EnMix (part C)"),
        Arm("ER+DA+AdpMix", _dm(["A", "B", "D"]), "ER+DA with AdpMix (part D)"),
        Arm("ER+DualMix", _dm(["A", "B", "C", "D"]), "the full method"),
    ]
    if with_bounds:
        out += [
            Arm("fine-tune", {"plugins": []}, "lower bound: no replay"),
            Arm(
                "iid-offline",
                {"plugins": [], "continual": {"protocol": "iid", "iid_epochs": 1}},
                "upper bound: one shuffled pass over all tasks",
            ),
            Arm(
                "ER+DualMix(kappa=0.5)",
                _dm(["A", "B", "C", "D"], kappa=0.5),
                "diagnostic, not the paper's setting: kappa below the observed norm ratio opens the AdpMix gate",
            ),
        ]
    return out


METRICS = [
    "test.avg_acc",
    "test.avg_forgetting",
    "test.er_no",
    "test.er_on",
    "test.dualmix/gate_open_frac",
    "test.dualmix/norm_ratio_pair_mean",
    "test.dualmix/norm_ratio_group",
]
QUICK = {"data": {"options": {"replicas": 1}, "image_size": 8}, "model": {"kwargs": {"widths": [4, 8, 8]}}}
NOTES = (
    "AA and AF in [0, 1] (paper's definitions: forgetting over T-1 tasks). er_no/er_on: the shares of the "
    "final task's errors on new/old classes that went to old/new classes. The AdpMix gate opens only when the "
    "new/old classifier-row norm ratio exceeds kappa; read test.dualmix/gate_open_frac beside every AdpMix number."
)


def suites() -> list[Suite]:
    main = [
        Suite(
            name=f"dualmix-split-digits{'' if m == 50 else '-m' + str(m)}",
            description=f"ER vs DualMix ablations on split-digits (5 tasks x 2 classes, one pass, 3 replicas), memory {m}, 10 paired seeds",
            base=base_config(m),
            arms=arms(with_bounds=m == 50),
            baseline="ER",
            metrics=METRICS,
            higher_is_better={"test.avg_acc": True, "test.avg_forgetting": False},
            seeds=10,
            quick_seeds=3,
            quick=QUICK,
            plots=["bars", "accuracy_matrix"],
            comparisons=[("ER+DA", "ER+DA+EnMix"), ("ER+DA", "ER+DA+AdpMix"), ("ER+DA", "ER+DualMix")]
            + ([("ER+DualMix", "ER+DualMix(kappa=0.5)")] if m == 50 else []),
            notes=NOTES,
        )
        for m in (50, 100)
    ]
    return main
