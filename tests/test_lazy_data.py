"""Lazily loaded image datasets on small generated folders of real image files: layouts, tar and
webdataset shards, timm transforms, albumentations files, image regression from CSV, datasets from
plugin packages, bad files, loaders (workers, seeds, extra indices), exact resume, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixhub.config import DataConfig, ModelConfig
from mixhub.data import build_data
from mixhub.data.lazy import LazyImageDataset, sample_seed
from mixhub.data.loader import (
    BatchKeys,
    Collate,
    KeyedDataset,
    default_num_workers,
    eval_loader,
    resolve_num_workers,
    train_loader,
)
from mixhub.errors import DataError
from mixhub.testing import model_fingerprint
from mixhub.trainer import EpochSampler, Trainer, train

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("ant", "bee", "cow")


def _image(rng: np.random.Generator, size: int = 24) -> np.ndarray:
    return (rng.random((size, size, 3)) * 255).astype(np.uint8)


def make_folder(root: Path, per_class: int = 8, classes: tuple[str, ...] = CLASSES, seed: int = 0, size: int = 24) -> dict[str, np.ndarray]:
    """Class folders of real PNG/JPEG files; returns the PNGs' pixels by path (JPEG is lossy)."""
    rng = np.random.default_rng(seed)
    pixels = {}
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = _image(rng, size)
            path = root / c / f"{c}{i}.{'png' if i % 2 == 0 else 'jpg'}"
            Image.fromarray(arr).save(path)
            pixels[str(path)] = arr
    return pixels


def folder_config(root: Path, **data: object) -> dict:
    return {
        "seed": 0,
        "data": {"name": f"imagefolder:{root}", "image_size": 16, "num_workers": 0, **data},
        "model": {"name": "smallcnn", "kwargs": {"widths": [8, 16]}},
        "train": {"epochs": 1, "batch_size": 8, "plots": False, "device": "cpu"},
    }


def plain_eval(arr: np.ndarray, size: int) -> torch.Tensor:
    """resize + centre crop at crop_pct=1 (a plain resize) + ImageNet normalisation, computed directly."""
    img = Image.fromarray(arr).resize((size, size), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / 255.0
    mean = np.asarray([0.485, 0.456, 0.406], np.float32)
    std = np.asarray([0.229, 0.224, 0.225], np.float32)
    return torch.from_numpy(((x - mean) / std).transpose(2, 0, 1).copy())


# ------------------------------------------------------------------------------ layouts
def test_folder_is_listed_not_decoded(tmp_path, monkeypatch):
    make_folder(tmp_path)
    opened = []
    import PIL.Image

    real = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: opened.append(a) or real(*a, **k))
    d = build_data(DataConfig(name=f"imagefolder:{tmp_path}", image_size=16), 0)
    assert opened == []  # building decodes nothing
    assert d.num_classes == 3 and d.info["classes"] == list(CLASSES) and d.info["lazy"]
    assert len(d.train) + len(d.val) + len(d.test) == 24
    for split in (d.train, d.val, d.test):  # stratified: every class in every split
        assert set(split.target_tensor.tolist()) == {0, 1, 2}
    x, y = d.train[0]
    assert len(opened) == 1 and x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert y == d.train_targets[0]
    # the label is the file's folder
    assert CLASSES[int(y)] == Path(d.train.name(0)).parent.name


def test_train_val_layout_gives_the_val_split(tmp_path):
    make_folder(tmp_path / "train", per_class=6)
    make_folder(tmp_path / "val", per_class=2, seed=1)
    d = build_data(DataConfig(name=f"imagefolder:{tmp_path}", image_size=16), 0)
    assert len(d.train) == 18 and len(d.val) == 6
    assert all("/val/" in d.val.name(i) for i in range(len(d.val)))
    assert d.test is d.val and "no test/" in d.info["test_split"]
    for i in range(len(d.val)):
        assert CLASSES[int(d.val.target_tensor[i])] == Path(d.val.name(i)).parent.name
    make_folder(tmp_path / "test", per_class=1, classes=("bee",), seed=2)
    d = build_data(DataConfig(name=f"imagefolder:{tmp_path}", image_size=16), 0)
    assert len(d.test) == 1 and int(d.test.target_tensor[0]) == 1  # the training folder's class map
    make_folder(tmp_path / "val", per_class=1, classes=("dog",), seed=3)
    with pytest.raises(DataError, match="'dog' is not a class of the training folder"):
        build_data(DataConfig(name=f"imagefolder:{tmp_path}", image_size=16), 0)


