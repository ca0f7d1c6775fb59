"""The run is a composition: ``Run`` holds its parts (no mixins), and each part works alone with
what its constructor takes (fake config, data and state here, no ``Run``)."""

from __future__ import annotations

import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mixhub import Batch
from mixhub.checks import DeviceChecks
from mixhub.distributed import DistContext
from mixhub.errors import DataError
from mixhub.run import NonFiniteError, Run
from mixhub.run.evaluation import Evaluation
from mixhub.run.guards import Guards
from mixhub.run.keeper import CheckpointKeeper
from mixhub.run.parallel import Parallel
from mixhub.run.recorder import RunRecords
from mixhub.run.step_meter import StepMeter
from mixhub.testing import tiny_config
from mixhub.trainer import Trainer


def test_run_holds_its_parts_and_inherits_none() -> None:
    assert Run.__mro__ == (Run, object) and Trainer.__mro__ == (Trainer, Run, object)
    run = Run(tiny_config(), write=False)
    try:
        parts = {"parallel": Parallel, "records": RunRecords, "guards": Guards, "evaluation": Evaluation, "checkpoints": CheckpointKeeper}
        for name, kind in parts.items():
            assert type(getattr(run, name)) is kind, name
        assert run.records.log.state is run.state and run.records.meter.max_steps == run.state.max_steps
        assert run.evaluation.eval_model() is run.model  # no EMA, no export module
        run.checkpoints.best["value"] = 0.25
        assert run.checkpoints.payload()["best"]["value"] == 0.25
    finally:
        run.close()


def _guards(nan_policy: str = "stop", classes: int = 3) -> Guards:
    config = SimpleNamespace(train=SimpleNamespace(nan_policy=nan_policy, sync_every=1), data=SimpleNamespace(name="fake"))
    bundle = SimpleNamespace(num_classes=classes, input_shape=(2,))
    state = SimpleNamespace(step=7, epoch=1)
    return Guards(config, bundle, state, DistContext(), Path("/nowhere/last.pt"))  # type: ignore[arg-type]


def _batch(x: torch.Tensor, y: torch.Tensor) -> Batch:
    return Batch(inputs=x, targets=y, index=torch.arange(10, 10 + len(x)))


def test_guards_alone_check_a_batch_on_the_host() -> None:
    guards = _guards()
    x = torch.zeros(4, 2)
    assert guards.check_batch(_batch(x, torch.tensor([0, 1, 2, 0])))
    x[2, 1] = float("nan")
    with pytest.raises(NonFiniteError, match=r"non-finite inputs in the training batch at dataset indices \[12\] \(step 7\)"):
        guards.check_batch(_batch(x, torch.tensor([0, 1, 2, 0])))
    assert not _guards("skip").check_batch(_batch(x, torch.tensor([0, 1, 2, 0])))  # skipped, not raised
    with pytest.raises(DataError, match=r"labels out of range \[0, 3\) at dataset indices \[11\]"):
        guards.check_batch(_batch(torch.zeros(4, 2), torch.tensor([0, 3, 2, 0])))
    with pytest.raises(DataError, match=r"input shape \(3,\), the model expects \(2,\)"):
        guards.check_batch(_batch(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])))


def test_guards_alone_flag_a_batch_on_the_device_and_clamp_labels() -> None:
    guards, checks = _guards(), DeviceChecks()
    guarded = guards.guard_batch(_batch(torch.zeros(3, 2), torch.tensor([0, 5, -1])), checks)
    assert guarded.targets.tolist() == [0, 2, 0] and len(checks) == 2  # inputs and labels flagged; clamped until read
    with pytest.raises(DataError, match=r"at dataset indices \[11, 12\]"):
        checks.verify()
    guards.guard_batch(_batch(torch.zeros(3, 2), torch.tensor([0, 1, 2])), checks)
    checks.verify()  # a clean batch: its flags read false
    assert "last good checkpoint: none yet" in guards.step_message("non-finite loss", torch.tensor([3]), 7, 1)


def test_guards_alone_turn_a_signal_into_a_stop_request() -> None:
    guards = _guards()
    before = signal.getsignal(signal.SIGTERM)
    assert not guards.stop_requested
    with guards.signals():
        signal.raise_signal(signal.SIGTERM)
        assert guards.stop_signal == signal.SIGTERM and guards.stop_requested
    assert signal.getsignal(signal.SIGTERM) is before and guards.stop_requested  # the handler is restored, the request stays


def test_parallel_alone_on_one_process() -> None:
    parallel = Parallel(DistContext(), SimpleNamespace(sync_bn=True, strategy="ddp", ema=False, dist_bn="reduce"))
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1)
    w.grad = torch.tensor([1.0, 2.0])
    assert parallel.gradients_finite(opt)
    w.grad = torch.tensor([1.0, float("inf")])
    assert not parallel.gradients_finite(opt)
    session = SimpleNamespace(model=torch.nn.BatchNorm1d(2), state=SimpleNamespace(modules={}))
    assert parallel.prepare(session) is False and not parallel.sharded
    assert isinstance(session.model, torch.nn.BatchNorm1d)  # no process group: no SyncBatchNorm


class _Log:
    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def step(self, scalars: dict[str, float]) -> None:
        self.steps.append(dict(scalars))


def test_records_alone_send_one_step_record_per_window_with_the_window_mean() -> None:
    state = SimpleNamespace(step=0)
    log, checks = _Log(), DeviceChecks()
    w = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([{"params": [w], "lr": 0.5}])
    records = RunRecords(log, StepMeter(2, 4, log_seconds=0), checks, opt, state)  # type: ignore[arg-type]
    for step, loss in enumerate([1.0, 3.0, 5.0, 9.0], start=1):
        state.step = step
        records.step_starts()
        records.step_done({"loss": torch.tensor(loss)}, images=8, norm=None)
    assert [r["loss"] for r in log.steps] == [2.0, 7.0] and all(r["lr"] == 0.5 for r in log.steps)
    checks.fail_if(torch.tensor(True), lambda: NonFiniteError("flagged"), 5)
    state.step = 6
    with pytest.raises(NonFiniteError, match="flagged"):  # read with the record of the next log step
        records.step_done({"loss": torch.tensor(1.0)}, images=8, norm=None)
