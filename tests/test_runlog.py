"""The logging layer: records, the step meter, the dispatcher, the console and the run's plots."""

import io
import math

import pytest
import torch
from helpers_plots import capture_figures

from mixhub import LogRecord, PluginSpec, hookimpl
from mixhub.console import Console, format_duration, format_step
from mixhub.run.folder import RunFolder, read_jsonl
from mixhub.run.plots import binned_ece, plot_curves, plot_reliability
from mixhub.run.recorder import flatten_numbers, name_clash
from mixhub.run.step_meter import StepMeter, grad_norm, group_lrs
from mixhub.testing import logging_run


class Collector:
    """An in-process logger plugin: keeps every record it receives."""

    PLUGIN = PluginSpec(name="collector", task_kinds=("classification", "regression", "continual", "test-time"))

    def __init__(self):
        self.records = []
        self.closed_with = "open"

    @hookimpl
    def mixhub_log(self, record, state):
        assert state.run_dir is None or state.run_dir.exists()
        self.records.append(record)

    @hookimpl(wrapper=True)
    def mixhub_fit(self, state):
        try:
            result = yield
            self.closed_with = "ok"
            return result
        except BaseException:
            self.closed_with = "error"
            raise


# ---------------------------------------------------------------------------- records
def test_record_kinds_and_names():
    with pytest.raises(ValueError, match="kind"):
        LogRecord("metric", step=0)
    with pytest.raises(ValueError, match="path"):
        LogRecord("artifact", step=0)
    with pytest.raises(ValueError, match="split"):
        LogRecord("epoch", step=0)
    assert LogRecord("step", step=5, scalars={"loss": 1.0, "lr/head": 0.1}).metrics() == {"train/loss": 1.0, "train/lr/head": 0.1}
    assert LogRecord("epoch", step=5, split="train", scalars={"loss": 2.0}).metrics() == {"train_epoch/loss": 2.0}
    assert LogRecord("epoch", step=5, split="val", scalars={"acc": 0.5}).metrics() == {"val/acc": 0.5}
    assert LogRecord("summary", step=5, scalars={"test/acc": 0.5}).metrics() == {"summary/test/acc": 0.5}


def test_flatten_numbers_keeps_numbers_only():
    tree = {"test": {"acc": 0.9, "name": "x", "flag": True}, "steps": 10, "nested": {"a": {"b": 1}}}
    assert flatten_numbers(tree) == {"test/acc": 0.9, "steps": 10.0, "nested/a/b": 1.0}


# ---------------------------------------------------------------------------- step meter
class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_step_meter_window_means_rates_and_eta():
    clock = FakeClock()
    meter = StepMeter(log_every=3, max_steps=9, clock=clock, log_seconds=1e9)
    meter._next_timed = 10**9  # this test is about log_every's windows (the first and timed steps: below)
    losses = [torch.tensor(1.0), torch.tensor(2.0), torch.tensor(6.0)]
    for i, loss in enumerate(losses):
        meter.data_wait(0.1 * (i + 1))
        meter.add({"loss": loss, "mix": torch.tensor(float(i)), "plugin/x": 4.0}, images=32)
        clock.t += 2.0
        assert meter.due(i + 1) == (i + 1 == 3)
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.5, "name": "model"},
                           {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.25, "name": "head"}])
    out = meter.flush(3, opt, grad_norm=torch.tensor(7.0))
    assert out["loss"] == pytest.approx(3.0) and out["mix"] == pytest.approx(1.0) and out["plugin/x"] == pytest.approx(4.0)
    assert out["images_per_s"] == pytest.approx(96 / 6.0)
    assert out["step_time_s"] == pytest.approx(2.0)
    assert out["data_wait_s"] == pytest.approx(0.2)
    assert out["eta_s"] == pytest.approx(6 * 2.0)
    assert out["grad_norm"] == pytest.approx(7.0)
    assert out["lr/model"] == 0.5 and out["lr/head"] == 0.25 and "lr" not in out
    # the window restarts: the next flush only sees the next steps
    meter.add({"loss": torch.tensor(10.0)}, images=8)
    clock.t += 1.0
    assert meter.due(4) is False and meter.due(9) is True
    assert meter.flush(4)["loss"] == pytest.approx(10.0)


