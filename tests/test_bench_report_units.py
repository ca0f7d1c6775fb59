"""The bench report's footer and plots: one seed is said plainly, bars are in the table's units,
and each cell announces itself as it runs."""

import logging

import pytest
from helpers_plots import capture_figures

from mixhub.bench.runner import run_suite
from mixhub.bench.suite import Arm, Suite


def toy_suite(seeds):
    def run(cfg, out):
        return {"test.acc": 0.5 + 0.1 * cfg.get("x", 0) + 0.01 * cfg["seed"], "test.nll": 1.0 - 0.1 * cfg.get("x", 0)}

    return Suite("toy", "toy", {}, [Arm("base"), Arm("m", {"x": 1})], "base", ["test.acc", "test.nll"], seeds=seeds, run=run)


def test_one_seed_footer_says_there_is_no_test(tmp_path):
    run_suite(toy_suite(1), tmp_path, progress=False)
    report = (tmp_path / "REPORT.md").read_text()
    assert "One seed: the differences have no SE and no significance test" in report
    assert "> no test" not in report and "|mean / SE|" not in report
    run_suite(toy_suite(3), tmp_path / "three", progress=False)
    report = (tmp_path / "three" / "REPORT.md").read_text()
    assert "|mean / SE| > t_0.975,2 = 4.303" in report and "One seed" not in report


def test_bars_are_in_the_reports_units(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    bars = {}
    original = Axes.bar

    def bar(self, x, height, *a, **k):
        bars[len(bars)] = list(height)
        return original(self, x, height, *a, **k)

    monkeypatch.setattr(Axes, "bar", bar)
    titles = []
    original_title = Axes.set_title

    def set_title(self, label, *a, **k):
        titles.append(label)
        return original_title(self, label, *a, **k)

    monkeypatch.setattr(Axes, "set_title", set_title)
    run_suite(toy_suite(1), tmp_path, progress=False)
    report = (tmp_path / "REPORT.md").read_text()
    assert "| base | 50.00 ± 0.00 | 1.0000 ± 0.0000 |" in report.replace("  ", " ")
    # accuracy bars in percent, as in the table; the NLL in its own units
    assert bars[0] == pytest.approx([50.0, 60.0]) and bars[1] == pytest.approx([1.0, 0.9])
    assert titles[:2] == ["test.acc (%)", "test.nll"]


def test_each_cell_says_when_it_starts_and_ends(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="mixhub.bench"):
        run_suite(toy_suite(2), tmp_path, progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "mixhub.bench"]
    assert lines[0] == "bench toy: cell base/seed0 ..."
    assert lines[1].startswith("bench toy: cell base/seed0 done in ")
    assert len(lines) == 8 and lines[-1].startswith("bench toy: cell m/seed1 done in ")


def test_curves_count_whole_epochs_from_one(tmp_path, monkeypatch):
    import json

    saved = capture_figures(monkeypatch)

    def run(cfg, out):
        (out / "run").mkdir(parents=True)
        recs = [{"epoch": e, "split": "val", "loss": 1.0 / e} for e in (2, 4)]  # 1-based, validated every 2nd epoch
        (out / "run" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
        return {"test.acc": 0.5}

    suite = Suite("c", "curves", {}, [Arm("a")], "a", ["test.acc"], seeds=1, run=run, plots=["curves"])
    run_suite(suite, tmp_path, progress=False)
    fig = next(f for p, f in saved if p.endswith("curves.png"))
    ax = fig.axes[0]
    assert list(ax.lines[0].get_xdata()) == [2, 4] and ax.get_xlabel() == "epoch"  # at the records' epochs
    assert all(float(t).is_integer() for t in ax.get_xticks())
