"""RankMixup's bench suites: declared through the hook, and the seeded quick run through the harness."""

from __future__ import annotations

import pytest
from mixhub_rankmixup import plugin

from mixhub.bench.runner import collect_suites, run_suite


def test_suites_are_collected_with_every_arm_clipped():
    suites = {s.name: s for s in plugin.mixhub_bench_suites()}
    assert set(suites) == {"rankmixup-calib", "rankmixup-digits"}
    for suite in suites.values():
        assert [a.name for a in suite.arms][:4] == ["ce", "mixup", "rankmixup-mrl", "rankmixup-mndcg"]
        assert suite.base["train"]["clip_grad_norm"] == 2.0
        assert suite.base["optimizer"]["name"] == "momentum"  # SGD without Nesterov, as the official recipe
    assert collect_suites()["rankmixup-calib"].provider == "rankmixup"


def test_quick_calibration_suite(tmp_path):
    """Seeded quick run (8 epochs, one seed). Thresholds come from our own quick measurement:
    ce acc 79.0 / ECE 3.9, mixup 77.2 / 15.6 (under-confident), MRL 79.3 / 3.9, M-NDCG 78.8 / 3.9."""
    suite = collect_suites()["rankmixup-calib"]
    results = run_suite(suite, tmp_path / "bench", quick=True, progress=False)
    m = {c["arm"]: c["metrics"] for c in results["cells"]}
    assert set(m) == {"ce", "mixup", "rankmixup-mrl", "rankmixup-mndcg"}
    for arm in m.values():
        for key in ("test.acc", "test.ece", "test.adaece", "test.nll", "test.brier", "test.ece_ts"):
            assert key in arm
    assert m["rankmixup-mrl"]["test.acc"] >= m["ce"]["test.acc"] - 0.02
    assert m["rankmixup-mrl"]["test.ece"] <= m["ce"]["test.ece"] + 0.01
    assert m["mixup"]["test.ece"] >= m["rankmixup-mrl"]["test.ece"] + 0.05  # mixup labels: under-confidence
    assert m["rankmixup-mndcg"]["test.ece"] == pytest.approx(m["ce"]["test.ece"], abs=0.02)
    report = (tmp_path / "bench" / "REPORT.md").read_text()
    assert "rankmixup-mrl" in report
    assert (tmp_path / "bench" / "reliability.png").exists()
