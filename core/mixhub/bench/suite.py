"""Benchmark suites: what a proxy benchmark compares, declared as data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Arm", "Suite", "RunFn"]

#: ``run(config_dict, out_dir) -> {metric: value}``: one (arm, seed) cell.
RunFn = Callable[[dict[str, Any], Path], dict[str, float]]


@dataclass
class Arm:
    """One method (or ablation) of a suite: config overrides on top of the suite's base."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass
class Suite:
    """A proxy benchmark.

    Attributes:
        name: suite id (``mixhub bench NAME``).
        description: what it shows, in a sentence or two.
        base: base config (a raw config dict, as in YAML) shared by every arm.
        arms: the arms compared.
        baseline: name of the arm paired differences are taken against.
        metrics: result keys to report (``"test.acc"``, ``"test.ece"``, ``"test_ood.rmse"`` ...).
        higher_is_better: per metric (default: ``acc``-like up, everything else down).
        seeds: seeds of the full run; ``quick_seeds`` of ``--quick``.
        quick: config overrides for ``--quick`` (fewer epochs, smaller data).
        run: custom cell runner; default: train with ``mixhub train`` and read ``summary.json``.
        plots: which plots fit (``"curves"``, ``"reliability"``, ``"accuracy_matrix"``,
            ``"bars"``); a suite may also give ``plot(results, out_dir)``.
        comparisons: extra (baseline, arm) pairs for paired differences (e.g. CutMix vs CutMix+DM).
        notes: honest remarks printed under the table.
        provider: filled in by the harness: the plugin that brought the suite.
    """

    name: str
    description: str
    base: dict[str, Any]
    arms: list[Arm]
    baseline: str
    metrics: list[str]
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    seeds: int = 3
    quick_seeds: int = 1
    quick: dict[str, Any] = field(default_factory=dict)
    run: RunFn | None = None
    plots: list[str] = field(default_factory=lambda: ["bars"])
    plot: Callable[[dict[str, Any], Path], list[Path]] | None = None
    comparisons: list[tuple[str, str]] = field(default_factory=list)
    notes: str = ""
    provider: str = "core"

    def __post_init__(self) -> None:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"suite {self.name!r}: arm names must be unique, got {names}")
        if self.baseline not in names:
            raise ValueError(f"suite {self.name!r}: baseline {self.baseline!r} is not an arm ({names})")
        for a, b in self.comparisons:
            if a not in names or b not in names:
                raise ValueError(f"suite {self.name!r}: comparison ({a!r}, {b!r}) names an unknown arm")

    def better_high(self, metric: str) -> bool:
        if metric in self.higher_is_better:
            return self.higher_is_better[metric]
        leaf = metric.rsplit(".", 1)[-1]
        return leaf in {"acc", "accuracy", "avg_acc", "r", "top2", "mixed_top2"} or leaf.endswith("acc")
