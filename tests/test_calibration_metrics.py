"""Calibration metrics of ``mixhub.metrics`` against hand-computed values.

The probabilities are given directly (logits = log p, so softmax returns p); confidences avoid
bin edges except in the test of the ``(lo, hi]`` convention.
"""

from __future__ import annotations

import math

import pytest
import torch

from mixhub import metrics

# Six samples, three classes: (probabilities, label). Confidence, correctness and 15-bin index:
#   0.90 correct  bin 13 (0.8667, 0.9333]      0.85 wrong    bin 12 (0.8, 0.8667]
#   0.50 correct  bin 7  (0.4667, 0.5333]      0.42 wrong    bin 6  (0.4, 0.4667]
#   0.62 correct  bin 9  (0.6, 0.6667]         0.88 correct  bin 13
SAMPLES = [
    ([0.90, 0.05, 0.05], 0),
    ([0.85, 0.10, 0.05], 1),
    ([0.20, 0.50, 0.30], 1),
    ([0.42, 0.33, 0.25], 2),
    ([0.62, 0.28, 0.10], 0),
    ([0.88, 0.07, 0.05], 0),
]
P = torch.tensor([p for p, _ in SAMPLES], dtype=torch.float64)
LOGITS = P.log().float()
Y = torch.tensor([y for _, y in SAMPLES])


def test_ece_hand_computed():
    # bin 13: conf (0.90 + 0.88)/2 = 0.89, acc 1 -> 2/6 * 0.11; singletons: 0.85, 0.50, 0.42, 0.38
    expect = (2 * 0.11 + 0.85 + 0.50 + 0.42 + 0.38) / 6
    assert metrics.ece(LOGITS, Y) == pytest.approx(expect, abs=1e-6)
    assert expect == pytest.approx(0.395, abs=1e-12)


def test_ece_with_one_bin_is_the_gap_between_mean_confidence_and_accuracy():
    conf = (0.90 + 0.85 + 0.50 + 0.42 + 0.62 + 0.88) / 6
    assert metrics.ece(LOGITS, Y, n_bins=1) == pytest.approx(abs(4 / 6 - conf), abs=1e-6)


def test_reliability_bins_hand_computed():
    conf, acc, counts = metrics.reliability_bins(LOGITS, Y)
    assert conf.shape == acc.shape == counts.shape == (15,)
    expect_counts = [0] * 15
    for b in (6, 7, 9, 12, 13, 13):
        expect_counts[b] += 1
    assert counts.tolist() == expect_counts
    expect_conf = {6: 0.42, 7: 0.50, 9: 0.62, 12: 0.85, 13: 0.89}
    expect_acc = {6: 0.0, 7: 1.0, 9: 1.0, 12: 0.0, 13: 1.0}
    for b in range(15):
        assert float(conf[b]) == pytest.approx(expect_conf.get(b, 0.0), abs=1e-6)
        assert float(acc[b]) == pytest.approx(expect_acc.get(b, 0.0), abs=1e-6)


def test_bins_are_left_open_right_closed():
    # softmax([0, 0]) is exactly 0.5: it belongs to (0, 0.5] with 2 bins and to (0.25, 0.5] with 4
    logits = torch.tensor([[0.0, 0.0], [40.0, 0.0]])  # the second confidence rounds to exactly 1.0
    assert float(logits.softmax(1).max(1).values[1]) == 1.0
    y = torch.tensor([0, 0])
    _, _, counts2 = metrics.reliability_bins(logits, y, n_bins=2)
    assert counts2.tolist() == [1, 1]
    _, _, counts4 = metrics.reliability_bins(logits, y, n_bins=4)
    assert counts4.tolist() == [0, 1, 0, 1]


def test_perfectly_calibrated_predictions_have_zero_ece():
    logits = torch.tensor([[math.log(3.0), 0.0]] * 4)  # confidence 0.75 on class 0
    y = torch.tensor([0, 0, 0, 1])  # 3 of 4 correct
    assert metrics.ece(logits, y) == pytest.approx(0.0, abs=1e-6)
    assert metrics.adaptive_ece(logits, y, n_bins=1) == pytest.approx(0.0, abs=1e-6)


def test_adaptive_ece_hand_computed():
    # sorted confidences split into 3 groups of 2: (0.42 w, 0.50 c), (0.62 c, 0.85 w), (0.88 c, 0.90 c)
    expect = (2 / 6) * (abs(0.5 - 0.46) + abs(0.5 - 0.735) + abs(1.0 - 0.89))
    assert metrics.adaptive_ece(LOGITS, Y, n_bins=3) == pytest.approx(expect, abs=1e-6)
    assert expect == pytest.approx(0.128333333, abs=1e-8)
    # more bins than samples: one sample per bin, the mean per-sample gap
    per_sample = (0.10 + 0.85 + 0.50 + 0.42 + 0.38 + 0.12) / 6
    assert metrics.adaptive_ece(LOGITS, Y, n_bins=15) == pytest.approx(per_sample, abs=1e-6)


