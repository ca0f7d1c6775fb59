import json
import subprocess
import sys

import pytest
import torch
from helpers_plugins import BadState, FlipSampler, NanLoss, OtherSampler, Raising, Recorder, WrongType

from mixhub import ConfigError, PluginHookError, PluginLoadError, SlotConflictError
from mixhub.plugins import EntryPointInfo, discover, load_plugin
from mixhub.trainer import NonFiniteError, train

TINY = {
    "data": {"name": "digits", "image_size": 16},
    "model": {"name": "smallcnn", "kwargs": {"widths": [8, 16]}},
    "train": {"epochs": 1, "batch_size": 32, "max_steps_per_epoch": 2, "plots": False},
}


def tiny(**extra):
    cfg = json.loads(json.dumps(TINY))
    cfg.update(extra)
    return cfg


def test_discovery_reads_entry_points_without_import():
    found = discover()
    assert "mixup" in found and found["mixup"].distribution == "mixhub-mixup"


def test_broken_plugin_names_itself():
    info = EntryPointInfo("ghost", "mixhub_ghost_missing.plugin", "mixhub-ghost", "9.9")
    with pytest.raises(PluginLoadError, match=r"plugin 'ghost' \(mixhub-ghost 9.9.*failed to import: ModuleNotFoundError"):
        load_plugin(info)


def test_unknown_plugin_suggests_install_line(tmp_path):
    with pytest.raises(PluginLoadError, match="unknown plugin 'mixpu'.*did you mean 'mixup'"):
        train(tiny(plugins=["mixpu"]), out=tmp_path / "r")


def test_registry_plugin_not_installed_gives_install_line(tmp_path, monkeypatch):
    import mixhub.plugins as P

    real = P.discover
    monkeypatch.setattr(P, "discover", lambda: {k: v for k, v in real().items() if k != "mixup"})
    with pytest.raises(PluginLoadError, match="pip install mixhub-mixup"):
        train(tiny(plugins=["mixup"]), out=tmp_path / "r")


def test_activation_only_when_named(tmp_path):
    a = train(tiny(), out=tmp_path / "a").trainer
    assert a.host.plugins == {}
    assert a.host.owner("sample_pairs") == "core"


def test_slot_conflict_names_both(tmp_path):
    with pytest.raises(SlotConflictError, match=r"'flip' and 'other' both claim the slot 'sample_pairs'"):
        train(tiny(plugins=["flip", "other"]), {"flip": FlipSampler(), "other": OtherSampler()}, out=tmp_path / "r")


def test_config_names_slot_owner(tmp_path):
    r = train(tiny(plugins=["flip", "other"], slots={"sample_pairs": "flip"}), {"flip": FlipSampler(), "other": OtherSampler()}, out=tmp_path / "r")
    assert r.trainer.host.owner("sample_pairs") == "flip"


def test_slot_owner_that_does_not_implement_the_slot_is_refused(tmp_path):
    # mixup fills sample_pairs only; naming it the loss owner used to switch Decoupled's loss off silently
    cfg = tiny(plugins=["mixup", "decoupled"], slots={"compute_loss": "mixup"})
    with pytest.raises(SlotConflictError, match=r"`slots.compute_loss` names 'mixup', which does not implement .*'decoupled'"):
        train(cfg, out=tmp_path / "r")
    with pytest.raises(SlotConflictError, match=r"`slots.compute_loss` names 'flip'.*no active plugin implements it"):
        train(tiny(plugins=["flip"], slots={"compute_loss": "flip"}), {"flip": FlipSampler()}, out=tmp_path / "r2")
    assert not (tmp_path / "r").exists()


def test_collectors_and_wrappers_run_in_documented_order(tmp_path):
    rec = Recorder()
    train(tiny(plugins=["recorder"]), {"recorder": rec}, out=tmp_path / "r")
    calls = rec.calls
    assert calls[:2] == ["configure_model", "fit_enter"] and calls[-1] == "fit_exit"
    assert calls.index("epoch_start") < calls.index("after_step") < calls.index("epoch_end") < calls.index("evaluate_enter")
    assert calls.count("after_step") == 2
    assert calls.count("evaluate_enter") == calls.count("evaluate_exit") >= 1


def test_plugin_raising_in_hook_is_named(tmp_path):
    with pytest.raises(PluginHookError, match=r"plugin 'raiser' \(<in-process> 0\) raised in hook mixhub_forward: RuntimeError: boom"):
        train(tiny(plugins=["raiser"]), {"raiser": Raising()}, out=tmp_path / "r")


def test_wrong_return_type_from_slot(tmp_path):
    with pytest.raises(PluginHookError, match=r"'wrongtype'.*returned float from mixhub_compute_loss; expected Tensor"):
        train(tiny(plugins=["wrongtype"]), {"wrongtype": WrongType()}, out=tmp_path / "r")


def test_nan_loss_stops_with_context(tmp_path):
    with pytest.raises(NonFiniteError, match=r"non-finite loss .* at step 0 .*batch dataset indices \[.*last good checkpoint"):
        train(tiny(plugins=["nanloss"]), {"nanloss": NanLoss()}, out=tmp_path / "r")


def test_plugin_state_must_be_plain(tmp_path):
    from mixhub import CheckpointError

    # refused before anything is written (checkpoints load with weights_only=True), naming plugin and key
    from mixhub.trainer import Trainer

    t = Trainer(tiny(plugins=["badstate"]), extra_plugins={"badstate": BadState()}, out=tmp_path / "b")
    with pytest.raises(CheckpointError, match=r"plugin 'badstate'.*key 'obj'"):
        t.save_checkpoint("last")
    assert not list((tmp_path / "b").rglob("*.pt"))


def test_plugin_options_validated(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'mixup.alpah'; did you mean 'alpha'"):
        train(tiny(plugins=["mixup"], mixup={"alpah": 1.0}), out=tmp_path / "r")
    with pytest.raises(ConfigError, match=r"mixup.alpha: .*greater than or equal to 0"):
        train(tiny(plugins=["mixup"], mixup={"alpha": -1}), out=tmp_path / "r")


def test_section_of_inactive_plugin_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not in `plugins`"):
        train(tiny(mixup={"alpha": 1.0}), out=tmp_path / "r")


def test_trace_hooks_env(tmp_path):
    code = (
        "from mixhub.trainer import train; import json,sys; cfg=json.loads(sys.argv[1]); "
        "train(cfg, out=sys.argv[2])"
    )
    env = {**__import__("os").environ, "MIXHUB_TRACE_HOOKS": "1"}
    p = subprocess.run([sys.executable, "-c", code, json.dumps(tiny(plugins=["mixup"])), str(tmp_path / "r")], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert "[mixhub trace] mixhub_sample_pairs -> mixup, core" in p.stderr


def test_evaluate_wrapper_teardown_on_error(tmp_path):
    from mixhub.trainer import Trainer

    rec = Recorder()
    t = Trainer(tiny(plugins=["recorder", "raiser"]), extra_plugins={"recorder": rec, "raiser": Raising()}, out=tmp_path / "r")
    t.model.forward = lambda x: (_ for _ in ()).throw(RuntimeError("eval boom"))  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="eval boom"):
        t.evaluate(t.bundle.val, "val")
    assert rec.calls[-2:] == ["evaluate_enter", "evaluate_exit"]
    assert torch.is_grad_enabled()
