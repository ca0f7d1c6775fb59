"""Validation inside an epoch (``train.eval_every_steps``) and several kept best checkpoints
(``train.select`` + ``train.best_metrics``), against an independent count of the official
C-Mixup DTI recipe (``src/algorithm.py``: validate when ``(idx - 1) % (iteration // 30) == 0``,
keep the best-MSE and the best-R^2 models)."""

from __future__ import annotations

import json

import pytest
import torch

from mixhub import ConfigError
from mixhub.checkpoint import load_checkpoint
from mixhub.selection import Criterion, criteria, improved, step_eval_due
from mixhub.testing import tiny_regression_config
from mixhub.trainer import Trainer, train


# ----------------------------------------------------------------------------- criteria
def test_criteria_names_directions_and_files():
    assert criteria("auto", "auto", [], "regression") == [Criterion("rmse", False, "best")]
    assert criteria("auto", "auto", [], "classification") == [Criterion("acc", True, "best")]
    got = criteria("val/r2", "auto", ["val/rmse", "val/r2", "mae:max"], "regression")
    bm = "train.best_metrics"
    assert got == [Criterion("r2", True, "best"), Criterion("rmse", False, "best-rmse", bm), Criterion("mae", True, "best-mae", bm)]
    assert criteria("auto", "auto", ["val/r", "loss"], "regression")[0] == Criterion("r", True, "best", bm)
    assert criteria("loss", "max", [], "regression") == [Criterion("loss", True, "best")]
    assert criteria("auto", "auto", ["acc_ema"], "classification")[0].high


@pytest.mark.parametrize(
    "select, best, match",
    [
        ("train/loss", [], "train.select: 'train/loss': a checkpoint is kept on validation metrics"),
        ("auto", ["rmse:up"], "train.best_metrics: 'rmse:up': the direction after ':' must be max or min"),
        ("rmse", ["rmse:max"], "train.best_metrics: rmse is train.select with the other direction"),
        ("r2", ["mae", "val/mae"], "train.best_metrics: mae is listed twice"),
        ("val/", [], "train.select: 'val/' names no metric"),
    ],
)
def test_bad_criteria_name_the_field(select, best, match):
    with pytest.raises(ConfigError, match=match):
        criteria(select, "auto", best, "regression")


def test_improved_is_strict_and_skips_non_finite_values():
    cs = [Criterion("rmse", False, "best"), Criterion("r2", True, "best-r2", "train.best_metrics")]
    assert improved(cs, {}, {"rmse": 1.0, "r2": 0.5}) == cs
    kept = {"rmse": {"value": 1.0}, "r2": {"value": 0.5}}
    assert improved(cs, kept, {"rmse": 1.0, "r2": 0.5}) == []  # ties keep the earlier weights
    assert improved(cs, kept, {"rmse": 0.9, "r2": 0.4}) == cs[:1]
    assert improved(cs, kept, {"rmse": 1.1, "r2": 0.6}) == cs[1:]
    assert improved(cs, {}, {"rmse": float("nan"), "r2": 0.1}) == cs[1:]
    with pytest.raises(ConfigError, match=r"train.best_metrics: validation metric 'r2' does not exist \(have: rmse\)"):
        improved(cs, {}, {"rmse": 1.0})


def test_step_eval_due_is_the_official_dti_rule():
    for iteration in (7, 30, 61, 95):
        k = iteration // 30 or 1
        official = [idx for idx in range(iteration) if (idx - 1) % k == 0]
        ours = [n - 1 for n in range(1, iteration + 1) if step_eval_due(n, k, 2)]
        assert ours == official, iteration
    assert not any(step_eval_due(n, None) for n in range(1, 10))
    assert [n for n in range(1, 10) if step_eval_due(n, 3)] == [3, 6, 9]


