"""MixhubTask through the exact call sequence of timm's train.py, for each training plugin.

The sequence mirrors ``train.py`` (timm v1.0.28 and main at 1.0.29.dev0): the task, the
optimizer from ``create_optimizer_v2(task.get_trainable_module(), opt=...)``, ``setup_ema``,
``CheckpointSaver(task=task)``, ``create_scheduler_v2(updates_per_epoch=...)``, then per epoch
``train_one_epoch`` (forward, ``loss / accum``, backward, clip, step, ``update_ema``,
``after_step(num_updates, num_updates_total)``, ``step_update``), ``validate`` of the eval model and
of the EMA (whose metric the checkpoint records when there is an EMA), ``save_checkpoint``; then
``resume_task_checkpoint`` + ``load_task_ema_checkpoint`` into a fresh task, and
``timm.create_model(..., checkpoint_path=...)`` on the saved file.
"""

from __future__ import annotations

import copy
import logging
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from timm.loss import LabelSmoothingCrossEntropy
from timm.models import load_checkpoint
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.task import load_task_ema_checkpoint, resume_task_checkpoint
from timm.utils import CheckpointSaver, dispatch_clip_grad

from mixhub.config import DataConfig
from mixhub.data import build_data
from mixhub.timm_task import MixhubTask

MODEL = "test_resnet"
SHAPE = (3, 32, 32)
ACCUM = 2
EPOCHS = 2
MICRO_BATCHES = 4  # per epoch: 2 updates
ADA = {"momentum": 0.9, "momentum_end": 0.999, "momentum_scope": [0.1, 1.0]}

#: each training plugin (classification) with the --opt name train.py is run with
PLUGINS: dict[str, tuple[dict[str, Any], str]] = {
    "mixup": ({"plugins": ["mixup"]}, "sgd"),
    "decoupled": ({"plugins": ["mixup", "decoupled"], "decoupled": {"eta": 0.1}}, "sgd"),
    "rankmixup": ({"plugins": ["rankmixup"]}, "sgd"),
    "adautomix": ({"plugins": ["adautomix"], "adautomix": ADA}, "sgd"),
    "timm-mixup": ({"plugins": ["timm-mixup"], "timm-mixup": {"cutmix_alpha": 1.0, "mode": "pair"}}, "sgd"),
    "adamp": ({"plugins": ["mixup", "adamp"]}, "mixhubadamp"),  # the optimizer plugin's registered timm name
}


@pytest.fixture(scope="module")
def digits() -> Any:
    data = build_data(DataConfig(name="digits", image_size=SHAPE[-1]), 0)
    g = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(data.train, batch_size=8, shuffle=True, drop_last=True, generator=g)
    it = iter(loader)
    train = [next(it) for _ in range(MICRO_BATCHES)]
    val = list(torch.utils.data.DataLoader(torch.utils.data.Subset(data.val, range(48)), batch_size=24))
    return train, val


def new_task(cfg: dict[str, Any], seed: int = 0, verbose: bool = False) -> tuple[torch.nn.Module, MixhubTask]:
    torch.manual_seed(seed)
    model = timm.create_model(MODEL, pretrained=False, num_classes=10)
    task = MixhubTask(model, copy.deepcopy(cfg), num_classes=10, device=torch.device("cpu"), criterion=LabelSmoothingCrossEntropy(0.1),
                      input_shape=SHAPE, verbose=verbose)
    return model, task


@torch.no_grad()
def validate(model: torch.nn.Module, val: list[Any]) -> float:
    """train.py's validate: ``model.eval()``, ``model(input)``, top-1 in percent."""
    model.eval()
    correct = total = 0
    for x, y in val:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return 100.0 * correct / total


def train_one_epoch(epoch: int, task: MixhubTask, optimizer: Any, scheduler: Any, data: list[Any], updates_per_epoch: int,
                    num_updates_total: int, log: dict[str, list[Any]]) -> None:
    """train.py's train_one_epoch, call for call (no prefetcher, no mixup_fn, amp off)."""
    task.train()
    num_updates = epoch * updates_per_epoch
    last_batch_idx = len(data) - 1
    for batch_idx, (x, y) in enumerate(data):
        need_update = (batch_idx + 1) % ACCUM == 0 or batch_idx == last_batch_idx
        with task.no_sync() if not need_update else nullcontext():
            result = task(x, y)
            loss = result["loss"] / ACCUM
            loss.backward()
        if not need_update:
            continue
        dispatch_clip_grad(task.get_clip_parameters(exclude_head=False), value=2.0, mode="norm")
        optimizer.step()
        optimizer.zero_grad()
        num_updates += 1
        ema = task.trainable_module_ema
        before = [t.detach().clone() for t in ema.module.state_dict().values()]
        task.update_ema(step=num_updates)
        log["ema"].append((ema.get_decay(num_updates), before))
        logs = task.after_step(num_updates, num_updates_total)
        log["after_step"].append({k: float(v) for k, v in logs.items()})
        log["momentum"].append(getattr(task.session.state.scratch("adautomix"), "momentum", None))  # the exact float
        scheduler.step_update(num_updates=num_updates)
    log["num_updates"].append(num_updates)


