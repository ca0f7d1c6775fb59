"""Metrics: accuracy, NLL, calibration (ECE, AdaECE, Brier, temperature scaling), RMSE/MAE.

All functions take logits/probabilities and targets as tensors and return Python floats.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "accuracy",
    "nll",
    "ece",
    "adaptive_ece",
    "brier",
    "reliability_bins",
    "fit_temperature",
    "classification_metrics",
    "regression_metrics",
]


def accuracy(logits: Tensor, targets: Tensor) -> float:
    return float((logits.argmax(1) == targets).float().mean())


def nll(logits: Tensor, targets: Tensor) -> float:
    return float(F.cross_entropy(logits.float(), targets))


def brier(logits: Tensor, targets: Tensor) -> float:
    """Mean over samples of the squared error between the probability vector and the one-hot label."""
    p = logits.float().softmax(1)
    onehot = F.one_hot(targets, p.shape[1]).float()
    return float(((p - onehot) ** 2).sum(1).mean())


def reliability_bins(logits: Tensor, targets: Tensor, n_bins: int = 15) -> tuple[Tensor, Tensor, Tensor]:
    """Equal-width confidence bins ``(lo, hi]``: (mean confidence, accuracy, count) per bin (on CPU)."""
    logits, targets = logits.detach().cpu(), targets.detach().cpu()
    p = logits.float().softmax(1)
    conf, pred = p.max(1)
    correct = (pred == targets).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    idx = torch.bucketize(conf, edges[1:-1], right=False)  # bin b holds (edges[b], edges[b+1]]
    counts = torch.bincount(idx, minlength=n_bins).float()
    conf_sum = torch.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = torch.bincount(idx, weights=correct, minlength=n_bins)
    safe = counts.clamp_min(1)
    return conf_sum / safe, acc_sum / safe, counts


def ece(logits: Tensor, targets: Tensor, n_bins: int = 15) -> float:
    """Expected calibration error with equal-width bins: sum_b |B_b|/n * |acc_b - conf_b|."""
    conf, acc, counts = reliability_bins(logits, targets, n_bins)
    n = counts.sum().clamp_min(1)
    return float(((counts / n) * (acc - conf).abs()).sum())


def adaptive_ece(logits: Tensor, targets: Tensor, n_bins: int = 15) -> float:
    """ECE with equal-mass bins (sorted confidences split into ``n_bins`` near-equal groups)."""
    p = logits.float().softmax(1)
    conf, pred = p.max(1)
    correct = (pred == targets).float()
    order = conf.argsort()
    n = conf.numel()
    total = 0.0
    for chunk in torch.tensor_split(order, min(n_bins, max(n, 1))):
        if chunk.numel():
            total += chunk.numel() / n * float((correct[chunk].mean() - conf[chunk].mean()).abs())
    return total


#: Range the fitted temperature is clamped to: a validation split classified 100% correctly
#: otherwise drives T towards 0 (infinitely sharp), which says nothing about the test split.
TEMPERATURE_RANGE = (0.05, 20.0)


def fit_temperature(logits: Tensor, targets: Tensor, max_iter: int = 100) -> float:
    """Temperature T minimising the NLL of ``logits / T`` (LBFGS on log T), clamped to ``TEMPERATURE_RANGE``."""
    logits, targets = logits.detach().float().cpu(), targets.detach().cpu()
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    t = float(log_t.detach().exp())
    if not torch.isfinite(torch.tensor(t)):
        return 1.0
    return min(max(t, TEMPERATURE_RANGE[0]), TEMPERATURE_RANGE[1])


def classification_metrics(logits: Tensor, targets: Tensor, n_bins: int = 15, temperature: float | None = None) -> dict[str, float]:
    """acc, nll, ece, adaece, brier; with ``temperature`` also the same after scaling (``*_ts``)."""
    logits = logits.float()
    out = {
        "acc": accuracy(logits, targets),
        "nll": nll(logits, targets),
        "ece": ece(logits, targets, n_bins),
        "adaece": adaptive_ece(logits, targets, n_bins),
        "brier": brier(logits, targets),
    }
    if temperature is not None:
        scaled = logits / temperature
        out.update(
            temperature=temperature,
            nll_ts=nll(scaled, targets),
            ece_ts=ece(scaled, targets, n_bins),
            adaece_ts=adaptive_ece(scaled, targets, n_bins),
            brier_ts=brier(scaled, targets),
        )
    return out


def pearson_r(pred: Tensor, targets: Tensor) -> float:
    """Pearson's correlation of predictions and targets, per target dimension, averaged over the
    dimensions whose targets vary (official C-Mixup ``algorithm.test``: ``corr``); NaN when no
    dimension varies or the predictions of one do not."""
    p = pred.double().reshape(len(pred), -1)
    t = targets.double().reshape(len(targets), -1)
    sp, st = p.std(0, unbiased=False), t.std(0, unbiased=False)
    corr = ((p - p.mean(0)) * (t - t.mean(0))).mean(0) / (sp * st)
    varies = st != 0
    return float(corr[varies].mean()) if bool(varies.any()) else float("nan")


def regression_metrics(pred: Tensor, targets: Tensor) -> dict[str, float]:
    """rmse, mae, mse, and ``r`` (Pearson's correlation) with ``r2 = r ** 2``: the squared
    correlation the official C-Mixup code selects its "R^2" model on (not the coefficient of
    determination)."""
    pred = pred.float().reshape(targets.shape)
    err = pred - targets.float()
    r = pearson_r(pred, targets.float())
    return {
        "rmse": float(err.pow(2).mean().sqrt()),
        "mae": float(err.abs().mean()),
        "mse": float(err.pow(2).mean()),
        "r": r,
        "r2": r * r,
    }
