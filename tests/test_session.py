"""mixhub.Session: the one training step, in a plain loop and inside `mixhub train`."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

import mixhub
from mixhub import ConfigError
from mixhub.config import DataConfig, ModelConfig
from mixhub.data import build_data
from mixhub.models import build_model
from mixhub.run import seed_everything
from mixhub.trainer import train

BASE: dict[str, Any] = {
    "seed": 3,
    "data": {"name": "digits", "image_size": 16},
    "model": {"name": "smallcnn", "kwargs": {"widths": [8, 16, 32]}},
    "optimizer": {"name": "sgd", "momentum": 0.9},
    "train": {
        "epochs": 1, "batch_size": 16, "max_steps_per_epoch": 1, "lr": 0.05, "weight_decay": 1e-4,
        "sched": "none", "plots": False, "checkpoint": False, "device": "cpu",
    },
}

METHODS = {
    "erm": {},
    "mixup": {"plugins": ["mixup"]},
    "decoupled": {"plugins": ["mixup", "decoupled"]},
    "rankmixup": {"plugins": ["rankmixup"]},
    "adautomix": {"plugins": ["adautomix"]},
}


def config(method: str) -> dict[str, Any]:
    return {**copy.deepcopy(BASE), **copy.deepcopy(METHODS[method])}


def first_batch(dataset: Any, seed: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The trainer's first batch, rebuilt from its documented order (a seeded permutation)."""
    perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed * 1_000_003))[:batch_size]
    xs, ys = zip(*(dataset[int(i)] for i in perm))
    return torch.stack(xs), torch.stack([torch.as_tensor(y) for y in ys]), perm


def plain_loop(cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    """One step in a hand-written loop around mixhub.Session."""
    seed = cfg["seed"]
    seed_everything(seed)
    bundle = build_data(DataConfig(**cfg["data"]), seed)
    model = build_model(ModelConfig(**cfg["model"]), bundle.input_shape, bundle.num_classes)
    session = mixhub.Session(cfg, model=model, num_classes=bundle.num_classes, train_targets=bundle.train_targets, input_shape=bundle.input_shape, device="cpu",
                             max_steps=cfg["train"]["epochs"] * cfg["train"]["max_steps_per_epoch"])
    optimizer = session.create_optimizer()
    x, y, index = first_batch(bundle.train, seed, cfg["train"]["batch_size"])
    loss, logs = session.training_step(x, y, index)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    session.after_step()
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in logs.values())
    assert torch.equal(logs["loss"], loss.detach())
    return fingerprint(model, session)


def fingerprint(model: torch.nn.Module, session: mixhub.Session) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    for key, spec in session.state.modules.items():
        out.update({f"{key}.{k}": v.detach().clone() for k, v in spec.module.state_dict().items()})
    return out


@pytest.mark.parametrize("method", list(METHODS))
def test_plain_loop_equals_mixhub_train_bitwise(method: str) -> None:
    cfg = config(method)
    mine = plain_loop(cfg)
    result = train(copy.deepcopy(cfg), write=False)
    assert result.summary["steps"] == 1
    theirs = fingerprint(result.trainer.model, result.trainer.session)
    assert mine.keys() == theirs.keys()
    for k in mine:
        assert torch.equal(mine[k], theirs[k]), (method, k)
    seed_everything(cfg["seed"])  # the same initial weights: the step must have moved them
    bundle = build_data(DataConfig(**cfg["data"]), cfg["seed"])
    start = build_model(ModelConfig(**cfg["model"]), bundle.input_shape, 10).state_dict()
    assert any(not torch.equal(mine[f"model.{n}"], t) for n, t in start.items() if t.is_floating_point())


def test_step_logs_stay_tensors_and_include_aux_losses() -> None:
    cfg = config("rankmixup")
    seed_everything(0)
    bundle = build_data(DataConfig(**cfg["data"]), 0)
    model = build_model(ModelConfig(**cfg["model"]), bundle.input_shape, 10)
    session = mixhub.Session(cfg, model=model, num_classes=10)
    x, y, _ = first_batch(bundle.train, 0, 16)
    loss, logs = session.training_step(x, y)
    assert {"loss", "loss_main", "rankmixup_mrl"} <= set(logs)
    w = session.aux_weight("rankmixup_mrl")
    assert torch.allclose(logs["loss"], logs["loss_main"] + w * logs["rankmixup_mrl"])
    assert loss.requires_grad and not logs["loss"].requires_grad