def run_train_py(cfg: dict[str, Any], opt: str, data: Any, out: Path) -> dict[str, Any]:
    train, val = data
    model, task = new_task(cfg)
    trainable = task.get_trainable_module()
    eval_model = task.get_eval_model()
    optimizer = create_optimizer_v2(trainable, opt=opt, lr=0.02, weight_decay=1e-4, momentum=0.9)
    task.setup_ema(decay=0.5)
    saver = CheckpointSaver(model=trainable, optimizer=optimizer, args=None, checkpoint_dir=str(out), recovery_dir=str(out),
                            decreasing=False, max_history=EPOCHS, task=task)
    updates_per_epoch = (len(train) + ACCUM - 1) // ACCUM
    scheduler, num_epochs = create_scheduler_v2(optimizer, sched="cosine", num_epochs=EPOCHS, warmup_epochs=0,
                                                updates_per_epoch=updates_per_epoch)
    log: dict[str, list[Any]] = {"ema": [], "after_step": [], "momentum": [], "num_updates": [], "saved": []}
    for epoch in range(num_epochs):
        train_one_epoch(epoch, task, optimizer, scheduler, train, updates_per_epoch, num_epochs * updates_per_epoch, log)
        top1 = validate(eval_model, val)
        ema_top1 = validate(task.get_eval_model(ema=True), val)
        metric = ema_top1  # train.py: with an EMA, the EMA's metrics are the ones recorded
        saver.save_checkpoint(epoch, metric=metric)
        log["saved"].append((epoch, top1, ema_top1))
        scheduler.step(epoch + 1, metric)
    return {"model": model, "task": task, "optimizer": optimizer, "log": log, "num_epochs": num_epochs,
            "updates_per_epoch": updates_per_epoch}


