"""The plugin end to end through mixhub's trainer: mechanics, resume, errors, the quick suite."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from mixhub_adautomix import mechanics, stage_features
from mixhub_adautomix.features import probe_geometry

from mixhub import PluginHookError
from mixhub.trainer import RunInterrupted, Trainer, train

TINY: dict[str, Any] = {
    "seed": 0,
    "plugins": ["adautomix"],
    "data": {"name": "digits", "image_size": 16, "train_frac": 0.1},
    "model": {"name": "smallcnn", "kwargs": {"widths": [8, 16, 32]}},
    "optimizer": {"name": "sgd", "momentum": 0.9},
    "train": {
        "epochs": 2,
        "batch_size": 16,
        "lr": 0.1,
        "weight_decay": 1e-4,
        "plots": False,
        "max_steps_per_epoch": 3,
    },
    "adautomix": {"momentum": 0.9, "momentum_end": 0.999, "diagnostics_every": 1},
}


def cfg(**ada: Any) -> dict[str, Any]:
    c = copy.deepcopy(TINY)
    c["adautomix"].update(ada)
    return c


def make(**ada: Any) -> Trainer:
    c = cfg(**ada)
    c["train"]["checkpoint"] = False
    return Trainer(c, write=False)


@pytest.mark.parametrize("n", [2, 3])
def test_geometry_and_modules(n: int) -> None:
    t = make(mix_samples=n)
    gen = t.state.module("adautomix", "generator")
    assert gen.in_channels == 16 and gen.scale_factor == 4  # 16 px input, 4x4 stage
    names = [g.get("name") for g in t.optimizer.param_groups]
    assert "adautomix.generator" in names and "adautomix.teacher" not in names
    assert "adautomix.head_mix" in names and "adautomix.teacher_head_mix" not in names
    # the mix heads are plugin modules: the model's and the teacher's state dicts stay the plain model's
    assert not hasattr(t.model, "adautomix_head_mix")
    plain = set(t.model.state_dict())
    assert set(t.state.module("adautomix", "teacher").state_dict()) == plain
    assert all(not k.startswith("adautomix") for k in plain)


def test_masks_at_init_on_real_features() -> None:
    r = mechanics.check_masks_at_init(make())
    assert r["sum_err"] < 1e-5 and r["min"] >= 0 and r["spatial_std"] < 1e-4 and r["uniform_err"] < 0.02


@pytest.mark.parametrize("n", [2, 3])
def test_gradient_routing(n: int) -> None:
    r = mechanics.check_gradient_routing(make(mix_samples=n))
    assert r["gen_loss_to_generator"] > 0
    assert r["gen_loss_to_student"] == 0
    assert r["main_loss_to_student"] > 0
    assert r["main_loss_to_generator"] == 0
    assert r["teacher_trainable"] == 0 and r["teacher_grads_after_step"] == 0


def test_gradient_routing_check_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check is sensitive: bb masks that keep a path to G make the student loss train G."""
    import mixhub_adautomix.plugin as plugin

    t = make(lam_margin=0.0)
    bias = t.state.module("adautomix", "generator").conv_v.bias
    real = plugin.apply_lam_margin

    def leaky(masks: torch.Tensor, lams: Any, margin: float, *, rule: str = "official") -> torch.Tensor:
        out = real(masks, lams, margin, rule=rule)
        return out * (1 + bias.sum() - bias.sum().detach())  # same values, a graph to G

    monkeypatch.setattr(plugin, "apply_lam_margin", leaky)
    r = mechanics.check_gradient_routing(t)
    assert r["main_loss_to_generator"] > 0


def test_teacher_ema_exact() -> None:
    r = mechanics.check_teacher_ema(make())
    assert r["init_diff"] == 0
    assert r["ema_err"] < 1e-6
    assert abs(r["momentum"] - 0.9) < 1e-12  # step 0 < 10% of the run: m_0
    assert r["buffers_differ"] == 1.0


@pytest.mark.parametrize(
    "interval,expected", [(2, [True, False, True, False, True]), (0, [False] * 5), (1, [True] * 5)]
)
def test_alternation(interval: int, expected: list[bool]) -> None:
    assert mechanics.check_alternation(make(adv_interval=interval)) == expected


@pytest.mark.parametrize("n", [2, 3])
def test_lam_margin_fallback(n: int) -> None:
    r = mechanics.check_lam_margin(make(), n)
    assert r["const_err"] < 1e-6 and abs(r["lam_sum"] - 1) < 1e-6 and r["same_lams"] == 1.0


def test_eval_heads_and_mode_restore() -> None:
    r = mechanics.check_eval_heads(make())
    assert r["teacher_err"] < 1e-5 and r["student_err"] < 1e-5
    assert r["eval_mode_inside"] == 1 and r["restored"] == 1 and r["restored_after_error"] == 1


def test_student_eval_model_flag() -> None:
    t = make(eval_model="student")
    batch = next(iter(t.loader)).to(t.device)
    t.model.eval()
    with torch.no_grad(), t.host.wrap("mixhub_evaluate", model=t.model, state=t.state):
        out = t.host.slot("eval_forward", model=t.model, batch=batch, state=t.state)
    assert set(out) == {"logits", "logits_teacher", "logits_teacher_mix", "logits_student_mix"}


def _final_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    sd = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    for key, spec in trainer.state.modules.items():
        sd.update({f"{key}.{k}": v for k, v in spec.module.state_dict().items()})
    return sd


