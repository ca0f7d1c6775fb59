"""Hostile and unlucky inputs: locked run folders, exact resume with augmentation, bounded YAML,
full disks, plugin-name clashes and the messages that name what went wrong (issue cases 1-11)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from mixhub.checkpoint import load_checkpoint
from mixhub.config import DataConfig, load_config, parse_overrides, read_yaml, resume_overrides
from mixhub.data import build_data
from mixhub.errors import CheckpointError, ConfigError, DataError, PluginLoadError
from mixhub.run.folder import RunFolder, RunFolderBusy
from mixhub.testing import tiny_config
from mixhub.trainer import train

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def mixhub_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mixhub", *args]


def tiny_args(**train_kw: object) -> list[str]:
    """``tiny_config`` as CLI overrides."""
    flat = {
        "data.name": "digits", "data.image_size": 16, "model.name": "smallcnn", "model.kwargs.widths": "[8,16]",
        "train.batch_size": 32, "train.plots": "false", "train.device": "cpu",
    }
    flat.update({f"train.{k}": v for k, v in train_kw.items()})
    return [f"{k}={v}" for k, v in flat.items()]


# ---------------------------------------------------------------------- 1. one run per folder
def test_two_processes_on_one_folder_one_is_refused(tmp_path):
    """Two real `mixhub train` processes started together with the same `out`: exactly one trains."""
    out = tmp_path / "shared"
    cmd = mixhub_cmd("train", *tiny_args(epochs=2, max_steps_per_epoch=3), f"out={out}", "--quiet")
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], results
    loser = results[[p.returncode for p in procs].index(2)][1]
    assert "in use by another run" in loser or "already holds a run" in loser or "holds a finished run" in loser, loser
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs if r["split"] == "train"] == [1, 2]  # one run's records, not two interleaved
    summary = json.loads((out / "summary.json").read_text())
    best = load_checkpoint(out / "checkpoints/best.pt")
    assert best["epoch"] == best["best"]["epoch"] == summary["best_epoch"] in (1, 2)


def test_live_lock_refuses_a_second_owner_and_is_released(tmp_path):
    held = RunFolder(tmp_path / "r")
    probe = subprocess.run(
        [sys.executable, "-c", f"from mixhub.run.folder import RunFolder; RunFolder({str(tmp_path / 'r')!r})"],
        capture_output=True, text=True, env=ENV,
    )
    assert probe.returncode != 0 and "in use by another run (process" in probe.stderr and str(os.getpid()) in probe.stderr
    held.release()
    import fcntl

    with open(tmp_path / "r/.lock") as fh:  # released: anyone may take it now
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_rerun_without_checkpoints_does_not_append(tmp_path):
    out = tmp_path / "r"
    train(tiny_config(train={"checkpoint": False}), out=out)
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="finished run"):
        train(tiny_config(train={"checkpoint": False}), out=out)
    (out / "summary.json").unlink()  # a crashed run without checkpoints: still another run's files
    with pytest.raises(ConfigError, match=r"files of another run \(metrics.jsonl, steps.jsonl, config.yaml\)") as err:
        train(tiny_config(train={"checkpoint": False}), out=out)
    assert f"or delete them: `rm {out / 'metrics.jsonl'} {out / 'steps.jsonl'} {out / 'config.yaml'}`" in str(err.value)
    assert (out / "metrics.jsonl").read_text() == before


# ---------------------------------------------------------------------- 11. make run twice
def test_default_out_is_fresh_each_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config()
    a = train(cfg).out
    b = train(cfg).out
    assert a == Path("runs/digits-smallcnn-erm-s0") and b == Path("runs/digits-smallcnn-erm-s0-1")
    assert (tmp_path / a / "summary.json").is_file() and (tmp_path / b / "summary.json").is_file()


def test_example_config_runs_twice_without_cleanup(tmp_path, monkeypatch, capsys):
    """The README's main command (`make run`) twice: the example config names no fixed folder."""
    from mixhub.cli import main

    cfg = read_yaml(ROOT / "examples/configs/digits-mixup.yaml")
    assert "out" not in cfg
    monkeypatch.chdir(tmp_path)
    small = ["model.name=smallcnn", "model.kwargs.widths=[8,16]", "data.image_size=16", "train.epochs=1",
             "train.max_steps_per_epoch=2", "train.plots=false", "--quiet"]
    outs = []
    for _ in range(2):
        assert main(["train", str(ROOT / "examples/configs/digits-mixup.yaml"), *small]) == 0
        outs.append(capsys.readouterr().out.strip().splitlines()[-1])
    assert outs == ["run folder: runs/digits-smallcnn-mixup-s0", "run folder: runs/digits-smallcnn-mixup-s0-1"]
    assert main(["train", str(ROOT / "examples/configs/digits-mixup.yaml"), *small, "out=runs/digits-smallcnn-mixup-s0"]) == 2
    err = capsys.readouterr().err
    assert "holds a finished run" in err and "mixhub train --resume runs/digits-smallcnn-mixup-s0 train.epochs=N" in err