def test_adaptive_ece_groups_have_near_equal_mass():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(100, 5, generator=g) * 2
    y = torch.randint(0, 5, (100,), generator=g)
    p = logits.softmax(1)
    conf, pred = p.max(1)
    correct = (pred == y).float()
    order = conf.argsort()
    # independent computation: 15 groups of 7 or 6 sorted samples (100 = 10 * 7 + 5 * 6)
    sizes = [7] * 10 + [6] * 5
    total, start = 0.0, 0
    for s in sizes:
        idx = order[start : start + s]
        total += s / 100 * abs(float(correct[idx].mean()) - float(conf[idx].mean()))
        start += s
    assert metrics.adaptive_ece(logits, y) == pytest.approx(total, abs=1e-6)


def test_nll_and_brier_hand_computed():
    p_true = [0.90, 0.10, 0.50, 0.25, 0.62, 0.88]
    assert metrics.nll(LOGITS, Y) == pytest.approx(-sum(math.log(v) for v in p_true) / 6, abs=1e-6)
    brier = 0.0
    for p, y in SAMPLES:
        brier += sum((pc - (1.0 if c == y else 0.0)) ** 2 for c, pc in enumerate(p))
    assert metrics.brier(LOGITS, Y) == pytest.approx(brier / 6, abs=1e-6)
    # first sample by hand: (0.9 - 1)^2 + 0.05^2 + 0.05^2 = 0.015
    assert metrics.brier(LOGITS[:1], Y[:1]) == pytest.approx(0.015, abs=1e-6)