# ----------------------------------------------------------------------------- in a run
def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_step_evaluations_and_kept_checkpoints_follow_an_independent_count(tmp_path):
    """Two epochs of 8 batches, validating as the DTI recipe with ``iteration // 30`` replaced by
    3: after batches 2, 5, 8 of each epoch (official idx 1, 4, 7), the last one being the epoch's
    end (validated once)."""
    """
    ``best.pt`` (select val/r2) and ``best-rmse.pt`` hold the weights of the records an
    independent scan of ``metrics.jsonl`` picks, and those weights reproduce the records."""
    cfg = tiny_regression_config(
        train={
            "epochs": 2, "max_steps_per_epoch": 8, "eval_every_steps": 3, "eval_steps_offset": 2,
            "select": "val/r2", "best_metrics": ["val/rmse", "val/r2"], "lr": 0.05,
        },
    )  # fmt: skip
    res = train(cfg, out=tmp_path / "run")
    records = _read(tmp_path / "run" / "metrics.jsonl")
    val = [r for r in records if r["split"] == "val"]
    spe = res.trainer.state.steps_per_epoch
    assert spe == 8
    expected_steps = []
    for epoch in range(2):
        in_epoch = {idx + 1 for idx in range(spe) if (idx - 1) % 3 == 0} | {spe}  # + the epoch's end
        expected_steps += [epoch * spe + n for n in sorted(in_epoch)]
    assert [r["step"] for r in val] == expected_steps == [2, 5, 8, 10, 13, 16]
    assert [r["epoch"] for r in val] == [1] * 3 + [2] * 3  # 1-based, as every run file

    def first_best(key, high):
        best = None
        for r in val:
            if best is None or (r[key] > best[key] if high else r[key] < best[key]):
                best = r
        return best

    best_r2, best_rmse = first_best("r2", True), first_best("rmse", False)
    assert best_r2["step"] != best_rmse["step"] or best_r2 == best_rmse
    summary = res.summary
    assert summary["select"] == "r2" and summary["best"]["r2"]["step"] == best_r2["step"]
    assert summary["best"]["rmse"] == {"value": best_rmse["rmse"], "epoch": best_rmse["epoch"], "step": best_rmse["step"], "checkpoint": "best-rmse.pt"}
    ckpts = tmp_path / "run" / "checkpoints"
    for name, record in (("best.pt", best_r2), ("best-rmse.pt", best_rmse)):
        data = load_checkpoint(ckpts / name)
        assert data["step"] == record["step"], name
        run = Trainer(cfg, write=False)
        run.checkpoints.load_weights(data)
        again = run.evaluate(run.bundle.val, "val")
        assert again["rmse"] == pytest.approx(record["rmse"], rel=1e-6) and again["r2"] == pytest.approx(record["r2"], rel=1e-6)
    assert not (ckpts / "best-r2.pt").exists()  # r2 is train.select: best.pt
    # the final test uses best.pt (the best-r2 weights)
    final_val = [r for r in records if r["split"] == "final_val"][0]
    assert final_val["r2"] == pytest.approx(best_r2["r2"], rel=1e-6)


def test_no_step_evaluation_duplicates_the_epoch_end(tmp_path):
    cfg = tiny_regression_config(train={"epochs": 1, "max_steps_per_epoch": 4, "eval_every_steps": 2})
    train(cfg, out=tmp_path / "run")
    val = [r for r in _read(tmp_path / "run" / "metrics.jsonl") if r["split"] == "val"]
    assert [r["step"] for r in val] == [2, 4]


def test_a_missing_best_metric_fails_at_the_first_validation(tmp_path):
    cfg = tiny_regression_config(train={"best_metrics": ["val/acc"]})
    with pytest.raises(ConfigError, match="train.best_metrics: validation metric 'acc' does not exist"):
        train(cfg, write=False)


def test_without_a_run_folder_the_final_test_uses_the_best_weights_in_memory():
    cfg = tiny_regression_config(train={"epochs": 1, "max_steps_per_epoch": 6, "eval_every_steps": 1, "lr": 0.05})
    res = train(cfg, write=False)
    trainer = res.trainer
    best = trainer.checkpoints.best
    assert best["metric"] == "rmse" and best["kept"]["rmse"]["value"] == best["value"]
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    again = trainer.evaluate(trainer.bundle.val, "val")
    assert again["rmse"] == pytest.approx(best["value"], rel=1e-6)
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in weights.items())


def test_a_checkpoint_that_kept_one_best_keeps_it_on_resume():
    """``run.checkpoints.best`` as checkpoints without ``kept`` hold it: a worse validation does not replace it."""
    from mixhub.protocols.supervised import SupervisedProtocol

    trainer = Trainer(tiny_regression_config(train={"select": "rmse", "best_metrics": ["val/r2"]}), write=False)
    protocol = SupervisedProtocol(trainer)
    trainer.checkpoints.best = {"value": 0.5, "epoch": 3, "metric": "rmse"}
    protocol.maybe_best({"rmse": 0.7, "r2": 0.2}, epoch=4)
    assert trainer.checkpoints.best["value"] == 0.5 and trainer.checkpoints.best["epoch"] == 3
    assert trainer.checkpoints.best["kept"] == {"rmse": {"value": 0.5, "epoch": 3}, "r2": {"value": 0.2, "epoch": 4, "step": 0}}
    protocol.maybe_best({"rmse": 0.4, "r2": 0.1}, epoch=5)
    assert trainer.checkpoints.best["value"] == 0.4 and trainer.checkpoints.best["kept"]["r2"]["epoch"] == 4