def test_empty_class_folder_and_unknown_option_are_errors(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "emu").mkdir()
    with pytest.raises(DataError, match="emu.*holds no image files"):
        build_data(DataConfig(name=f"imagefolder:{tmp_path}"), 0)
    (tmp_path / "emu").rmdir()
    with pytest.raises(DataError, match=r"data.options.colour: unknown option for dataset 'imagefolder:.*takes no options"):
        build_data(DataConfig(name=f"imagefolder:{tmp_path}", options={"colour": 1}), 0)
    with pytest.raises(DataError, match=r"data.options.shuffle"):
        build_data(DataConfig(name="digits", options={"shuffle": True}), 0)


def test_tar_shards(tmp_path):
    src = tmp_path / "src"
    pixels = make_folder(src, per_class=4)
    one = tmp_path / "all.tar"
    with tarfile.open(one, "w") as tf:
        for c in CLASSES:
            for f in sorted((src / c).iterdir()):
                tf.add(f, arcname=f"{c}/{f.name}")
    d = build_data(DataConfig(name=f"tar:{one}", image_size=24, val_frac=0.0, test_frac=0.0, transform={"crop_pct": 1.0, "interpolation": "bilinear"}), 0)
    assert d.num_classes == 3 and len(d.train) == 12
    d.val.set_epoch(0)
    ds = LazyImageDataset(d.train.source, d.train.indices, d.train.target_tensor, d.val.transform)
    for i in range(len(ds)):
        member = ds.name(i).split(":", 1)[1]
        c, f = member.split("/")
        assert CLASSES[int(ds.target_tensor[i])] == c
        if f.endswith(".png"):
            assert torch.allclose(ds[i][0], plain_eval(pixels[str(src / c / f)], 24), atol=1e-5)
    per_class = tmp_path / "shards"
    per_class.mkdir()
    for c in CLASSES:
        with tarfile.open(per_class / f"{c}.tar", "w") as tf:
            for f in sorted((src / c).iterdir()):
                tf.add(f, arcname=f.name)
    d2 = build_data(DataConfig(name=f"tar:{per_class}", image_size=16), 0)
    assert d2.info["classes"] == list(CLASSES) and len(d2.train) + len(d2.val) + len(d2.test) == 12
    assert d2.train[0][0].shape == (3, 16, 16)


def test_webdataset_shards(tmp_path):
    import webdataset as wds

    rng = np.random.default_rng(0)
    truth = {}
    for s in range(2):
        with wds.TarWriter(str(tmp_path / f"shard-{s:03d}.tar")) as sink:
            for k in range(6):
                arr = _image(rng, 20)
                buf = __import__("io").BytesIO()
                Image.fromarray(arr).save(buf, format="PNG")
                key = f"s{s}k{k}"
                label = (s * 6 + k) % 3
                sink.write({"__key__": key, "png": buf.getvalue(), "cls": label})
                truth[key] = (arr, label)
    cfg = DataConfig(name=f"webdataset:{tmp_path}/shard-{{000..001}}.tar", image_size=20, val_frac=0.0, test_frac=0.0, transform={"crop_pct": 1.0, "interpolation": "bilinear"})
    d = build_data(cfg, 0)
    assert len(d.train) == 12 and d.num_classes == 3
    ds = LazyImageDataset(d.train.source, d.train.indices, d.train.target_tensor, d.val.transform)
    for i in range(len(ds)):
        key = ds.name(i).rsplit(":", 1)[1].split(".")[0]
        arr, label = truth[key]
        x, y = ds[i]
        assert int(y) == label
        assert torch.allclose(x, plain_eval(arr, 20), atol=1e-5)
    with pytest.raises(DataError, match="no shard matches"):
        build_data(DataConfig(name=f"webdataset:{tmp_path}/none-*.tar"), 0)


