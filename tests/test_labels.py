"""The task kind of a table and the labels of its classes: detection with a reason, the
quantity warning, and the label mapping saved with a run and used by ``mixhub eval``."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from mixhub.checkpoint import load_checkpoint
from mixhub.cli import main
from mixhub.config import DataConfig
from mixhub.data import build_data
from mixhub.errors import DataError
from mixhub.trainer import train


def _table(path: Path, y: np.ndarray, seed: int = 0, column: str = "y") -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(y), 3)) + np.asarray(y, dtype=float)[:, None] * 0.5
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["a", "b", "c", column])
        for row, t in zip(x, y):
            w.writerow([f"{v:.5f}" for v in row] + [int(t) if float(t).is_integer() else t])
    return path


# ------------------------------------------------------------------------------ task detection
def test_task_detection_gives_its_reason(tmp_path, caplog):
    ids = _table(tmp_path / "ids.csv", np.arange(200) % 4)
    d = build_data(DataConfig(name=f"csv:{ids}"), 0)
    assert d.task == "classification" and d.num_classes == 4
    assert d.info["task_reason"] == "data.task=auto: column 'y' holds 4 distinct integers (at most 50)"
    real = _table(tmp_path / "real.csv", np.linspace(0, 1, 100))
    d = build_data(DataConfig(name=f"csv:{real}"), 0)
    assert d.task == "regression" and "non-integer" in d.info["task_reason"]
    wide = _table(tmp_path / "wide.csv", np.arange(300) % 60)
    d = build_data(DataConfig(name=f"csv:{wide}"), 0)
    assert d.task == "regression" and "60 distinct integers (more than 50)" in d.info["task_reason"]
    assert "looks like a quantity" not in caplog.text


def test_integer_ages_warn_that_they_look_like_a_quantity(tmp_path, caplog):
    rng = np.random.default_rng(1)
    ages = rng.choice(np.arange(18, 53), size=300)  # 35 distinct ages, ~8.6 rows each
    p = _table(tmp_path / "ages.csv", ages, column="age")
    with caplog.at_level(logging.WARNING, logger="mixhub"):
        d = build_data(DataConfig(name=f"csv:{p}"), 0)
    assert d.task == "classification" and d.num_classes == len(np.unique(ages))
    assert "column 'age' as 35 classes, but it looks like a quantity (35 distinct integers from 18 to 52" in caplog.text
    assert "data.task=regression" in caplog.text and "looks like a quantity" in d.info["task_reason"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mixhub"):
        r = build_data(DataConfig(name=f"csv:{p}", task="regression"), 0)
        c = build_data(DataConfig(name=f"csv:{p}", task="classification"), 0)
    assert r.task == "regression" and r.info["task_reason"] == "data.task=regression"
    assert c.task == "classification" and not caplog.text  # the explicit override does not warn
    # class ids 0..K-1 with few rows each, or a few classes, are not a quantity
    with caplog.at_level(logging.WARNING, logger="mixhub"):
        build_data(DataConfig(name=f"csv:{_table(tmp_path / 'ids.csv', np.arange(120) % 40)}"), 0)
        build_data(DataConfig(name=f"csv:{_table(tmp_path / 'few.csv', 18 + np.arange(40) % 5)}"), 0)
    assert not caplog.text


# ------------------------------------------------------------------------------ label mapping
TINY = {
    "seed": 0,
    "model": {"name": "mlp"},
    "train": {"epochs": 2, "batch_size": 16, "lr": 0.01, "plots": False, "device": "cpu"},
}


def test_remapped_labels_are_saved_and_used_by_eval(tmp_path, capsys):
    y = np.where(np.arange(240) % 2 == 0, -1, 7)
    p = _table(tmp_path / "t.csv", y)
    out = tmp_path / "run"
    res = train({**TINY, "data": {"name": f"csv:{p}"}}, out=out, quiet=False)
    start = capsys.readouterr().err
    assert "task classification: data.task=auto: column 'y' holds 2 distinct integers (at most 50)" in start
    assert "classes (label->output): -1->0, 7->1; saved with the run" in start
    assert res.summary["classes"] == [-1, 7]
    assert json.loads((out / "summary.json").read_text())["classes"] == [-1, 7]
    for name in ("last.pt", "best.pt", "export.pt"):
        assert load_checkpoint(out / "checkpoints" / name)["classes"] == [-1, 7], name
    # a test file holding label 7 only: its own sorted labels would make 7 class id 0 (the model's -1)
    only7 = _table(tmp_path / "only7.csv", np.full(100, 7), seed=5)
    preds = tmp_path / "preds.csv"
    capsys.readouterr()
    assert main(["eval", str(out / "checkpoints/best.pt"), f"data.name=csv:{only7}", "data.test_frac=0.5", "--predictions", str(preds)]) == 0
    metrics = json.loads(capsys.readouterr().out.split("predictions:")[0])["test"]
    rows = list(csv.DictReader(open(preds)))
    assert rows and {r["target"] for r in rows} == {"7"} and {r["prediction"] for r in rows} <= {"-1", "7"}
    assert metrics["acc"] == pytest.approx(np.mean([r["prediction"] == "7" for r in rows]))
    from mixhub.trainer import Trainer

    rebuilt = Trainer.from_checkpoint(out / "checkpoints/best.pt", {"data": {"name": f"csv:{only7}"}})
    assert rebuilt.bundle.num_classes == 2 and set(rebuilt.bundle.test.target_tensor.tolist()) == {1}  # the model's id of 7
    logits_ok = torch.tensor([float(r["probability"]) for r in rows])
    assert bool(((logits_ok >= 0.5) & (logits_ok <= 1.0)).all())
    # a label the model never learnt is named
    other = _table(tmp_path / "other.csv", np.asarray([7, 3] * 50), seed=6)
    assert main(["eval", str(out / "checkpoints/best.pt"), f"data.name=csv:{other}"]) == 2
    assert "labels [3] that data.classes lacks" in capsys.readouterr().err


def test_data_classes_fixes_the_output_order(tmp_path):
    y = np.where(np.arange(60) % 2 == 0, -1, 7)
    p = _table(tmp_path / "t.csv", y)
    d = build_data(DataConfig(name=f"csv:{p}", classes=[7, -1, 5]), 0)
    assert d.num_classes == 3 and d.info["classes"] == [7, -1, 5]
    found = build_data(DataConfig(name=f"csv:{p}"), 0)
    # the same rows, relabelled: old id 0 (-1) -> 1, old id 1 (7) -> 0
    assert torch.equal(d.train.target_tensor, 1 - found.train.target_tensor)
    assert torch.equal(d.train_targets, d.train.target_tensor)
    with pytest.raises(DataError, match=r"labels \[7\] that data.classes lacks"):
        build_data(DataConfig(name=f"csv:{p}", classes=[-1]), 0)


def _folder(root: Path, classes: tuple[str, ...], per_class: int = 12) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(root / c / f"{i}.png")
    return root


def test_eval_on_data_with_another_class_count_names_both_counts(tmp_path, capsys):
    # noisy-synthetic: 10 classes of 40 features, which name no labels; a CSV of 40 features and 3 classes
    tab = {"data": {"name": "noisy-synthetic"}, "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
           "train": {"epochs": 1, "batch_size": 32, "max_steps_per_epoch": 2, "plots": False, "device": "cpu"}}
    out = tmp_path / "tab"
    train(tab, out=out)
    rng = np.random.default_rng(0)
    rows = ["," .join([f"f{i}" for i in range(40)] + ["y"])]
    rows += [",".join([f"{v:.3f}" for v in rng.normal(size=40)] + [str(k % 3)]) for k in range(90)]
    (tmp_path / "three.csv").write_text("\n".join(rows) + "\n")
    capsys.readouterr()
    assert main(["eval", str(out / "checkpoints/best.pt"), f"data.name=csv:{tmp_path / 'three.csv'}"]) == 2
    err = capsys.readouterr().err
    assert "trained for 10 classes, but the data" in err and "have 3 classes" in err
    assert "size mismatch" not in err
    tiny = {"model": {"name": "smallcnn", "kwargs": {"widths": [8, 16]}},
            "train": {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 2, "plots": False, "device": "cpu"}}
    three = _folder(tmp_path / "three", ("ant", "bee", "cow"))
    # a run with named classes: the other data's labels are named against the model's
    named = tmp_path / "named"
    train({**tiny, "data": {"name": f"imagefolder:{three}", "image_size": 16, "num_workers": 0}}, out=named)
    two = _folder(tmp_path / "two", ("ant", "dog"))
    assert main(["eval", str(named / "checkpoints/best.pt"), f"data.name=imagefolder:{two}", "data.num_workers=0", "train.batch_size=4"]) == 2
    err = capsys.readouterr().err
    assert "labels ['dog'] that data.classes lacks (the data have 2 classes; data.classes, the model's outputs, has 3" in err


def test_data_classes_in_the_data_own_order_needs_no_relabelling(tmp_path):
    class Plain(torch.utils.data.Dataset):  # a plugin's dataset without remap_targets
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.zeros(2), torch.tensor(i % 2)

    from mixhub.data import DataBundle
    from mixhub.data.base import apply_class_order

    ds = Plain()
    bundle = DataBundle(ds, ds, ds, "classification", 2, (2,), torch.tensor([0, 1, 0, 1]), info={"classes": ["a", "b"]})
    assert apply_class_order(bundle, ["a", "b"]).num_classes == 2
    with pytest.raises(DataError, match="cannot be relabelled"):
        apply_class_order(bundle, ["b", "a"])
