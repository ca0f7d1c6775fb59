"""``MixhubTask``: timm's ``TrainingTask`` interface over a ``mixhub.Session``.

timm's ``train.py`` (its ``timm.task`` version: v1.0.28 and the main branch at 1.0.29.dev0,
commit ``aa4b585``, checked) runs its step through a ``timm.task.TrainingTask``. Three edits make it
run composed mixhub plugins (the docs' "timm's train.py" page shows them)::

    from mixhub.timm_task import MixhubTask                                               # 1. the import
    task = MixhubTask(model, "mixhub.yaml", num_classes=args.num_classes, device=device,
                      criterion=train_loss_fn)                                           # 2. was ClassificationTask(...)
    ...
    task.update_ema(step=num_updates)
    task.after_step(num_updates, num_updates_total)                                      # 3. added

Run it with timm's own mixing off (``--mixup 0 --cutmix 0``): the plugins mix, and a batch timm
has already mixed (soft ``[B, C]`` targets) is refused with an error saying so. Everything else in
``train.py`` stays: the optimizer from ``task.get_trainable_module()``, ``task.prepare_distributed``,
``task.no_sync()`` for accumulation, ``task.setup_ema``/``update_ema``,
``CheckpointSaver(task=task)``, ``resume_task_checkpoint`` and ``validate(task.get_eval_model())``.

What the task adds to timm's interface for plugins:

* optimizers: importing this module registers every installed plugin's timm optimizer names
  (entry points ``mixhub.timm_optimizers``, see ``mixhub.optim``), so ``--opt mixhubadamp`` works;
  an optimizer plugin listed in the config whose optimizer the loop does not step is warned about
  at the first step (``train.py`` builds the optimizer ``--opt`` names, not mixhub's slot);
* the loss is mixhub's (``mixhub_compute_loss`` + weighted aux losses): by default the
  mixed-target cross entropy ``sum_k w_k * CE(logits, y_k)``, i.e. timm's ``SoftTargetCrossEntropy``
  on the mixed, smoothed one-hot targets. ``train.py``'s criterion is not called (the loss needs
  each source's targets), but its label smoothing is taken (``criterion=train_loss_fn``:
  ``--smoothing``) unless the config sets ``train.label_smoothing``; the task says at start which
  loss and smoothing it uses and why; ``result`` also carries every aux loss and plugin log;
* the run's length: ``after_step(num_updates, num_updates_total)`` (or ``total_steps=``) sets
  ``state.max_steps``; a plugin that schedules over the run (AdAutoMix's teacher momentum) refuses
  to step without it;
* ``get_clip_parameters`` covers the plugin modules (timm's default drops "the last two"
  parameters of the trainable module, which are no longer the head once plugin modules are in it);
* evaluation and checkpoints agree: ``get_eval_model()`` evaluates ``Session.eval_network()`` (the
  model, or the plugin network registered for export, e.g. AdAutoMix's teacher), and the
  checkpoint's ``state_dict`` is that network's plain timm state dict (``timm.create_model(...,
  checkpoint_path=...)`` loads it), so the metric ``CheckpointSaver`` records belongs to the saved
  weights; the EMA is of the model alone and ``get_eval_model(ema=True)`` evaluates that copy;
* task state = ``Session.state_dict()``: plugin state, plugin-module weights, the step and the
  plugins' generator (plus the trained model when the saved network is another one), tensors and
  plain types only (timm resumes it with ``weights_only=True``).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import torch
from timm.task import TrainingTask
from timm.utils.model_ema import ModelEmaV3
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from .batch import Batch, check_class_targets
from .engine import Session
from .errors import CheckpointError
from .optim import register_timm_optimizers

__all__ = ["MixhubTask", "EvalModel", "criterion_smoothing"]

log = logging.getLogger("mixhub")

register_timm_optimizers()  # every installed plugin's timm names: train.py's --opt finds them


def criterion_smoothing(criterion: nn.Module | None) -> float | None:
    """The label smoothing a timm/torch criterion was built with (``train.py``'s ``--smoothing``):
    ``nn.CrossEntropyLoss.label_smoothing`` or timm's ``.smoothing`` (``LabelSmoothingCrossEntropy``,
    ``BinaryCrossEntropy``, ``JsdCrossEntropy``); ``None`` when it has none (``SoftTargetCrossEntropy``)."""
    if criterion is None:
        return None
    if isinstance(criterion, nn.CrossEntropyLoss):
        return float(criterion.label_smoothing)
    value = getattr(criterion, "smoothing", None)
    return float(value) if isinstance(value, (int, float)) else None


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
        criterion: ``train.py``'s ``train_loss_fn``: its label smoothing is used when the config
            sets no ``train.label_smoothing`` (the criterion itself is not called).
        total_steps: the run's number of optimizer updates, if known now (else pass it to
            ``after_step``).
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
        criterion: nn.Module | None = None,
        total_steps: int | None = None,
        **session_kwargs: Any,
    ) -> None:
        super().__init__(device=device, dtype=dtype, verbose=verbose)
        if isinstance(config, str):
            from .config import read_yaml

            config = read_yaml(config)
        sets_smoothing = "label_smoothing" in (dict(config).get("train") or {})
        num_classes = num_classes if num_classes is not None else getattr(model, "num_classes", None)
        cfg_input = getattr(model, "pretrained_cfg", {}).get("input_size")
        session_kwargs.setdefault("input_shape", tuple(cfg_input) if cfg_input else None)
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # per-rank pairing draws
            session_kwargs.setdefault("rank", torch.distributed.get_rank())
            session_kwargs.setdefault("world_size", torch.distributed.get_world_size())
        session_kwargs.setdefault("max_steps", total_steps)
        self.session = Session(config, model=model, num_classes=num_classes, device=self.device, **session_kwargs)
        self.trainable_module: nn.Module = self.session.task_module
        self._settle_loss(criterion, sets_smoothing)
        self._watch_optimizer()

    # ------------------------------------------------------------------ setup checks
    def _settle_loss(self, criterion: nn.Module | None, config_sets_smoothing: bool) -> None:
        """Take ``criterion``'s label smoothing where mixhub's loss is the core's and the config sets
        none; then say which loss and smoothing the task uses, and why (a warning where train.py's
        setting is not what runs)."""
        session = self.session
        train = session.config.train
        owner = session.host.owner("compute_loss")
        given = criterion_smoothing(criterion)
        name = type(criterion).__name__ if criterion is not None else None
        warn = criterion is None
        if config_sets_smoothing:
            note = "set by train.label_smoothing in the mixhub config"
            if given is not None and given != train.label_smoothing:
                note += f", not train.py's {given:g} from {name} (--smoothing)"
                warn = True
        elif given is None:
            note = f"{name} has no label smoothing to take" if name else "no criterion was passed: criterion=train_loss_fn takes train.py's --smoothing"
        elif owner == "core":
            train.label_smoothing = given
            note = f"taken from train.py's criterion {name} (--smoothing)"
        else:
            note = (
                f"train.py's --smoothing {given:g} ({name}) is not applied: plugin {owner!r} owns the loss; "
                "set its own smoothing option, or train.label_smoothing where its loss reads it"
            )
            warn = warn or given > 0
        what = "the core's lam-weighted cross entropy over the mixed sources" if owner == "core" else f"plugin {owner!r}'s mixhub_compute_loss"
        aux = sorted({n for p in session.host.plugins.values() for n in p.spec.aux_loss_weights})
        plain_ce = criterion is None or isinstance(criterion, nn.CrossEntropyLoss) or name == "LabelSmoothingCrossEntropy"
        if not plain_ce:
            note += f"; {name} is not a softmax cross entropy, mixhub's loss is"
            warn = True
        msg = (
            f"MixhubTask: training loss = {what}{' + aux losses ' + ', '.join(aux) if aux else ''}; "
            f"train.label_smoothing={train.label_smoothing:g} ({note}). train.py's criterion is not called: the plugins "
            "mix the batch and the loss needs each source's targets."
        )
        if warn:
            log.warning("%s", msg)
        elif self.verbose:
            log.info("%s", msg)

    def _watch_optimizer(self) -> None:
        """An optimizer plugin in the config fills mixhub's optimizer slot, which ``train.py`` never
        calls: check, at the loop's first optimizer step, that its optimizer is the plugin's."""
        owner = self.session.host.owner("create_optimizer")
        self._optimizer_owner = None if owner == "core" else owner
        self._optimizer_hook = None
        if self._optimizer_owner is None:
            return
        own = {id(p) for p in self.session.task_module.parameters()}
        ref = weakref.ref(self)

        def first_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            task = ref()
            if task is None or task._optimizer_hook is None:
                return
            if any(id(p) in own for g in optimizer.param_groups for p in g["params"]):
                task._optimizer_hook.remove()
                task._optimizer_hook = None
                task.check_optimizer(optimizer)

        self._optimizer_hook = register_optimizer_step_pre_hook(first_step)

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> bool:
        """Warn when the config lists an optimizer plugin whose optimizer ``optimizer`` is not
        (e.g. ``train.py`` ran with ``--opt adamw``); ``True`` when it is, or none is listed."""
        name = self._optimizer_owner
        if name is None:
            return True
        classes = register_timm_optimizers().get(name, {})
        base: Any = optimizer
        while base is not None and classes and not isinstance(base, tuple(classes.values())):
            base = getattr(base, "_base_optimizer", None) or getattr(base, "base_optimizer", None)
        if base is not None and classes:
            return True
        if classes:
            how = f"run train.py with --opt {' or --opt '.join(sorted(classes))}"
        else:
            how = "it registers no timm optimizer names (no mixhub.timm_optimizers entry point), so train.py cannot build it"
        log.warning(
            "MixhubTask: the config lists optimizer plugin %r, but the loop steps %s, not its optimizer: train.py builds the "
            "optimizer --opt names and never calls mixhub's optimizer slot. %s, or drop %r from plugins.",
            name, type(optimizer).__name__, how[0].upper() + how[1:], name,
        )  # fmt: skip
        return False

    # ------------------------------------------------------------------ the step
    def forward(self, input: Tensor, target: Tensor) -> dict[str, Tensor]:
        """``{"loss", "output", <aux losses and plugin logs>}`` for one (micro-)batch."""
        check_class_targets(target, self.session.state.task_kind, self.session.config.train.soft_targets, "MixhubTask")
        n = input.shape[0]
        batch = Batch(inputs=input, targets=target, index=torch.arange(n, device=input.device))
        out = self.session.step(batch)
        result = {"loss": out["loss"], "output": out["output"]}
        result.update({k: v for k, v in out["logs"].items() if k != "loss"})
        return result

    def after_step(self, step: int | None = None, total_steps: int | None = None) -> dict[str, Tensor]:
        """Call after ``update_ema``: the plugins' ``mixhub_after_step`` (EMA teachers, schedules).

        ``total_steps``: the run's number of updates (``train.py``'s ``num_updates_total``), for
        plugins that schedule over the run.
        """
        return self.session.after_step(step, total_steps)

    def prepare_distributed(self, device_ids: list | None = None, **ddp_kwargs: Any) -> MixhubTask:
        """Wrap the task module (model + plugin modules, the whole training forward) in DDP."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.trainable_module = DDP(self.session.task_module, device_ids=device_ids, **ddp_kwargs)
        self.session.train_module = self.trainable_module
        return self

    def compile(self, backend: str = "inductor", mode: str | None = None, **compile_kwargs: Any) -> nn.Module:  # type: ignore[override]
        """Compile the model the forward slot calls (before DDP); returns the eval model."""
        self.session.compile(backend=backend, mode=mode, **compile_kwargs)
        return EvalModel(self.session, self.session.eval_network())

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
        return EvalModel(self.session, self.session.eval_network())

    def _eval_key(self) -> str | None:
        """The plugin-module key of the evaluated network (``None``: the model)."""
        net = self.session.eval_network()
        return next((k for k, spec in self.session.state.modules.items() if spec.module is net), None)

    def get_task_state(self, module: nn.Module | None = None, ema: bool = False) -> dict[str, Any]:
        """``Session.state_dict()`` (tensors and plain types); nothing for the EMA. When the
        checkpoint's ``state_dict`` is a plugin network (e.g. AdAutoMix's teacher), the trained
        model's weights travel here under ``model`` instead of that network's."""
        if ema:
            return {}
        state = self.session.state_dict()
        key = self._eval_key()
        if key is not None:
            state["modules"] = {k: v for k, v in state["modules"].items() if k != key}
            state["model"] = self.session.model.state_dict()
        return state

    def load_task_state(self, state: dict[str, Any] | None, strict: bool = True, module: nn.Module | None = None, ema: bool = False) -> None:
        if ema or not state:
            return
        state = dict(state)
        model_sd = state.pop("model", None)
        if model_sd is None and self._eval_key() is not None:
            raise CheckpointError("MixhubTask: this checkpoint's task_state holds no 'model' weights, but its state_dict is a plugin network's")
        if model_sd is not None:
            self.session.model.load_state_dict(model_sd, strict=strict)
        self.session.load_state_dict(state, strict=strict)
