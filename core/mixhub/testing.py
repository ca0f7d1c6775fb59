"""A pytest plugin for plugin authors (enabled through the ``pytest11`` entry point).

Fixtures:
    ``mixhub_tiny_config``: a raw config training a tiny CNN on digits for two steps.
    ``mixhub_tiny_regression_config``: the same for the generated tanh regression set and an MLP.
    ``mixhub_tiny_continual_config``: a short online class-incremental stream (split-digits, two tasks).
    ``mixhub_tiny_timm_model``: a small timm ResNet (no pretrained weights).
    ``mixhub_hook_recorder``: an in-process plugin that records hook calls (pass it through
        ``extra_plugins={"recorder": recorder}`` and ``plugins: [..., "recorder"]``).
    ``mixhub_contract``: the ``Contract`` helper below.

``logging_run(plugins, run_dir)`` drives logger plugins (``mixhub_log``) without training: a
context manager yielding the run's ``RunLog`` inside the ``mixhub_fit`` wrappers.

Contract checks every plugin should pass (``Contract`` methods, each raising ``AssertionError``):
    ``hooks_in_order``, ``slot_types``, ``determinism``, ``resume_equality``, ``resume_after_interrupt``,
    ``changes_training``, ``testtime``, ``state_dict_is_plain``, ``functional_matches_plugin``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from .hookspecs import hookimpl
from .plugins import TASK_KINDS, PluginSpec

__all__ = [
    "HookRecorder",
    "Contract",
    "tiny_config",
    "tiny_regression_config",
    "tiny_continual_config",
    "tiny_testtime_config",
    "train_checkpoint",
    "model_fingerprint",
    "is_plain",
    "logging_run",
]


def tiny_config(**extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "seed": 0,
        "data": {"name": "digits", "image_size": 16},
        "model": {"name": "smallcnn", "kwargs": {"widths": [8, 16]}},
        "train": {"epochs": 1, "batch_size": 32, "max_steps_per_epoch": 2, "plots": False},
    }
    return _merge(cfg, extra)


def tiny_regression_config(**extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "seed": 0,
        "data": {"name": "synthetic-regression", "options": {"kind": "tanh", "n": 200}},
        "model": {"name": "mlp", "kwargs": {"hidden": [16, 16]}},
        "optimizer": {"name": "adam"},
        "train": {"epochs": 1, "batch_size": 16, "max_steps_per_epoch": 3, "plots": False, "sched": "none"},
    }
    return _merge(cfg, extra)


def tiny_continual_config(**extra: Any) -> dict[str, Any]:
    """A short online class-incremental run: split-digits at 8x8 in two tasks, a narrow smallcnn, memory 20."""
    cfg: dict[str, Any] = {
        "seed": 0,
        "data": {"name": "split-digits", "image_size": 8, "options": {"tasks": 2}},
        "model": {"name": "smallcnn", "kwargs": {"widths": [4, 8, 8]}},
        "train": {"lr": 0.1, "sched": "none", "amp": False, "plots": False},
        "optimizer": {"name": "momentum", "momentum": 0.0},
        "continual": {"memory_size": 20, "eval_val": False},
    }
    return _merge(cfg, extra)


def tiny_testtime_config(corruptions: tuple[str, ...] = ("gaussian_noise", "contrast"), **extra: Any) -> dict[str, Any]:
    """A tiny source run on ``digits-c`` (16x16, a narrow smallcnn, five steps) for test-time tests."""
    cfg: dict[str, Any] = {
        "seed": 0,
        "data": {"name": "digits-c", "image_size": 16, "options": {"corruptions": list(corruptions)}},
        "model": {"name": "smallcnn", "kwargs": {"widths": [8, 16]}},
        "train": {"epochs": 1, "batch_size": 32, "max_steps_per_epoch": 5, "plots": False, "device": "cpu"},
    }
    return _merge(cfg, extra)


def train_checkpoint(config: dict[str, Any], out: Path, extra_plugins: dict[str, Any] | None = None) -> Path:
    """Train ``config`` into ``out`` and return the path of its ``best.pt``."""
    from .trainer import train

    train(copy.deepcopy(config), extra_plugins, out=out)
    return Path(out) / "checkpoints" / "best.pt"


@contextmanager
def logging_run(
    plugins: list[str],
    run_dir: str | Path | None,
    extra_plugins: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    rank: int = 0,
) -> Iterator[Any]:
    """A ``RunLog`` over the named plugins, inside their ``mixhub_fit`` wrappers (no training).

    ``config`` is a raw config overlay (e.g. ``{"track": {"experiment": "e"}, "mlflow": {...}}``);
    ``run_dir=None`` makes a run without a folder. Emit records with the ``RunLog`` methods
    (``config``, ``step``, ``epoch``, ``summary``, ``artifact``); leaving the block closes the
    trackers (marking them failed when the block raised).
    """
    from .config import load_config
    from .plugins import PluginHost, resolve_plugins
    from .run.folder import RunFolder
    from .run.recorder import RunLog
    from .state import State

    raw = _merge({"plugins": list(plugins)}, config or {})
    loaded = resolve_plugins(list(plugins), extra_plugins)
    run = load_config(raw, {p.name: p.spec for p in loaded})
    host = PluginHost(loaded, {})
    state = State(config=run, rank=rank, run_dir=Path(run_dir) if run_dir is not None else None)
    state._options = dict(run.options)
    folder = RunFolder(run_dir, enabled=rank == 0) if run_dir is not None else None
    runlog = RunLog(folder, host, state)
    try:
        with host.wrap("mixhub_fit", state=state):
            yield runlog
    finally:
        if folder is not None:
            folder.release()


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    from .config import apply_overrides

    return apply_overrides(base, extra)


class HookRecorder:
    """Records every collector and wrapper call it sees (claims no slot)."""

    PLUGIN = PluginSpec(name="recorder", task_kinds=TASK_KINDS, description="records hook calls (tests)")

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _r(self, name: str) -> None:
        self.calls.append(name)

    @hookimpl
    def mixhub_configure_model(self, model: Any, state: Any) -> None:
        self._r("configure_model")

    @hookimpl
    def mixhub_epoch_start(self, state: Any) -> None:
        self._r("epoch_start")

    @hookimpl
    def mixhub_aux_losses(self, outputs: Any, batch: Any, plan: Any, state: Any) -> None:
        self._r("aux_losses")

    @hookimpl
    def mixhub_after_step(self, state: Any) -> None:
        self._r("after_step")

    @hookimpl
    def mixhub_epoch_end(self, state: Any) -> None:
        self._r("epoch_end")

    @hookimpl
    def mixhub_task_start(self, state: Any) -> None:
        self._r("task_start")

    @hookimpl
    def mixhub_task_end(self, state: Any) -> None:
        self._r("task_end")

    @hookimpl(wrapper=True)
    def mixhub_evaluate(self, model: Any, state: Any) -> Any:
        self._r("evaluate_enter")
        try:
            return (yield)
        finally:
            self._r("evaluate_exit")

    @hookimpl(wrapper=True)
    def mixhub_fit(self, state: Any) -> Any:
        self._r("fit_enter")
        try:
            return (yield)
        finally:
            self._r("fit_exit")


def model_fingerprint(trainer: Any) -> dict[str, torch.Tensor]:
    """Every tensor of the model and the plugin-registered modules."""
    out = {f"model.{k}": v.detach().clone() for k, v in trainer.model.state_dict().items()}
    for key, spec in trainer.state.modules.items():
        out.update({f"{key}.{k}": v.detach().clone() for k, v in spec.module.state_dict().items()})
    return out


def is_plain(value: Any) -> bool:
    """Tensors, numbers, strings, None and lists/tuples/dicts of them (``weights_only`` loadable)."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and is_plain(v) for k, v in value.items())
    return False