def test_step_meter_reduces_window_sums_over_processes():
    seen = []

    def reduce(t):  # stands in for an all-reduce mean with a second process whose sums are 10x
        seen.append(t.clone())
        return (t + 10 * t) / 2

    clock = FakeClock()
    meter = StepMeter(log_every=2, max_steps=4, clock=clock, reduce=reduce, log_seconds=30.0)
    meter.add({"loss": torch.tensor(1.0), "aux": 0.5}, images=4)
    meter.add({"loss": torch.tensor(3.0), "aux": 0.5}, images=4)
    clock.t += 2.0
    out = meter.flush(2)
    assert seen[0].tolist() == [1.0, 4.0, 2.0]  # sorted keys: aux, loss (window sums), then the window's seconds
    assert out["loss"] == pytest.approx(11 * 4.0 / 2 / 2) and out["aux"] == pytest.approx(11 * 1.0 / 2 / 2)
    # the time every process uses is the reduced one (11 s / 2 steps here), so all pick the same timed step
    assert out["step_time_s"] == pytest.approx(11.0 / 2) and meter._next_timed == 2 + int(30 / 5.5)


def test_step_meter_logs_the_first_step_and_at_least_every_log_seconds():
    clock = FakeClock()
    meter = StepMeter(log_every=1000, max_steps=10_000, clock=clock, log_seconds=30.0)
    logged = []
    for step in range(1, 200):
        assert meter.is_log_step(step) == meter.due(step) or meter._steps == 0  # the pre-step and post-step answers agree
        meter.add({"loss": torch.tensor(1.0)}, images=1)
        clock.t += 4.0 if step <= 20 else 1.0  # 4 s per step, then 1 s per step
        if meter.due(step):
            meter.flush(step)
            logged.append(step)
    # step 1 (the first), then every int(30 / 4) = 7 steps while steps take 4 s; the window 16-22
    # took 22 s for 7 steps, so the next comes int(30 * 7 / 22) = 9 steps later; then every 30 steps
    assert logged == [1, 8, 15, 22, 31, 61, 91, 121, 151, 181]
    # log_every and the last step still count; after a window with a slow step (step 7, 100 s),
    # the next line comes after int(30 * 5 / 100) -> 1 step
    meter = StepMeter(log_every=5, max_steps=12, clock=clock, log_seconds=30.0)
    steps = []
    for step in range(1, 13):
        meter.add({"loss": 1.0}, images=1)
        clock.t += 0.001 if step != 7 else 100.0
        if meter.due(step):
            meter.flush(step)
            steps.append(step)
    assert steps == [1, 5, 10, 11, 12]
    # log_seconds=0: log_every and the last step only
    meter = StepMeter(log_every=5, max_steps=12, clock=clock, log_seconds=0)
    steps = []
    for step in range(1, 13):
        meter.add({"loss": 1.0}, images=1)
        clock.t += 100.0
        if meter.due(step):
            meter.flush(step)
            steps.append(step)
    assert steps == [5, 10, 12]


def test_step_meter_rejects_bad_interval():
    with pytest.raises(ValueError, match="log_every"):
        StepMeter(0, 10)


def test_group_lrs_single_and_unnamed_groups():
    p = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    assert group_lrs(torch.optim.SGD(p[:1], lr=0.1)) == {"lr": 0.1}
    opt = torch.optim.SGD([{"params": p[:1]}, {"params": p[1:2], "lr": 0.01}, {"params": p[2:], "name": "x"}], lr=0.1)
    assert group_lrs(opt) == {"lr/group0": 0.1, "lr/group1": 0.01, "lr/x": 0.1}  # no bare "lr" next to "lr/..."
    same = torch.optim.SGD([{"params": p[:1], "name": "a/b"}, {"params": p[1:2], "name": "a/b"}], lr=0.1)
    assert list(group_lrs(same)) == ["lr/a_b", "lr/a_b_1"]


def test_a_metric_name_cannot_also_be_a_folder_of_others():
    assert name_clash(["lr", "lr_x", "lrx/a"]) is None
    assert name_clash(["loss", "lr/head", "lr", "z"]) == ("lr", "lr/head")
    with pytest.raises(ValueError, match="'lr' is also the folder of 'lr/group0'"):
        LogRecord("step", step=1, scalars={"lr": 0.1, "lr/group0": 0.1})


