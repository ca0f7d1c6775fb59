"""W&B plugin: offline by default; records written through the dispatcher are read back from the
offline run directory (``mixhub_wandb.read_offline_run`` decodes W&B's own protobuf records)."""

import json
import struct
import zlib

import pytest
from mixhub_wandb import find_offline_runs, read_offline_run
from mixhub_wandb.offline import _payloads

from mixhub.testing import logging_run


def small_png(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    fig.savefig(path, dpi=20)
    plt.close(fig)
    return path


def test_offline_run_history_summary_config_and_tags(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "")  # no credentials: an online attempt would fail loudly
    run = tmp_path / "run"
    png = small_png(tmp_path / "loss.png")
    summary_file = tmp_path / "summary.json"
    summary_file.write_text("{}")
    cfg = {"track": {"experiment": "suite", "name": "mixup-seed1", "tags": {"arm": "mixup", "seed": "1"}}}
    with logging_run(["wandb"], run, config=cfg) as log:
        log.config({"seed": 1, "train": {"lr": 0.1}}, {"wandb": "0.1.0"})
        for step, loss in ((5, 2.0), (10, 1.0)):
            log.state.step = step
            log.step({"loss": loss, "lr": 0.1})
        log.epoch({"epoch": 1, "split": "val", "acc": 0.5})
        log.summary({"test": {"acc": 0.75}})
        log.artifact(png)
        log.artifact(summary_file)
    (offline,) = find_offline_runs(run / "wandb")
    saved = json.loads((run / "wandb-run.json").read_text())
    assert saved["mode"] == "offline" and offline.name.endswith(saved["id"])
    r = read_offline_run(offline)
    assert r.name == "mixup-seed1" and r.project == "suite" and sorted(r.tags) == ["arm=mixup", "seed=1"]
    assert r.config["seed"] == 1 and r.config["train"] == {"lr": 0.1} and r.config["mixhub_plugins"] == {"wandb": "0.1.0"}
    rows = {row["_step"]: row for row in r.history}
    assert rows[5]["train/loss"] == 2.0 and rows[10]["train/loss"] == 1.0 and rows[10]["train/lr"] == 0.1
    assert rows[10]["val/acc"] == 0.5
    image = rows[10]["plots/loss"]
    assert image["_type"] == "image-file" and (image["width"], image["height"]) == (20, 20)
    assert (offline / "files" / image["path"]).is_file()
    assert r.summary["summary/test/acc"] == 0.75
    assert "summary.json" in r.files
    assert r.exit_code == 0


def test_failed_run_exits_nonzero(tmp_path):
    with pytest.raises(RuntimeError):
        with logging_run(["wandb"], tmp_path / "run") as log:
            log.config({}, {})
            raise RuntimeError("stop")
    (offline,) = find_offline_runs(tmp_path / "run")
    assert read_offline_run(offline).exit_code == 1


def _frame(kind, body):
    return struct.pack("<IHB", zlib.crc32(body, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF, len(body), kind) + body


def test_reader_joins_split_records_and_checks_checksums():
    header = b":W&B\xe1\xbe\x00"
    data = header + _frame(2, b"ab") + _frame(3, b"cd") + _frame(4, b"ef") + _frame(1, b"g")
    assert list(_payloads(data, "x")) == [b"abcdef", b"g"]
    bad = bytearray(data)
    bad[-1] ^= 1
    with pytest.raises(ValueError, match="checksum"):
        list(_payloads(bytes(bad), "x"))
    with pytest.raises(ValueError, match="magic"):
        list(_payloads(b"nope" + data[4:], "x"))