# ------------------------------------------------------------------------------ transforms
def test_timm_transform_options_reach_timm(tmp_path):
    from timm.data.auto_augment import RandAugment
    from timm.data.random_erasing import RandomErasing
    from timm.data.transforms import RandomResizedCropAndInterpolation

    make_folder(tmp_path)
    cfg = DataConfig(
        name=f"imagefolder:{tmp_path}", image_size=16,
        transform={"auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.25, "scale": (0.5, 1.0), "ratio": (0.8, 1.25), "hflip": 0.0, "vflip": 1.0, "crop_pct": 0.5},
    )
    d = build_data(cfg, 0, model=ModelConfig(name="vit_tiny_patch16_224"))
    ops = list(d.train.transform.transforms)
    crop = next(t for t in ops if isinstance(t, RandomResizedCropAndInterpolation))
    assert crop.scale == (0.5, 1.0) and crop.ratio == (0.8, 1.25)
    assert any(isinstance(t, RandAugment) for t in ops)
    erase = next(t for t in ops if isinstance(t, RandomErasing))
    assert erase.probability == 0.25
    # mean/std from the model's pretrained config (this ViT normalises with 0.5, not ImageNet's)
    assert d.info["transform"]["mean"] == [0.5, 0.5, 0.5] and d.info["transform"]["std"] == [0.5, 0.5, 0.5]
    # eval: resize to size / crop_pct, centre crop
    resize = d.val.transform.transforms[0]
    assert resize.size in (32, [32], (32, 32))
    explicit = build_data(DataConfig(name=f"imagefolder:{tmp_path}", image_size=16, transform={"mean": (0.1, 0.2, 0.3), "std": (1, 1, 1)}), 0, model=ModelConfig(name="vit_tiny_patch16_224"))
    assert explicit.info["transform"]["mean"] == [0.1, 0.2, 0.3]


def test_eval_transform_is_resize_and_centre_crop(tmp_path):
    pixels = make_folder(tmp_path, per_class=2, size=32)
    d = build_data(DataConfig(name=f"imagefolder:{tmp_path}", image_size=16, val_frac=0.0, test_frac=0.0, transform={"crop_pct": 0.5, "interpolation": "bilinear"}), 0)
    ev = LazyImageDataset(d.train.source, d.train.indices, d.train.target_tensor, d.val.transform)
    mean = np.asarray([0.485, 0.456, 0.406], np.float32)
    std = np.asarray([0.229, 0.224, 0.225], np.float32)
    for i in range(len(ev)):
        if not ev.name(i).endswith(".png"):
            continue
        arr = pixels[ev.name(i)]  # 32 px: resize to 16 / 0.5 = 32 (no-op), centre crop 16 = pixels 8..24
        want = ((arr[8:24, 8:24].astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)
        assert torch.allclose(ev[i][0], torch.from_numpy(want.copy()), atol=1e-5)


def test_albumentations_pipeline_from_a_file(tmp_path):
    import albumentations as A

    pixels = make_folder(tmp_path / "imgs", per_class=2, size=16)
    path = tmp_path / "aug.json"
    A.save(A.Compose([A.HorizontalFlip(p=1.0)]), str(path))
    d = build_data(DataConfig(name=f"imagefolder:{tmp_path / 'imgs'}", image_size=16, val_frac=0.0, test_frac=0.0, albumentations=str(path)), 0)
    mean = np.asarray([0.485, 0.456, 0.406], np.float32)
    std = np.asarray([0.229, 0.224, 0.225], np.float32)
    checked = 0
    for i in range(len(d.train)):
        if d.train.name(i).endswith(".png"):
            want = ((pixels[d.train.name(i)][:, ::-1].astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)
            assert torch.allclose(d.train[i][0], torch.from_numpy(want.copy()), atol=1e-5)
            checked += 1
    assert checked == 3
    # a random pipeline draws from the sample's seed: same (epoch, index) -> same image
    A.save(A.Compose([A.RandomCrop(8, 8), A.Resize(16, 16)]), str(path))
    d = build_data(DataConfig(name=f"imagefolder:{tmp_path / 'imgs'}", image_size=16, albumentations=str(path)), 0)
    assert torch.equal(d.train.load(0, 3)[0], d.train.load(0, 3)[0])
    assert any(not torch.equal(d.train.load(0, 3)[0], d.train.load(0, e)[0]) for e in range(4, 10))
    path.write_text("{not json")
    with pytest.raises(Exception, match="data.albumentations"):
        build_data(DataConfig(name=f"imagefolder:{tmp_path / 'imgs'}", image_size=16, albumentations=str(path)), 0)


# ------------------------------------------------------------------------------ image regression
def _image_csv(tmp_path: Path, n: int = 24) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    rows, targets = ["file,angle,scale"], []
    for i in range(n):
        Image.fromarray(_image(rng, 16)).save(tmp_path / "img" / f"{i}.png")
        t = (float(rng.normal()), float(rng.random()))
        targets.append(t)
        rows.append(f"img/{i}.png,{t[0]},{t[1]}")
    p = tmp_path / "labels.csv"
    p.write_text("\n".join(rows) + "\n")
    return p, np.asarray(targets, dtype=np.float32)


def test_image_regression_from_csv(tmp_path):
    p, targets = _image_csv(tmp_path)
    d = build_data(DataConfig(name=f"csv:{p}", image_column="file", image_size=16), 0)
    assert d.task == "regression" and d.num_classes is None and d.target_dim == 2
    for i in range(len(d.train)):
        row = int(Path(d.train.name(i)).stem)
        assert torch.allclose(d.train_targets[i], torch.from_numpy(targets[row]))
    one = build_data(DataConfig(name=f"csv:{p}", image_column="file", target="scale", image_size=16), 0)
    assert one.train_targets.dim() == 1
    p.write_text("file,angle\nimg/0.png,1.0\nimg/missing.png,2.0\n")
    with pytest.raises(DataError, match="missing.png.*does not exist"):
        build_data(DataConfig(name=f"csv:{p}", image_column="file"), 0)
    p.write_text("file,angle\nimg/0.png,big\nimg/1.png,2.0\n")
    with pytest.raises(DataError, match="'angle' is not numeric"):
        build_data(DataConfig(name=f"csv:{p}", image_column="file"), 0)
    with pytest.raises(DataError, match="data.image_column: column 'path'"):
        build_data(DataConfig(name=f"csv:{p}", image_column="path"), 0)


# ------------------------------------------------------------------------------ loaders
def test_loader_defaults():
    from mixhub.data.base import ArrayDataset

    arrays = ArrayDataset(np.zeros((4, 2), np.float32), np.zeros(4, np.int64))
    lazy = LazyImageDataset.__new__(LazyImageDataset)
    assert resolve_num_workers(DataConfig(), arrays) == 0
    assert resolve_num_workers(DataConfig(), lazy) == default_num_workers() == max(1, min(8, len(os.sched_getaffinity(0))))
    assert resolve_num_workers(DataConfig(num_workers=3), arrays) == 3


def test_augmentations_do_not_depend_on_workers_or_order(tmp_path):
    make_folder(tmp_path)
    cfg = DataConfig(name=f"imagefolder:{tmp_path}", image_size=16, transform={"auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.5})
    d = build_data(cfg, 0)

    def epoch_batches(workers: int, epoch: int, skip: int = 0) -> list:
        s = EpochSampler(len(d.train), 0, "epoch", 4, True)
        s.epoch, s.skip_batches = epoch, skip
        dl = train_loader(d.train, s, 4, DataConfig(num_workers=workers, persistent_workers=False), seed=5)
        return [(b.index.clone(), b.inputs.clone()) for b in dl]

    a, b = epoch_batches(0, 1), epoch_batches(2, 1)
    assert len(a) == len(b) == len(d.train) // 4 >= 3
    for (ia, xa), (ib, xb) in zip(a, b):
        assert torch.equal(ia, ib) and torch.equal(xa, xb)
    resumed = epoch_batches(2, 1, skip=2)  # a mid-epoch resume sees the same later batches
    for (ia, xa), (ib, xb) in zip(a[2:], resumed):
        assert torch.equal(ia, ib) and torch.equal(xa, xb)
    other = epoch_batches(0, 2)  # another epoch draws other augmentations
    x1 = {int(i): x for ia, xa in a for i, x in zip(ia, xa)}
    x2 = {int(i): x for ia, xa in other for i, x in zip(ia, xa)}
    common = set(x1) & set(x2)
    assert len(common) >= 6 and sum(not torch.equal(x1[k], x2[k]) for k in common) >= len(common) - 1
    assert sample_seed(5, 1, 3) == sample_seed(5, 1, 3) != sample_seed(5, 2, 3) != sample_seed(5, 1, 3, role=1)


def test_seeded_sets_the_three_cpu_generators_and_restores_them(monkeypatch):
    import random
    import traceback

    import numpy as np

    from mixhub.data.lazy import seeded

    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    before = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    stacks = []
    monkeypatch.setattr(traceback, "format_stack", lambda *a, **k: stacks.append(1) or [])
    with seeded(123):
        inside = (random.random(), np.random.rand(), torch.rand(3))
    traced = len(stacks)
    after = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    assert inside[:2] == (random.random(), np.random.rand()) and torch.equal(inside[2], torch.rand(3))
    assert after[:2] == before[:2] and torch.equal(after[2], before[2])  # the outer streams go on untouched
    # no lazy device seeding (torch.manual_seed queues one per device module, formatting a stack
    # trace each time: a third of a small image's loading time in the workers)
    assert traced == 0


def test_extra_indices_are_loaded_with_the_anchors(tmp_path):
    make_folder(tmp_path)
    d = build_data(DataConfig(name=f"imagefolder:{tmp_path}", image_size=16), 0)
    seen = []

    def extend(index, epoch, generator):
        seen.append((index.clone(), epoch))
        return {"pairs": torch.randint(0, len(d.train), (len(index),), generator=generator)}

    s = EpochSampler(len(d.train), 0, "epoch", 4, True)
    dl = train_loader(d.train, s, 4, DataConfig(num_workers=2, persistent_workers=False), seed=1, extend=extend, extend_names=["pairs"])
    batches = list(dl)
    keys = BatchKeys(s, 4, True, extend=extend, names=["pairs"], seed=1)
    for pos, b in enumerate(batches):
        part = b.extras["extended"]["pairs"]
        want = torch.randint(0, len(d.train), (4,), generator=keys.generator(0, pos))
        assert torch.equal(part.index, want)
        for r in range(4):  # decoded in the workers, with the partner's own augmentation draw (role 1)
            x, y = d.train.load(int(want[r]), 0, role=1)
            assert torch.equal(part.inputs[r], x) and part.targets[r] == y
        assert torch.equal(b.index, seen[pos][0])


def test_cmixup_partners_come_from_the_loader(tmp_path, monkeypatch):
    import mixhub_cmixup.functional as F

    p, _ = _image_csv(tmp_path)
    cfg = {
        "seed": 0, "plugins": ["cmixup"], "cmixup": {"bandwidth": 0.5},
        "data": {"name": f"csv:{p}", "image_column": "file", "target": "angle", "image_size": 16, "num_workers": 1},
        "model": {"name": "smallcnn", "kwargs": {"widths": [8, 16]}},
        "train": {"epochs": 1, "batch_size": 8, "plots": False, "device": "cpu"},
    }
    t = Trainer(cfg, write=False)
    monkeypatch.setattr(Trainer, "fetch", lambda self, index: pytest.fail("partners fetched one by one"))
    t.sampler.epoch = 0
    first = next(iter(t.loader))
    part = first.extras["extended"]["cmixup"]
    keys = t.loader.batch_sampler
    labels = t.state.train_targets.float()[:, None]
    want = F.sample_partners(labels[first.index], labels, 0.5, keys.generator(0, 0), "gaussian")
    assert torch.equal(part.index, want)
    t.fit()  # every partner arrives with its batch


def test_channels_last(tmp_path):
    make_folder(tmp_path)
    t = Trainer(folder_config(tmp_path, channels_last=True), write=False)
    batch = next(iter(t.loader))
    assert batch.inputs.is_contiguous(memory_format=torch.channels_last)
    conv = next(m for m in t.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------ bad data
def test_bad_image_names_the_file_or_is_skipped(tmp_path, caplog):
    imgs = tmp_path / "imgs"
    make_folder(imgs)
    (imgs / "bee" / "broken.png").write_bytes(b"\x89PNG but not really")
    cfg = folder_config(imgs, num_workers=1, val_frac=0.1, test_frac=0.1)
    cfg["train"].update(batch_size=5, drop_last=False)
    with pytest.raises(DataError, match="broken.png"):
        train(cfg, out=tmp_path / "r1")
    cfg = folder_config(imgs, on_bad_sample="skip", val_frac=0.1, test_frac=0.1, num_workers=1)
    cfg["train"]["epochs"] = 2
    cfg["train"]["batch_size"] = 5
    cfg["train"]["drop_last"] = False
    res = train(cfg, out=tmp_path / "r2")
    recs = [json.loads(line) for line in (tmp_path / "r2/metrics.jsonl").read_text().splitlines()]
    in_train = any(res.trainer.bundle.train.name(i).endswith("broken.png") for i in range(len(res.trainer.bundle.train)))
    counts = [r["bad_samples"] for r in recs if r["split"] == "train"]
    assert counts == ([1, 1] if in_train else [0, 0])
    assert "skipped" in caplog.text and "broken.png" in caplog.text


def test_corrupt_image_in_a_worker_is_one_line_naming_the_file_and_the_option(tmp_path, capsys):
    from mixhub.cli import main

    imgs = tmp_path / "imgs"
    make_folder(imgs)
    (imgs / "bee" / "broken.png").write_bytes(b"\x89PNG but not really")
    args = [f"data.name=imagefolder:{imgs}", "data.image_size=16", "data.num_workers=1", "data.val_frac=0.1", "data.test_frac=0.1",
            "train.epochs=1", "train.batch_size=5", "train.drop_last=false", "train.plots=false"]
    capsys.readouterr()
    assert main(["train", *args, f"out={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "DataLoader worker" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("mixhub: error: corrupt or unreadable image file") and err.count("mixhub: error") == 1
    assert "broken.png" in last and "data.on_bad_sample=skip" in last


def test_corrupt_jpeg_in_a_loader_worker_names_the_file(tmp_path):
    make_folder(tmp_path)
    good = (tmp_path / "cow" / "cow1.jpg").read_bytes()
    (tmp_path / "cow" / "cow1.jpg").write_bytes(good[: len(good) // 3])
    d = build_data(DataConfig(name=f"imagefolder:{tmp_path}", image_size=16, val_frac=0.0, test_frac=0.0), 0)
    with pytest.raises(Exception, match="cow1.jpg"):
        list(eval_loader(d.train, 4, DataConfig(num_workers=1)))


def test_collate_drops_a_bad_anchor_with_its_pair():
    from mixhub.data.lazy import BadSample

    x = torch.zeros(3, 2, 2)
    items = [(x, torch.tensor(0), 0, 0), (BadSample(1, "f1", "bad"), None, 1, 0), (x, torch.tensor(1), 2, 0)]
    items += [(x, torch.tensor(1), 5, 1), (x, torch.tensor(1), 6, 1), (BadSample(7, "f7", "bad"), None, 7, 1)]
    b = Collate(["p"])(items)
    assert b.index.tolist() == [0] and b.extras["extended"]["p"].index.tolist() == [5]
    assert b.extras["bad_samples"] == ["f1", "f7"]
    assert KeyedDataset  # the loader's dataset wrapper is what yields these items


# ------------------------------------------------------------------------------ datasets from plugin packages
def _toy_package(site: Path) -> None:
    site.mkdir()
    (site / "toyds_pkg.py").write_text(
        "import numpy as np\n"
        "from mixhub.data import ArrayDataset, DataBundle\n"
        "def build(cfg, seed):\n"
        "    rng = np.random.default_rng(seed)\n"
        "    x = rng.normal(size=(60, 4)).astype(np.float32); y = (x[:, 0] > 0).astype(np.int64)\n"
        "    tr = ArrayDataset(x[:40], y[:40])\n"
        "    return DataBundle(train=tr, val=ArrayDataset(x[40:50], y[40:50]), test=ArrayDataset(x[50:], y[50:]),\n"
        "                      task='classification', num_classes=2, input_shape=(4,), train_targets=tr.target_tensor)\n"
        "build.mixhub_options = ('scale',)\n"
    )
    info = site / "toyds-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyds\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mixhub.datasets]\ntoyset = toyds_pkg:build\n")


def test_dataset_from_a_plugin_package(tmp_path, monkeypatch, capsys):
    site = tmp_path / "site"
    _toy_package(site)
    monkeypatch.syspath_prepend(str(site))
    from mixhub.data import list_datasets

    assert "toyset" in list_datasets()
    res = train({"data": {"name": "toyset"}, "model": {"name": "mlp"}, "train": {"epochs": 1, "batch_size": 8, "plots": False}}, out=tmp_path / "r")
    assert res.summary["test"]["acc"] >= 0.0 and res.trainer.bundle.num_classes == 2
    with pytest.raises(DataError, match="data.options.size.*dataset 'toyset'"):
        build_data(DataConfig(name="toyset", options={"size": 2}), 0)
    from mixhub.cli import main

    assert main(["plugins", "list", "--no-import"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("toyset"))
    assert "toyds" in line and "toyds_pkg:build" in line


# ------------------------------------------------------------------------------ exact resume, DDP
def test_mid_epoch_resume_with_augmentation_and_partners_is_exact(tmp_path):
    from mixhub import PluginSpec, hookimpl
    from mixhub.checkpoint import load_checkpoint
    from mixhub.trainer import RunInterrupted

    p, _ = _image_csv(tmp_path, n=32)
    cfg = {
        "seed": 3, "plugins": ["cmixup"], "cmixup": {"bandwidth": 0.5},
        "data": {"name": f"csv:{p}", "image_column": "file", "image_size": 16, "num_workers": 2,
                 "transform": {"auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.5, "scale": (0.3, 1.0)}},
        "model": {"name": "smallcnn", "kwargs": {"widths": [8, 16]}},
        "train": {"epochs": 2, "batch_size": 4, "plots": False, "device": "cpu", "sched": "none", "eval_every": 2},
    }
    straight = train(cfg, out=tmp_path / "a").trainer

    class Stopper:
        PLUGIN = PluginSpec(name="stopper")

        @hookimpl
        def mixhub_after_step(self, state):  # noqa: ANN001
            if state.step == 7:  # epoch 1, mid-epoch, with batches prefetched by the workers
                os.kill(os.getpid(), signal.SIGTERM)

    class Nop:
        PLUGIN = PluginSpec(name="stopper")

    cfg2 = dict(cfg, plugins=["cmixup", "stopper"])
    with pytest.raises(RunInterrupted):
        train(cfg2, {"stopper": Stopper()}, out=tmp_path / "b")
    data = load_checkpoint(tmp_path / "b/checkpoints/last.pt")
    assert data["extra"]["data"]["train_size"] == len(straight.bundle.train) and data["batch_in_epoch"] == 7 - straight.state.steps_per_epoch
    resumed = train(cfg2, {"stopper": Nop()}, out=tmp_path / "b", resume=True).trainer
    a, b = model_fingerprint(straight), model_fingerprint(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process test runs on Linux")
def test_two_process_gloo_training_on_a_folder(tmp_path):
    make_folder(tmp_path / "imgs", per_class=8)
    cfg = folder_config(tmp_path / "imgs", num_workers=1, transform={"hflip": 0.5})
    cfg["train"].update(epochs=2, checkpoint=False)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "tests/ddp_worker.py"), json.dumps(cfg), str(tmp_path)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    sums = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert sums[0] == sums[1], sums


def test_bad_extra_indices_name_the_plugin():
    def extend(index, epoch, generator):
        return {"pairs": torch.full((len(index),), 99)}

    keys = BatchKeys(range(8), 4, True, extend=extend, names=["pairs"], dataset_size=8)
    with pytest.raises(DataError, match=r"plugin 'pairs'.*outside \[0, 8\)"):
        next(iter(keys))
    keys.extend = lambda index, epoch, generator: {"pairs": torch.rand(4)}
    with pytest.raises(DataError, match="plugin 'pairs'.*1-D integer tensor"):
        next(iter(keys))
