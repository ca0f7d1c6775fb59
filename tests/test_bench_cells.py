"""Bench cells: retries and failures in the report, the progress line, the cache key's code part,
executors' options, the t-test against scipy, and ``data.subset``."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from mixhub.bench import codeid
from mixhub.bench.executors import InlineExecutor, LocalExecutor, Progress, RayExecutor, make_executor
from mixhub.bench.report import paired_difference, paired_t_test
from mixhub.bench.runner import run_suite
from mixhub.bench.suite import Arm, Suite
from mixhub.errors import MixhubError


def test_a_failing_cell_is_retried_once_then_reported_without_stopping_the_others(tmp_path):
    calls: list[tuple[str, int]] = []

    def run(cfg, out):
        arm = "flaky" if cfg.get("flaky") else ("broken" if cfg.get("broken") else "base")
        calls.append((arm, cfg["seed"]))
        if arm == "broken" and cfg["seed"] == 1:
            raise RuntimeError("out of memory in cell broken/1")
        if arm == "flaky" and calls.count(("flaky", cfg["seed"])) == 1:
            raise OSError("transient")
        return {"test.acc": 0.5 + 0.1 * cfg["seed"]}

    suite = Suite("toy", "toy", {}, [Arm("base"), Arm("flaky", {"flaky": 1}), Arm("broken", {"broken": 1})], "base", ["test.acc"], seeds=2, run=run)
    res = run_suite(suite, tmp_path, progress=False)
    assert calls.count(("broken", 1)) == 2 and calls.count(("flaky", 0)) == 2 and calls.count(("base", 0)) == 1
    assert [(f["arm"], f["seed"]) for f in res["failed"]] == [("broken", 1)]
    assert "out of memory in cell broken/1" in res["failed"][0]["error"]
    lines = (tmp_path / "cells.jsonl").read_text().splitlines()
    assert sorted((json.loads(x)["arm"], json.loads(x)["seed"]) for x in lines) == [("base", 0), ("base", 1), ("broken", 0), ("flaky", 0), ("flaky", 1)]
    report = (tmp_path / "REPORT.md").read_text()
    assert "Failed cells (1)" in report and "`broken` seed 1" in report and "RuntimeError: out of memory in cell broken/1" in report
    calls.clear()
    run_suite(suite, tmp_path, progress=False)
    assert calls == [("broken", 1), ("broken", 1)]  # only the failed cell runs again


def test_progress_line_counts_cells_and_estimates_time_left():
    stream = io.StringIO()
    p = Progress("s", total=6, jobs=2, done=1, stream=stream)
    assert p.line() == "s: 1/6 cells done, 0 running, 0 failed, ETA ?"
    p.started()
    p.started()
    p.finished(10.0)
    p.finished(30.0)
    # 3 cells left, 2 at once: two rounds of the mean cell time (20 s)
    assert p.line() == "s: 3/6 cells done, 0 running, 0 failed, ETA 40s"
    p.started()
    p.finished(failed=True)
    assert p.line() == "s: 3/6 cells done, 0 running, 1 failed, ETA 20s"
    assert stream.getvalue().splitlines()[-1] == p.line()
    quiet = io.StringIO()
    Progress("s", 2, 1, stream=quiet, enabled=False).show()
    assert quiet.getvalue() == ""


def test_paired_t_test_agrees_with_scipy_ttest_rel():
    rng = np.random.default_rng(3)
    for n in (2, 3, 5, 10):
        a = rng.normal(0.8, 0.02, n)
        b = a + rng.normal(0.01, 0.01, n)
        mean, se, k = paired_difference(dict(enumerate(a.tolist())), dict(enumerate(b.tolist())))
        t, crit, sig = paired_t_test(mean, se, k)
        ref = stats.ttest_rel(b, a)
        assert k == n and t == pytest.approx(ref.statistic, rel=1e-9)
        assert crit == pytest.approx(stats.t.ppf(0.975, n - 1), rel=1e-12)
        assert sig == (ref.pvalue < 0.05)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=a@b", "-c", "user.name=a", *args], cwd=repo, check=True, capture_output=True)


def test_source_hash_counts_untracked_source_and_ignores_documentation(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "docs").mkdir()
    (repo / "pkg" / "a.py").write_text("x = 1\n")
    (repo / "README.md").write_text("hello\n")
    (repo / "docs" / "guide.txt").write_text("guide\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "one")
    base = codeid._checkout_source(repo)
    (repo / "pkg" / "new_plugin.py").write_text("y = 2\n")  # untracked source
    with_new = codeid._checkout_source(repo)
    assert with_new != base
    (repo / "pkg" / "new_plugin.py").write_text("y = 3\n")
    assert codeid._checkout_source(repo) not in (base, with_new)  # its content, not only its name
    (repo / "pkg" / "new_plugin.py").unlink()
    (repo / "notes.yaml").write_text("a: 1\n")  # untracked non-source (e.g. a run's config) does not count
    (repo / "README.md").write_text("hello, edited\n")
    (repo / "docs" / "guide.txt").write_text("guide, edited\n")
    _git(repo, "commit", "-qam", "docs only")
    assert codeid._checkout_source(repo) == base
    (repo / "pkg" / "a.py").write_text("x = 2\n")  # an uncommitted edit of tracked code counts
    assert codeid._checkout_source(repo) != base
    assert codeid.is_documentation("docs/x.py") and codeid.is_documentation("plugins/p/README.md") and not codeid.is_documentation("core/a.py")


def test_plugins_installed_outside_the_checkout_count_by_content(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "mixhub_ext"
    pkg.mkdir(parents=True)
    (pkg / "plugin.py").write_text("A = 1\n")
    monkeypatch.setattr(codeid, "_plugin_folders", lambda: {"mixhub-ext": pkg, "mixhub-inside": Path(codeid.__file__).resolve().parent})
    codeid.code_identity.cache_clear()
    try:
        first = codeid.code_identity()
        (pkg / "plugin.py").write_text("A = 2\n")  # same version number, other code
        codeid.code_identity.cache_clear()
        second = codeid.code_identity()
    finally:
        codeid.code_identity.cache_clear()
    if first["git"] is not None:
        assert set(first["plugins"]) == {"mixhub-ext"}  # the one inside the checkout is in `source`
    assert first["plugins"]["mixhub-ext"] != second["plugins"]["mixhub-ext"]
    assert codeid.key_part(first) != codeid.key_part(second)
    assert codeid.key_part({**first, "git": "0" * 40, "dirty": "x"}) == codeid.key_part(first)


def test_executor_choice_and_clear_errors(monkeypatch):
    ex, n = make_executor("local", jobs=1)
    assert isinstance(ex, InlineExecutor) and n == 1
    ex, n = make_executor("local", jobs=3, cpus_per_cell=2)
    assert isinstance(ex, LocalExecutor) and (ex.jobs, ex.threads, n) == (3, 2, 3)
    ex, _ = make_executor("ray", cpus_per_cell=2, gpus_per_cell=0.5, ray_address="ray://head:10001")
    assert isinstance(ex, RayExecutor) and (ex.cpus, ex.gpus, ex.address) == (2, 0.5, "ray://head:10001")
    with pytest.raises(MixhubError, match="--jobs 0"):
        make_executor("local", jobs=0)
    with pytest.raises(MixhubError, match="belong to --executor ray"):
        make_executor("local", gpus_per_cell=1)
    with pytest.raises(MixhubError, match="its own function"):
        make_executor("local", jobs=2, run_fn=lambda c, o: {})
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MixhubError, match=r"pip install 'mixhub\[ray\]'"):
        RayExecutor().execute([{"arm": "a", "seed": 0}], Progress("s", 1, 1, enabled=False))


def test_data_subset_keeps_a_seeded_part_of_the_training_split():
    from mixhub.config import DataConfig
    from mixhub.data import build_data
    from mixhub.errors import DataError

    full = build_data(DataConfig(name="digits", image_size=8), seed=0)
    part = build_data(DataConfig(name="digits", image_size=8, subset=40), seed=0)
    again = build_data(DataConfig(name="digits", image_size=8, subset=40), seed=0)
    other = build_data(DataConfig(name="digits", image_size=8, subset=40), seed=1)
    assert len(part.train) == 40 and len(part.train_targets) == 40
    assert part.train.indices == again.train.indices and part.train.indices != other.train.indices
    for i in (0, 17, 39):  # the label bank follows the kept samples
        assert int(part.train[i][1]) == int(part.train_targets[i]) == int(full.train_targets[part.train.indices[i]])
        assert torch.equal(part.train[i][0], full.train[part.train.indices[i]][0])
    assert len(part.val) == len(full.val) and len(part.test) == len(full.test)  # evaluation splits stay whole
    half = build_data(DataConfig(name="digits", image_size=8, subset=0.5), seed=0)
    assert len(half.train) == round(0.5 * len(full.train))
    with pytest.raises(DataError, match="data.subset: 100000 samples"):
        build_data(DataConfig(name="digits", image_size=8, subset=100000), seed=0)
    with pytest.raises(DataError, match="share must lie"):
        build_data(DataConfig(name="digits", image_size=8, subset=1.5), seed=0)


def test_a_cell_resumes_only_its_own_run(tmp_path, monkeypatch):
    import mixhub.trainer as trainer_mod
    from mixhub.bench.cell import train_cell

    calls = []

    class Result:
        summary = {"test": {"acc": 0.5}}

    def fake_train(raw, *a, out=None, resume=False, **kw):
        calls.append((resume, sorted(p.name for p in Path(out).rglob("*")) if Path(out).exists() else None))
        return Result()

    monkeypatch.setattr(trainer_mod, "train", fake_train)
    folder = tmp_path / "cells" / "a" / "seed0"
    (folder / "run" / "checkpoints").mkdir(parents=True)
    (folder / "run" / "checkpoints" / "last.pt").write_bytes(b"x")
    (folder / "key.json").write_text(json.dumps({"config": {"lr": 1}}))
    train_cell({}, folder, {"config": {"lr": 1}})
    assert calls == [(True, ["checkpoints", "last.pt"])]  # same key, a checkpoint: resumed
    calls.clear()
    train_cell({}, folder, {"config": {"lr": 2}})
    assert calls == [(False, None)]  # another key: the old run folder is removed, a fresh run starts
    assert json.loads((folder / "key.json").read_text()) == {"config": {"lr": 2}}
    calls.clear()
    (folder / "run").mkdir()
    (folder / "run" / "summary.json").write_text(json.dumps({"test": {"acc": 0.75}}))
    assert train_cell({}, folder, {"config": {"lr": 2}}) == {"test": {"acc": 0.75}}  # finished: read, not trained
    assert calls == []


def test_one_cell_per_visible_gpu(monkeypatch, tmp_path):
    from mixhub.bench import executors

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert executors.visible_gpus() == ["3", "5"] and executors.default_jobs() == 2
    ex, n = make_executor("local")
    assert isinstance(ex, LocalExecutor) and n == 2 and ex.gpus == ["3", "5"]
    assert isinstance(make_executor("local", run_fn=lambda c, o: {})[0], InlineExecutor)  # a suite's own function: one process
    envs = {}

    class FakeProc:
        def __init__(self, cmd, env, **kw):
            spec = json.loads(Path(cmd[-1]).read_text())
            envs[(spec["arm"], spec["seed"])] = env["CUDA_VISIBLE_DEVICES"]
            (tmp_path / "cells" / spec["arm"] / f"seed{spec['seed']}.json").write_text("{}")

        def poll(self):
            return 0

    monkeypatch.setattr(executors.subprocess, "Popen", FakeProc)
    specs = [{"arm": "a", "seed": s, "config": {}, "key": {}, "out": str(tmp_path)} for s in range(2)]
    assert ex.execute(specs, Progress("s", 2, 2, enabled=False)) == []
    assert sorted(envs.values()) == ["3", "5"]  # the two cells at once, each on its own GPU


def test_a_cell_process_stops_when_its_bench_is_gone(tmp_path):
    import os
    import signal
    import time

    spec = {
        "arm": "a", "seed": 0, "out": str(tmp_path), "key": {"k": 1}, "threads": 1,
        "config": {"seed": 0, "data": {"name": "digits", "image_size": 8}, "model": {"name": "smallcnn", "kwargs": {"widths": [4, 8]}},
                   "train": {"epochs": 100000, "batch_size": 8, "device": "cpu", "plots": False}},
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    # the "bench" starts the cell and dies at once, leaving the cell orphaned
    bench = subprocess.run(["bash", "-c", f'MIXHUB_BENCH_PARENT=$$ "{sys.executable}" -m mixhub.bench.cell "{path}" >/dev/null 2>&1 & echo $!'], capture_output=True, text=True, check=True)
    pid = int(bench.stdout.strip())

    def alive() -> bool:
        try:
            return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
        except OSError:
            return False

    try:
        deadline = time.time() + 120
        while alive() and time.time() < deadline:
            time.sleep(0.2)
        assert not alive(), "the orphaned cell kept training"
    finally:
        if alive():
            os.kill(pid, signal.SIGKILL)