# ---------------------------------------------------------------------- 3. resume overrides
def test_resume_overrides_are_applied_or_refused(tmp_path):
    saved = load_config(tiny_config()).to_dict()
    raw, notes = resume_overrides(saved, parse_overrides(["train.epochs=3", "train.plots=false", "train.lr=0.001"]))
    assert raw["train"]["epochs"] == 3 and notes and "no longer equal to a straight 3-epoch run" in notes[0]
    with pytest.raises(ConfigError, match=r"--resume: train.lr cannot change.*only train.epochs"):
        resume_overrides(saved, parse_overrides(["train.lr=0.5"]))
    with pytest.raises(ConfigError, match="can only train longer"):
        resume_overrides(saved, parse_overrides(["train.epochs=0"]))


def test_cli_resume_extends_a_finished_run(tmp_path, capsys, caplog):
    from mixhub.cli import main

    out = tmp_path / "r"
    train(tiny_config(train={"device": "cpu"}), out=out)
    assert main(["train", "--resume", str(out), "train.epochs=2", "--quiet"]) == 0
    assert "no longer equal to a straight 2-epoch run" in caplog.text
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs if r["split"] == "train"] == [1, 2]
    assert [r["epoch"] for r in recs if r["split"] == "final_test"] == [2]  # the first run's final records went
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"] == 2
    assert main(["train", "--resume", str(out), "model.name=mlp"]) == 2
    assert "model.name cannot change when a run resumes" in capsys.readouterr().err
    # finished at 2 epochs: resuming it unchanged says so and how to extend it, without re-evaluating
    summary = (out / "summary.json").read_text()
    assert main(["train", "--resume", str(out), "train.plots=false"]) == 2
    err = capsys.readouterr().err
    assert "the run is finished (it trained all 2 epochs and wrote summary.json)" in err
    assert f"mixhub train --resume {out} train.epochs=3" in err
    assert (out / "summary.json").read_text() == summary