def test_resume_continues_identically(tmp_path: Path) -> None:
    """Stop after 4 of 6 steps (mid-epoch), resume, and compare with an uninterrupted run."""
    straight = train(cfg(), out=tmp_path / "straight")
    ref = _final_state(straight.trainer)

    interrupted = Trainer(cfg(), out=tmp_path / "resumed", write=True)
    step = interrupted.train_step

    def counting(batch: Any) -> Any:
        out = step(batch)
        if interrupted.state.step == 4:
            interrupted.guards.stop_signal = 15
        return out

    interrupted.train_step = counting  # type: ignore[method-assign]
    with pytest.raises(RunInterrupted):
        interrupted.fit()
    resumed = train(cfg(), out=tmp_path / "resumed", resume=True)
    got = _final_state(resumed.trainer)
    assert (
        resumed.trainer.state.scratch("adautomix").iter
        == straight.trainer.state.scratch("adautomix").iter
        == 6
    )
    for k, v in ref.items():
        assert torch.equal(v, got[k]), k
    assert straight.summary["test"]["acc"] == resumed.summary["test"]["acc"]


def test_summary_reports_heads_and_diagnostics(tmp_path: Path) -> None:
    s = train(cfg(mix_samples=3), out=tmp_path / "run").summary["test"]
    for key in (
        "acc",
        "acc_student",
        "acc_student_mix",
        "acc_teacher_mix",
        "adautomix/mask_spatial_std",
        "adautomix/teacher_ce_gap",
        "adautomix/generator_grad_norm",
    ):
        assert key in s, key
    assert (
        abs(s["adautomix/mask_mean_0"] + s["adautomix/mask_mean_1"] + s["adautomix/mask_mean_2"] - 1) < 1e-5
    )


def test_clear_error_for_models_without_stage_features() -> None:
    c = cfg()
    c["model"] = {"name": "mlp"}
    with pytest.raises(PluginHookError, match="adautomix.*forward_intermediates"):
        Trainer(c, write=False)


def test_timm_cnn_and_vit_feature_access() -> None:
    timm = pytest.importorskip("timm")
    cnn = timm.create_model("resnet18", num_classes=10)
    geo = probe_geometry(cnn, (3, 64, 64), -2, torch.device("cpu"))
    assert geo == {"channels": 256, "height": 4, "width": 4, "pre_logits": 512}
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=2, num_classes=10)
    feat = stage_features(vit, torch.zeros(2, 3, 32, 32), -1)
    assert feat.shape == (2, 192, 8, 8)  # tokens reshaped to NCHW, prefix token dropped


def test_quick_suite_cell(tmp_path: Path) -> None:
    from mixhub_adautomix.suites import run_cell, suites

    suite = suites()[0]
    from mixhub.bench.runner import cell_config

    c = cell_config(suite, "adautomix-n3", 0, quick=True)
    c["data"]["image_size"] = 16
    c["model"]["kwargs"]["widths"] = [8, 16, 32]
    c["train"]["max_steps_per_epoch"] = 2
    metrics = run_cell(c, tmp_path)
    checks = {
        "mech.masks",
        "mech.gradient_routing",
        "mech.teacher_ema",
        "mech.alternation",
        "mech.lam_margin",
        "mech.eval_heads",
    }
    assert checks <= set(metrics), f"mechanics checks missing from the cell: {checks - set(metrics)}"
    assert {k: metrics[k] for k in checks} == dict.fromkeys(checks, 1.0), metrics
    assert "mech.mask_init_uniform_err" in metrics
    assert "test.acc" in metrics and "test.adautomix/teacher_ce_gap" in metrics


def test_export_defaults_to_the_teacher(tmp_path):
    from mixhub.checkpoint import load_checkpoint
    from mixhub.testing import tiny_config
    from mixhub.trainer import train

    r = train(tiny_config(plugins=["adautomix"]), out=tmp_path / "r")
    exp = load_checkpoint(tmp_path / "r/checkpoints/export.pt")
    assert exp["module"] == "adautomix.teacher"
    teacher = r.trainer.state.module("adautomix", "teacher").state_dict()
    assert all(torch.equal(exp["state_dict"][k], v) for k, v in teacher.items())


@pytest.mark.parametrize("evaluated", ["teacher", "student"])
def test_best_and_export_hold_the_network_whose_metric_is_recorded(tmp_path, evaluated):
    """best.pt names the network its `best` metric was measured on; that network's weights, in a
    plain model, reproduce the metric; export.pt holds the same network as a plain state dict."""
    from mixhub.checkpoint import load_checkpoint
    from mixhub.config import ModelConfig
    from mixhub.models import build_model
    from mixhub.testing import tiny_config

    r = train(tiny_config(plugins=["adautomix"], adautomix={"eval_model": evaluated}), out=tmp_path / "r")
    run = r.trainer
    best = load_checkpoint(tmp_path / "r/checkpoints/best.pt")
    export = load_checkpoint(tmp_path / "r/checkpoints/export.pt")
    key = "adautomix.teacher" if evaluated == "teacher" else "model"
    assert best["evaluated"] == key and export["module"] == key
    weights = best["modules"][key] if evaluated == "teacher" else best["model"]
    net = build_model(
        ModelConfig(**run.config.model.model_dump()), run.bundle.input_shape, run.bundle.num_classes
    )
    net.load_state_dict(weights)  # a plain model's keys: no plugin head inside
    net.eval()
    x, y = zip(*(run.bundle.val[i] for i in range(len(run.bundle.val))))
    with torch.no_grad():
        acc = float((net(torch.stack(x)).argmax(1) == torch.as_tensor(y)).float().mean())
    assert best["best"]["metric"] == "acc" and acc == pytest.approx(best["best"]["value"], abs=1e-9)
    assert set(export["state_dict"]) == set(net.state_dict())
    assert all(torch.equal(export["state_dict"][k], v) for k, v in weights.items())


def test_export_must_be_the_evaluated_network() -> None:
    from mixhub import ConfigError

    with pytest.raises(ConfigError, match="export='student' differs from eval_model='teacher'"):
        make(export="student")
