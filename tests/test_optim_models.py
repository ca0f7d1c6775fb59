"""Optimizer groups as timm builds them (layer decay, no_weight_decay), the schedule's lr_scale,
and local pretrained weights with the small-input stem."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from timm.optim import create_optimizer_v2

import mixhub
from mixhub import ConfigError
from mixhub.config import ModelConfig
from mixhub.models import build_model
from mixhub.schedule import GroupScheduler

VIT_KW: dict[str, Any] = {"img_size": 32, "patch_size": 8, "depth": 3, "embed_dim": 48, "num_heads": 2}


def vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **VIT_KW)


def by_param(groups: list[dict[str, Any]], names: dict[int, str]) -> dict[str, tuple[float, float]]:
    """name -> (weight_decay, lr_scale) of the group holding it."""
    out = {}
    for g in groups:
        for p in g["params"]:
            out[names[id(p)]] = (g.get("weight_decay", -1.0), g.get("lr_scale", 1.0))
    return out


def test_vit_layer_decay_groups_match_timms_own_and_skip_decay_on_pos_embed() -> None:
    model = vit()
    cfg = {"optimizer": {"name": "adamw"}, "train": {"lr": 1e-3, "weight_decay": 0.05, "layer_decay": 0.75}}
    session = mixhub.Session(cfg, model=model, num_classes=10)
    opt = session.create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    ours = by_param(opt.param_groups, names)
    theirs = by_param(create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75).param_groups, names)
    assert ours == theirs and len(ours) == len(names)
    for n in ("pos_embed", "cls_token", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias"):
        assert ours[n][0] == 0.0, n
    assert ours["blocks.0.attn.qkv.weight"][0] == 0.05
    # one lr_scale per layer: patch embedding (layer 0) .. head (depth + 1), decaying by 0.75 per layer
    depth = VIT_KW["depth"]
    assert ours["head.weight"][1] == pytest.approx(1.0)
    assert ours["blocks.0.attn.qkv.weight"][1] == pytest.approx(0.75 ** depth)
    assert ours["patch_embed.proj.weight"][1] == pytest.approx(0.75 ** (depth + 1))
    assert len({s for _, s in ours.values()}) == depth + 2


def test_the_schedule_honours_lr_scale() -> None:
    model = vit()
    cfg = {"optimizer": {"name": "sgd"}, "train": {"lr": 0.1, "weight_decay": 0.0, "layer_decay": 0.5, "min_lr": 0.01}}
    opt = mixhub.Session(cfg, model=model, num_classes=10).create_optimizer()
    sched = GroupScheduler(opt, 10, kind="cosine", min_lr=0.01)
    for step in (0, 4, 9):
        sched.step(step)
        t = step / 10
        base = 0.01 + 0.5 * (0.1 - 0.01) * (1 + math.cos(math.pi * t))
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(base * g["lr_scale"]), (step, g["lr_scale"])
    assert len({g["lr_scale"] for g in opt.param_groups}) > 2


def test_timms_factory_on_the_task_module_keeps_the_models_groups_and_adds_plugin_modules() -> None:
    """timm's train.py builds its optimizer from task.get_trainable_module(): same layer groups."""
    model = vit()
    session = mixhub.Session({"plugins": ["mixup"]}, model=model, num_classes=10)
    tm = session.task_module
    names = {id(p): n for n, p in tm.named_parameters()}
    groups = by_param(create_optimizer_v2(tm, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75).param_groups, names)
    plain = by_param(create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75).param_groups,
                     {id(p): n for n, p in model.named_parameters()})
    assert {k.removeprefix("model."): v for k, v in groups.items()} == plain
    assert groups["model.pos_embed"][0] == 0.0 and groups["model.cls_token"][0] == 0.0


def test_plugin_module_groups_follow_timms_groups() -> None:
    from mixhub.config import ModelConfig

    model = build_model(ModelConfig(name="smallcnn", kwargs={"widths": [8, 16, 32]}), (3, 16, 16), 10)
    cfg = {"plugins": ["adautomix"], "train": {"weight_decay": 1e-4}, "adautomix": {"generator_lr": 0.5}}
    session = mixhub.Session(cfg, model=model, num_classes=10, input_shape=(3, 16, 16))
    opt = session.create_optimizer()
    assert [g.get("name") for g in opt.param_groups][-1] == "adautomix.generator"
    assert opt.param_groups[-1]["lr"] == 0.5
    gen = session.state.module("adautomix", "generator")
    assert {id(p) for p in opt.param_groups[-1]["params"]} == {id(p) for p in gen.parameters()}


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    sd = timm.create_model("resnet18", pretrained=False).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(sd, path)
    return path, sd


