"""Every mixhub hook, in its place in the loop.

The training loop, as the core runs it (``mixhub.Session`` in ``engine.py`` runs the step; the
supervised protocol in ``protocols/supervised.py`` runs the epochs)::

    # setup (building the Session)
    mixhub_configure_model(model, state)                      # collectors: model surgery, plugin modules
    groups = timm's groups for the model + module groups + mixhub_param_groups(model, state)
    optimizer = mixhub_create_optimizer(groups, config, state)              # slot
    (EMA, torch.compile, DDP wrap of the task module)
    with mixhub_fit(state):                                   # wrappers, around the whole run
        mixhub_log(config record, state)                      # collectors: every record, see below
        for epoch:
            mixhub_epoch_start(state)
            for batch in loader:                                # (the loader's batch sampler calls
                                                                #  mixhub_extend_indices(index, epoch,
                                                                #  generator, state) before loading;
                                                                #  continual: one task at a time,
                                                                #  mixhub_task_start/end around it)
                # ---- TaskModule.forward(batch): one module, one forward (see below) ----
                plan = mixhub_sample_pairs(batch, state)                    # slot, outside autocast
                (core fetches dataset partners when plan.partner_source == "dataset")
                mixed = mixhub_mix_batch(batch, plan, state)                # slot, outside autocast
                with autocast:
                    outputs = mixhub_forward(model, mixed, plan, state)     # slot
                    loss = mixhub_compute_loss(outputs, mixed, plan, state) # slot
                    loss += sum(w * v for v in mixhub_aux_losses(...))      # collectors
                # ---- end of the forward ----
                (lr for this step set) backward (DDP: bucketed all-reduces overlap it); clip; optimizer.step()
                mixhub_after_step(state)                                     # collectors
                every train.log_every steps: mixhub_log(step record, state)
            mixhub_epoch_end(state)
            with mixhub_evaluate(model, state):                # wrappers, around each eval pass
                for batch in val:
                    outputs = mixhub_eval_forward(model, batch, state)      # slot
            metrics |= mixhub_metrics("val", state)                         # collectors
            mixhub_log(epoch records: train, val, state)
            checkpoint: model, optimizer, ... + mixhub_state_dict(state)    # collectors
        final test; mixhub_log(final epoch records, summary record, artifact records, state)

**The rule for plugin authors: every trainable computation happens inside the forward.** The five
step hooks from ``mixhub_sample_pairs`` to ``mixhub_aux_losses`` run inside one
``nn.Module.forward`` (``mixhub.engine.TaskModule``), which holds the model and every module
registered with ``state.register_module``; see "One forward per backward" below for what that
asks of a plugin. Also: do after-step work (EMA teachers, statistics) under ``torch.no_grad()``,
and log with ``state.log[name] = tensor`` (detached): ``float(...)``/``.item()`` in the step hooks
make the host wait for the device every step. The same hooks run unchanged in a user's loop
(``Session.training_step``) and in timm's ``train.py`` (``mixhub.timm_task.MixhubTask``).

Three kinds of hook:

* **Slots** (``firstresult``): one owner per run. The core's own default implementation is a
  plugin registered last; an owner may return ``None`` to fall through to the default. Two
  active plugins claiming one slot is a startup error unless the config names the owner
  (``slots: {sample_pairs: cmixup}``).
* **Collectors**: every active plugin contributes, in config order.
* **Wrappers** (``wrapper=True``): generator functions that ``yield`` once; code after the
  ``yield`` runs even when the wrapped work raises (use ``try/finally``).

**One forward per backward (multi-process runs).** Under ``torchrun`` the core wraps one module
in DistributedDataParallel (or shards it with FSDP2), and that module's ``forward`` is the whole
training forward: ``mixhub_sample_pairs``, the dataset-partner fetch, ``mixhub_mix_batch``,
``mixhub_forward``, ``mixhub_compute_loss`` and ``mixhub_aux_losses``. The module holds the model
and every module registered with ``state.register_module``. So, for plugin authors:

* every computation whose result reaches the loss runs inside those hooks, as many forward
  calls as you like (a partner pass through ``forward_features``, a teacher, a generator);
  never in ``mixhub_after_step``, the epoch hooks or a hook of your own, and never call
  ``backward`` or ``torch.autograd.grad`` on the training loss yourself;
* call the ``model`` you are given, or ``state.model`` and its timm methods
  (``forward_features``, ``forward_head``, ``forward_intermediates``: FSDP2 registers them so
  they gather parameters); a trainable module of your own must be registered with
  ``state.register_module`` (its gradients are then averaged with the model's);
* when some trainable parameters get no gradient in a step (a head used every other step), DDP
  must know: ``train.find_unused_parameters`` is on automatically when a plugin owns
  ``mixhub_forward`` / ``mixhub_compute_loss`` or adds aux losses or trainable modules;
* state you update by hand (EMA teachers, queues, running statistics) must come out the same on
  every process: derive it from the synchronised weights, not from the local batch, or keep it
  in BatchNorm buffers, which ``train.dist_bn`` averages before evaluation. ``state.generator``
  is seeded per rank on purpose (different pairs on different shards).

Plugins receive ``state`` (``mixhub.State``): the model, optimizer, step counters, device,
config, their own options (``state.options(name)``) and a scratch namespace
(``state.scratch(name)``). They never reach into the trainer.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from .batch import Batch
    from .plan import MixPlan
    from .records import LogRecord
    from .state import State

hookspec = pluggy.HookspecMarker("mixhub")
hookimpl = pluggy.HookimplMarker("mixhub")

#: Hooks with a single owner per run (``firstresult``), by short name.
SLOTS: dict[str, str] = {
    "sample_pairs": "mixhub_sample_pairs",
    "mix_batch": "mixhub_mix_batch",
    "forward": "mixhub_forward",
    "compute_loss": "mixhub_compute_loss",
    "create_optimizer": "mixhub_create_optimizer",
    "eval_forward": "mixhub_eval_forward",
    "replay_update": "mixhub_replay_update",
    "replay_retrieve": "mixhub_replay_retrieve",
}


# =============================================================================== slots
@hookspec(firstresult=True)
def mixhub_sample_pairs(batch: Batch, state: State) -> MixPlan | None:
    """Decide who mixes with whom, and with which weights. Runs outside autocast.

    Receives the (device-resident) training batch. Returns a ``MixPlan``. Default: the
    identity plan (no mixing); the ``mixup`` plugin draws a permutation and Beta(alpha, alpha).
    A plan with ``partner_source="dataset"`` makes the core fetch ``plan.index`` from the
    training set (same transforms) into ``plan.partner`` before ``mixhub_mix_batch``.

    Convention for samplers: an option named ``lam_mode`` says whether lam is drawn once per
    batch (``"batch"``) or per sample (any other value), so loss plugins that need one lam per
    batch (e.g. ``decoupled``) can reject an incompatible sampler at validation time.
    """


@hookspec(firstresult=True)
def mixhub_mix_batch(batch: Batch, plan: MixPlan, state: State) -> Batch | None:
    """Build the mixed batch from ``batch`` and ``plan``. Runs outside autocast.

    Default: linear interpolation of the inputs with ``plan.lam`` (and ``plan.mask`` per
    pixel, or ``plan.sources`` for N sources). Targets stay unmixed; losses read
    ``plan.y_a``, ``plan.y_b`` and ``plan.lam``. A mixer may return more rows than it received
    (e.g. two-directional mixing gives 2B); it then updates the plan's ``lam``, ``index``,
    ``y_a`` and ``y_b`` to describe the same rows, since the loss reads them row by row.
    """


@hookspec(firstresult=True)
def mixhub_forward(model: nn.Module, batch: Batch, plan: MixPlan, state: State) -> dict[str, Any] | None:
    """Run the model in train mode, inside autocast. Returns a dict of outputs.

    Default: ``{"logits": model(batch.inputs)}``. Plugins may run several calls (all
    gradients flow to one backward).
    """


@hookspec(firstresult=True)
def mixhub_compute_loss(outputs: dict[str, Any], batch: Batch, plan: MixPlan, state: State) -> Tensor | None:
    """The primary loss, a scalar tensor, inside autocast (cast logits to float32).

    Default: classification ``sum_k w_k * CE(logits, y_k)`` over the plan's sources (with
    ``train.label_smoothing``); regression MSE against ``lam * y_a + (1 - lam) * y_b``.
    """


@hookspec(firstresult=True)
def mixhub_create_optimizer(param_groups: list[dict[str, Any]], config: Any, state: State) -> torch.optim.Optimizer | None:
    """Build the optimizer from parameter groups (core groups first, then plugin groups).

    Default: ``timm.optim.create_optimizer_v2(param_groups, opt=config.optimizer.name, ...)``.
    Each group may carry ``lr``, ``weight_decay`` and ``min_lr`` (the schedule's floor).
    """


@hookspec(firstresult=True)
def mixhub_eval_forward(model: nn.Module, batch: Batch, state: State) -> dict[str, Any] | None:
    """Predict one evaluation batch; runs under ``torch.no_grad()`` (never inference mode).

    Default: ``{"logits": model(batch.inputs)}`` with the model in eval mode. Test-time
    adaptation plugins may adapt here (``torch.enable_grad()`` inside). ``logits`` are the
    given ``model``'s: the network evaluated (``Session.eval_network()``, an EMA copy, ...), so
    a recorded metric always belongs to the weights saved with it; other networks' logits may
    come along as ``logits_<name>``.
    """


@hookspec(firstresult=True)
def mixhub_replay_update(buffer: Any, batch: Batch, state: State) -> bool | None:
    """Continual runs: put the raw stream batch into the replay buffer after the step.

    Default: reservoir sampling. Return ``True`` when handled.
    """


@hookspec(firstresult=True)
def mixhub_replay_retrieve(buffer: Any, batch: Batch, state: State) -> Batch | None:
    """Continual runs: the memory batch for this step (``None`` when the buffer is empty).

    Default: uniform random retrieval of ``continual.retrieve_size`` samples. The result
    reaches every later hook as ``batch.extras["memory"]``.
    """


# =============================================================================== collectors
@hookspec
def mixhub_configure_model(model: nn.Module, state: State) -> None:
    """Model surgery before the optimizer, EMA, compile and DDP are built.

    Plugin-owned modules (a generator, a teacher, an extra head) are registered here with
    ``state.register_module(...)`` so the core moves, saves, trains and wraps them.
    """


@hookspec
def mixhub_param_groups(model: nn.Module, state: State) -> list[dict[str, Any]] | None:
    """Extra parameter groups (``{"params": [...], "lr": ..., "weight_decay": ..., "min_lr": ...}``)."""


@hookspec
def mixhub_aux_losses(outputs: dict[str, Any], batch: Batch, plan: MixPlan, state: State) -> dict[str, Tensor] | None:
    """Extra loss terms, each added to the primary loss with its weight and logged by name.

    Weights come from ``losses.<name>`` in the config, else the plugin's declared default
    (``PluginSpec.aux_loss_weights``), else 1.
    """


@hookspec
def mixhub_after_step(state: State) -> None:
    """After each optimizer step (``state.step`` is the number of steps done): EMA, schedules."""


@hookspec
def mixhub_epoch_start(state: State) -> None:
    """At the start of each epoch (``state.epoch``, 0-based: the epochs done; the epoch's
    records in ``metrics.jsonl`` and ``mixhub_log`` say ``state.epoch + 1``)."""


@hookspec
def mixhub_epoch_end(state: State) -> None:
    """At the end of each epoch's training, before evaluation."""


@hookspec
def mixhub_task_start(state: State) -> None:
    """Continual runs: before the first batch of task ``state.task``."""


@hookspec
def mixhub_task_end(state: State) -> None:
    """Continual runs: after the last batch of task ``state.task``."""


@hookspec
def mixhub_metrics(stage: str, state: State) -> dict[str, float] | None:
    """Extra metrics for ``stage`` (``"train"``, ``"val"``, ``"test"``, ``"test-time"``), prefixed ``<plugin>/``."""


@hookspec
def mixhub_state_dict(state: State) -> dict[str, Any] | None:
    """Plugin state for checkpoints: tensors and plain Python types only (``weights_only`` loadable).

    Keyed by the plugin's name by the core; modules registered with ``state.register_module``
    are saved by the core and need not be returned here.
    """


@hookspec
def mixhub_load_state_dict(state_dict: dict[str, Any], state: State) -> None:
    """Restore what ``mixhub_state_dict`` returned (the plugin's own entry)."""


@hookspec
def mixhub_log(record: LogRecord, state: State) -> None:
    """Receive every record the run logs (main process only); trackers implement this.

    ``record`` is a frozen ``mixhub.LogRecord``; ``record.kind`` is one of:

    * ``"config"``: first, once per run (also when resumed: ``record.data["resumed"]``):
      ``data["config"]`` (the resolved config as plain data, less the sections of protocols the
      run does not use: ``continual``, ``testtime``), ``data["plugins"]``
      (``{name: version}``) and ``data["run_dir"]`` (also ``state.run_dir``; ``None`` when the
      run writes no folder).
    * ``"step"``: every ``train.log_every`` optimizer steps, at the first and the last step,
      and about every 30 s. ``scalars``: the mean ``loss``, ``loss_main`` and aux losses over
      the steps since the last record, ``lr`` (one parameter group) or ``lr/<group>`` (each of
      several; no name is also the folder of another), ``images_per_s``, ``data_wait_s``, ``step_time_s``,
      ``grad_norm``, ``eta_s``, and plugin scalars (``state.log``).
    * ``"epoch"``: per epoch (continual: per task) and ``record.split`` (``train``, ``val``,
      ``task``, ``final_test`` ...): what the run writes to ``metrics.jsonl``.
    * ``"summary"``: once at the end: ``data`` is the summary, ``scalars`` its numbers
      flattened (``test/acc``).
    * ``"artifact"``: a file worth keeping (``record.path``): plots, ``summary.json``,
      ``checkpoints/export.pt``.

    ``record.epoch`` is 1-based (1: the first epoch or task), as in ``metrics.jsonl``.
    ``record.step`` is the x axis (optimizer steps done); ``record.metrics()`` gives the
    scalars under the names every tracker uses (``train/loss``, ``val/acc``, ``train_epoch/loss``).
    Every record is emitted inside ``mixhub_fit``, so a tracker may open lazily on its first
    record and close (marking the run failed on error) in its ``mixhub_fit`` teardown. Called on
    the host at log steps only: never read device tensors here.
    """


@hookspec
def mixhub_extend_indices(index: Tensor, epoch: int, generator: torch.Generator, state: State) -> Tensor | None:
    """Extra dataset indices to load with a training batch, chosen before it is loaded.

    Called in the training process by the loader's batch sampler with the anchors' dataset
    indices ``index`` ``[B]`` (CPU, long) and the epoch; the samples returned (a 1-D long tensor
    of training-set indices) are decoded in the DataLoader workers together with the anchors
    (same transforms, their own augmentation draws) and reach the plugin's hooks as
    ``batch.extras["extended"][<plugin name>]``, a ``Batch`` whose ``index`` holds the dataset
    indices. Return ``B`` indices to pair them row by row with the anchors (a skipped bad sample
    then drops its pair). E.g. C-Mixup draws its label-kernel partners here, so they are never
    fetched one by one in the training process.

    The sampler runs ahead of the step (loader prefetch): draw only from ``generator`` (seeded
    from the run seed, the epoch, the batch's position and the rank, so resumed runs draw the
    same), ``index``, ``state.train_targets`` and the plugin's options, not from ``state.step``.
    """


@hookspec
def mixhub_bench_suites() -> list[Any] | None:
    """Proxy benchmark suites (``mixhub.bench.Suite``) this plugin brings."""


# =============================================================================== wrappers
@hookspec
def mixhub_fit(state: State) -> Generator[None, Any, Any]:  # type: ignore[empty-body]
    """Wrapper around a whole run (training and final test)."""


@hookspec
def mixhub_evaluate(model: nn.Module, state: State) -> Generator[None, Any, Any]:  # type: ignore[empty-body]
    """Wrapper around one evaluation pass (``state.stage``), e.g. to swap norm layers and
    restore them afterwards, even on error."""
