"""``MixhubTask``: timm's ``TrainingTask`` interface over a ``mixhub.Session``.

timm's ``train.py`` (1.0.28 and later) runs its step through a ``timm.task.TrainingTask``. Two
edits make it run composed mixhub plugins (the docs' "timm's train.py" page shows them)::

    task = MixhubTask(model, "mixhub.yaml", num_classes=args.num_classes, device=device)   # was ClassificationTask(...)
    ...
    task.update_ema(step=num_updates)
    task.after_step(num_updates)                                                          # added

Run it with timm's own mixing off (``--mixup 0 --cutmix 0``): the plugins mix, and a batch timm
has already mixed (soft ``[B, C]`` targets) is refused with an error saying so. Everything else in
``train.py`` stays: the optimizer from ``task.get_trainable_module()``, ``task.prepare_distributed``,
``task.no_sync()`` for accumulation, ``task.setup_ema``/``update_ema``,
``CheckpointSaver(task=task)``, ``resume_task_checkpoint`` and ``validate(task.get_eval_model())``.

What the task adds to timm's interface for plugins:

* the loss is mixhub's (``mixhub_compute_loss`` + weighted aux losses): the mixed-target cross
  entropy ``sum_k w_k * CE(logits, y_k)`` with ``train.label_smoothing``, i.e. timm's
  ``SoftTargetCrossEntropy`` on the mixed, smoothed one-hot targets, although ``train.py`` built a
  hard-label criterion (its mixup is off); ``result`` also carries every aux loss and plugin log;
* ``get_clip_parameters`` covers the plugin modules (timm's default drops "the last two"
  parameters of the trainable module, which are no longer the head once plugin modules are in it);
* the EMA is of the model alone (``get_eval_model(ema=True)`` evaluates it through the eval hooks);
* task state = ``Session.state_dict()``: plugin state, plugin-module weights, the step and the
  plugins' generator, tensors and plain types only (timm resumes it with ``weights_only=True``);
  the checkpoint's ``state_dict`` stays the plain model's (loadable by ``timm.create_model``).
"""

from __future__ import annotations

from typing import Any

import torch
from timm.task import TrainingTask
from timm.utils.model_ema import ModelEmaV3
from torch import Tensor, nn

from .batch import Batch
from .engine import Session
from .errors import DataError

__all__ = ["MixhubTask", "EvalModel"]


class EvalModel(nn.Module):
    """``forward(input) -> logits`` through ``mixhub_eval_forward`` and the ``mixhub_evaluate``
    wrappers, for timm's ``validate``. Its ``state_dict`` is the wrapped model's (``module``)."""

    _session: Session

    def __init__(self, session: Session, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        object.__setattr__(self, "_session", session)

    def forward(self, input: Tensor) -> Tensor:
        session = self._session
        n = input.shape[0]
        batch = Batch(inputs=input, targets=torch.zeros(n, dtype=torch.long, device=input.device), index=torch.arange(n, device=input.device))
        with session.host.wrap("mixhub_evaluate", model=self.module, state=session.state):
            return session.eval_batch(batch, self.module)["logits"]

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)


