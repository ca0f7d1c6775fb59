"""Bench suite ``adamp``: AdamW vs AdamP and SGD vs SGDP on digits with the core's BN CNN.

Besides accuracy it measures the paper's mechanism: the growth of the weight norms of the
scale-invariant tensors (the ones the projection test accepts at step 1, found the same way in
every arm) and the effective step size ``lr_t / ||w_t||^2``. A small in-process tracker
plugin (``adampnorms``) records both per epoch in every arm; ``plot_norms`` draws them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from mixhub import Arm, PluginSpec, State, Suite, hookimpl

from .functional import projection

TRACKER = "adampnorms"


class NormTracker:
    """In-process plugin: norms of the tensors found scale-invariant at step 1."""

    PLUGIN = PluginSpec(
        name=TRACKER,
        task_kinds=("classification", "regression"),
        description="bench helper of mixhub-adamp: weight norms of scale-invariant tensors",
    )

    def __init__(self) -> None:
        self.init: dict[str, torch.Tensor] = {}
        self.invariant: list[str] = []

    def _named(self, state: State) -> dict[str, torch.nn.Parameter]:
        assert state.model is not None
        return {n: p for n, p in state.model.named_parameters() if p.dim() > 1}

    @hookimpl
    def mixhub_configure_model(self, model: torch.nn.Module, state: State) -> None:
        self.init = {n: p.detach().clone() for n, p in model.named_parameters() if p.dim() > 1}

    @hookimpl
    def mixhub_after_step(self, state: State) -> None:
        if state.step != 1:
            return
        # The projection test of AdamP/SGDP on the first gradient and the initial weights.
        for name, p in self._named(state).items():
            if p.grad is None:
                continue
            _, _, kind = projection(self.init[name], p.grad, torch.zeros_like(p), 0.1, 0.1, 1e-8)
            if kind != "none":
                self.invariant.append(name)

    @hookimpl
    def mixhub_metrics(self, stage: str, state: State) -> dict[str, float] | None:
        if stage != "train" or not self.invariant or state.optimizer is None:
            return None
        named = self._named(state)
        lr = {id(p): g["lr"] for g in state.optimizer.param_groups for p in g["params"]}
        ratios, steps = [], []
        for name in self.invariant:
            p = named[name]
            norm = float(p.detach().norm())
            ratios.append(norm / max(float(self.init[name].norm()), 1e-12))
            steps.append(lr.get(id(p), float("nan")) / max(norm**2, 1e-12))
        return {
            f"{TRACKER}/norm_ratio": sum(ratios) / len(ratios),
            f"{TRACKER}/eff_step": sum(steps) / len(steps),
            f"{TRACKER}/eff_lr_gain": sum(1.0 / r**2 for r in ratios) / len(ratios),
            f"{TRACKER}/invariant_tensors": float(len(self.invariant)),
        }


def run_cell(config: dict[str, Any], out: Path) -> dict[str, float]:
    """One (arm, seed) cell: train with the norm tracker; summary metrics plus final norms."""
    from mixhub.bench.runner import flatten_summary
    from mixhub.trainer import train

    run_dir = out / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    config = dict(config)
    config["plugins"] = [*config.get("plugins", []), TRACKER]
    result = train(config, extra_plugins={TRACKER: NormTracker()}, out=run_dir, quiet=True)
    metrics = flatten_summary(result.summary)
    records = _train_records(run_dir)
    if records:
        last = records[-1]
        for key, short in (
            ("norm_ratio", "norm.ratio"),
            ("eff_lr_gain", "norm.eff_lr_gain"),
            ("eff_step", "norm.eff_step"),
        ):
            if f"{TRACKER}/{key}" in last:
                metrics[short] = float(last[f"{TRACKER}/{key}"])
        first = next((r for r in records if "adamp/channel_frac" in r), None)
        if first is not None:
            metrics["proj.channel_frac_epoch1"] = float(first["adamp/channel_frac"])
    return metrics


def _train_records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in recs if r.get("split") == "train"]


def plot_norms(results: dict[str, Any], out: Path) -> list[Path]:
    """Per-epoch mean over seeds of ||w_t||/||w_0||, (||w_0||/||w_t||)^2 and the projected share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (f"{TRACKER}/norm_ratio", "||w_t|| / ||w_0|| (scale-invariant tensors)", False),
        (f"{TRACKER}/eff_lr_gain", "(||w_0|| / ||w_t||)^2: effective-step factor from norm growth", False),
        ("adamp/channel_frac", "share of >=2-D tensors projected channel-wise", False),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    arms = sorted({c["arm"] for c in results["cells"]}, key=[c["arm"] for c in results["cells"]].index)
    series: dict[str, dict[str, list[float]]] = {}
    for arm in arms:
        curves: dict[str, list[list[float]]] = {}
        for cell in (c for c in results["cells"] if c["arm"] == arm):
            recs = _train_records(out / "cells" / arm / f"seed{cell['seed']}" / "run")
            for key, _, _ in panels:
                vals = [r[key] for r in recs if key in r]
                if vals:
                    curves.setdefault(key, []).append(vals)
        for key, cs in curves.items():
            n = min(len(c) for c in cs)
            mean = [sum(c[i] for c in cs) / len(cs) for i in range(n)]
            series.setdefault(arm, {})[key] = mean
    for ax, (key, title, log) in zip(axes[0], panels):
        for arm in arms:
            ys = series.get(arm, {}).get(key)
            if ys:
                ax.plot(range(1, len(ys) + 1), ys, label=arm, linestyle="--" if "sgd" in arm else "-")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "adamp_norms.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    (out / "adamp_norms.json").write_text(json.dumps(series, indent=1))
    return [path]