# ---------------------------------------------------------------------- 4. CSV class labels
def test_csv_classification_refuses_real_valued_labels(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("a,b,y\n" + "\n".join(f"{i},{i % 3},{v}" for i, v in enumerate([1, 0, 2, 0.5, 1.7, 2.2] * 5)))
    with pytest.raises(DataError, match=r"column 'y' holds '0.5' at data row 4 \(line 5\).*data.task=regression"):
        build_data(DataConfig(name=f"csv:{p}", task="classification"), 0)
    assert build_data(DataConfig(name=f"csv:{p}", task="regression"), 0).task == "regression"


# ---------------------------------------------------------------------- 9. accurate messages
def test_csv_ragged_and_non_numeric_rows_are_named(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("a,b,y\n1,2,0\n3,4\n5,6,1\n")
    with pytest.raises(DataError, match=r"data row 2 \(line 3\) has 2 fields, the header has 3"):
        build_data(DataConfig(name=f"csv:{p}"), 0)
    p.write_text("a,b,y\n1,2,0\n3,x,1\n")
    with pytest.raises(DataError, match=r"non-numeric value 'x' at data row 2 \(line 3\), column 'b'"):
        build_data(DataConfig(name=f"csv:{p}"), 0)


class NotPlain:
    pass


def test_checkpoint_messages(tmp_path):
    rnd = tmp_path / "random.pt"
    rnd.write_bytes(os.urandom(4096).replace(b"PK", b"pk").lstrip(b"\x80") or b"x")
    with pytest.raises(CheckpointError, match="is not a checkpoint file") as err:
        load_checkpoint(rnd)
    assert "unpickling" not in str(err.value)
    zipped = tmp_path / "zip.pt"
    zipped.write_bytes(b"PK\x03\x04" + os.urandom(4096))
    with pytest.raises(CheckpointError, match="corrupt") as err:
        load_checkpoint(zipped)
    assert "unpickling" not in str(err.value)
    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint file.*checkpoints/best.pt"):
        load_checkpoint(tmp_path)
    torch.save({"x": NotPlain()}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match="needs arbitrary code to load.*NotPlain"):
        load_checkpoint(tmp_path / "unsafe.pt")


class RunsCode:
    """A payload whose unpickling would call ``os.system`` (what a malicious checkpoint does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_checkpoint_is_refused_without_advice_to_load_it_unsafely(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "mixhub-checkpoint-1", "model": RunsCode(marker)}, evil)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(evil)
    msg = str(err.value)
    assert "needs arbitrary code to load" in msg and "system" in msg and "mixhub will not load it" in msg
    assert "weights_only" not in msg and "corrupt" not in msg
    assert not marker.exists()  # nothing ran


def test_non_finite_numbers_are_invalid():
    for text in ("train.lr=inf", "train.lr=.inf", "train.lr=nan", "train.weight_decay=inf"):
        with pytest.raises(ConfigError, match=text.split("=")[0]):
            load_config(parse_overrides([text]))
    from mixhub.plugins import PluginOptions

    class Opts(PluginOptions):
        alpha: float = 1.0

    with pytest.raises(Exception, match="finite"):
        Opts(alpha=float("inf"))


def test_zero_epochs_says_so_and_writes_no_export(tmp_path, caplog):
    res = train(tiny_config(train={"epochs": 0}), out=tmp_path / "r")
    assert "no optimizer step ran (train.epochs=0)" in caplog.text and "untrained" in caplog.text
    assert not (tmp_path / "r/checkpoints/export.pt").exists()
    assert res.summary["steps"] == 0


# ---------------------------------------------------------------------- 6. hostile YAML
BOMB = textwrap.dedent(
    """\
    data:
      name: digits
      options:
        a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
        b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
        c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
        d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
        e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
        f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
        g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
        h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
        i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
    """
)

LIMITED = textwrap.dedent(
    """\
    import json, resource, sys
    from mixhub.cli import main
    vm = int(next(line for line in open("/proc/self/status") if line.startswith("VmSize")).split()[1]) * 1024
    extra = 1 << 30  # 1 GiB of address space beyond what the interpreter and torch already map
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra, vm + extra))
    used = int(resource.getrusage(resource.RUSAGE_SELF).ru_utime) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (used + 20, used + 20))
    print(json.dumps([main(args) for args in json.loads(sys.argv[1])]))
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="resource limits and /proc are Linux")
def test_hostile_yaml_under_memory_and_time_limits(tmp_path):
    """An alias bomb in a free-form section, deep nesting in a file and in an override: each a clear error
    in a process limited to 1 GiB more memory and 20 CPU seconds."""
    (tmp_path / "bomb.yaml").write_text(BOMB)
    (tmp_path / "deep.yaml").write_text("data:\n  options:\n    x: " + "[" * 200_000 + "]" * 200_000 + "\n")
    tail = [*tiny_args(epochs=1, max_steps_per_epoch=1), f"out={tmp_path / 'r'}"]
    runs = [["train", str(tmp_path / "bomb.yaml"), *tail], ["train", str(tmp_path / "deep.yaml"), *tail],
            ["train", *tail, "data.options.x=" + "[" * 50_000]]
    p = subprocess.run([sys.executable, "-c", LIMITED, json.dumps(runs)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    assert json.loads(p.stdout.strip().splitlines()[-1]) == [2, 2, 2]
    errors = [line for line in p.stderr.splitlines() if line.startswith("mixhub: error:")]
    assert "Traceback" not in p.stderr and len(errors) == 3, p.stderr[-2000:]
    assert "bomb.yaml': expands to" in errors[0] and "through aliases" in errors[0]
    assert "deep.yaml': nested deeper than 64 levels" in errors[1]
    assert "override value '[[[" in errors[2] and "nested deeper than 64 levels" in errors[2]
    assert not (tmp_path / "r").exists()


def test_yaml_limits_keep_ordinary_aliases():
    from mixhub.config import safe_load_limited

    doc = "base: &b {lr: 0.1, epochs: 2}\ntrain: *b\nother: {<<: *b, lr: 0.2}\n"
    assert safe_load_limited(doc, "x") == yaml.safe_load(doc)
    with pytest.raises(ConfigError, match="x is .* bytes"):
        safe_load_limited("a: " + "b" * (1 << 21), "x")


# ---------------------------------------------------------------------- 8. plugin names
def _fake_dist(root: Path, dist: str, name: str, value: str) -> None:
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[mixhub]\n{name} = {value}\n")


def test_two_distributions_of_one_plugin_name(tmp_path, monkeypatch, capsys):
    _fake_dist(tmp_path, "mixhub-mixup-fork", "mixup", "mixhub_mixup_fork.plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    from mixhub.plugins import duplicates, resolve_plugins

    assert sorted(i.distribution for i in duplicates()["mixup"]) == ["mixhub-mixup", "mixhub-mixup-fork"]
    with pytest.raises(PluginLoadError, match=r"'mixup' is registered by 2 installed distributions: ") as err:
        resolve_plugins(["mixup"])
    assert "mixhub-mixup 0.1.0 (mixhub_mixup.plugin)" in str(err.value) and "mixhub-mixup-fork 1.0" in str(err.value)
    with pytest.raises(PluginLoadError, match="registered by 2 installed distributions"):
        train(tiny_config(plugins=["mixup"]), write=False)
    from mixhub.cli import main

    assert main(["plugins", "list", "--no-import"]) == 1
    out, err = capsys.readouterr()
    assert "conflict" in out and "mixhub-mixup-fork" in out
    assert "mixhub: error: plugin name 'mixup' is registered by 2 installed distributions" in err


def test_new_plugin_refuses_taken_and_reserved_names(tmp_path, capsys):
    from mixhub.cli import main

    for name, why in [("mixup", "taken by the installed plugin from mixhub-mixup"), ("core", "reserved"),
                      ("class", "Python keyword"), ("match", "Python keyword"), ("train", "core config section")]:
        assert main(["new-plugin", name, "--dir", str(tmp_path)]) == 2
        assert why in capsys.readouterr().err, name
        assert not (tmp_path / name).exists()


def test_unknown_hook_names_the_plugin_once():
    from mixhub import PluginSpec, hookimpl

    class Typo:
        PLUGIN = PluginSpec(name="typo")

        @hookimpl
        def mixhub_after_stepp(self, state):
            return None

    with pytest.raises(PluginLoadError) as err:
        train(tiny_config(plugins=["typo"]), {"typo": Typo()}, write=False)
    msg = str(err.value)
    assert "plugin 'typo'" in msg and "unknown hook 'mixhub_after_stepp'" in msg and "did you mean 'mixhub_after_step'" in msg
    assert "object at 0x" not in msg and "<module" not in msg


def test_run_folder_busy_is_a_config_error():
    assert issubclass(RunFolderBusy, ConfigError)


# ---------------------------------------------------------------------- 2. exact resume with augmentation
def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sigterm_resume_with_augmentation_is_bitwise_exact(tmp_path):
    """A real `mixhub train` process (augment: light, mixup) stopped by SIGTERM mid-epoch and resumed
    ends bitwise equal to an uninterrupted run, and logs the same epoch means."""
    args = [*tiny_args(epochs=3, max_steps_per_epoch=12, sched="cosine"), "data.augment=light", "plugins=mixup", "--quiet"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run = subprocess.Popen(mixhub_cmd("train", *args, f"out={straight}"), cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(mixhub_cmd("train", *args, f"out={stopped}"), cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not ((stopped / "metrics.jsonl").is_file() and '"split": "train"' in (stopped / "metrics.jsonl").read_text()):
        assert victim.poll() is None, victim.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    victim.send_signal(signal.SIGTERM)  # during epoch 1 (or its first step, if it lands in epoch 0's evaluation)
    _, err = victim.communicate(timeout=600)
    assert victim.returncode == 2 and "stopped by signal 15" in err and f"mixhub train --resume {stopped}" in err, err[-2000:]
    assert run.wait(timeout=600) == 0, run.communicate()
    ckpt = load_checkpoint(stopped / "checkpoints/last.pt")
    assert ckpt["epoch"] == 1 and 0 < ckpt["batch_in_epoch"] < 12, (ckpt["epoch"], ckpt["batch_in_epoch"])
    partial = ckpt["extra"]["epoch_tally"]
    assert partial["count"] == ckpt["batch_in_epoch"]

    resumed = subprocess.run(mixhub_cmd("train", "--resume", str(stopped), "--quiet"), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a, b = load_checkpoint(straight / "checkpoints/last.pt"), load_checkpoint(stopped / "checkpoints/last.pt")
    for part in ("model", "optimizer"):
        fa, fb = torch.utils._pytree.tree_flatten(a[part])[0], torch.utils._pytree.tree_flatten(b[part])[0]
        assert len(fa) == len(fb)
        for x, y in zip(fa, fb):
            assert (torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y), part
    ra, rb = _records(straight), _records(stopped)
    assert [{k: v for k, v in r.items() if k != "time_s"} for r in ra] == [{k: v for k, v in r.items() if k != "time_s"} for r in rb]
    interrupted = next(r for r in rb if r["split"] == "train" and r["epoch"] == 2)  # index 1 in the checkpoint: the second epoch
    assert interrupted["time_s"] >= partial["seconds"]  # the time before the interruption is counted too


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    ds = build_data(DataConfig(name="digits", image_size=16, augment="light"), 0).train
    forward = [ds.load(i, 1)[0] for i in range(24)]
    backward = [ds.load(i, 1)[0] for i in reversed(range(24))][::-1]
    assert all(torch.equal(x, y) for x, y in zip(forward, backward))
    other_epoch = [ds.load(i, 2)[0] for i in range(24)]
    assert sum(not torch.equal(x, y) for x, y in zip(forward, other_epoch)) >= 6  # p=0.5 per sample: most differ
    ds.set_epoch(1)
    assert all(torch.equal(ds[i][0], forward[i]) for i in range(24))
    again = build_data(DataConfig(name="digits", image_size=16, augment="light"), 0).train
    assert all(torch.equal(again.load(i, 1)[0], forward[i]) for i in range(24))


# ---------------------------------------------------------------------- 5. plugin state must be plain
class Opaque:
    pass


class BadState:
    from mixhub import PluginSpec, hookimpl

    PLUGIN = PluginSpec(name="badstate")

    @hookimpl
    def mixhub_state_dict(self, state):
        return {"counts": torch.zeros(2), "cache": {"thing": Opaque()}}


def test_unplain_plugin_state_fails_at_the_first_save(tmp_path):
    with pytest.raises(CheckpointError, match=r"plugin 'badstate'.*Opaque at key 'cache.thing'") as err:
        train(tiny_config(plugins=["badstate"], train={"epochs": 3}), {"badstate": BadState()}, out=tmp_path / "r")
    assert "weights_only" in str(err.value)
    assert not list((tmp_path / "r/checkpoints").iterdir())  # nothing half-written
    assert [r["epoch"] for r in _records(tmp_path / "r") if r["split"] == "train"] == [1]  # stopped after the first epoch


# ---------------------------------------------------------------------- 7. full disk, killed writes
@pytest.mark.skipif(sys.platform != "linux", reason="a tmpfs in a user namespace is Linux")
def test_full_disk_names_the_file_and_keeps_the_last_good_checkpoint(tmp_path):
    src = tmp_path / "r"
    train(tiny_config(train={"device": "cpu"}), out=src)
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    script = textwrap.dedent(
        f"""\
        import json, os, shutil, sys
        from mixhub.cli import main
        run = os.path.join({str(mnt)!r}, "r")
        shutil.copytree({str(src)!r}, run)
        st = os.statvfs({str(mnt)!r})
        with open(os.path.join({str(mnt)!r}, "filler"), "wb") as fh:  # leave 8 KiB: less than one checkpoint
            fh.write(b"0" * (st.f_bavail * st.f_frsize - 8192))
        rc = main(["train", "--resume", run, "train.epochs=2", "--quiet"])
        print(json.dumps({{"rc": rc, "files": sorted(os.listdir(os.path.join(run, "checkpoints"))) + sorted(os.listdir(run))}}))
        from mixhub.checkpoint import load_checkpoint
        print(json.dumps({{"last_epoch": load_checkpoint(os.path.join(run, "checkpoints", "last.pt"))["epoch"]}}))
        """
    )
    try:
        p = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=4m tmpfs "$0" && exec "$1" -c "$2"', str(mnt), sys.executable, script],
                           cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        pytest.skip("no unshare")
    if "mount" in p.stderr and "ermission" in p.stderr or "unshare:" in p.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()[:200]}")
    lines = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert lines and lines[0]["rc"] == 2, (p.stdout[-1000:], p.stderr[-2000:])
    err = [line for line in p.stderr.splitlines() if line.startswith("mixhub: error:")]
    assert err and "the disk is full" in err[0] and "could not write" in err[0], p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert not any(".tmp" in f for f in lines[0]["files"]), lines[0]["files"]
    assert lines[1]["last_epoch"] == 1  # the last good checkpoint still loads


def test_partial_files_of_a_killed_write_are_removed_on_the_next_start(tmp_path, caplog):
    out = tmp_path / "r"
    train(tiny_config(), out=out)
    left = [out / "checkpoints/.last.pt.tmp-4242", out / ".summary.json.tmp-4242", out / "checkpoints/.last.dcp.tmp"]
    for f in left[:2]:
        f.write_bytes(b"half a checkpoint")
    left[2].mkdir()
    (left[2] / "__0_0.distcp").write_bytes(b"half a shard")
    train(tiny_config(train={"epochs": 2}), out=out, resume=True)
    assert not any(f.exists() for f in left)
    assert "partial file an interrupted write left behind" in caplog.text


def test_checkpoint_write_failure_is_named(tmp_path, monkeypatch):
    import errno

    from mixhub import checkpoint as ck

    good = ck.save_checkpoint({"model": {"w": torch.ones(2)}}, tmp_path / "last.pt")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", full)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*last.pt': the disk is full; the last good checkpoint .*last.pt' is kept"):
        ck.save_checkpoint({"model": {"w": torch.zeros(2)}}, good)
    assert torch.equal(load_checkpoint(good)["model"]["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


# ---------------------------------------------------------------------- 10. test-time keeps the run's plugins
def test_readme_testtime_command_on_a_mixup_run(tmp_path, capsys):
    """README: `mixhub eval RUN/checkpoints/best.pt --stream plugins=unmixtns` on a run trained with mixup."""
    from mixhub.cli import main

    out = tmp_path / "r"
    train(tiny_config(plugins=["mixup"], data={"augment": "light"}, train={"device": "cpu"}), out=out)
    assert main(["eval", str(out / "checkpoints/best.pt"), "--stream", "plugins=unmixtns", "testtime.batch_size=64"]) == 0
    result = json.loads((out / "testtime/testtime.json").read_text())
    assert result["active_plugins"] == ["mixup", "unmixtns"]


def _tally_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from mixhub.run.folder import EpochTally

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        t = EpochTally()
        for v in ([1.0, 2.0] if rank == 0 else [10.0, 20.0, 30.0]):
            t.add({"loss": v})
        t.reduce_ranks()
        sd = t.state_dict() if rank == 0 else None
        box = [sd]
        dist.broadcast_object_list(box, 0)  # what every rank reads back from rank 0's checkpoint
        again = EpochTally()
        again.load_state_dict(box[0])
        again.add({"loss": 100.0 * (rank + 1)})  # one more step on each rank after the resume
        total = torch.tensor([again.sums["loss"], float(again.count)], dtype=torch.float64)
        dist.all_reduce(total)  # the epoch mean as _reduce_means forms it
        if rank == 0:
            Path(out).write_text(json.dumps([sd["sums"]["loss"], sd["count"], total.tolist()]))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process test runs on Linux")
def test_interrupted_epoch_tally_counts_every_rank_once_under_ddp(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_tally_worker, args=(port, str(tmp_path / "out.json")), nprocs=2)
    saved_sum, saved_count, total = json.loads((tmp_path / "out.json").read_text())
    assert (saved_sum, saved_count) == (63.0, 5)
    assert total == [63.0 + 100.0 + 200.0, 7.0]  # each rank's steps once: before and after the interruption


def test_cli_names_a_file_a_full_disk_refused(monkeypatch, capsys):
    import errno

    import mixhub.cli as cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "runs/x/loss.png")

    parser = cli.build_parser()
    parser._subparsers._group_actions[0].choices["train"].set_defaults(func=full)  # a run whose plot hits a full disk
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main(["train"]) == 2
    assert "could not write runs/x/loss.png: the disk is full" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX file-size limit")
def test_first_checkpoint_over_the_file_size_limit_names_the_cause_and_the_folder_is_reusable(tmp_path, caplog):
    out = tmp_path / "run"
    args = ["train", "data.image_size=16", "train.epochs=1", "train.max_steps_per_epoch=2", "train.plots=false", f"out={out}"]
    script = textwrap.dedent(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))  # the checkpoint is ~2 MB; the logs fit
        from mixhub.cli import main
        sys.exit(main({args!r}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()[-1]
    assert "could not write checkpoint" in err and "the file is too large: it reached this process's file-size limit (100000 bytes" in err
    assert "enforce fail" not in err and "unexpected pos" not in err
    assert (out / "config.yaml").exists() and not list((out / "checkpoints").glob("*.pt"))
    # the same command again, without the limit: the folder of a run that never wrote a checkpoint is taken over
    from mixhub.cli import main

    assert main(args + ["--quiet"]) == 0
    assert "never wrote a checkpoint" in caplog.text and "this run replaces them" in caplog.text
    assert (out / "checkpoints/last.pt").exists() and (out / "summary.json").exists()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in records].count("train") == 1  # the stale run's records were not kept
    # a folder that holds a checkpoint is still refused
    with pytest.raises(ConfigError, match="finished run"):
        train(load_config(parse_overrides(args[1:-1])).to_dict(), out=out)
