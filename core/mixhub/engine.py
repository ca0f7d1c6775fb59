"""The engine: ``Session``, the one implementation of mixhub's training step.

Length: the Session is the whole public step API (setup, the step, its device-side checks, the
run length, after_step, evaluation, state); splitting it would spread one object over modules.

A ``Session`` owns the plugin host and the ``State`` for one model and exposes the loop's
steps, so any loop can run composed plugins (slots, conflicts, aux losses, plugin state and
modules). Your own loop changes like this::

    session = mixhub.Session(config, model=model, num_classes=10)      # + plugins, their options
    optimizer = session.create_optimizer()   # timm's groups for the model + plugin-module groups
    for x, y in loader:
        loss, logs = session.training_step(x, y)   # sample_pairs, mix_batch, forward, loss, aux
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        session.after_step()                       # mixhub_after_step (EMA teachers, schedules)
    logits = session.eval_forward(x)
    torch.save({"model": model.state_dict(), "mixhub": session.state_dict()}, path)

mixhub's own trainer (``mixhub.run.Run`` and the protocols) calls exactly these methods; timm's
``train.py`` reaches them through ``mixhub.timm_task.MixhubTask``.

**One module, one forward.** The whole training forward (``mixhub_sample_pairs`` ->
``mixhub_mix_batch`` outside autocast; ``mixhub_forward`` -> ``mixhub_compute_loss`` ->
``mixhub_aux_losses`` inside it) runs inside ``TaskModule.forward``: one ``nn.Module`` that
holds the model and every plugin-registered module. Wrapping that module (DDP, FSDP, compile)
therefore sees one forward per backward, whatever the plugins compute (a mask generator in the
mixing slot, a second pass through ``forward_features``). ``Session.train_module`` is the
module the step calls; a distributed launcher replaces it with its wrapped version.

``logs`` are detached tensors (device tensors for what the step computed, CPU tensors for the
Python numbers plugins put in ``state.log``): the step never waits for the device. Read them
on the host only when you log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from .batch import Batch, check_class_targets
from .checks import DeviceChecks
from .config import RunConfig, load_config, plugin_names
from .errors import ConfigError, MixhubError, PluginHookError
from .optim import param_groups
from .plan import MixPlan
from .plugins import PluginHost, check_compatibility, resolve_plugins
from .state import State
from .taskmodule import TaskModule

__all__ = ["Session", "TaskModule", "build_host", "amp_dtype_for"]

log = logging.getLogger("mixhub")


def build_host(raw: dict[str, Any], task_kind: str, extra_plugins: dict[str, Any] | None = None) -> tuple[RunConfig, PluginHost]:
    """Resolve ``raw['plugins']``, validate the config against their schemas, check slots."""
    from .registry import load_registry

    names = plugin_names(raw)
    plugins = resolve_plugins(names, extra_plugins, load_registry())
    run = load_config(raw, {p.name: p.spec for p in plugins})
    owners = check_compatibility(plugins, run.options, task_kind, run.core.slots)
    for p in plugins:
        if p.spec.validate is not None:
            for warning in p.spec.validate(run.options[p.name], run) or []:
                log.warning("%s: %s", p.name, warning)
    return run, PluginHost(plugins, owners)


def amp_dtype_for(amp: bool, device: torch.device, dtype: str = "auto") -> torch.dtype | None:
    """The autocast dtype: with ``dtype="auto"``, bfloat16 where CUDA supports it, else float16,
    and ``None`` (no autocast) on CPU; a named dtype (``bfloat16``/``float16``) on any device.
    ``None`` with ``amp=False``."""
    if not amp:
        return None
    if dtype != "auto":
        return {"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class Session:
    """Plugin host, state and the training step for one model (see the module docstring).

    Args:
        config: a raw config dict (``plugins``, plugin sections, ``slots``, ``losses``,
            ``train``, ``optimizer``, ``seed``...) or a resolved ``RunConfig``.
        model: the model to train (moved to ``device``).
        num_classes: classes of a classification task (``None``: regression).
        task_kind: ``classification``, ``regression``, ``continual`` or ``test-time``
            (default: from ``num_classes``).
        train_targets: every training target by dataset index (label-aware samplers).
        input_shape: shape of one input, for plugins that probe the model (AdAutoMix).
        dataset_size: training-set size (range check of dataset partners).
        fetch: ``fetch(index) -> Batch`` of training samples by dataset index, for samplers
            whose partners come from the dataset (C-Mixup); without it such a plan is an error.
        device: default: the model's device.
        extra_plugins: in-process plugins by name (objects with hooks and a ``PLUGIN`` spec).
        data: a ``DataBundle`` (mixhub's own runs), read by plugins through ``state.data``.
        world_size, rank: the distributed layout.
        max_steps: the run's total number of optimizer steps (``state.max_steps``), for plugins
            with a schedule over the run (``PluginSpec.needs_max_steps``); also settable later
            (``set_max_steps``, or ``after_step(step, total_steps)``).
    """

    def __init__(
        self,
        config: dict[str, Any] | RunConfig,
        *,
        model: nn.Module,
        num_classes: int | None = None,
        task_kind: str | None = None,
        train_targets: Tensor | None = None,
        input_shape: tuple[int, ...] | None = None,
        dataset_size: int | None = None,
        fetch: Callable[[Tensor], Batch] | None = None,
        device: torch.device | str | None = None,
        extra_plugins: dict[str, Any] | None = None,
        data: Any = None,
        world_size: int = 1,
        rank: int = 0,
        max_steps: int | None = None,
    ) -> None:
        raw = config.to_dict() if isinstance(config, RunConfig) else dict(config)
        kind = task_kind or ("classification" if num_classes else "regression")
        self.config, self.host = build_host(raw, kind, extra_plugins)
        cfg = self.config
        if device is None:
            first = next(model.parameters(), None)
            device = first.device if first is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        if data is None:
            data = SimpleNamespace(input_shape=tuple(input_shape) if input_shape is not None else None, train=None, val=None, test=None)
        if train_targets is not None:
            train_targets = train_targets.to(self.device)
        size = dataset_size if dataset_size is not None else (len(train_targets) if train_targets is not None else 0)
        self.state = State(
            config=cfg,
            device=self.device,
            task_kind=kind,
            model=self.model,
            num_classes=num_classes,
            train_targets=train_targets,
            train_dataset_size=size,
            generator=torch.Generator().manual_seed(cfg.seed + 12345 + 7919 * rank),
            world_size=world_size,
            rank=rank,
            batch_size=cfg.train.batch_size,
            data=data,
        )
        self.state._options = dict(cfg.options)
        self.fetch = fetch
        self.host.collect("mixhub_configure_model", model=self.model, state=self.state)
        self.model.to(self.device)
        self.amp_dtype = amp_dtype_for(cfg.train.amp, self.device, cfg.train.amp_dtype)
        self.state.amp_dtype = self.amp_dtype
        self.task_module = TaskModule(self)
        #: the module the step calls: ``task_module``, or its DDP/FSDP-wrapped version.
        self.train_module: nn.Module = self.task_module
        self.optimizer: torch.optim.Optimizer | None = None
        self._names_checked = not cfg.losses
        if max_steps is not None:
            self.set_max_steps(max_steps)
        #: checks of device values made during the step (plans, and in mixhub's runs the batch and
        #: the loss), read every ``train.check_every`` steps (default: at log steps)
        self.checks = DeviceChecks(cfg.train.check_every or cfg.train.log_every)
        #: ``after_step`` reads ``checks`` when due; a loop that reads them itself (``Run``) turns it off
        self.verify_in_after_step = True

    # ------------------------------------------------------------------ setup
    def replace_model(self, model: nn.Module) -> None:
        """After converting the model (and plugin modules in ``state.modules``) in place or to new
        objects (e.g. SyncBatchNorm): rebuild the task module around them."""
        self.model = self.state.model = model
        self.task_module = TaskModule(self)
        self.train_module = self.task_module

    def set_max_steps(self, total: int) -> None:
        """The run's total number of optimizer steps (``state.max_steps``)."""
        if int(total) < 0:
            raise ConfigError(f"max_steps must be >= 0, got {total}")
        self.state.max_steps = int(total)

    def eval_network(self) -> nn.Module:
        """The network evaluation reports on and checkpoints save as the model: a plugin module
        registered with ``export=True`` (e.g. an EMA teacher), else the model."""
        for spec in self.state.modules.values():
            if spec.export:
                return spec.module
        return self.model

    def compile(self, **kwargs: Any) -> None:
        """``torch.compile`` the model the forward slot calls (plugins still see the plain model in
        ``state``); the backend is ``train.compile_backend`` unless ``kwargs`` names one."""
        kwargs.setdefault("backend", self.config.train.compile_backend)
        object.__setattr__(self.task_module, "net", torch.compile(self.model, **kwargs))

    def param_groups(self) -> list[dict[str, Any]]:
        """timm's groups for the model, then plugin-module groups (see ``mixhub.optim``)."""
        return param_groups(self.model, self.state, self.host, self.config)

    def create_optimizer(self) -> torch.optim.Optimizer:
        """The ``mixhub_create_optimizer`` slot over ``param_groups()`` (default: timm's factory)."""
        self.optimizer = self.host.slot(
            "create_optimizer", expected=torch.optim.Optimizer, param_groups=self.param_groups(), config=self.config, state=self.state
        )
        self.state.optimizer = self.optimizer
        return self.optimizer

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train(self, mode: bool = True) -> None:
        self.task_module.train(mode)

    def aux_weight(self, name: str) -> float:
        """``losses.<name>``, else the plugin's declared default, else 1."""
        if name in self.config.losses:
            return float(self.config.losses[name])
        for p in self.host.plugins.values():
            if name in p.spec.aux_loss_weights:
                return float(p.spec.aux_loss_weights[name])
        return 1.0

    # ------------------------------------------------------------------ the step
    def training_step(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """One training forward: ``(loss, logs)``; then ``loss.backward()``, your optimizer step, ``after_step()``.

        ``index``: dataset indices of the rows (needed by samplers that pair by dataset
        index); default ``arange(B)``.
        """
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if index is None:
            index = torch.arange(x.shape[0], device=self.device)
        out = self.step(Batch(inputs=x, targets=y, index=index.to(self.device)))
        return out["loss"], out["logs"]

    def step(self, batch: Batch) -> dict[str, Any]:
        """The training forward on a ``Batch`` (continual memory etc. in ``batch.extras``).

        Returns ``{"loss", "output", "outputs", "logs"}``; ``logs["loss"]`` is the total.
        """
        check_class_targets(batch.targets, self.state.task_kind, self.config.train.soft_targets)
        self.train(True)
        self.state.phase = self.state.stage = "train"
        if len(self.checks) > 64 * self.checks.every:  # a loop that never calls after_step: read them anyway
            self.checks.verify()
        return self.train_module(batch)

    def _forward(self, batch: Batch, model: nn.Module) -> dict[str, Any]:
        """The body of ``TaskModule.forward``: every trainable computation of a step."""
        # sampling and mixing run outside autocast, also when the caller's loop opened one
        # (timm's train.py runs ``task(input, target)`` under its amp autocast)
        outer = torch.is_autocast_enabled(self.device.type)
        with torch.autocast(self.device.type, enabled=False) if outer else nullcontext():
            plan, mixed = self._sample_and_mix(batch)
        with self.autocast():
            outputs, total, logs = self._forward_and_loss(model, mixed, plan)
        if not self._names_checked:
            self._check_loss_names(set(logs) - {"loss_main"})
        if total.dim() != 0:
            raise MixhubError(f"the loss must be a scalar, got shape {tuple(total.shape)} (slot owner: {self.host.owner('compute_loss')})")
        logs["loss"] = total.detach()
        logs.update(self._plugin_logs())
        return {"loss": total, "output": outputs.get("logits"), "outputs": outputs, "logs": logs}

    def _sample_and_mix(self, batch: Batch) -> tuple[MixPlan, Batch]:
        state, host = self.state, self.host
        plan = host.slot("sample_pairs", expected=MixPlan, batch=batch, state=state)
        owner = host.owner("sample_pairs")

        def error(message: str) -> PluginHookError:
            return PluginHookError(message + f" (step {step})", plugin=owner, hook="mixhub_sample_pairs")

        step = state.step
        try:  # the plan's structure now; its values on the device, read every train.check_every steps
            plan.validate(batch.size, state.train_dataset_size or None, owner=f"{owner} (mixhub_sample_pairs)", checks=self.checks, error=error)
        except (ValueError, TypeError) as exc:
            raise PluginHookError(str(exc), plugin=owner, hook="mixhub_sample_pairs") from exc
        if plan.partner_source == "dataset" and plan.partner is None:  # not loaded with the batch
            if self.fetch is None:
                raise ConfigError(
                    f"plugin {host.owner('sample_pairs')!r} pairs samples with dataset partners; build the Session with "
                    "fetch=<function from dataset indices to a Batch> (mixhub train does this itself)"
                )
            plan.partner = self.fetch(plan.index).to(self.device)
        plan.resolve(batch)
        mixed = host.slot("mix_batch", expected=Batch, batch=batch, plan=plan, state=state)
        return plan, mixed

    def _forward_and_loss(self, model: nn.Module, mixed: Batch, plan: MixPlan) -> tuple[dict[str, Any], Tensor, dict[str, Tensor]]:
        state, host = self.state, self.host
        outputs = host.slot("forward", expected=dict, model=model, batch=mixed, plan=plan, state=state)
        loss = host.slot("compute_loss", expected=Tensor, outputs=outputs, batch=mixed, plan=plan, state=state)
        logs: dict[str, Tensor] = {"loss_main": loss.detach()}
        total = loss
        for terms in host.collect("mixhub_aux_losses", outputs=outputs, batch=mixed, plan=plan, state=state):
            for name, value in terms.items():
                total = total + self.aux_weight(name) * value
                logs[name] = value.detach()
        return outputs, total, logs

    def after_step(self, step: int | None = None, total_steps: int | None = None) -> dict[str, Tensor]:
        """After the optimizer step: ``state.step`` advances (or is set to ``step``), then
        ``mixhub_after_step``. ``total_steps`` sets ``state.max_steps`` (a loop that knows its
        length, e.g. timm's ``num_updates_total``). Returns what plugins logged there."""
        if total_steps is not None:
            self.set_max_steps(total_steps)
        self.state.step = self.state.step + 1 if step is None else int(step)
        if self.state.max_steps <= 0:
            self._require_max_steps()
        self.host.collect("mixhub_after_step", state=self.state)
        if self.verify_in_after_step and self.checks.due(self.state.step):
            self.checks.verify()
        return self._plugin_logs()

    def _require_max_steps(self) -> None:
        needing = [name for name, p in self.host.plugins.items() if p.spec.needs_max_steps]
        if needing:
            raise ConfigError(
                f"plugin {needing[0]!r} schedules over the whole run and needs its total number of optimizer steps, "
                "which this Session does not know (state.max_steps=0). Pass it: Session(..., max_steps=N), "
                "session.set_max_steps(N) or session.after_step(step, total_steps=N); timm's train.py: "
                "task.after_step(num_updates, num_updates_total)"
            )

    def _plugin_logs(self) -> dict[str, Tensor]:
        """``state.log`` as detached tensors (Python numbers become CPU tensors: no device sync)."""
        out = {}
        for k, v in self.state.log.items():
            t = v.detach() if isinstance(v, Tensor) else torch.tensor(float(v))
            out[k] = t if t.dim() == 0 else t.float().mean()
        self.state.log.clear()
        return out

    def _check_loss_names(self, emitted: set[str]) -> None:
        """``losses.<name>`` must name an aux loss a plugin emits or declares (no silent weight 1 for a typo)."""
        self._names_checked = True
        known = emitted | {n for p in self.host.plugins.values() for n in p.spec.aux_loss_weights}
        unknown = sorted(set(self.config.losses) - known)
        if unknown:
            from ._util import did_you_mean

            raise ConfigError(
                f"losses.{unknown[0]}: no active plugin produces an aux loss of that name"
                f"{did_you_mean(unknown[0], known)} (known: {', '.join(sorted(known)) or 'none'})"
            )

    # ------------------------------------------------------------------ evaluation
    def eval_batch(self, batch: Batch, model: nn.Module | None = None) -> dict[str, Any]:
        """``mixhub_eval_forward`` on one batch (under autocast); call inside ``torch.no_grad()``."""
        with self.autocast():
            return self.host.slot("eval_forward", expected=dict, model=model if model is not None else self.model, batch=batch, state=self.state)

    @torch.no_grad()
    def eval_forward(self, x: Tensor, model: nn.Module | None = None) -> Tensor:
        """Logits of ``model`` (default: the trained model) for ``x`` through the eval hooks.

        The model is put in eval mode and restored; ``mixhub_evaluate`` wrappers run around
        the call (e.g. test-time norm layers).
        """
        model = model if model is not None else self.model
        x = x.to(self.device)
        batch = Batch(inputs=x, targets=torch.zeros(x.shape[0], dtype=torch.long, device=self.device), index=torch.arange(x.shape[0], device=self.device))
        was = model.training
        phase = self.state.phase
        self.state.phase = "eval"
        model.eval()
        try:
            with self.host.wrap("mixhub_evaluate", model=model, state=self.state):
                return self.eval_batch(batch, model)["logits"]
        finally:
            model.train(was)
            self.state.phase = phase

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Plugin state, plugin-module weights, the step counter and the plugins' generator:
        tensors and plain types only (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "plugins": self.host.per_plugin("mixhub_state_dict", state=self.state),
            "plugin_versions": {n: p.version for n, p in self.host.plugins.items()},
            "modules": {k: spec.module.state_dict() for k, spec in self.state.modules.items()},
            "step": int(self.state.step),
            "max_steps": int(self.state.max_steps),
            "epoch": int(self.state.epoch),
            "generator": self.state.generator.get_state(),
        }

    def load_state_dict(self, sd: dict[str, Any], strict: bool = True) -> None:
        """Restore ``state_dict()``; with ``strict`` the plugins and modules must match exactly."""
        from .errors import CheckpointError

        saved, active = set(sd.get("plugin_versions", {})), set(self.host.plugins)
        if strict and saved != active:
            raise CheckpointError(f"session state was written with plugins {sorted(saved)}, this session activates {sorted(active)}")
        self.load_modules(sd.get("modules", {}), sd.get("plugins", {}))
        self.state.step = int(sd.get("step", 0))
        self.state.max_steps = int(sd.get("max_steps", self.state.max_steps)) or self.state.max_steps
        self.state.epoch = int(sd.get("epoch", 0))
        if "generator" in sd:
            self.state.generator.set_state(sd["generator"])

    def load_modules(self, modules: dict[str, Any], plugins: dict[str, Any]) -> None:
        """Plugin-module weights and plugin state (a checkpoint's ``modules`` and ``plugins``)."""
        from .errors import CheckpointError

        for key, sd in modules.items():
            if key not in self.state.modules:
                raise CheckpointError(f"checkpoint holds plugin module {key!r}, which this run does not register")
            try:
                self.state.modules[key].module.load_state_dict(sd)
            except RuntimeError as exc:
                raise CheckpointError(f"plugin module {key!r} does not match the checkpoint: {exc}") from exc
        for name, psd in plugins.items():
            if name in self.host.plugins:
                self.host.call_plugin(name, "mixhub_load_state_dict", state_dict=psd, state=self.state)