def test_dataset_partners_need_a_fetch_function() -> None:

    cfg = {**copy.deepcopy(BASE), "plugins": ["cmixup"], "data": {"name": "synthetic-regression", "options": {"kind": "tanh", "n": 64}},
           "model": {"name": "mlp", "kwargs": {"hidden": [8]}}}
    model = build_model(ModelConfig(**cfg["model"]), (5,), 1)
    targets = torch.linspace(0, 1, 64)
    session = mixhub.Session(cfg, model=model, train_targets=targets)
    with pytest.raises(ConfigError, match="fetch="):
        session.training_step(torch.randn(8, 5), targets[:8], torch.arange(8))


def test_state_dict_round_trip_is_weights_only_loadable(tmp_path) -> None:
    cfg = config("adautomix")
    seed_everything(0)
    bundle = build_data(DataConfig(**cfg["data"]), 0)
    model = build_model(ModelConfig(**cfg["model"]), bundle.input_shape, 10)
    session = mixhub.Session(cfg, model=model, num_classes=10, input_shape=bundle.input_shape)
    opt = session.create_optimizer()
    x, y, _ = first_batch(bundle.train, 0, 16)
    loss, _ = session.training_step(x, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with pytest.raises(ConfigError, match="plugin 'adautomix' schedules over the whole run.*total_steps=N"):
        session.after_step()  # AdAutoMix's teacher momentum needs the run's length
    assert session.state.step == 1  # nothing else ran
    session.after_step(1, total_steps=40)
    torch.save(session.state_dict(), tmp_path / "s.pt")
    sd = torch.load(tmp_path / "s.pt", weights_only=True)
    fresh = mixhub.Session(cfg, model=build_model(ModelConfig(**cfg["model"]), bundle.input_shape, 10), num_classes=10, input_shape=bundle.input_shape)
    fresh.load_state_dict(sd)
    assert fresh.state.step == 1 and fresh.state.max_steps == 40
    for key, spec in session.state.modules.items():
        for a, b in zip(spec.module.state_dict().values(), fresh.state.modules[key].module.state_dict().values()):
            assert torch.equal(a, b)
    assert torch.equal(fresh.state.generator.get_state(), session.state.generator.get_state())
    from mixhub import CheckpointError

    other = mixhub.Session(config("mixup"), model=build_model(ModelConfig(**cfg["model"]), bundle.input_shape, 10), num_classes=10)
    with pytest.raises(CheckpointError, match="plugins"):
        other.load_state_dict(sd)


def test_task_module_holds_model_and_plugin_modules_in_one_forward() -> None:
    cfg = config("adautomix")
    seed_everything(0)
    model = build_model(ModelConfig(**cfg["model"]), (3, 16, 16), 10)
    session = mixhub.Session(cfg, model=model, num_classes=10, input_shape=(3, 16, 16))
    tm = session.task_module
    names = {n for n, _ in tm.named_parameters()}
    assert any(n.startswith("model.") for n in names)
    assert any(n.startswith("plugin_modules.adautomix__generator.") for n in names)
    calls = []
    handle = tm.register_forward_hook(lambda m, a, o: calls.append(1))
    x = torch.randn(8, 3, 16, 16)
    loss, _ = session.training_step(x, torch.arange(8) % 10)
    handle.remove()
    assert calls == [1]
    loss.backward()  # the generator got its gradient through the one forward
    gen = session.state.module("adautomix", "generator")
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())


def test_soft_targets_are_refused_unless_the_config_says_they_are_yours() -> None:
    """A batch timm's Mixup already mixed (soft [B, C] targets) is refused by the Session, with or
    without a mixing plugin, with MixhubTask's message; train.soft_targets accepts soft labels."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    x = torch.randn(8, 5)
    soft = torch.softmax(torch.randn(8, 3), dim=1)
    for plugins in ([], ["mixup"]):
        session = mixhub.Session({"plugins": plugins}, model=torch.nn.Linear(5, 3), num_classes=3)
        with pytest.raises(mixhub.DataError, match=r"mixhub.Session got targets of shape \(8, 3\).*timm has already mixed this batch.*train.soft_targets=true"):
            session.training_step(x, soft)
        with pytest.raises(mixhub.DataError, match="timm has already mixed"):
            session.training_step(x, torch.zeros(8))  # float class indices are not indices either
    model = torch.nn.Linear(5, 3)
    session = mixhub.Session({"train": {"soft_targets": True}}, model=model, num_classes=3)
    loss, _ = session.training_step(x, soft)  # a loss-only setup on your own soft labels
    assert torch.allclose(loss, F.cross_entropy(model(x), soft))