def plain(state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    m = timm.create_model(MODEL, pretrained=False, num_classes=10)
    m.load_state_dict(state_dict)
    return m


def cosine_momentum(t: int, total: int, base: float, end: float, scope: tuple[float, float]) -> float:
    """AdAutoMix's teacher momentum, written out independently: m_0 before the scope window, then
    ``end - (end - m_0) * (cos(pi * t / t_max) + 1) / 2`` with the global step t (official)."""
    t_min, t_max = math.floor(total * scope[0]), total if scope[1] >= 1 else math.floor(total * scope[1])
    if t < t_min:
        return base
    return end - (end - base) * (math.cos(math.pi * t / t_max) + 1) / 2


#: the default suite runs AdAutoMix (plugin modules, teacher, schedule) and AdamP (an optimizer plugin's
#: --opt name, with mixup); the other plugins run the same sequence under -m slow
@pytest.mark.parametrize("name", [n if n in ("adautomix", "adamp") else pytest.param(n, marks=pytest.mark.slow) for n in PLUGINS])
def test_train_py_sequence(name: str, digits: Any, tmp_path: Path) -> None:
    cfg, opt = PLUGINS[name]
    cfg = {"seed": 0, **cfg}
    r = run_train_py(cfg, opt, digits, tmp_path)
    task, model, log = r["task"], r["model"], r["log"]
    total = r["num_epochs"] * r["updates_per_epoch"]

    # the scheduler's counts: train.py's num_updates, the task's step and the run length agree
    assert r["num_epochs"] == EPOCHS and r["updates_per_epoch"] == MICRO_BATCHES // ACCUM
    assert log["num_updates"] == [r["updates_per_epoch"] * (e + 1) for e in range(EPOCHS)]
    assert task.session.state.step == total and task.session.state.max_steps == total
    if name == "adamp":
        from mixhub_adamp import AdamP

        assert isinstance(r["optimizer"], AdamP)

    # the EMA update: ema <- decay * ema + (1 - decay) * model, with timm's decay for the step
    decay, before = log["ema"][-1]
    ema_sd = task.trainable_module_ema.module.state_dict()
    for (key, now), prev in zip(ema_sd.items(), before):
        if now.is_floating_point():
            expected = prev * decay + model.state_dict()[key] * (1 - decay)
            assert torch.allclose(now, expected, atol=1e-6), key

    # checkpoints: plain timm state dicts, and each recorded metric belongs to the weights saved with it
    evaluated = task.session.eval_network()
    for epoch, top1, ema_top1 in log["saved"]:
        ckpt = torch.load(tmp_path / f"checkpoint-{epoch}.pth.tar", weights_only=True)
        assert set(ckpt["state_dict"]) == set(timm.create_model(MODEL, num_classes=10).state_dict())
        assert ckpt["metric"] == ema_top1
        assert validate(plain(ckpt["state_dict"]), digits[1]) == top1
        assert validate(plain(ckpt["state_dict_ema"]), digits[1]) == ema_top1
    last = tmp_path / "last.pth.tar"
    via_timm = timm.create_model(MODEL, pretrained=False, num_classes=10, checkpoint_path=str(last))  # loads state_dict_ema
    assert validate(via_timm, digits[1]) == log["saved"][-1][2]
    no_ema = timm.create_model(MODEL, pretrained=False, num_classes=10)
    load_checkpoint(no_ema, str(last), use_ema=False)
    for k, v in evaluated.state_dict().items():
        assert torch.equal(no_ema.state_dict()[k], v), k

    # resume into a fresh task: model, plugin modules and state, EMA, step, generator
    _, task2 = new_task(cfg, seed=99)
    opt2 = create_optimizer_v2(task2.get_trainable_module(), opt=opt, lr=0.02, weight_decay=1e-4, momentum=0.9)
    assert resume_task_checkpoint(task2, str(last), optimizer=opt2, log_info=False) == EPOCHS
    task2.setup_ema(decay=0.5)
    load_task_ema_checkpoint(task2, str(last))
    s1, s2 = task.session, task2.session
    for k, v in s1.model.state_dict().items():
        assert torch.equal(s2.model.state_dict()[k], v), k
    for key, spec in s1.state.modules.items():
        for k, v in spec.module.state_dict().items():
            assert torch.equal(s2.state.modules[key].module.state_dict()[k], v), (key, k)
    for k, v in task.trainable_module_ema.module.state_dict().items():
        assert torch.equal(task2.trainable_module_ema.module.state_dict()[k], v), k
    assert (s2.state.step, s2.state.max_steps) == (total, total)
    assert torch.equal(s2.state.generator.get_state(), s1.state.generator.get_state())
    assert s2.host.per_plugin("mixhub_state_dict", state=s2.state) == s1.host.per_plugin("mixhub_state_dict", state=s1.state)

    if name == "adautomix":
        # the teacher's momentum follows its cosine schedule over the whole run: first, middle, last step
        got = log["momentum"]
        assert len(got) == total and [a["adautomix/momentum"] for a in log["after_step"]] == pytest.approx(got)
        for t in (0, total // 2, total - 1):
            assert got[t] == pytest.approx(cosine_momentum(t, total, 0.9, 0.999, (0.1, 1.0)), abs=1e-12), t
        assert got[0] == pytest.approx(0.9) and got[-1] > got[total // 2] > got[0]
        # the saved model is the teacher, whose metric validate() recorded
        assert evaluated is s1.state.module("adautomix", "teacher")
        assert "model" in torch.load(last, weights_only=True)["task_state"]


def test_adautomix_refuses_to_step_without_the_run_length(digits: Any) -> None:
    _, task = new_task({"seed": 0, "plugins": ["adautomix"], "adautomix": ADA})
    optimizer = create_optimizer_v2(task.get_trainable_module(), opt="sgd", lr=0.01)
    x, y = digits[0][0]
    task(x, y)["loss"].backward()
    optimizer.step()
    with pytest.raises(Exception, match=r"plugin 'adautomix' schedules over the whole run.*num_updates_total"):
        task.after_step(1)


def test_optimizer_plugin_names_are_registered_and_an_unused_one_is_warned_about(digits: Any, caplog: pytest.LogCaptureFixture) -> None:
    from timm.optim import list_optimizers

    import mixhub.timm_task  # noqa: F401 - the import registers every installed plugin's timm names

    assert {"mixhubadamp", "mixhubsgdp"} <= set(list_optimizers())
    x, y = digits[0][0]
    for opt, warned in (("adamw", True), ("lookahead_mixhubadamp", False), ("mixhubsgdp", False)):
        _, task = new_task({"seed": 0, "plugins": ["mixup", "adamp"]})
        optimizer = create_optimizer_v2(task.get_trainable_module(), opt=opt, lr=0.01)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mixhub"):
            task(x, y)["loss"].backward()
            optimizer.step()
            optimizer.step()  # warned once, at the first step
        msgs = [r.getMessage() for r in caplog.records if "optimizer plugin" in r.getMessage()]
        assert len(msgs) == int(warned), (opt, msgs)
        if warned:
            assert "'adamp'" in msgs[0] and "AdamW" in msgs[0] and "--opt mixhubadamp" in msgs[0] and "--opt mixhubsgdp" in msgs[0]


def test_trains_smoothing_is_taken_where_the_core_owns_the_loss(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mixhub"):
        _, core_loss = new_task({"seed": 0, "plugins": ["mixup"]}, verbose=True)
    assert core_loss.session.config.train.label_smoothing == 0.1
    assert any("taken from train.py's criterion LabelSmoothingCrossEntropy (--smoothing)" in r.getMessage() for r in caplog.records)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mixhub"):
        _, own_loss = new_task({"seed": 0, "plugins": ["mixup", "decoupled"]})
    assert own_loss.session.config.train.label_smoothing == 0.0  # decoupled owns the loss (and refuses train.label_smoothing)
    msg = next(r.getMessage() for r in caplog.records if "MixhubTask: training loss" in r.getMessage())
    assert "--smoothing 0.1 (LabelSmoothingCrossEntropy) is not applied: plugin 'decoupled' owns the loss" in msg

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mixhub"):
        _, explicit = new_task({"seed": 0, "plugins": ["mixup"], "train": {"label_smoothing": 0.2}})
    assert explicit.session.config.train.label_smoothing == 0.2
    assert any("not train.py's 0.1 from LabelSmoothingCrossEntropy" in r.getMessage() for r in caplog.records)