def adamp_suites() -> list[Suite]:
    base = {
        "data": {"name": "digits"},
        # The core's BN CNN at half width and 15 epochs (spec: full width, 30 epochs) to fit a
        # 2-core CPU budget of about 15 CPU-minutes for 5 arms x 5 seeds.
        "model": {"name": "smallcnn", "kwargs": {"widths": [16, 32, 64]}},
        "train": {"epochs": 15, "batch_size": 64, "sched": "cosine", "amp": False},
    }
    adam = {"train": {"lr": 1e-3, "weight_decay": 1e-2}}
    sgd = {"train": {"lr": 0.1, "weight_decay": 1e-5}, "optimizer": {"momentum": 0.9}}
    arms = [
        Arm(
            "adamw",
            {**adam, "optimizer": {"name": "adamw"}},
            "torch AdamW, lr 1e-3, wd 1e-2 (no decay on 1-D/bias)",
        ),
        Arm(
            "adamp",
            {**adam, "plugins": ["adamp"], "optimizer": {"name": "adamp"}},
            "AdamP, same lr/wd, official defaults (delta 0.1, wd_ratio 0.1, nesterov off), impl auto",
        ),
        Arm(
            "sgd",
            {"train": sgd["train"], "optimizer": {"name": "sgd", "momentum": 0.9}},
            "SGD, lr 0.1, momentum 0.9, nesterov, coupled wd 1e-5",
        ),
        Arm(
            "sgdp",
            {
                "train": sgd["train"],
                "plugins": ["adamp"],
                "optimizer": {"name": "sgdp", "momentum": 0.9},
                "adamp": {"nesterov": True},
            },
            "SGDP, README settings: lr 0.1, momentum 0.9, nesterov, wd 1e-5",
        ),
        Arm(
            "sgdp-nonesterov",
            {
                "train": sgd["train"],
                "plugins": ["adamp"],
                "optimizer": {"name": "sgdp", "momentum": 0.9},
                "adamp": {"nesterov": False},
            },
            "SGDP without nesterov (official buffer aliasing, buffer_alias=True)",
        ),
    ]
    return [
        Suite(
            name="adamp",
            description=(
                "AdamW vs AdamP and SGD vs SGDP on bundled digits (32x32) with the core's small BN CNN "
                "(every conv feeds a BatchNorm, so its weights are scale-invariant per channel). Accuracy, and "
                "the paper's mechanism: the norm growth ||w_T||/||w_0|| and the effective step lr/||w||^2 of the "
                "tensors the projection test accepts at step 1."
            ),
            base=base,
            arms=arms,
            baseline="adamw",
            metrics=["test.acc", "test.nll", "norm.ratio", "norm.eff_lr_gain"],
            higher_is_better={"norm.ratio": False, "norm.eff_lr_gain": True},
            comparisons=[("sgd", "sgdp"), ("sgd", "sgdp-nonesterov")],
            seeds=5,
            quick_seeds=1,
            quick={"train": {"epochs": 2, "max_steps_per_epoch": 3}},
            run=run_cell,
            plots=["bars"],
            plot=plot_norms,
            notes=(
                "Paired differences are against AdamW for every arm, plus SGD vs SGDP (comparisons). "
                "norm.ratio is the final-epoch mean of ||w_T||/||w_0|| over the scale-invariant tensors and "
                "norm.eff_lr_gain the mean of (||w_0||/||w_T||)^2, the factor by which norm growth has scaled "
                "their effective step lr/||w||^2 (1 = no slowdown; the paper's mechanism keeps it higher). Hyperparameters are "
                "the spec's fixed settings; nothing was tuned, and never on the test split."
            ),
        )
    ]


__all__ = ["NormTracker", "adamp_suites", "plot_norms", "run_cell"]
