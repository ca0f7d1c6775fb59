"""Aggregate cells into ``results.json``, ``REPORT.md`` and plots (honest: every seed, paired differences).

Per-arm values are mean ± SD over seeds; paired differences (arm − baseline on the same seeds)
are mean ± SE with a two-sided paired t-test at the 5% level: significant when
``|mean / SE| > t_{0.975, n-1}``, Student's t quantile for ``n`` paired seeds (``scipy.stats.t``).
"""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch
from scipy import stats

from .suite import Suite

__all__ = ["aggregate", "paired_difference", "paired_t_test", "t_cdf", "t_quantile", "write_report"]

#: Two-sided level of the paired t-test that marks a difference as significant.
ALPHA = 0.05


def _mean_std(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return m, sd


def paired_difference(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
    """Mean of ``b[s] - a[s]`` over seeds present in both, its standard error, and the count."""
    seeds = sorted(set(a) & set(b))
    diffs = [b[s] - a[s] for s in seeds]
    m, sd = _mean_std(diffs)
    se = sd / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    return m, se, len(diffs)


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t with ``df`` degrees of freedom (``scipy.stats.t.cdf``)."""
    if df <= 0:
        raise ValueError(f"t distribution: df must be positive, got {df}")
    return float(stats.t.cdf(t, df))


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t (``scipy.stats.t.ppf``): ``t_cdf(t_quantile(p, df), df) == p``."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t quantile: p must lie in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"t distribution: df must be positive, got {df}")
    return float(stats.t.ppf(p, df))


def paired_t_test(mean: float, se: float, n: int, alpha: float = ALPHA) -> tuple[float | None, float | None, bool]:
    """``(t, critical value, significant)`` of a two-sided paired t-test over ``n`` seeds.

    ``t = mean / SE`` with ``n - 1`` degrees of freedom; significant when ``|t|`` exceeds
    ``t_{1 - alpha/2, n-1}``. Fewer than two seeds: no test (``None, None, False``). A zero SE
    with a non-zero mean (every seed moved by the same amount) counts as significant.
    """
    if n < 2 or math.isnan(mean) or math.isnan(se):
        return None, None, False
    crit = t_quantile(1.0 - alpha / 2.0, n - 1)
    if se == 0.0:
        return (math.copysign(math.inf, mean) if mean else 0.0), crit, mean != 0.0
    t = mean / se
    return t, crit, abs(t) > crit


def aggregate(suite: Suite, results: dict[str, Any]) -> dict[str, Any]:
    per: dict[str, dict[str, dict[int, float]]] = {}
    times: dict[str, list[float]] = {}
    for cell in results["cells"]:
        arm = cell["arm"]
        times.setdefault(arm, []).append(cell["time_s"])
        for k, v in cell["metrics"].items():
            per.setdefault(arm, {}).setdefault(k, {})[cell["seed"]] = v
    table = {}
    for arm in (a.name for a in suite.arms):
        table[arm] = {m: _mean_std(list(per.get(arm, {}).get(m, {}).values())) for m in suite.metrics}
    pairs = [(suite.baseline, a.name) for a in suite.arms if a.name != suite.baseline] + list(suite.comparisons)
    diffs = {}
    for base, arm in pairs:
        diffs[f"{arm} - {base}"] = {m: paired_difference(per.get(base, {}).get(m, {}), per.get(arm, {}).get(m, {})) for m in suite.metrics}
    return {"table": table, "diffs": diffs, "times": {a: _mean_std(t) for a, t in times.items()}, "per_seed": per}


PERCENT_METRICS = {"acc", "ece", "adaece", "ece_ts", "adaece_ts", "avg_acc", "avg_forgetting", "forgetting", "error"}


def _is_pct(metric: str) -> bool:
    return metric.rsplit(".", 1)[-1] in PERCENT_METRICS or metric.endswith("acc")


def _fmt(m: float, s: float, metric: str) -> str:
    if math.isnan(m):
        return "n/a"
    if _is_pct(metric):
        return f"{100 * m:.2f} ± {100 * s:.2f}"
    return f"{m:.4f} ± {s:.4f}"


def _head(metric: str, diff: bool = False) -> str:
    """Column title with its unit: percent metrics in %, their differences in percentage points."""
    if _is_pct(metric):
        return f"{metric} ({'pp' if diff else '%'})"
    return metric


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def thread_info() -> str:
    import os

    env = ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ)
    return f"{torch.get_num_threads()} torch threads" + (f" ({env})" if env else " (OMP_NUM_THREADS unset)") + f", {os.cpu_count()} logical CPUs"


def _diff_cell(d: float, se: float, k: int, metric: str, suite: Suite) -> str:
    if k == 0 or math.isnan(d):
        return "n/a"
    scale = 100 if _is_pct(metric) else 1
    if math.isnan(se):
        return f"{scale * d:+.3f} (n={k}, no test)"
    _, _, significant = paired_t_test(d, se, k)
    mark = ""
    if significant:
        mark = " ✓" if (d > 0) == suite.better_high(metric) else " ✗"
    return f"{scale * d:+.3f} ± {scale * se:.3f}{mark}"


def write_report(suite: Suite, results: dict[str, Any], out: Path, command: str = "", quick: bool = False) -> Path:
    agg = aggregate(suite, results)
    (out / "results.json").write_text(json.dumps({**results, "aggregate": {k: v for k, v in agg.items() if k != "per_seed"}}, indent=1, default=str))
    lines = [f"# Bench `{suite.name}`{' (quick)' if quick else ''}", ""]
    code = results.get("code") or {}
    commit = code.get("git")
    lines += [
        f"Command: `{command or 'mixhub bench ' + suite.name}`",
        "",
        f"Code: {'git commit `' + commit + '`' if commit else 'not a git checkout'}"
        + (f" with uncommitted changes (diff hash `{code.get('dirty')}`)" if code.get("dirty") else "")
        + f"; CPU: {cpu_model()}; threads: {thread_info()}.",
        "",
    ]
    lines += [suite.description, ""]
    n = results["seeds"]
    lines += [f"Seeds: {n} (paired across arms). Provider: `{suite.provider}`.", ""]
    lines += ["Per arm: mean ± SD over seeds. Percent metrics (acc, ECE, error) in %, others in their own units.", ""]
    head = "| arm | " + " | ".join(_head(m) for m in suite.metrics) + " | wall time / cell (s) |"
    lines += [head, "|" + "---|" * (len(suite.metrics) + 2)]
    for arm in suite.arms:
        row = agg["table"][arm.name]
        t = agg["times"].get(arm.name, (float("nan"), 0))
        lines.append(f"| {arm.name} | " + " | ".join(_fmt(row[m][0], row[m][1], m) for m in suite.metrics) + f" | {t[0]:.1f} |")
    lines += [
        "",
        "Paired differences (arm − baseline on the same seeds): mean ± SE over seeds; percent metrics in "
        "percentage points (pp). Higher is better for accuracy-like metrics, lower for the rest.",
        "",
    ]
    lines += ["| comparison | " + " | ".join(_head(m, diff=True) for m in suite.metrics) + " |", "|" + "---|" * (len(suite.metrics) + 1)]
    for name, row in agg["diffs"].items():
        lines.append(f"| {name} | " + " | ".join(_diff_cell(row[m][0], row[m][1], row[m][2], m, suite) for m in suite.metrics) + " |")
    footer = (
        f"✓ / ✗: significantly better / worse by a two-sided paired t-test at the 5% level (|mean / SE| > t_0.975,{n - 1} = "
        f"{t_quantile(0.975, n - 1):.3f}, Student's t at n − 1 degrees of freedom for n paired seeds); unmarked: not significant."
        if n >= 2 else "One seed: the differences have no SE and no significance test (run two or more seeds for a paired t-test)."
    )
    lines += ["", footer, ""]
    if results.get("rerun"):
        lines += ["Cells run again because their stored key differed: " + "; ".join(results["rerun"]), ""]
    lines += _failed_lines(results.get("failed") or [])
    lines += ["Arms:", ""] + [f"- `{a.name}`: {a.description or a.overrides}" for a in suite.arms] + [""]
    if suite.notes:
        lines += ["Notes: " + suite.notes, ""]
    lines += [
        f"Platform: {platform.machine()}, "
        f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU only'}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, {_versions()}; {time.strftime('%Y-%m-%d')}.",
        "",
    ]
    plots = _plots(suite, results, agg, out)
    if plots:
        lines += ["Plots: " + ", ".join(f"`{p.name}`" for p in plots), ""]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines))
    return path


def _failed_lines(failed: list[dict[str, Any]]) -> list[str]:
    """The cells that failed twice (their seeds are missing from the paired statistics), each with its error."""
    if not failed:
        return []
    lines = [f"**Failed cells ({len(failed)})**: tried twice, then left out; the paired statistics above use only the seeds both arms finished.", ""]
    for f in failed:
        error = str(f.get("error", "")).strip()
        lines += [f"- `{f['arm']}` seed {f['seed']}:", "", "  ```text", *[f"  {line}" for line in error.splitlines()[-15:]], "  ```", ""]
    return lines


def _versions() -> str:
    from importlib import metadata

    parts = []
    for name in ("mixhub", "timm"):
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(parts)


def _plots(suite: Suite, results: dict[str, Any], agg: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    if "bars" in suite.plots:
        ms = suite.metrics
        fig, axes = plt.subplots(1, len(ms), figsize=(3.2 * len(ms), 3), squeeze=False)
        names = [a.name for a in suite.arms]
        for ax, m in zip(axes[0], ms):
            scale, vals = (100 if _is_pct(m) else 1), [agg["table"][a][m] for a in names]  # REPORT.md's units (percent in %)
            ax.bar(range(len(names)), [scale * v[0] for v in vals], yerr=[scale * v[1] for v in vals], capsize=3)
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
            ax.set_title(_head(m), fontsize=9)
        fig.tight_layout()
        p = out / "bars.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p)
    if "curves" in suite.plots:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        drew = False
        for arm in suite.arms:
            curves = []
            for cell in results["cells"]:
                if cell["arm"] != arm.name:
                    continue
                f = out / "cells" / arm.name / f"seed{cell['seed']}" / "run" / "metrics.jsonl"
                if f.exists():
                    recs = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
                    curves.append([(int(r.get("epoch", 0)), r.get("loss", float("nan"))) for r in recs if r.get("split") == "val"])
            if curves:
                L = min(len(c) for c in curves)
                if L:
                    mean = [sum(c[i][1] for c in curves) / len(curves) for i in range(L)]
                    ax.plot([e for e, _ in curves[0][:L]], mean, label=arm.name)  # at the records' (1-based) epochs
                    drew = True
        if drew:
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))  # whole epochs, from 1
            ax.set_ylabel("val loss (mean over seeds)")
            ax.legend(fontsize=8)
            fig.tight_layout()
            p = out / "curves.png"
            fig.savefig(p, dpi=100)
            written.append(p)
        plt.close(fig)
    if "reliability" in suite.plots:
        written += _reliability(suite, results, out, plt)
    if "accuracy_matrix" in suite.plots:
        written += _accuracy_matrices(suite, results, out, plt)
    if suite.plot is not None:
        written += list(suite.plot(results, out) or [])
    return written


def _reliability(suite: Suite, results: dict[str, Any], out: Path, plt: Any) -> list[Path]:
    arms = [a.name for a in suite.arms]
    fig, axes = plt.subplots(1, len(arms), figsize=(3 * len(arms), 3), squeeze=False)
    drew = False
    for ax, arm in zip(axes[0], arms):
        conf_sum = acc_sum = cnt = None
        for cell in results["cells"]:
            if cell["arm"] != arm:
                continue
            f = out / "cells" / arm / f"seed{cell['seed']}" / "run" / "reliability.json"
            if not f.exists():
                continue
            r = json.loads(f.read_text())
            c = torch.tensor(r["counts"])
            cs, as_ = torch.tensor(r["conf"]) * c, torch.tensor(r["acc"]) * c
            conf_sum = cs if conf_sum is None else conf_sum + cs
            acc_sum = as_ if acc_sum is None else acc_sum + as_
            cnt = c if cnt is None else cnt + c
        if cnt is None or acc_sum is None:
            continue
        drew = True
        n = len(cnt)
        acc = acc_sum / cnt.clamp_min(1)
        centers = (torch.arange(n) + 0.5) / n
        keep = cnt > 0
        ax.bar(centers[keep], acc[keep], width=1 / n, edgecolor="k", alpha=0.7)
        ax.plot([0, 1], [0, 1], "k--")
        ax.set_title(arm, fontsize=9)
        ax.set_xlabel("confidence")
    axes[0][0].set_ylabel("accuracy")
    p = out / "reliability.png"
    if drew:
        fig.tight_layout()
        fig.savefig(p, dpi=100)
    plt.close(fig)
    return [p] if drew else []


def _accuracy_matrices(suite: Suite, results: dict[str, Any], out: Path, plt: Any) -> list[Path]:
    """Continual suites: each arm's accuracy matrix a[i, j] (after task i, on task j), mean over seeds."""
    mats: dict[str, list[torch.Tensor]] = {}
    for cell in results["cells"]:
        f = out / "cells" / cell["arm"] / f"seed{cell['seed']}" / "run" / "summary.json"
        if f.exists():
            m = json.loads(f.read_text()).get("continual", {}).get("acc_matrix")
            if m:
                mats.setdefault(cell["arm"], []).append(torch.tensor(m, dtype=torch.float64))
    arms = [a.name for a in suite.arms if a.name in mats]
    if not arms:
        return []
    fig, axes = plt.subplots(1, len(arms), figsize=(2.8 * len(arms), 2.8), squeeze=False)
    for ax, arm in zip(axes[0], arms):
        mean = torch.stack(mats[arm]).mean(0)
        ax.imshow(mean.numpy(), vmin=0, vmax=1, cmap="viridis")
        for i in range(mean.shape[0]):
            for j in range(mean.shape[1]):
                if j <= i:
                    ax.text(j, i, f"{100 * mean[i, j]:.0f}", ha="center", va="center", fontsize=7, color="w")
        ax.set_title(arm, fontsize=8)
        ax.set_xlabel("task evaluated", fontsize=7)
        ax.set_ylabel("after task", fontsize=7)
    fig.tight_layout()
    p = out / "accuracy_matrix.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return [p]