def test_grad_norm_matches_independent_computation():
    a, b, c = (torch.nn.Parameter(torch.zeros(n)) for n in (3, 2, 4))
    a.grad = torch.tensor([1.0, 2.0, 2.0])
    b.grad = torch.tensor([4.0, 0.0])
    expected = math.sqrt(1 + 4 + 4 + 16)
    assert float(grad_norm([a, b, c])) == pytest.approx(expected)
    assert grad_norm([c]) is None


# ---------------------------------------------------------------------------- dispatcher
def test_runlog_dispatches_every_kind_and_writes_files(tmp_path):
    col = Collector()
    plot = tmp_path / "plot.png"
    plot.write_bytes(b"png")
    with logging_run(["collector"], tmp_path, {"collector": col}) as log:
        log.state.step = 0
        log.config({"seed": 0}, {"collector": "0"})
        log.state.step = 10
        log.step({"loss": 0.5, "lr": 0.1})
        log.epoch({"epoch": 1, "split": "train", "step": 10, "loss": 0.6, "time_s": 1.0})
        log.epoch({"epoch": 1, "split": "val", "acc": 0.75, "loss": 0.7})
        log.summary({"test": {"acc": 0.8, "ece": float("nan")}, "best_epoch": 1, "config": {"seed": 0}})
        assert log.artifact(plot) is not None
        assert log.artifact(tmp_path / "missing.png") is None
    assert col.closed_with == "ok"
    kinds = [r.kind for r in col.records]
    assert kinds == ["config", "step", "epoch", "epoch", "summary", "artifact"]
    cfg, step, train, val, summary, art = col.records
    assert cfg.data["config"] == {"seed": 0} and cfg.data["run_dir"] == tmp_path and cfg.data["resumed"] is False
    assert step.step == 10 and step.scalars == {"loss": 0.5, "lr": 0.1}
    assert cfg.epoch == step.epoch == train.epoch == val.epoch == 1  # 1-based: state.epoch 0 is epoch 1 in progress
    assert summary.epoch == 0  # epochs trained (none here)
    assert train.split == "train" and train.scalars == {"loss": 0.6, "time_s": 1.0} and train.step == 10
    assert val.split == "val" and val.scalars == {"acc": 0.75, "loss": 0.7} and val.step == 10
    assert summary.scalars == {"test/acc": 0.8, "best_epoch": 1.0}
    assert art.path == plot and art.name == "plot.png"
    assert read_jsonl(tmp_path / "steps.jsonl") == [{"step": 10, "epoch": 1, "loss": 0.5, "lr": 0.1}]
    assert [r["split"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == ["train", "val"]


def test_runlog_marks_error_and_stays_silent_off_the_main_process(tmp_path):
    col = Collector()
    with pytest.raises(RuntimeError):
        with logging_run(["collector"], tmp_path, {"collector": col}) as log:
            log.config({}, {})
            raise RuntimeError("boom")
    assert col.closed_with == "error" and [r.kind for r in col.records] == ["config"]
    other = Collector()
    with logging_run(["collector"], tmp_path / "r1", {"collector": other}, rank=1) as log:
        log.config({}, {})
        log.step({"loss": 1.0})
        log.epoch({"epoch": 1, "split": "val", "acc": 1.0})
    assert other.records == [] and not (tmp_path / "r1" / "steps.jsonl").exists()


def test_truncate_steps_keeps_records_up_to_the_checkpoint(tmp_path):
    folder = RunFolder(tmp_path)
    for s in (5, 10, 15, 20):
        folder.log_step({"step": s, "loss": 1.0})
    folder.truncate_steps(10)
    assert [r["step"] for r in read_jsonl(tmp_path / "steps.jsonl")] == [5, 10]
    assert folder.steps() == read_jsonl(tmp_path / "steps.jsonl")
    folder.release()


def test_truncate_log_keeps_the_epochs_done_and_drops_the_final_records(tmp_path):
    """Records are 1-based; resuming with 2 epochs done (0-based next epoch 2) keeps epochs 1 and 2."""
    folder = RunFolder(tmp_path)
    for e in (1, 2, 3):
        folder.log({"epoch": e, "split": "train", "loss": 1.0})
    folder.log({"epoch": 3, "split": "final_test", "acc": 0.5})
    folder.truncate_log(2)
    assert [(r["epoch"], r["split"]) for r in folder.records()] == [(1, "train"), (2, "train")]
    folder.truncate_log(3)  # a finished run extended: its final records go
    assert [r["epoch"] for r in folder.records()] == [1, 2]
    folder.release()


# ---------------------------------------------------------------------------- console
def step_record(step=40, **scalars):
    base = {"loss": 0.123456, "lr": 0.001, "images_per_s": 1234.4, "eta_s": 3725, "data_wait_s": 0.002}
    return LogRecord("step", step=step, epoch=2, scalars={**base, **scalars})  # the second epoch (1-based)


def test_console_in_a_pipe_prints_plain_lines():
    buf = io.StringIO()  # not a terminal
    con = Console(quiet=False, stream=buf)
    assert con.mode == "lines"
    assert list(con.progress(range(3), total=3, desc="x")) == [0, 1, 2]
    con.step(step_record(), 200)
    con.message("epoch 1/2 done")
    text = buf.getvalue()
    assert "\r" not in text and text.count("\n") == 2
    first = text.splitlines()[0]
    for part in ("step  40/200", "epoch 2", "loss 0.1235", "lr 1.000e-03", "img/s 1234", "eta 1:02:05"):
        assert part in first, (part, first)  # the record's epoch, as it is (1-based)


def test_console_on_a_terminal_uses_bars(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    buf = Tty()
    con = Console(quiet=False, stream=buf)
    assert con.mode == "bars"
    for _ in con.progress(range(2), total=2, desc="epoch 0"):
        con.step(step_record(), 200)  # shown on the bar, not as a line
    assert "step  40/200" not in buf.getvalue()


def test_console_quiet_goes_to_the_logger(caplog):
    con = Console(quiet=True, stream=io.StringIO())
    with caplog.at_level("INFO", logger="mixhub"):
        con.step(step_record(), 200)
    assert "loss 0.1235" in caplog.text and con.stream.getvalue() == ""
    assert Console(quiet=False, enabled=False, stream=io.StringIO()).enabled is False


def test_format_helpers():
    assert format_duration(65) == "0:01:05" and format_duration(-3) == "0:00:00"
    assert format_step(LogRecord("step", step=3, scalars={}), 0) == "step 3"
    rec = LogRecord("step", step=3, epoch=1, scalars={"lr/model": 0.5, "lr/head": 0.25})
    assert format_step(rec, 10, epochs=4) == "step  3/10  epoch 1/4  lr 5.000e-01"
    assert format_step(rec, 10, unit="task") == "step  3/10  task 1  lr 5.000e-01"


# ---------------------------------------------------------------------------- plots
def test_one_epoch_curves_have_markers_and_lr_curve(tmp_path, monkeypatch):
    saved = capture_figures(monkeypatch)
    records = [{"epoch": 1, "split": "train", "loss": 1.0}, {"epoch": 1, "split": "val", "loss": 1.1, "acc": 0.5}]
    steps = [{"step": s, "lr/model": 0.1 * s, "lr/head": 0.2 * s} for s in (1, 2, 3)]
    written = plot_curves(records, tmp_path, steps)
    assert {p.name for p in written} == {"loss.png", "val_metrics.png", "lr.png"}
    figs = {p.rsplit("/", 1)[-1]: f for p, f in saved}
    for name in ("loss.png", "val_metrics.png"):
        for line in figs[name].axes[0].lines:
            assert line.get_marker() == "o" and list(line.get_xdata()) == [1]  # the first epoch, at 1
    lr_lines = figs["lr.png"].axes[0].lines
    assert sorted(line.get_label() for line in lr_lines) == ["head", "model"]
    head = next(line for line in lr_lines if line.get_label() == "head")
    assert list(head.get_xdata()) == [1, 2, 3] and list(head.get_ydata()) == pytest.approx([0.2, 0.4, 0.6])


def test_lr_plot_draws_every_step_of_the_schedule_and_whole_epochs(tmp_path, monkeypatch):
    """A warm-up then decay over 12 steps (3 epochs of 4): every step's lr is on the plot, the two
    step records sit on the line, and the epoch axes tick whole epochs from 1."""
    from mixhub.schedule import GroupScheduler

    saved = capture_figures(monkeypatch)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = GroupScheduler(opt, 12, kind="cosine", warmup_steps=4)
    (curve,) = sched.curve(12)
    expected = [sched.lr_at(s, 1.0, 0.0) for s in range(12)]
    assert curve == expected and curve[0] < curve[3] < curve[4] and curve[4] > curve[8] > curve[11]  # up, then down
    records = [{"epoch": e, "split": "train", "loss": 1.0 / e} for e in (1, 2, 3)]
    steps = [{"step": 4, "lr": curve[3]}, {"step": 12, "lr": curve[11]}]
    plot_curves(records, tmp_path, steps, {"lr": curve}, steps_per_epoch=4)
    figs = {p.rsplit("/", 1)[-1]: f for p, f in saved}
    ax = figs["lr.png"].axes[0]
    line, points = ax.lines
    assert list(line.get_xdata()) == list(range(1, 13)) and list(line.get_ydata()) == pytest.approx(expected)
    assert list(points.get_xdata()) == [4, 12] and list(points.get_ydata()) == pytest.approx([curve[3], curve[11]])
    epoch_axis = ax.child_axes[0] if ax.child_axes else next(a for a in figs["lr.png"].axes if a is not ax)
    assert epoch_axis.get_xlabel() == "epoch"
    assert epoch_axis.xaxis.get_major_locator()._integer
    loss_ax = figs["loss.png"].axes[0]
    assert list(loss_ax.lines[0].get_xdata()) == [1, 2, 3] and loss_ax.get_xlabel() == "epoch"
    figs["loss.png"].canvas.draw()
    ticks = [t for t in loss_ax.get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_binned_ece_independent_value():
    conf, acc, counts = [0.2, 0.6, 0.9], [0.0, 0.5, 1.0], [2, 0, 6]
    # |0 - .2| * 2/8 + |1 - .9| * 6/8
    assert binned_ece(conf, acc, counts) == pytest.approx(0.2 * 0.25 + 0.1 * 0.75)
    assert binned_ece(conf, acc, [0, 0, 0]) == 0.0


def test_reliability_diagram_shows_ece_and_bin_counts(tmp_path, monkeypatch):
    saved = capture_figures(monkeypatch)
    conf, acc, counts = torch.tensor([0.2, 0.6, 0.9]), torch.tensor([0.0, 0.5, 1.0]), torch.tensor([2.0, 0.0, 6.0])
    plot_reliability(conf, acc, counts, tmp_path / "r.png", "test reliability")
    fig = saved[-1][1]
    assert fig.axes[0].get_title() == "test reliability (ECE 12.50%)"
    heights = [p.get_height() for p in fig.axes[1].patches]
    assert heights == [2.0, 0.0, 6.0]
    assert sorted(t.get_text() for t in fig.axes[1].texts) == ["2", "6"]
    plot_reliability(conf, acc, counts, tmp_path / "r2.png", "x", ece=0.031)
    assert saved[-1][1].axes[0].get_title() == "x (ECE 3.10%)"


def test_trackers_get_only_the_sections_of_the_protocol_the_run_uses():
    from mixhub.run.recorder import used_config

    config = {"seed": 0, "train": {"lr": 0.1}, "continual": {"memory_size": 5}, "testtime": {"order": "iid"}}
    assert used_config(config, "supervised") == {"seed": 0, "train": {"lr": 0.1}}
    assert used_config(config, "continual") == {"seed": 0, "train": {"lr": 0.1}, "continual": {"memory_size": 5}}
    assert used_config(config, "testtime") == {"seed": 0, "train": {"lr": 0.1}, "testtime": {"order": "iid"}}
    col = Collector()
    with logging_run(["collector"], None, {"collector": col}) as log:
        log.config(config, {}, protocol="supervised")
    assert col.records[0].data["config"] == {"seed": 0, "train": {"lr": 0.1}}
