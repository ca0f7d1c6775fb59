"""The metrics of online continual learning, from the accuracy matrix and the predictions.

``a[i, j]``: accuracy on task j's test set after training task i, T tasks:

* average accuracy ``A_T = mean_j a[T-1, j]`` over all tasks (unseen ones count);
* average forgetting, ``forgetting: paper`` (DualMix Eq. 15, the default):
  ``F_T = 1/(T-1) sum_{j<T-1} (max_{l<T-1} a[l, j] - a[T-1, j])``; ``forgetting: mai``
  (Mai et al.'s ``experiment/metrics.py``) averages over all T tasks with the max over all rows;
* error shares after task i (``agents/base.py``): er(n,o), the share of misclassified test
  samples of the current task's classes that were predicted as an old class; er(o,n), the share
  of misclassified old-class test samples that were predicted as a current-task class.

The accuracy matrix's plot is ``mixhub.run.plots.plot_accuracy_matrix``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["average_accuracy", "average_forgetting", "error_shares"]


def _rows(matrix: list[list[float]] | Tensor) -> Tensor:
    return torch.as_tensor(matrix, dtype=torch.float64)


def average_accuracy(matrix: list[list[float]] | Tensor, after: int | None = None) -> float:
    """``mean_j a[i, j]`` over all tasks j, after task ``i = after`` (default: the last row)."""
    a = _rows(matrix)
    i = a.shape[0] - 1 if after is None else after
    return float(a[i].mean())


def average_forgetting(
    matrix: list[list[float]] | Tensor, mode: str = "paper", after: int | None = None
) -> float:
    """Average forgetting after task ``i`` (default: the last row; 0-based; needs ``i >= 1``).

    ``paper`` (DualMix Eq. 15): ``1/i sum_{j<i} (max_{l<i} a[l, j] - a[i, j])``.
    ``mai`` (as Mai's ``experiment/metrics.py`` reports it per run): the max runs over all rows so
    far, the current one included, and the mean over all ``i + 1`` seen tasks (the current
    task's term is then usually 0): ``1/(i+1) sum_{j<=i} (max_{l<=i} a[l, j] - a[i, j])``.
    """
    a = _rows(matrix)
    i = a.shape[0] - 1 if after is None else after
    if i < 1:
        return 0.0
    if mode == "paper":
        best = a[:i, :i].max(0).values
        return float((best - a[i, :i]).mean())
    if mode == "mai":
        best = a[: i + 1, : i + 1].max(0).values
        return float((best - a[i, : i + 1]).mean())
    raise ValueError(f"forgetting mode must be 'paper' or 'mai', got {mode!r}")


def error_shares(
    pred: Tensor, targets: Tensor, new_classes: list[int], old_classes: list[int]
) -> dict[str, float | None]:
    """er(n,o) and er(o,n) over test samples of the seen classes (Mai's ``agents/base.py``).

    er(n,o): among misclassified samples of ``new_classes``, the share predicted as an old
    class. er(o,n): among misclassified samples of ``old_classes``, the share predicted as a new
    class. ``None`` where there is no such misclassified sample (e.g. no old classes yet).
    """
    pred, targets = pred.cpu(), targets.cpu()
    new = torch.as_tensor(new_classes, dtype=torch.long)
    old = torch.as_tensor(old_classes, dtype=torch.long)
    wrong = pred != targets
    is_new_y, is_old_y = torch.isin(targets, new), torch.isin(targets, old)
    wn, wo = wrong & is_new_y, wrong & is_old_y
    out: dict[str, float | None] = {"er_no": None, "er_on": None}
    if int(wn.sum()) > 0 and old.numel():
        out["er_no"] = float(torch.isin(pred[wn], old).float().mean())
    if int(wo.sum()) > 0:
        out["er_on"] = float(torch.isin(pred[wo], new).float().mean())
    return out
