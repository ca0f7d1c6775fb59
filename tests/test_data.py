import numpy as np
import pytest
import torch

from mixhub import DataError
from mixhub.config import DataConfig
from mixhub.data import build_data, list_datasets


def test_digits_split_is_seeded_and_disjoint():
    a = build_data(DataConfig(name="digits"), 0)
    b = build_data(DataConfig(name="digits"), 0)
    c = build_data(DataConfig(name="digits"), 1)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    x, y = a.train[0]
    assert x.shape == (3, 32, 32) and y.dtype == torch.long
    assert torch.equal(a.train_targets, b.train_targets)
    assert not torch.equal(a.train_targets, c.train_targets)
    assert a.num_classes == 10 and a.task == "classification"


def test_digits_low_data_and_label_noise():
    full = build_data(DataConfig(name="digits"), 0)
    low = build_data(DataConfig(name="digits", train_frac=0.2), 0)
    assert abs(len(low.train) - 0.2 * len(full.train)) < 15
    assert torch.bincount(low.train_targets, minlength=10).min() > 0
    noisy = build_data(DataConfig(name="digits", label_noise=0.3), 0)
    changed = (noisy.train_targets != full.train_targets).float().mean()
    assert 0.2 < float(changed) < 0.4


def test_regression_sets():
    d = build_data(DataConfig(name="diabetes"), 0)
    assert d.task == "regression" and d.input_shape == (10,) and d.num_classes is None
    s = build_data(DataConfig(name="synthetic-regression", options={"kind": "tanh"}), 0)
    x, y = s.train[0]
    assert x.shape == (5,) and y.dtype == torch.float32
    with pytest.raises(DataError, match="unknown option"):
        build_data(DataConfig(name="synthetic-regression", options={"knd": "tanh"}), 0)


def test_unknown_dataset_suggests():
    with pytest.raises(DataError, match="did you mean 'digits'"):
        build_data(DataConfig(name="digit"), 0)
    assert "digits" in list_datasets()


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(10):
            Image.fromarray((rng.random((20, 20, 3)) * 255).astype(np.uint8)).save(tmp_path / c / f"{i}.png")
    d = build_data(DataConfig(name=f"imagefolder:{tmp_path}", image_size=16), 0)
    assert d.num_classes == 2 and d.info["classes"] == ["cat", "dog"]
    assert d.train[0][0].shape == (3, 16, 16)
    (tmp_path / "dog" / "broken.png").write_bytes(b"not a png")
    d = build_data(DataConfig(name=f"imagefolder:{tmp_path}", image_size=16, val_frac=0.0, test_frac=0.0), 0)  # lazy: listed, not decoded
    broken = next(i for i in range(len(d.train)) if d.train.name(i).endswith("broken.png"))
    with pytest.raises(DataError, match="broken.png"):
        d.train[broken]


def test_missing_folders_and_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_data(DataConfig(name=f"imagefolder:{tmp_path / 'nope'}"), 0)
    with pytest.raises(DataError, match="does not exist"):
        build_data(DataConfig(name=f"csv:{tmp_path / 'nope.csv'}"), 0)
    with pytest.raises(DataError, match="never downloads"):
        build_data(DataConfig(name="torchvision:MNIST", root=str(tmp_path)), 0)


def test_csv_table(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((60, 3))
    rows = ["a,b,c,y"] + [f"{r[0]},{r[1]},{r[2]},{int(r[0] > 0.5)}" for r in x]
    p = tmp_path / "t.csv"
    p.write_text("\n".join(rows))
    d = build_data(DataConfig(name=f"csv:{p}"), 0)
    assert d.task == "classification" and d.num_classes == 2 and d.input_shape == (3,)
    r = build_data(DataConfig(name=f"csv:{p}", task="regression", target="a"), 0)
    assert r.task == "regression"
    p.write_text("a,y\n1,2\nnan,3\n")
    with pytest.raises(DataError, match="non-finite value at data row 2"):
        build_data(DataConfig(name=f"csv:{p}"), 0)


def test_empty_image_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match="holds no image files"):
        build_data(DataConfig(name=f"imagefolder:{tmp_path}"), 0)


def test_non_finite_regression_labels_are_refused(tmp_path):
    from mixhub.trainer import train

    p = tmp_path / "t.csv"
    rows = [f"{i},{i * 2},{'inf' if i == 7 else i * 0.5}" for i in range(30)]
    p.write_text("a,b,y\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match="non-finite value at data row 8"):
        train({"data": {"name": f"csv:{p}", "task": "regression"}, "model": {"name": "mlp"}}, out=tmp_path / "r")
    assert not (tmp_path / "r").exists()
