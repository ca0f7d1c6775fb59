"""TensorBoard plugin: records written through the dispatcher, read back with TensorBoard's own
``EventAccumulator``."""

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mixhub import PluginHookError
from mixhub.testing import logging_run


def accumulate(path: Path) -> EventAccumulator:
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def small_png(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0, 1])
    fig.savefig(path, dpi=20)
    plt.close(fig)
    return path


def log_a_run(run_dir, config=None):
    png = small_png(run_dir.parent / f"{run_dir.name}-loss.png")
    with logging_run(["tensorboard"], run_dir, config=config) as log:
        log.config({"train": {"lr": 0.1}}, {"tensorboard": "0.1.0"})
        for step, loss in ((2, 1.5), (4, 1.0)):
            log.state.step = step
            log.step({"loss": loss, "lr": 0.1 / step})
        log.epoch({"epoch": 1, "split": "train", "step": 4, "loss": 1.25})
        log.epoch({"epoch": 1, "split": "val", "acc": 0.6})
        log.summary({"test": {"acc": 0.7}})
        log.artifact(png, "loss.png")
    return png


def test_scalars_text_and_images_read_back(tmp_path):
    run = tmp_path / "run"
    log_a_run(run)
    acc = accumulate(run / "tensorboard")
    tags = acc.Tags()
    assert scalars(acc, "train/loss") == [(2, 1.5), (4, 1.0)]
    assert scalars(acc, "train/lr") == [(2, pytest.approx(0.05)), (4, pytest.approx(0.025))]
    assert scalars(acc, "train_epoch/loss") == [(4, 1.25)]
    assert [(s, pytest.approx(v)) for s, v in scalars(acc, "val/acc")] == [(4, pytest.approx(0.6))]
    assert scalars(acc, "summary/test/acc")[0][1] == pytest.approx(0.7)
    assert "plots/loss" in tags["images"]
    image = acc.Images("plots/loss")[0]
    assert image.step == 4 and image.width == 20 and image.height == 20
    texts = {t for t in tags["tensors"]}
    assert {"config/text_summary", "plugins/text_summary", "summary/text_summary"} <= texts
    config_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "lr: 0.1" in config_text


def test_shared_dir_gives_one_folder_per_run_and_options(tmp_path):
    log_a_run(tmp_path / "a", config={"track": {"dir": str(tmp_path / "store"), "name": "arm-a"}, "tensorboard": {"images": False}})
    acc = accumulate(tmp_path / "store" / "tensorboard" / "arm-a")
    assert scalars(acc, "train/loss")[-1] == (4, 1.0)
    assert acc.Tags()["images"] == []


def test_a_run_without_folder_needs_a_log_dir(tmp_path):
    with pytest.raises(PluginHookError, match="writes no folder; set tensorboard.log_dir"):
        with logging_run(["tensorboard"], None) as log:
            log.config({}, {})
    with logging_run(["tensorboard"], None, config={"tensorboard": {"log_dir": str(tmp_path / "tb")}}) as log:
        log.step({"loss": 3.0})
    assert scalars(accumulate(tmp_path / "tb"), "train/loss") == [(0, 3.0)]


def test_resume_hides_events_after_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    with logging_run(["tensorboard"], run) as log:
        log.config({}, {})
        for step in (1, 2, 3, 4):
            log.state.step = step
            log.step({"loss": float(step)})
    with logging_run(["tensorboard"], run) as log:  # resumed from a checkpoint at step 2
        log.state.step = 2
        log.config({}, {}, resumed=True)
        for step in (3, 4):
            log.state.step = step
            log.step({"loss": 10.0 * step})
    assert scalars(accumulate(run / "tensorboard"), "train/loss") == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
