import json
import math
from importlib import metadata

import pytest

from mixhub.bench import runner as bench_runner
from mixhub.bench.codeid import key_part
from mixhub.bench.report import paired_difference, paired_t_test, t_cdf, t_quantile, write_report
from mixhub.bench.runner import cell_key, code_identity, collect_suites, run_suite
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
    if name == "digits-cls":  # a quick suite must show learning: every arm far above chance (10%)
        accs = {c["arm"]: c["metrics"]["test.acc"] for c in res["cells"]}
        assert min(accs.values()) > 0.6, accs


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


# Two-sided 5% and 1% critical values of Student's t, as printed in statistics tables.
T_TABLE = {1: (12.706, 63.657), 2: (4.303, 9.925), 3: (3.182, 5.841), 4: (2.776, 4.604), 5: (2.571, 4.032),
           9: (2.262, 3.250), 10: (2.228, 3.169), 20: (2.086, 2.845), 30: (2.042, 2.750), 120: (1.980, 2.617)}


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_t_quantile_matches_the_printed_table(df):
    t975, t995 = T_TABLE[df]
    assert t_quantile(0.975, df) == pytest.approx(t975, abs=6e-4)
    assert t_quantile(0.995, df) == pytest.approx(t995, abs=6e-4)
    assert t_quantile(0.025, df) == pytest.approx(-t975, abs=6e-4)
    assert t_cdf(t_quantile(0.9, df), df) == pytest.approx(0.9, abs=1e-9)


def test_t_distribution_closed_forms_and_limits():
    # df = 1 is the Cauchy distribution, df = 2 has a closed-form quantile
    for p in (0.6, 0.9, 0.99):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    assert t_quantile(0.975, 10**6) == pytest.approx(1.95996, abs=1e-4)  # the normal limit
    assert t_quantile(0.5, 3) == 0.0 and t_cdf(0.0, 7) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="p must lie"):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="df must be positive"):
        t_cdf(1.0, 0)


def test_paired_t_test_uses_n_minus_one_degrees_of_freedom():
    # 3 seeds: 2 df, critical 4.303. t = 4.0 passes 2 SE but is not significant
    t, crit, sig = paired_t_test(0.4, 0.1, 3)
    assert t == pytest.approx(4.0) and crit == pytest.approx(4.303, abs=1e-3) and not sig
    assert paired_t_test(0.45, 0.1, 3)[2] and paired_t_test(-0.45, 0.1, 3)[2]
    assert paired_t_test(0.3, 0.1, 11)[2]  # 10 df: critical 2.228
    assert paired_t_test(0.5, float("nan"), 1) == (None, None, False)
    assert paired_t_test(0.2, 0.0, 3)[2] and not paired_t_test(0.0, 0.0, 3)[2]


def _toy_suite(calls, base=None, seeds=3):
    def run(cfg, out):
        calls.append((cfg["seed"], cfg.get("x")))
        noise = [0.0, 0.004, -0.003][cfg["seed"] % 3]
        return {"test.acc": 0.5 + 0.01 * cfg["seed"] + (0.1 + noise if cfg.get("x") else 0), "test.nll": 1.0}

    return Suite("toy", "toy", base or {}, [Arm("base"), Arm("m", {"x": 1}), Arm("same", {"y": 1})], "base", ["test.acc", "test.nll"], seeds=seeds, run=run)


def test_cells_are_reused_only_under_the_same_key(tmp_path, monkeypatch):
    calls = []
    run_suite(_toy_suite(calls), tmp_path, progress=False)
    assert len(calls) == 9
    stored = json.loads((tmp_path / "cells/m/seed1.json").read_text())["key"]
    assert stored == cell_key({"x": 1, "seed": 1, "train": {}}, "m", 1)
    assert stored["code"] == key_part(code_identity()) and "mixhub" in stored["code"]["versions"]
    calls.clear()
    run_suite(_toy_suite(calls), tmp_path, progress=False)
    assert calls == []  # same suite, same code: every cell reused
    run_suite(_toy_suite(calls, base={"lr": 0.2}), tmp_path, progress=False)
    assert len(calls) == 9  # the suite's config changed: every cell runs again
    calls.clear()
    cell = tmp_path / "cells/base/seed2.json"
    cell.write_text(json.dumps({k: v for k, v in json.loads(cell.read_text()).items() if k != "key"}))
    run_suite(_toy_suite(calls, base={"lr": 0.2}), tmp_path, progress=False)
    assert calls == [(2, None)]  # a cell without a key is not trusted
    calls.clear()
    moved = {**code_identity(), "git": "0" * 40}  # another commit with the same source (a docs-only commit)
    monkeypatch.setattr(bench_runner, "code_identity", lambda: moved)
    run_suite(_toy_suite(calls, base={"lr": 0.2}), tmp_path, progress=False)
    assert calls == []
    other = {**code_identity(), "source": "0" * 24}
    monkeypatch.setattr(bench_runner, "code_identity", lambda: other)
    res = run_suite(_toy_suite(calls, base={"lr": 0.2}), tmp_path, progress=False)
    assert len(calls) == 9  # other code: every cell runs again
    assert res["code"]["source"] == "0" * 24 and any("changed: code" in r for r in res["rerun"])
    assert "changed: code" in (tmp_path / "REPORT.md").read_text()


def test_code_identity_names_the_commit_of_a_checkout():
    code = code_identity()
    assert {"versions", "git", "dirty"} <= set(code)
    assert code["versions"]["torch"] == metadata.version("torch")
    if code["git"] is not None:
        assert len(code["git"]) == 40 and all(c in "0123456789abcdef" for c in code["git"])


def test_report_labels_sd_se_units_and_uses_the_t_test(tmp_path):
    suite = _toy_suite([])
    cells = []
    acc = {"base": [0.80, 0.82, 0.81], "m": [0.84, 0.85, 0.845], "same": [0.801, 0.819, 0.812]}
    for arm, vals in acc.items():
        for seed, v in enumerate(vals):
            cells.append({"arm": arm, "seed": seed, "metrics": {"test.acc": v, "test.nll": 1.0 - v}, "time_s": 1.0})
    results = {"suite": "toy", "seeds": 3, "cells": cells, "code": {"git": "a" * 40, "dirty": None, "versions": {}}}
    text = write_report(suite, results, tmp_path, command="mixhub bench toy --seeds 3").read_text()
    assert "Command: `mixhub bench toy --seeds 3`" in text
    assert "git commit `" + "a" * 40 + "`" in text and "CPU: " in text and "torch threads" in text
    assert "mean ± SD over seeds" in text and "mean ± SE over seeds" in text
    assert "| arm | test.acc (%) | test.nll | wall time / cell (s) |" in text
    assert "| comparison | test.acc (pp) | test.nll |" in text
    assert "t_0.975,2 = 4.303" in text
    # m - base: diffs 0.04, 0.03, 0.035 -> mean 3.5 pp, SE 0.289 pp, t = 12.1 > 4.303: significant, better
    m_row = next(line for line in text.splitlines() if line.startswith("| m - base |"))
    assert "+3.500 ± 0.289 ✓" in m_row
    assert "-0.035 ± 0.003 ✓" in m_row  # nll: lower is better
    # same - base: diffs 0.1, -0.1, 0.2 pp -> t = 0.69: not significant (and would not pass 2 SE either)
    same_row = next(line for line in text.splitlines() if line.startswith("| same - base |"))
    assert "✓" not in same_row and "✗" not in same_row
