"""`mixhub tune`: Optuna over a suite file's ranges, on the validation split only."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from mixhub.bench.suitefile import SearchRange, load_suite_file
from mixhub.bench.tune import TrialReporter, suggest
from mixhub.cli import main
from mixhub.errors import MixhubError

optuna = pytest.importorskip("optuna")  # the test extra installs it: CI runs these


def digits_suite(path, trials=4):
    doc = {
        "name": "digits-tune",
        "base": {
            "data": {"name": "digits", "image_size": 16},
            "model": {"name": "smallcnn", "kwargs": {"widths": [8, 16]}},
            "train": {"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 3, "plots": False, "device": "cpu"},
        },
        "arms": [
            {"name": "erm"},
            {
                "name": "mixup",
                "config": {"plugins": ["mixup"], "mixup": {"alpha": 1.0}},
                "search": {"mixup.alpha": {"low": 0.1, "high": 2.0, "log": True}, "train.lr": {"choices": [0.001, 0.003]}},
            },
        ],
        "reference": "erm",
        "metrics": ["test.acc"],
        "tune": {"metric": "val.acc", "trials": trials},
        "quick": {"data": {"subset": 64}},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def test_tune_four_trials_writes_best_yaml_that_trains_and_never_sees_test(tmp_path, monkeypatch):
    from mixhub.run.evaluation import Evaluation

    seen = []
    real_predict = Evaluation.predict

    def spy(self, dataset, stage, *a, **kw):
        seen.append(stage)
        return real_predict(self, dataset, stage, *a, **kw)

    monkeypatch.setattr(Evaluation, "predict", spy)
    suite = digits_suite(tmp_path / "tune.yaml")
    out = tmp_path / "tune-out"
    assert main(["tune", str(suite), "--trials", "4", "--out", str(out), "--quiet"]) == 0
    assert seen and all(s == "val" for s in seen), sorted(set(seen))  # tuning never evaluates test
    report = (out / "REPORT.md").read_text()
    assert "the test split was never evaluated" in report and "median pruner" in report
    assert (out / "optuna.db").is_file() and (out / "trials-mixup.png").is_file()
    study = optuna.load_study(study_name="digits-tune-mixup", storage=f"sqlite:///{out / 'optuna.db'}")
    assert len(study.trials) == 4
    for t in study.trials:
        run = out / "trials" / "mixup" / f"trial{t.number}"
        summary = json.loads((run / "summary.json").read_text())
        assert "test" not in summary and summary["val"]["acc"] == pytest.approx(t.value)
        assert 0.1 <= t.params["mixup.alpha"] <= 2.0 and t.params["train.lr"] in (0.001, 0.003)
        assert json.loads((run / "summary.json").read_text())["config"]["mixup"]["alpha"] == pytest.approx(t.params["mixup.alpha"])
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["mixup"]["alpha"] == pytest.approx(study.best_params["mixup.alpha"]) and best["train"]["lr"] == study.best_params["train.lr"]
    assert "tune-reporter" not in best["plugins"] and "final_test" not in best["train"]
    seen.clear()
    assert main(["train", str(out / "best.yaml"), "--out", str(tmp_path / "best-run"), "--quiet"]) == 0
    assert "test" in json.loads((tmp_path / "best-run" / "summary.json").read_text())
    # a second process on the same storage continues the study up to --trials in total
    assert main(["tune", str(suite), "--trials", "5", "--out", str(out), "--quiet"]) == 0
    assert len(optuna.load_study(study_name="digits-tune-mixup", storage=f"sqlite:///{out / 'optuna.db'}").trials) == 5


def test_reporter_prunes_a_trial_below_the_median():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    first = study.ask()
    TrialReporter(first, "acc").mixhub_log(_val_record(0, 0.9), None)
    study.tell(first, 0.9)
    good, bad = study.ask(), study.ask()
    TrialReporter(good, "acc").mixhub_log(_val_record(0, 0.95), None)  # above the median: goes on
    with pytest.raises(optuna.TrialPruned):
        TrialReporter(bad, "acc").mixhub_log(_val_record(0, 0.2), None)
    reporter = TrialReporter(study.ask(), "acc")
    reporter.mixhub_log(_val_record(0, 0.1, split="train"), None)  # only validation records count
    assert reporter.reported == []


def _val_record(epoch, acc, split="val"):
    from mixhub import LogRecord

    return LogRecord("epoch", step=epoch, epoch=epoch, split=split, scalars={"acc": acc})


def test_suggest_maps_ranges_to_optuna():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        t = study.ask()
        assert isinstance(suggest(t, "a", SearchRange(low=1, high=9, step=2)), int)
        v = suggest(t, "b", SearchRange(low=1e-4, high=1e-1, log=True))
        assert 1e-4 <= v <= 1e-1 and isinstance(v, float)
        assert suggest(t, "c", SearchRange(choices=["x", "y"])) in ("x", "y")
    dist = study.trials[0].distributions
    assert dist["b"].log and dist["a"].step == 2 and dist["a"].low == 1


def test_missing_optuna_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    from mixhub.bench.tune import tune_suite

    with pytest.raises(MixhubError, match=r"pip install 'mixhub\[tune\]'"):
        tune_suite(load_suite_file(digits_suite(tmp_path / "t.yaml")), tmp_path / "o")


def test_a_pruned_trial_stops_its_run_at_the_epoch_end(tmp_path):
    from mixhub.bench.tune import _run_trial

    class Trial:
        number = 7

        def __init__(self):
            self.reports, self.attrs = [], {}

        def suggest_float(self, name, low, high, step=None, log=False):
            return low

        def suggest_categorical(self, name, choices):
            return choices[0]

        def set_user_attr(self, k, v):
            self.attrs[k] = v

        def report(self, value, step):
            self.reports.append((step, value))

        def should_prune(self):
            return True

    spec = load_suite_file(digits_suite(tmp_path / "t.yaml"))
    trial = Trial()
    with pytest.raises(optuna.TrialPruned, match="epoch 1"):
        _run_trial(spec, "mixup", trial, "val.acc", "maximize", tmp_path / "out", quick=True)
    assert [s for s, _ in trial.reports] == [1]  # reported after the first epoch (1-based), then stopped
    run = tmp_path / "out" / "trials" / "mixup" / "trial7"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["subset"] == 64 and saved["mixup"]["alpha"] == 0.1 and saved["train"]["final_test"] is False
    assert not (run / "summary.json").exists() and trial.attrs["run_dir"] == str(run)
