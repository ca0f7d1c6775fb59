"""`State`: the small typed view of a run that hooks receive."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["State", "ModuleSpec"]


@dataclass
class ModuleSpec:
    """A plugin-owned module registered with ``State.register_module``.

    The core moves it to the device, saves it in checkpoints, keeps it in the mode asked
    (``train_mode``: ``True``/``False``, or ``None`` to follow the model), gives trainable
    ones their own parameter group with ``group`` options (``lr``, ``weight_decay``, ``min_lr``)
    and averages their gradients across processes under DDP. ``export=True`` makes it the
    network evaluated and saved in place of the trained model (``Session.eval_network()``: the
    run's metrics, ``checkpoints/export.pt``, ``MixhubTask``'s checkpoint ``state_dict``), e.g. an
    EMA teacher; ``mixhub_eval_forward`` then receives it as ``model``.
    """

    owner: str
    name: str
    module: nn.Module
    trainable: bool = True
    train_mode: bool | None = None
    group: dict[str, Any] = field(default_factory=dict)
    export: bool = False


@dataclass
class State:
    """What a hook may read (and, through the documented methods, change) about a run.

    Attributes:
        config: the resolved, validated ``mixhub.config.Config``.
        model: the model being trained (never wrapped itself: under DDP the core wraps the module
            that runs the whole training forward, so any forward path through the model is
            synchronised; under FSDP2 its parameters are shards).
        optimizer, scheduler: set once built.
        device: where tensors live.
        task_kind: ``"classification"``, ``"regression"``, ``"continual"`` or ``"test-time"``.
        phase: ``"train"``, ``"eval"`` or ``"test-time"``; ``stage`` is the split being evaluated.
        num_classes: classes of a classification task (else ``None``).
        epoch, step, max_steps, steps_per_epoch: counters (``step`` = optimizer steps done).
        task, num_tasks, task_classes: continual runs (``task_classes[t]`` = classes of task t).
        train_targets: every training target by dataset index, on the device (label-aware sampling).
        train_dataset_size: ``len`` of the training set.
        generator: a seeded ``torch.Generator`` (on CPU) for plugins' random draws.
        world_size, rank: distributed layout.
        domain: test-time runs: the current domain name(s).
        data: the run's ``DataBundle`` (read-only: train/val/test datasets).
        log: per-step scalars a plugin wants logged (``state.log["name"] = value``); they reach
            the step records (``mixhub_log``) as window means.
        run_dir: the run folder (``None`` when the run writes none); trackers write under it.
    """

    config: Any
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    task_kind: str = "classification"
    model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    phase: str = "train"
    stage: str = "train"
    num_classes: int | None = None
    epoch: int = 0
    step: int = 0
    max_steps: int = 0
    steps_per_epoch: int = 0
    task: int = 0
    num_tasks: int = 1
    task_classes: list[list[int]] = field(default_factory=list)
    train_targets: Tensor | None = None
    train_dataset_size: int = 0
    generator: torch.Generator = field(default_factory=torch.Generator)
    world_size: int = 1
    rank: int = 0
    domain: str | None = None
    batch_size: int = 0
    amp_dtype: torch.dtype | None = None
    data: Any = None
    log: dict[str, float] = field(default_factory=dict)
    run_dir: Path | None = None
    modules: dict[str, ModuleSpec] = field(default_factory=dict)
    _scratch: dict[str, SimpleNamespace] = field(default_factory=dict, repr=False)
    _options: dict[str, Any] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ plugin views
    def options(self, plugin: str) -> Any:
        """The validated options (pydantic model) of an active plugin."""
        try:
            return self._options[plugin]
        except KeyError:
            raise KeyError(f"plugin {plugin!r} is not active in this run") from None

    def scratch(self, plugin: str) -> SimpleNamespace:
        """A per-plugin namespace for transient values (not saved; use the state-dict hooks)."""
        return self._scratch.setdefault(plugin, SimpleNamespace())

    def register_module(
        self,
        owner: str,
        name: str,
        module: nn.Module,
        *,
        trainable: bool = True,
        train_mode: bool | None = None,
        export: bool = False,
        **group: Any,
    ) -> nn.Module:
        """Register a plugin-owned module (see ``ModuleSpec``); returns it moved to the device.

        Call from ``mixhub_configure_model``. ``group`` holds its parameter-group options.
        """
        key = f"{owner}.{name}"
        if key in self.modules:
            raise ValueError(f"plugin {owner!r} registered module {name!r} twice")
        if export and any(m.export for m in self.modules.values()):
            other = next(k for k, m in self.modules.items() if m.export)
            raise ValueError(f"plugin {owner!r} marks module {name!r} for export, but {other!r} already is")
        module = module.to(self.device)
        if not trainable:
            module.requires_grad_(False)
        self.modules[key] = ModuleSpec(owner, name, module, trainable, train_mode, dict(group), export)
        return module

    def module(self, owner: str, name: str) -> nn.Module:
        return self.modules[f"{owner}.{name}"].module

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    @property
    def old_classes(self) -> list[int]:
        """Continual runs: classes of all tasks before the current one."""
        return sorted(c for t in self.task_classes[: self.task] for c in t)

    @property
    def seen_classes(self) -> list[int]:
        return sorted(c for t in self.task_classes[: self.task + 1] for c in t)
