import json
import math

import pytest

from mixhub.bench.report import paired_difference
from mixhub.bench.runner import collect_suites, run_suite
from mixhub.bench.suite import Arm, Suite


def test_paired_difference():
    m, se, n = paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.5, 1: 2.1, 2: 3.6})
    diffs = [0.5, 0.1, 0.6]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert n == 3 and m == pytest.approx(mean) and se == pytest.approx(sd / math.sqrt(3))


def test_suite_validation():
    with pytest.raises(ValueError, match="baseline"):
        Suite("s", "d", {}, [Arm("a")], "b", ["test.acc"])


def test_core_suites_are_listed():
    suites = collect_suites()
    assert {"digits-cls", "tanh-reg"} <= set(suites)


@pytest.mark.parametrize("name", ["digits-cls", "tanh-reg"])
def test_core_suite_quick(tmp_path, name):
    suite = collect_suites()[name]
    res = run_suite(suite, tmp_path, quick=True, progress=False)
    assert len(res["cells"]) == len(suite.arms)
    report = (tmp_path / "REPORT.md").read_text()
    assert all(a.name in report for a in suite.arms) and "Paired differences" in report
    assert (tmp_path / "bars.png").exists() and (tmp_path / "results.json").exists()


def test_bench_resumes_per_cell(tmp_path):
    calls = []

    def run(cfg, out):
        calls.append((cfg["seed"], cfg.get("x")))
        return {"test.acc": 0.5 + 0.01 * cfg["seed"] + (0.1 if cfg.get("x") else 0)}

    suite = Suite("toy", "toy", {}, [Arm("base"), Arm("m", {"x": 1})], "base", ["test.acc"], seeds=3, run=run)
    run_suite(suite, tmp_path, progress=False)
    assert len(calls) == 6
    (tmp_path / "cells/m/seed1.json").unlink()
    calls.clear()
    res = run_suite(suite, tmp_path, progress=False)
    assert calls == [(1, 1)]
    assert len(res["cells"]) == 6
    data = json.loads((tmp_path / "results.json").read_text())
    d, se, n = data["aggregate"]["diffs"]["m - base"]["test.acc"]
    assert n == 3 and d == pytest.approx(0.1)
    with pytest.raises(Exception, match="full run"):
        run_suite(suite, tmp_path, quick=True, progress=False)


def test_accuracy_matrix_plot_for_continual_suites(tmp_path):
    def run(cfg, out):
        (out / "run").mkdir(parents=True)
        m = [[0.9, 0.0], [0.7, 0.95]]
        (out / "run" / "summary.json").write_text(json.dumps({"continual": {"acc_matrix": m}}))
        return {"test.avg_acc": 0.825}

    suite = Suite("cl", "toy continual", {}, [Arm("er")], "er", ["test.avg_acc"], seeds=2, run=run, plots=["accuracy_matrix"])
    run_suite(suite, tmp_path, progress=False)
    assert (tmp_path / "accuracy_matrix.png").exists()
    assert "accuracy_matrix.png" in (tmp_path / "REPORT.md").read_text()