def _best_temperature_by_search(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Golden-section search of NLL(logits / T) over log T in float64 (NLL is convex in 1/T)."""
    z = logits.double()

    def f(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / math.exp(log_t), y))

    lo, hi = math.log(0.02), math.log(50.0)
    r = (math.sqrt(5) - 1) / 2
    a, b = hi - r * (hi - lo), lo + r * (hi - lo)
    for _ in range(200):
        if f(a) < f(b):
            hi = b
        else:
            lo = a
        a, b = hi - r * (hi - lo), lo + r * (hi - lo)
    return math.exp((lo + hi) / 2)


@pytest.mark.parametrize("scale", [0.4, 1.0, 3.0])
def test_fit_temperature_finds_the_nll_minimiser(scale):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(400, 6, generator=g) * 2
    y = torch.multinomial(base.softmax(1), 1, generator=g).squeeze(1)  # labels drawn from softmax(base)
    logits = base * scale
    t = metrics.fit_temperature(logits, y)
    assert isinstance(t, float)
    assert t == pytest.approx(_best_temperature_by_search(logits, y), rel=1e-3)
    assert t == pytest.approx(scale, rel=0.25)  # the data were generated at temperature `scale`


def test_fit_temperature_on_the_hand_example():
    t = metrics.fit_temperature(LOGITS, Y)
    assert t == pytest.approx(_best_temperature_by_search(LOGITS, Y), rel=1e-3)
    assert metrics.nll(LOGITS / t, Y) <= metrics.nll(LOGITS, Y) + 1e-7


def test_classification_metrics_reports_before_and_after_scaling():
    out = metrics.classification_metrics(LOGITS, Y)
    assert set(out) == {"acc", "nll", "ece", "adaece", "brier"}
    assert out["acc"] == pytest.approx(4 / 6)
    assert out["ece"] == pytest.approx(0.395, abs=1e-6)
    scaled = metrics.classification_metrics(LOGITS, Y, temperature=2.0)
    assert scaled["temperature"] == 2.0
    assert scaled["nll_ts"] == pytest.approx(metrics.nll(LOGITS / 2, Y), abs=1e-7)
    assert scaled["ece_ts"] == pytest.approx(metrics.ece(LOGITS / 2, Y), abs=1e-7)
    assert scaled["adaece_ts"] == pytest.approx(metrics.adaptive_ece(LOGITS / 2, Y), abs=1e-7)
    assert scaled["acc"] == out["acc"] and scaled["ece"] == out["ece"]


def test_classification_metrics_pass_the_bin_count_and_scaled_brier():
    out = metrics.classification_metrics(LOGITS, Y, n_bins=2, temperature=2.0)
    assert out["ece"] == pytest.approx(metrics.ece(LOGITS, Y, 2), abs=1e-7)
    assert out["ece"] != pytest.approx(metrics.ece(LOGITS, Y), abs=1e-4)
    assert out["adaece"] == pytest.approx(metrics.adaptive_ece(LOGITS, Y, 2), abs=1e-7)
    assert out["adaece"] != pytest.approx(metrics.adaptive_ece(LOGITS, Y), abs=1e-4)
    assert out["ece_ts"] == pytest.approx(metrics.ece(LOGITS / 2, Y, 2), abs=1e-7)
    assert out["adaece_ts"] == pytest.approx(metrics.adaptive_ece(LOGITS / 2, Y, 2), abs=1e-7)
    p = (LOGITS.double() / 2).softmax(1)
    brier_ts = float(((p - torch.nn.functional.one_hot(Y, 3)) ** 2).sum(1).mean())
    assert out["brier_ts"] == pytest.approx(brier_ts, abs=1e-6)
    assert set(out) == {"acc", "nll", "ece", "adaece", "brier", "temperature", "nll_ts", "ece_ts", "adaece_ts", "brier_ts"}


def test_ece_of_a_single_sample_is_its_gap():
    logits = torch.tensor([[2.0, 0.0]])
    conf = float(logits.softmax(1).max())
    assert metrics.ece(logits, torch.tensor([0])) == pytest.approx(1 - conf, abs=1e-6)
    assert metrics.ece(logits, torch.tensor([1])) == pytest.approx(conf, abs=1e-6)


def test_adaptive_ece_defaults_to_fifteen_equal_mass_bins():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 4, generator=g) * 2
    y = torch.multinomial(logits.softmax(1), 1, generator=g)[:, 0]  # calibrated labels: gaps of both signs
    p = logits.softmax(1)
    conf, pred = p.max(1)
    correct = (pred == y).float()
    order = conf.argsort()
    expected = sum(len(c) / 64 * abs(float(correct[c].mean() - conf[c].mean())) for c in torch.tensor_split(order, 15))
    assert metrics.adaptive_ece(logits, y) == pytest.approx(expected, abs=1e-6)
    assert metrics.adaptive_ece(logits, y) != pytest.approx(metrics.adaptive_ece(logits, y, 16), abs=1e-6)


def test_fit_temperature_falls_back_to_one_when_the_fit_diverges(monkeypatch):
    class Diverging:
        def __init__(self, params, **kwargs):
            self.params = params

        def step(self, closure):
            with torch.no_grad():
                self.params[0].fill_(float("nan"))

    monkeypatch.setattr(metrics.torch.optim, "LBFGS", Diverging)
    assert metrics.fit_temperature(LOGITS, Y) == 1.0


def test_regression_metrics_hand_computed():
    pred = torch.tensor([[1.0], [2.0], [4.0]], dtype=torch.float64)
    y = torch.tensor([1.5, 2.0, 1.0])
    out = metrics.regression_metrics(pred, y)
    # errors -0.5, 0, 3: mse (0.25 + 9) / 3, mae 3.5 / 3
    # Pearson's r from the centred values: pred (1, 2, 4) - 7/3, y (1.5, 2, 1) - 1.5
    pc, yc = [-4 / 3, -1 / 3, 5 / 3], [0.0, 0.5, -0.5]
    r = sum(a * b for a, b in zip(pc, yc)) / math.sqrt(sum(a * a for a in pc) * sum(b * b for b in yc))
    assert out == pytest.approx({"mse": 9.25 / 3, "rmse": math.sqrt(9.25 / 3), "mae": 3.5 / 3, "r": r, "r2": r * r})
    assert set(out) == {"mse", "rmse", "mae", "r", "r2"}
    assert metrics.regression_metrics(torch.tensor([3, 1]), torch.tensor([1, 1]))["mae"] == pytest.approx(1.0)


def test_pearson_r_averages_the_varying_target_dimensions_as_the_official_code():
    pred = torch.tensor([[1.0, 5.0, 2.0], [2.0, 1.0, 2.0], [4.0, 0.0, 2.0]])
    y = torch.tensor([[1.5, 2.0, 7.0], [2.0, 1.0, 7.0], [1.0, 3.0, 7.0]])  # the third dimension is constant
    p, t = pred.double().numpy(), y.double().numpy()
    per_dim = ((p - p.mean(0)) * (t - t.mean(0)))[:, :2].mean(0) / (p.std(0) * t.std(0))[:2]
    assert metrics.pearson_r(pred, y) == pytest.approx(float(per_dim.mean()))
    assert math.isnan(metrics.pearson_r(torch.ones(3), torch.ones(3)))  # no target varies
    assert math.isnan(metrics.pearson_r(torch.ones(3), torch.tensor([1.0, 2.0, 3.0])))  # constant predictions


def test_pearson_r_is_shift_invariant_far_from_zero():
    """Centring each dimension before the product keeps r exact for labels far from 0 (the
    covariance from uncentred factors cancels catastrophically)."""
    pred = torch.tensor([[1.0, 5.0], [2.0, 1.0], [4.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[1.2, 2.0], [2.0, 1.0], [1.1, 3.3]], dtype=torch.float64)  # means not exact in binary
    r = metrics.pearson_r(pred, y)
    shift_p, shift_y = torch.tensor([1e9, -3e9], dtype=torch.float64), torch.tensor([2e9, 5e8], dtype=torch.float64)
    assert metrics.pearson_r(pred + shift_p, y + shift_y) == pytest.approx(r, abs=1e-5)
    assert metrics.pearson_r(pred[:, 0] + 1e9, y[:, 0] - 1e9) == pytest.approx(metrics.pearson_r(pred[:, 0], y[:, 0]), abs=1e-5)