class Contract:
    """Contract checks for a plugin, run through the real trainer."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self._n = 0

    def _out(self) -> Path:
        self._n += 1
        return self.tmp / f"contract-{self._n}"

    def train(self, config: dict[str, Any], extra_plugins: dict[str, Any] | None = None) -> Any:
        from .trainer import train

        return train(copy.deepcopy(config), extra_plugins, out=self._out())

    def hooks_in_order(self, config: dict[str, Any], extra_plugins: dict[str, Any] | None = None) -> list[str]:
        rec = HookRecorder()
        cfg = copy.deepcopy(config)
        cfg["plugins"] = list(cfg.get("plugins", [])) + ["recorder"]
        self.train(cfg, {**(extra_plugins or {}), "recorder": rec})
        c = rec.calls
        assert c and c[0] == "configure_model" and c[1] == "fit_enter" and c[-1] == "fit_exit", c
        if "epoch_start" in c:
            assert c.index("epoch_start") < c.index("after_step") < c.index("epoch_end") < c.index("evaluate_enter"), c
        assert c.count("evaluate_enter") == c.count("evaluate_exit"), c
        assert c.count("aux_losses") == c.count("after_step"), c
        return c

    def slot_types(self, config: dict[str, Any], extra_plugins: dict[str, Any] | None = None) -> None:
        """A run completes: every slot's return type is checked by the core on each call."""
        result = self.train(config, extra_plugins)
        assert isinstance(result.summary.get("test"), dict)

    def determinism(self, config: dict[str, Any], extra_plugins: Callable[[], dict[str, Any]] | None = None) -> None:
        a = self.train(config, extra_plugins() if extra_plugins else None).trainer
        b = self.train(config, extra_plugins() if extra_plugins else None).trainer
        fa, fb = model_fingerprint(a), model_fingerprint(b)
        for k in fa:
            assert torch.equal(fa[k], fb[k]), f"run is not deterministic: {k} differs"

    def resume_equality(self, config: dict[str, Any], extra_plugins: Callable[[], dict[str, Any]] | None = None, epochs: int = 2) -> None:
        """``epochs`` straight vs one epoch, resume, the rest: bitwise-equal weights."""
        from .trainer import Trainer

        cfg = copy.deepcopy(config)
        cfg.setdefault("train", {})["epochs"] = epochs
        straight = self.train(cfg, extra_plugins() if extra_plugins else None).trainer
        out = self._out()
        first = copy.deepcopy(cfg)
        first["train"]["epochs"] = epochs
        t1 = Trainer(first, extra_plugins=extra_plugins() if extra_plugins else None, out=out)
        t1.config.core.train.epochs = 1
        t1.fit()
        t2 = Trainer(cfg, extra_plugins=extra_plugins() if extra_plugins else None, out=out)
        t2.resume()
        t2.fit()
        fa, fb = model_fingerprint(straight), model_fingerprint(t2)
        for k in fa:
            assert torch.equal(fa[k], fb[k]), f"resume is not exact: {k} differs"

    def resume_after_interrupt(self, config: dict[str, Any], at_step: int,
                               extra_plugins: Callable[[], dict[str, Any]] | None = None) -> None:
        """A run stopped (as by SIGTERM) after step ``at_step`` and resumed ends bitwise equal to a straight run.

        Works for every task kind (the continual protocol stops mid-task, inside its stream)."""
        from .trainer import RunInterrupted, Trainer

        straight = self.train(config, extra_plugins() if extra_plugins else None).trainer
        out = self._out()
        t = Trainer(copy.deepcopy(config), extra_plugins=extra_plugins() if extra_plugins else None, out=out)
        step = t.train_step

        def stop_after(batch: Any) -> Any:
            result = step(batch)
            if t.state.step == at_step:
                t.guards.stop_signal = 15
            return result

        t.train_step = stop_after  # type: ignore[method-assign]
        with pytest.raises(RunInterrupted):
            t.fit()
        assert t.state.step == at_step, f"the run did not stop at step {at_step} (stopped at {t.state.step})"
        t2 = Trainer(copy.deepcopy(config), extra_plugins=extra_plugins() if extra_plugins else None, out=out)
        t2.resume()
        t2.fit()
        fa, fb = model_fingerprint(straight), model_fingerprint(t2)
        for k in fa:
            assert torch.equal(fa[k], fb[k]), f"resume after an interrupt is not exact: {k} differs"

    def changes_training(self, config: dict[str, Any], without: dict[str, Any], expect: bool = True,
                         trained: Any = None) -> None:
        """The plugin takes part in training: the weights after ``config`` (or of the ``trained``
        trainer of that config) differ from those after ``without`` (the same run without the plugin).
        ``expect=False`` asserts the opposite, for plugins documented as inert in training (test-time methods)."""
        a = model_fingerprint(trained if trained is not None else self.train(config).trainer)
        b = model_fingerprint(self.train(without).trainer)
        same = all(torch.equal(a[k], b[k]) for k in b)
        if expect:
            assert not same, "the plugin changes nothing in training: the contract config does not exercise it"
        else:
            assert same, "the plugin changed training although it is documented as inert there"

    def testtime(self, checkpoint: Path, overrides: dict[str, Any], plugin: str) -> dict[str, Any]:
        """Test-time contract of ``plugin`` on a trained ``checkpoint``: its evaluate wrapper runs
        once per episode, it changes the predictions (against the same streams without it), it
        reports its metrics, two runs agree exactly and the model is restored bitwise afterwards."""
        from .protocols.testtime import evaluate_streams, load_for_testtime

        def run(plugins: list[str], rec: HookRecorder | None = None) -> tuple[dict[str, Any], Any, dict[str, torch.Tensor]]:
            cfg = copy.deepcopy(overrides)
            cfg["plugins"] = plugins + (["recorder"] if rec else [])
            trainer = load_for_testtime(checkpoint, cfg, extra_plugins={"recorder": rec} if rec else None)
            before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
            return evaluate_streams(trainer), trainer, before

        rec = HookRecorder()
        with_plugin, trainer, before = run([plugin], rec)
        after = trainer.model.state_dict()
        assert set(after) == set(before), f"{plugin}: the model's state keys changed after test time"
        for k, v in before.items():
            assert torch.equal(after[k], v), f"{plugin}: {k} is not restored after test time"
        assert rec.calls.count("evaluate_enter") == with_plugin["episodes"] == rec.calls.count("evaluate_exit"), rec.calls
        again, _, _ = run([plugin])
        assert again["overall"] == with_plugin["overall"] and again["plugins"] == with_plugin["plugins"], f"{plugin}: test time is not deterministic"
        plain, _, _ = run([])
        assert plain["overall"]["nll"] != with_plugin["overall"]["nll"], f"{plugin}: the predictions are those without the plugin"
        assert any(k.startswith(f"{plugin}/") for k in with_plugin["plugins"]), f"{plugin}: no test-time metrics reported"
        return with_plugin

    def state_dict_is_plain(self, trainer: Any) -> None:
        sds = trainer.host.per_plugin("mixhub_state_dict", state=trainer.state)
        for name, sd in sds.items():
            assert is_plain(sd), f"plugin {name!r} returned a state dict with non-plain values"

    def functional_matches_plugin(self, functional: Callable[[], torch.Tensor], through_plugin: Callable[[], torch.Tensor], atol: float = 1e-6) -> None:
        a, b = functional(), through_plugin()
        assert torch.allclose(a, b, atol=atol), f"functional API and plugin differ: max |diff| {float((a - b).abs().max())}"


@pytest.fixture
def mixhub_tiny_config() -> dict[str, Any]:
    return tiny_config()


@pytest.fixture
def mixhub_tiny_regression_config() -> dict[str, Any]:
    return tiny_regression_config()


@pytest.fixture
def mixhub_tiny_timm_model() -> torch.nn.Module:
    import timm

    return timm.create_model("resnet10t", pretrained=False, num_classes=10)


@pytest.fixture
def mixhub_tiny_continual_config() -> dict[str, Any]:
    return tiny_continual_config()


@pytest.fixture
def mixhub_hook_recorder() -> HookRecorder:
    return HookRecorder()


@pytest.fixture
def mixhub_contract(tmp_path: Path) -> Contract:
    return Contract(tmp_path)
