"""The run folder: resolved config, metrics (JSON lines and CSV), summary and plots."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RunFolder", "plot_curves", "plot_reliability", "binned_ece", "to_jsonable"]


def to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "numel", lambda: 2)() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunFolder:
    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / "checkpoints").mkdir(exist_ok=True)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def write_config(self, config: dict[str, Any]) -> None:
        if self.enabled:
            (self.path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(to_jsonable(record)) + "\n")

    def records(self) -> list[dict[str, Any]]:
        p = self.path / "metrics.jsonl"
        if not p.is_file():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def truncate_log(self, before_epoch: int) -> None:
        """Keep only records of epochs before ``before_epoch`` (resume)."""
        if not self.enabled:
            return
        kept = [r for r in self.records() if r.get("epoch", -1) < before_epoch]
        with open(self.path / "metrics.jsonl", "w") as fh:
            for r in kept:
                fh.write(json.dumps(r) + "\n")

    def write_csv(self) -> None:
        recs = self.records()
        if not self.enabled or not recs:
            return
        keys: list[str] = []
        for r in recs:
            keys += [k for k in r if k not in keys]
        with open(self.path / "metrics.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            for r in recs:
                w.writerow(r)

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.enabled:
            tmp = self.path / ".summary.json.tmp"
            tmp.write_text(json.dumps(to_jsonable(summary), indent=2))
            tmp.replace(self.path / "summary.json")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(ax: Any, xs: list[Any], ys: list[Any], **kw: Any) -> None:
    """A line with markers, so a curve of one point (a one-epoch run) still shows."""
    ax.plot(xs, ys, marker="o", markersize=4 if len(xs) < 60 else 0, **kw)


def plot_curves(records: list[dict[str, Any]], out: Path, steps: list[dict[str, Any]] | None = None) -> list[Path]:
    """Loss and validation metric curves per epoch, and the learning rate per step; one PNG each.

    ``steps`` are the step records (``steps.jsonl``); ``lr.png`` plots ``lr`` (or each
    ``lr/<group>``) against the optimizer step.
    """
    plt = _plt()
    written = []
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    if train:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        _series(ax, [r["epoch"] for r in train], [r.get("loss", float("nan")) for r in train], label="train loss")
        if val and "loss" in val[0]:
            _series(ax, [r["epoch"] for r in val], [r["loss"] for r in val], label="val loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend()
        fig.tight_layout()
        p = out / "loss.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p)
    if val:
        keys = [k for k in val[-1] if k not in ("epoch", "split", "step", "time_s", "loss") and isinstance(val[-1][k], (int, float))][:6]
        if keys:
            fig, axes = plt.subplots(1, len(keys), figsize=(3 * len(keys), 3), squeeze=False)
            for ax, k in zip(axes[0], keys):
                _series(ax, [r["epoch"] for r in val], [r.get(k, float("nan")) for r in val])
                ax.set_title(f"val {k}")
                ax.set_xlabel("epoch")
            fig.tight_layout()
            p = out / "val_metrics.png"
            fig.savefig(p, dpi=100)
            plt.close(fig)
            written.append(p)
    lr_keys = [] if not steps else sorted({k for r in steps for k in r if k.startswith("lr/")}) or ["lr"]
    if steps and any(k in r for r in steps for k in lr_keys):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for k in lr_keys:
            pts = [(r["step"], r[k]) for r in steps if k in r]
            _series(ax, [x for x, _ in pts], [y for _, y in pts], label=k.removeprefix("lr/"))
        ax.set_xlabel("step")
        ax.set_ylabel("learning rate")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        if len(lr_keys) > 1:
            ax.legend(fontsize=8)
        fig.tight_layout()
        p = out / "lr.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p)
    return written


def binned_ece(conf: Any, acc: Any, counts: Any) -> float:
    """ECE from reliability bins: ``sum_b n_b / n * |acc_b - conf_b|`` (0 for no samples)."""
    n = sum(float(c) for c in counts)
    if n == 0:
        return 0.0
    return sum(float(c) / n * abs(float(a) - float(f)) for f, a, c in zip(conf, acc, counts))


def plot_reliability(conf: Any, acc: Any, counts: Any, out: Path, title: str = "reliability", ece: float | None = None) -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with the bin counts.

    The title carries the ECE (``ece``, else computed from the bins with ``binned_ece``); a
    second panel shows how many samples fall in each bin.
    """
    plt = _plt()
    n = len(conf)
    centers = [(i + 0.5) / n for i in range(n)]
    value = binned_ece(conf, acc, counts) if ece is None else float(ece)
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(4, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    mask = [float(c) > 0 for c in counts]
    ax.bar([c for c, m in zip(centers, mask) if m], [float(a) for a, m in zip(acc, mask) if m], width=1 / n, edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", label="perfect")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"{title} (ECE {100 * value:.2f}%)")
    ax.legend(loc="upper left")
    ax_n.bar(centers, [float(c) for c in counts], width=1 / n, edgecolor="k", color="tab:gray")
    for x, c in zip(centers, counts):
        if float(c) > 0:
            ax_n.annotate(f"{int(c)}", (x, float(c)), ha="center", va="bottom", fontsize=6)
    ax_n.set_xlabel("confidence")
    ax_n.set_ylabel("samples")
    ax_n.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