class MixhubTask(TrainingTask):
    """A ``timm.task.TrainingTask`` whose step is ``Session.step`` (see the module docstring).

    Args:
        model: the timm model (``train.py``'s ``model``).
        config: a mixhub config (dict, or a YAML path): ``plugins``, their sections,
            ``slots``, ``losses``, ``train.label_smoothing``, ``seed``.
        num_classes: default ``model.num_classes``.
        device, dtype, verbose: as for every timm task.
        **session_kwargs: passed to ``Session`` (``input_shape``, ``train_targets``, ``fetch``,
            ``extra_plugins``...). ``input_shape`` defaults to the model's
            ``pretrained_cfg["input_size"]``.
    """

    def __init__(
        self,
        model: nn.Module,
        config: dict[str, Any] | str,
        num_classes: int | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        verbose: bool = True,
        **session_kwargs: Any,
    ) -> None:
        super().__init__(device=device, dtype=dtype, verbose=verbose)
        if isinstance(config, str):
            from .config import read_yaml

            config = read_yaml(config)
        num_classes = num_classes if num_classes is not None else getattr(model, "num_classes", None)
        cfg_input = getattr(model, "pretrained_cfg", {}).get("input_size")
        session_kwargs.setdefault("input_shape", tuple(cfg_input) if cfg_input else None)
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # per-rank pairing draws
            session_kwargs.setdefault("rank", torch.distributed.get_rank())
            session_kwargs.setdefault("world_size", torch.distributed.get_world_size())
        self.session = Session(config, model=model, num_classes=num_classes, device=self.device, **session_kwargs)
        self.trainable_module: nn.Module = self.session.task_module

    # ------------------------------------------------------------------ the step
    def forward(self, input: Tensor, target: Tensor) -> dict[str, Tensor]:
        """``{"loss", "output", <aux losses and plugin logs>}`` for one (micro-)batch."""
        if self.session.state.task_kind == "classification" and (target.dim() != 1 or target.is_floating_point()):
            raise DataError(
                f"MixhubTask got targets of shape {tuple(target.shape)} and dtype {target.dtype}: timm has already mixed this "
                "batch (its Mixup/CutMix or FastCollateMixup makes soft [B, C] targets). Turn timm's mixing off "
                "(--mixup 0 --cutmix 0) and let the mixhub plugins mix; they need class indices [B]."
            )
        n = input.shape[0]
        batch = Batch(inputs=input, targets=target, index=torch.arange(n, device=input.device))
        out = self.session.step(batch)
        result = {"loss": out["loss"], "output": out["output"]}
        result.update({k: v for k, v in out["logs"].items() if k != "loss"})
        return result

    def after_step(self, step: int | None = None) -> dict[str, Tensor]:
        """Call after ``update_ema``: the plugins' ``mixhub_after_step`` (EMA teachers, schedules)."""
        return self.session.after_step(step)

    def prepare_distributed(self, device_ids: list | None = None, **ddp_kwargs: Any) -> MixhubTask:
        """Wrap the task module (model + plugin modules, the whole training forward) in DDP."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.trainable_module = DDP(self.session.task_module, device_ids=device_ids, **ddp_kwargs)
        self.session.train_module = self.trainable_module
        return self

    def compile(self, backend: str = "inductor", mode: str | None = None, **compile_kwargs: Any) -> nn.Module:  # type: ignore[override]
        """Compile the model the forward slot calls (before DDP); returns the eval model."""
        self.session.compile(backend=backend, mode=mode, **compile_kwargs)
        return EvalModel(self.session, self.session.model)

    def get_clip_parameters(self, exclude_head: bool = False) -> list[nn.Parameter]:
        """Every trainable parameter of the model and the plugin modules; ``exclude_head`` drops
        the model's classifier (``get_classifier()``), never a plugin module's parameters."""
        params = [p for p in self.session.task_module.parameters() if p.requires_grad]
        if exclude_head:
            get_head = getattr(self.session.model, "get_classifier", None)
            head = get_head() if callable(get_head) else None
            if isinstance(head, nn.Module):
                skip = {id(p) for p in head.parameters()}
                params = [p for p in params if id(p) not in skip]
        return params

    # ------------------------------------------------------------------ EMA and evaluation
    def setup_ema(self, decay: float = 0.9999, use_warmup: bool = False, device: torch.device | None = None, **kwargs: Any) -> nn.Module:
        """An EMA of the model (plugin modules keep their own averaging, e.g. AdAutoMix's teacher)."""
        self.trainable_module_ema = ModelEmaV3(self.session.model, decay=decay, use_warmup=use_warmup, device=device, **kwargs)
        return self.trainable_module_ema

    def update_ema(self, step: int | None = None) -> None:
        if self.has_ema():
            self.trainable_module_ema.update(self.session.model, step=step)

    def get_eval_model(self, module: nn.Module | None = None, ema: bool = False) -> nn.Module | None:
        if module is not None:
            return module
        if ema:
            ema_module = getattr(self, "trainable_module_ema", None)
            return EvalModel(self.session, ema_module.module) if ema_module is not None else None
        return EvalModel(self.session, self.session.model)

    def get_task_state(self, module: nn.Module | None = None, ema: bool = False) -> dict[str, Any]:
        """``Session.state_dict()`` (tensors and plain types); nothing for the EMA."""
        return {} if ema else self.session.state_dict()

    def load_task_state(self, state: dict[str, Any] | None, strict: bool = True, module: nn.Module | None = None, ema: bool = False) -> None:
        if ema or not state:
            return
        self.session.load_state_dict(state, strict=strict)
