"""A user's suite file on a user's data: `mixhub bench my-suite.yaml` locally (process pool) and on Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mixhub.bench.runner import run_suite
from mixhub.bench.suitefile import load_suite_file
from mixhub.cli import main
from mixhub.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def jpeg_folder(root: Path, per_class: int = 12, classes: tuple[str, ...] = ("ant", "bee")) -> Path:
    """Class folders of generated JPEGs whose class shows in the mean colour (learnable in a few steps)."""
    rng = np.random.default_rng(0)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.random((16, 16, 3)) * 120
            arr[..., k] += 120
            Image.fromarray(arr.astype(np.uint8)).save(root / c / f"{c}{i}.jpg", quality=90)
    return root


def suite_yaml(path: Path, data: Path, epochs: int = 1, steps: int = 2, **extra: object) -> Path:
    doc = {
        "name": "mine",
        "description": "ERM vs mixup on generated JPEGs",
        "base": {
            "data": {"name": f"imagefolder:{data}", "image_size": 16, "num_workers": 0, "val_frac": 0.25, "test_frac": 0.25},
            "model": {"name": "smallcnn", "kwargs": {"widths": [4, 8]}},
            "train": {"epochs": epochs, "batch_size": 4, "max_steps_per_epoch": steps, "device": "cpu", "plots": False},
        },
        "arms": [
            {"name": "erm", "description": "plain CE"},
            {"name": "mixup", "config": {"plugins": ["mixup"], "mixup": {"alpha": 1.0}}, "search": {"mixup.alpha": {"low": 0.1, "high": 2.0, "log": True}}},
        ],
        "reference": "erm",
        "seeds": 2,
        "metrics": ["test.acc", "test.nll"],
        **extra,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def cells_jsonl(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def local_bench(tmp_path_factory):
    """The done-when suite: 2 arms x 2 seeds on generated JPEGs, smallcnn, `--jobs 2` (run once per module)."""
    tmp = tmp_path_factory.mktemp("userbench")
    suite = suite_yaml(tmp / "mine.yaml", jpeg_folder(tmp / "imgs"))
    out = tmp / "out"
    rc = main(["bench", str(suite), "--jobs", "2", "--cpus-per-cell", "1", "--out", str(out), "--quiet"])
    return suite, out, rc


def test_user_suite_with_two_jobs_writes_the_report_and_reruns_nothing(local_bench, capsys):
    suite, out, rc = local_bench
    assert rc == 0
    report = (out / "REPORT.md").read_text()
    assert "# Bench `mine`" in report and "| mixup - erm |" in report and "Seeds: 2" in report
    assert "t_0.975,1 = 12.706" in report  # the paired t-test at 2 seeds
    assert (out / "bars.png").is_file() and (out / "curves.png").is_file()
    cells = cells_jsonl(out)
    assert sorted((c["arm"], c["seed"]) for c in cells) == [("erm", 0), ("erm", 1), ("mixup", 0), ("mixup", 1)]
    for c in cells:
        run = out / "cells" / c["arm"] / f"seed{c['seed']}" / "run"
        assert (run / "summary.json").is_file() and (run / "checkpoints" / "last.pt").is_file()
        assert c["metrics"]["test.acc"] == json.loads((run / "summary.json").read_text())["test"]["acc"]
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["bench", str(suite), "--jobs", "2", "--cpus-per-cell", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "mine: 4/4 cells done, 0 running, 0 failed" in err
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*") if p.is_file()} == stamps  # nothing ran again
    assert len(cells_jsonl(out)) == 4


def test_the_same_suite_on_ray_gives_the_same_metrics_per_cell(local_bench, tmp_path):
    ray = pytest.importorskip("ray")  # the test extra installs it: CI runs this
    suite, out, _ = local_bench
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        spec = load_suite_file(suite)
        res = run_suite(spec.suite, tmp_path / "ray-out", executor="ray", cpus_per_cell=1, progress=False)
        failing = run_suite(_failing_suite(tmp_path / "attempts"), tmp_path / "ray-fail", executor="ray", progress=False)
    finally:
        ray.shutdown()
    # on Ray too: a failing cell is tried twice, then reported with its error; the others finish
    assert [(f["arm"], f["seed"]) for f in failing["failed"]] == [("bad", 1)]
    assert len(list((tmp_path / "attempts").glob("bad-1-*"))) == 2 and len(list((tmp_path / "attempts").glob("ok-0-*"))) == 1
    assert "ValueError: cell bad/1 cannot run" in (tmp_path / "ray-fail" / "REPORT.md").read_text()
    assert len(failing["cells"]) == 3
    assert res["failed"] == []
    local = {(c["arm"], c["seed"]): c["metrics"] for c in cells_jsonl(out)}
    remote = {(c["arm"], c["seed"]): c["metrics"] for c in cells_jsonl(tmp_path / "ray-out")}
    assert set(remote) == set(local) and len(local) == 4
    for cell, metrics in local.items():
        for name in ("test.acc", "test.nll", "val.acc", "val.nll"):
            assert remote[cell][name] == pytest.approx(metrics[name], rel=1e-6, abs=1e-7), (cell, name)


def _failing_suite(attempts: Path):
    from mixhub.bench.suite import Arm, Suite

    attempts.mkdir(parents=True, exist_ok=True)

    def run(cfg, out):  # runs in Ray workers: attempts are counted in files
        import uuid

        arm = "bad" if cfg.get("bad") else "ok"
        (attempts / f"{arm}-{cfg['seed']}-{uuid.uuid4().hex}").write_text("")
        if arm == "bad" and cfg["seed"] == 1:
            raise ValueError("cell bad/1 cannot run")
        return {"test.acc": 0.5}

    return Suite("fail", "toy", {}, [Arm("ok"), Arm("bad", {"bad": 1})], "ok", ["test.acc"], seeds=2, run=run)


def test_killed_bench_resumes_and_lists_every_cell_once(tmp_path, monkeypatch):
    suite = suite_yaml(tmp_path / "mine.yaml", jpeg_folder(tmp_path / "imgs"), epochs=4, steps=3)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mixhub", "bench", str(suite), "--out", str(out), "--quiet"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    killed_in = None
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            for ckpt in out.glob("cells/*/seed*/run/checkpoints/last.pt"):
                cell = ckpt.parents[2]
                if not cell.with_suffix(".json").exists():
                    killed_in = cell
            if killed_in is not None:
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole bench, mid-cell
        proc.wait()
    assert killed_in is not None, "no cell had checkpointed before the bench ended"
    import mixhub.trainer as trainer_mod

    real_train = trainer_mod.train
    resumed = []

    def spy(raw, *a, **kw):
        resumed.append((kw.get("out"), kw.get("resume")))
        return real_train(raw, *a, **kw)

    monkeypatch.setattr(trainer_mod, "train", spy)
    res = run_suite(load_suite_file(suite).suite, out, progress=False)
    assert res["failed"] == []
    cells = cells_jsonl(out)
    assert sorted((c["arm"], c["seed"]) for c in cells) == [("erm", 0), ("erm", 1), ("mixup", 0), ("mixup", 1)]
    assert (Path(killed_in / "run"), True) in [(Path(o), r) for o, r in resumed]  # resumed from its checkpoint, not restarted
    records = [json.loads(x) for x in (killed_in / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]  # each epoch once (1-based)


def test_suite_file_errors_name_the_key(tmp_path):
    data = tmp_path / "imgs"
    good = yaml.safe_load(suite_yaml(tmp_path / "s.yaml", data).read_text())

    def error(doc: dict) -> str:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(doc))
        with pytest.raises(ConfigError) as info:
            load_suite_file(path)
        return str(info.value)

    assert "unknown key 'seed'" in error({**good, "seed": 3}) and "bad.yaml" in error({**good, "seed": 3})
    assert "reference 'ermm' is not an arm" in error({**good, "reference": "ermm"})
    bad_arm = {**good, "arms": [good["arms"][0], {"name": "mixup", "config": {"plugins": ["mixup"], "mixup": {"alpah": 1.0}}}]}
    msg = error(bad_arm)
    assert "arms[1] ('mixup').config" in msg and "mixup.alpah" in msg and "did you mean 'alpha'" in msg
    bad_search = {**good, "arms": [good["arms"][0], {**good["arms"][1], "search": {"mixup.alhpa": {"low": 0.1, "high": 1.0}}}]}
    assert "arms[1] ('mixup').search.mixup.alhpa" in error(bad_search)
    bad_range = {**good, "arms": [good["arms"][0], {**good["arms"][1], "search": {"mixup.alpha": {"low": 2.0, "high": 1.0}}}]}
    assert "arms.1.search.mixup.alpha" in error(bad_range) and "must be below high" in error(bad_range)
    assert "never 'test.acc'" in error({**good, "tune": {"metric": "test.acc"}})
    assert "arms.0.nmae" in error({**good, "arms": [{"nmae": "x"}]})


def test_example_suite_file_loads():
    spec = load_suite_file(ROOT / "examples" / "suites" / "my-images.yaml")
    assert spec.suite.baseline == "erm" and len(spec.suite.arms) == 4
    assert spec.search["mixup"]["mixup.alpha"].log and spec.suite.quick["data"]["subset"] == 0.25