def test_checkpoint_loads_local_weights_and_keeps_the_pretrained_stem(resnet_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, sd = resnet_file
    model = build_model(ModelConfig(name="resnet18", checkpoint=str(path), small_input=True), (3, 32, 32), 10)
    got = model.state_dict()
    assert torch.equal(got["conv1.weight"], sd["conv1.weight"])  # the pretrained 7x7 stem, kept
    assert model.conv1.stride == (1, 1) and isinstance(model.maxpool, torch.nn.Identity)
    assert torch.equal(got["layer4.1.conv2.weight"], sd["layer4.1.conv2.weight"])
    assert got["fc.weight"].shape == (10, 512)  # a new head for 10 classes
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_without_pretrained_weights_the_stem_is_replaced() -> None:
    model = build_model(ModelConfig(name="resnet18", small_input=True), (3, 32, 32), 10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)


def test_checkpoint_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.checkpoint: .* is not a file"):
        build_model(ModelConfig(name="resnet18", checkpoint=str(tmp_path / "missing.pth")), (3, 32, 32), 10)
    bad = tmp_path / "bad.pth"
    torch.save({"something": torch.zeros(3)}, bad)
    with pytest.raises(ConfigError, match="model.checkpoint: could not load"):
        build_model(ModelConfig(name="resnet18", checkpoint=str(bad)), (3, 32, 32), 10)
    with pytest.raises(ConfigError, match="model.checkpoint loads pretrained weights of timm models"):
        build_model(ModelConfig(name="smallcnn", checkpoint=str(bad)), (3, 32, 32), 10)


@pytest.mark.parametrize("side, adapted", [(32, True), (64, True), (160, False), (224, False)])
def test_small_input_auto_adapts_the_stem_only_for_small_images(side: int, adapted: bool) -> None:
    import timm

    model = build_model(ModelConfig(name="resnet18"), (3, side, side), 10)  # the default: auto
    reference = timm.create_model("resnet18", num_classes=10)
    if adapted:
        assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
        assert isinstance(model.maxpool, torch.nn.Identity)
        assert f"{side} px images are small (<= 64 px): resnet18 gets a 3x3 stride-1 stem" in model.mixhub_stem
    else:  # timm's own architecture, parameter for parameter
        assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
        assert model.conv1.stride == (2, 2) and isinstance(model.maxpool, torch.nn.MaxPool2d)
        assert model.mixhub_stem == f"model.small_input=auto: {side} px images are not small (> 64 px): resnet18 keeps timm's stem (model.small_input=true adapts it)"
    if side <= 64:  # the feature map a forward sees: 1/8 of the side adapted, 1/32 as timm's
        feats = model.forward_features(torch.randn(1, 3, side, side))
        assert feats.shape[-1] == side // 8
    forced = build_model(ModelConfig(name="resnet18", small_input=True), (3, side, side), 10)
    assert forced.conv1.stride == (1, 1)
    kept = build_model(ModelConfig(name="resnet18", small_input=False), (3, side, side), 10)
    assert kept.conv1.stride == (2, 2) and kept.mixhub_stem == "model.small_input=false: resnet18 keeps timm's stem"


def test_the_stem_decision_is_a_start_line() -> None:
    from mixhub.run.startup import start_lines
    from mixhub.trainer import Trainer

    raw = {"data": {"name": "digits", "image_size": 32}, "model": {"name": "resnet18"}, "train": {"device": "cpu", "epochs": 1}}
    lines = start_lines(Trainer(raw, write=False))
    stem = [line for line in lines if line.startswith("stem: ")]
    assert stem and stem[0].startswith("stem: model.small_input=auto: 32 px images are small (<= 64 px): resnet18 gets a 3x3 stride-1 stem, without max-pool")
    small = start_lines(Trainer({**raw, "model": {"name": "smallcnn"}}, write=False))
    assert not any(line.startswith("stem:") for line in small)  # mixhub's own models have no timm stem
