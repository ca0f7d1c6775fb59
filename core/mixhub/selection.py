"""Which validation metrics keep a best checkpoint, and when a run validates inside an epoch.

A run validates at the end of every ``train.eval_every`` epochs and, with
``train.eval_every_steps: N``, also after the training batches ``n`` of an epoch (counted from 1
at the epoch's start) with ``(n - train.eval_steps_offset) % N == 0`` (Python's modulo). The
official C-Mixup DTI recipe (``src/algorithm.py``, ``train``) validates when
``(idx - 1) % (iteration // 30) == 0`` for the 0-based batch ``idx``: ``eval_every_steps =
steps_per_epoch // 30`` with ``eval_steps_offset: 2``.

Every validation offers its metrics to each criterion: ``train.select`` keeps ``best.pt`` (the
weights of the final test), each of ``train.best_metrics`` keeps ``best-<metric>.pt``. A metric is
named as in the validation record (``rmse``) or as trackers show it (``val/rmse``), optionally
with ``:max`` or ``:min``; without it the direction is guessed from the name. Only a strictly
better, finite value replaces a kept best.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["Criterion", "criteria", "higher_is_better", "step_eval_due", "improved"]

#: Metric names (or name endings) for which a higher value is better.
_HIGH = ("acc", "r", "r2", "top2", "top5", "auc", "avg_acc")


@dataclass(frozen=True)
class Criterion:
    """One kept best: ``metric`` (as in the validation record), ``high`` (higher is better), the
    checkpoint ``name`` (``best`` or ``best-<metric>``, without ``.pt``) and the config field that
    asked for it (``source``, for error messages)."""

    metric: str
    high: bool
    name: str
    source: str = "train.select"


def higher_is_better(metric: str) -> bool:
    """The direction guessed from a metric's name: accuracies and correlations go up, losses and
    errors go down."""
    return metric in _HIGH or metric.endswith("acc") or metric.startswith("acc_")


def _parse(spec: str, field: str) -> tuple[str, bool | None]:
    name, _, mode = spec.partition(":")
    if mode not in ("", "max", "min"):
        raise ConfigError(f"{field}: {spec!r}: the direction after ':' must be max or min")
    prefix, slash, rest = name.partition("/")
    if slash:
        if prefix != "val":
            raise ConfigError(f"{field}: {spec!r}: a checkpoint is kept on validation metrics (val/<name>)")
        name = rest
    if not name:
        raise ConfigError(f"{field}: {spec!r} names no metric")
    return name, (None if not mode else mode == "max")


def criteria(select: str, select_mode: str, best_metrics: Sequence[str], task_kind: str) -> list[Criterion]:
    """The kept bests of a run: ``train.select`` first (``best``), then ``train.best_metrics``.

    ``select: auto`` picks the first of ``best_metrics``, else accuracy (classification) or
    rmse (regression); ``select_mode`` (``auto``, ``max``, ``min``) sets its direction.
    """
    extra = [_parse(s, "train.best_metrics") for s in best_metrics]
    source = "train.select"
    if select == "auto":
        if extra:
            (metric, high), source = extra[0], "train.best_metrics"
        else:
            metric, high = ("rmse", False) if task_kind == "regression" else ("acc", True)
    else:
        metric, high = _parse(select, "train.select")
    if select_mode != "auto":
        high = select_mode == "max"
    out = [Criterion(metric, higher_is_better(metric) if high is None else high, "best", source)]
    for name, want_high in extra:
        direction = higher_is_better(name) if want_high is None else want_high
        if name == metric:
            if direction != out[0].high:
                raise ConfigError(f"train.best_metrics: {name} is train.select with the other direction")
            continue
        if any(c.metric == name for c in out):
            raise ConfigError(f"train.best_metrics: {name} is listed twice")
        out.append(Criterion(name, direction, "best-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name), "train.best_metrics"))
    return out


def step_eval_due(batches_done: int, every: int | None, offset: int = 0) -> bool:
    """Whether a run validates after its ``batches_done``-th training batch of the epoch."""
    return every is not None and (batches_done - offset) % every == 0


def improved(
    criteria_: Sequence[Criterion], kept: Mapping[str, Mapping[str, Any]], metrics: Mapping[str, float]
) -> list[Criterion]:
    """The criteria whose metric in ``metrics`` beats the kept value (``kept[metric]["value"]``;
    none kept yet: any finite value). A metric missing from ``metrics`` is a ``ConfigError``."""
    out = []
    for c in criteria_:
        if c.metric not in metrics:
            raise ConfigError(f"{c.source}: validation metric {c.metric!r} does not exist (have: {', '.join(sorted(metrics))})")
        value = float(metrics[c.metric])
        best = kept.get(c.metric, {}).get("value")
        if not math.isfinite(value):
            continue
        if best is None or (value > best if c.high else value < best):
            out.append(c)
    return out
