"""16-bit, 32-bit and float images reach the model scaled by their range in every lazy path
(image folder, tar shards, webdataset shards, image-path CSV), checked against a direct float
conversion of the stored pixels."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixhub.config import DataConfig
from mixhub.data import build_data
from mixhub.data.lazy import LazyImageDataset, to_rgb

SIZE = 12
MEAN = np.asarray([0.485, 0.456, 0.406], np.float32)
STD = np.asarray([0.229, 0.224, 0.225], np.float32)
# a pixel's 8-bit rounding error, in normalised units
TOL = 0.5 / 255 / float(STD.min()) + 1e-5


def _pixels(mode: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(stored array, its intensities in [0, 1] computed directly)."""
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        a = rng.integers(0, 65536, (SIZE, SIZE)).astype(np.uint16)
        a[0, :3] = [300, 30000, 65535]
        return a, a / 65535.0
    if mode == "I":
        a = rng.integers(-(2**20), 2**31 - 1, (SIZE, SIZE)).astype(np.int32)
        return a, np.clip(a / (2**31 - 1), 0.0, 1.0)
    a = rng.uniform(-0.2, 1.3, (SIZE, SIZE)).astype(np.float32)
    return a, np.clip(a.astype(np.float64), 0.0, 1.0)


def _encode(a: np.ndarray, mode: str) -> tuple[bytes, str]:
    buf = io.BytesIO()
    fmt = "png" if mode == "I;16" else "tiff"
    Image.fromarray(a).save(buf, format=fmt.upper())
    assert Image.open(io.BytesIO(buf.getvalue())).mode == mode
    return buf.getvalue(), fmt


def _expected(unit: np.ndarray) -> torch.Tensor:
    x = np.repeat(unit[:, :, None], 3, axis=2).astype(np.float32)
    return torch.from_numpy(((x - MEAN) / STD).transpose(2, 0, 1).copy())


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_to_rgb_scales_by_the_mode_range(mode):
    a, unit = _pixels(mode, 0)
    data, _ = _encode(a, mode)
    rgb = np.asarray(to_rgb(Image.open(io.BytesIO(data))))
    assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[:, :, 0], np.rint(unit * 255).astype(np.uint8))
    assert np.array_equal(rgb[:, :, 0], rgb[:, :, 2])
    if mode == "I;16":
        assert rgb[0, :3, 0].tolist() == [1, 117, 255]  # 300, 30000, 65535; convert("RGB") gives 255 for all


def _write_all(root: Path, mode: str) -> dict[str, np.ndarray]:
    """The same 6 images (2 classes) as a folder, one tar, webdataset shards and a CSV of paths."""
    truth: dict[str, np.ndarray] = {}
    (root / "wds").mkdir(parents=True)
    import webdataset as wds

    rows = ["file,label"]
    with tarfile.open(root / "all.tar", "w") as tf, wds.TarWriter(str(root / "wds" / "shard-000.tar")) as sink:
        for i in range(6):
            c = "ab"[i % 2]
            a, unit = _pixels(mode, i + 1)
            data, ext = _encode(a, mode)
            (root / "folder" / c).mkdir(parents=True, exist_ok=True)
            name = f"{c}{i}.{ext}"
            (root / "folder" / c / name).write_bytes(data)
            tf.add(root / "folder" / c / name, arcname=f"{c}/{name}")
            sink.write({"__key__": f"k{i}", ext: data, "cls": i % 2})
            rows.append(f"folder/{c}/{name},{i % 2}")
            truth[name.split(".")[0]] = unit
            truth[f"k{i}"] = unit
    (root / "paths.csv").write_text("\n".join(rows) + "\n")
    return truth


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_every_lazy_path_scales_high_bit_depth_images(tmp_path, mode):
    truth = _write_all(tmp_path, mode)
    common = {"image_size": SIZE, "val_frac": 0.0, "test_frac": 0.0, "transform": {"crop_pct": 1.0, "interpolation": "bilinear"}}
    names = {
        "folder": DataConfig(name=f"imagefolder:{tmp_path / 'folder'}", **common),
        "tar": DataConfig(name=f"tar:{tmp_path / 'all.tar'}", **common),
        "webdataset": DataConfig(name=f"webdataset:{tmp_path}/wds/shard-000.tar", **common),
        "csv": DataConfig(name=f"csv:{tmp_path / 'paths.csv'}", image_column="file", task="classification", **common),
    }
    for path, cfg in names.items():
        d = build_data(cfg, 0)
        assert len(d.train) == 6, path
        ds = LazyImageDataset(d.train.source, d.train.indices, d.train.target_tensor, d.val.transform)
        for i in range(len(ds)):
            key = Path(ds.name(i).rsplit(":", 1)[-1]).name.split(".")[0]
            x, _ = ds[i]
            err = float((x - _expected(truth[key])).abs().max())
            assert err <= TOL, f"{path} {mode} {ds.name(i)}: off by {err:.4f}"
