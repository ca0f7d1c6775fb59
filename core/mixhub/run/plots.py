"""What a run draws (PNG files in its folder, matplotlib's Agg backend).

* ``plot_curves``: ``loss.png``, ``val_metrics.png`` and ``lr.png`` of a supervised run;
* ``plot_reliability``: ``reliability.png``, the test split's reliability diagram (``binned_ece``);
* ``plot_accuracy_matrix``: ``accuracy_matrix.png`` of a continual run;
* ``plot_trace``: ``testtime_trace.png`` of a test-time stream evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_curves", "plot_reliability", "binned_ece", "plot_accuracy_matrix", "plot_trace"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(ax: Any, xs: list[Any], ys: list[Any], **kw: Any) -> None:
    """A line with markers, so a curve of one point (a one-epoch run) still shows."""
    ax.plot(xs, ys, marker="o", markersize=4 if len(xs) < 60 else 0, **kw)


def _epoch_axis(ax: Any) -> None:
    """Whole epochs only on an epoch axis (1-based: epoch ``k`` is the ``k``-th epoch)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def plot_curves(
    records: list[dict[str, Any]],
    out: Path,
    steps: list[dict[str, Any]] | None = None,
    schedule: dict[str, list[float]] | None = None,
    steps_per_epoch: int | None = None,
) -> list[Path]:
    """Loss and validation metric curves per epoch, and the learning rate per step; one PNG each.

    Epochs are 1-based on every plot, as on the console and in ``metrics.jsonl``: a record of
    ``"epoch": k`` (the ``k``-th epoch) is drawn at ``k``, with integer ticks. ``lr.png`` draws ``schedule``
    (``{"lr" or "lr/<group>": [lr of optimizer step 1, 2, ...]}``, every step's learning rate) as
    lines and the step records' ``lr`` / ``lr/<group>`` (``steps``) as points, against the steps
    done, with the epochs on a second axis when ``steps_per_epoch`` is given (epoch ``k`` ends at
    ``k * steps_per_epoch``).
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
        _epoch_axis(ax)
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
                _epoch_axis(ax)
            fig.tight_layout()
            p = out / "val_metrics.png"
            fig.savefig(p, dpi=100)
            plt.close(fig)
            written.append(p)
    steps = steps or []
    lr_keys = list(schedule or {}) or sorted({k for r in steps for k in r if k == "lr" or k.startswith("lr/")})
    if lr_keys:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for i, k in enumerate(lr_keys):
            color = f"C{i}"
            label: str | None = k.removeprefix("lr/")
            curve = (schedule or {}).get(k)
            if curve:
                stride = max(1, len(curve) // 2000)  # at most ~2000 points per line
                idx = sorted(set(range(0, len(curve), stride)) | {len(curve) - 1})
                # curve[s] drives optimizer step s + 1: drawn where a step record after that step is
                ax.plot([s + 1 for s in idx], [curve[s] for s in idx], color=color, label=label)
                label = None
            pts = [(r["step"], r[k]) for r in steps if k in r]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], "o", color=color, markersize=3, label=label)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("learning rate")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        if steps_per_epoch:
            top = ax.secondary_xaxis("top", functions=(lambda s: s / steps_per_epoch, lambda e: e * steps_per_epoch))
            _epoch_axis(top)
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
    ax_n.set_ylim(0, 1.3 * max([float(c) for c in counts] + [1.0]))  # room for the count labels
    ax_n.set_xlabel("confidence")
    ax_n.set_ylabel("samples")
    ax_n.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_accuracy_matrix(
    matrix: list[list[float]], path: Path, title: str = "accuracy after each task"
) -> Path:
    """Heat map of ``a[i, j]`` (rows: after task i; columns: test set of task j), in percent."""
    import torch

    plt = _plt()
    a = torch.as_tensor(matrix, dtype=torch.float64).numpy() * 100
    n_rows, n_cols = a.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * n_cols, 0.9 + 0.6 * n_rows))
    im = ax.imshow(a, vmin=0, vmax=100, cmap="viridis")
    for i in range(n_rows):
        for j in range(n_cols):
            ax.text(
                j,
                i,
                f"{a[i, j]:.0f}",
                ha="center",
                va="center",
                color="w" if a[i, j] < 60 else "k",
                fontsize=8,
            )
    ax.set_xticks(range(n_cols), [f"T{j + 1}" for j in range(n_cols)])
    ax.set_yticks(range(n_rows), [f"after T{i + 1}" for i in range(n_rows)])
    ax.set_xlabel("test set of task")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_trace(batch_acc: list[float], batch_domain: list[str], path: Path, title: str) -> Path:
    """The test-time trace: each stream batch's accuracy in stream order, a grey line where the
    domain changes (``testtime_trace.png``)."""
    plt = _plt()

    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot(range(len(batch_acc)), [100 * a for a in batch_acc], lw=0.8)
    for i in range(1, len(batch_domain)):
        if batch_domain[i] != batch_domain[i - 1]:
            ax.axvline(i - 0.5, color="0.7", lw=0.5)
    ax.set_xlabel("batch (stream order)")
    ax.set_ylabel("batch accuracy %")
    ax.set_ylim(-2, 102)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
