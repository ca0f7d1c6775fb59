"""RankMixup as a mixhub plugin: hooks only (the math lives in ``functional.py``).

One training step (official ``calibrate/engine/trainer.py``, ``train_epoch``):

* ``mixhub_sample_pairs``: an identity plan for the raw batch, plus ``plan.extras["views"]``,
  m independent ``{"index": pi_k [B], "lam": lam_k [B]}`` (one lam per copy, float64 on the
  device, as the official NumPy lam: the exact same-class test depends on it).
* ``mixhub_mix_batch``: inputs stay raw; ``extras["rank_inputs"]`` [m*B, ...] (input mixing
  only) and ``extras["rank_targets"]`` [m*B, C] hold the copy-major mixed copies.
* ``mixhub_forward``: ``model(x)`` then ``model(x~)`` in a separate call (BatchNorm sees the
  raw and the mixed batch separately, as the official ``forward`` / ``forward_multimixup``).
  With ``layer_mix`` naming a module, the second call runs the raw batch and a forward hook
  mixes that module's output (official ``layer_mix: 4``).
* ``mixhub_compute_loss``: CE on the raw logits only (claimed, so another loss owner is a
  startup conflict rather than a silent replacement).
* ``mixhub_aux_losses``: ``rankmixup_mrl`` or ``rankmixup_mndcg`` (the ranking term; the core
  multiplies it by ``losses.<name>``, default 0.1).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch.nn.modules.batchnorm import _BatchNorm

from mixhub import Batch, ConfigError, MixPlan, PluginOptions, PluginSpec, State, hookimpl

from .functional import (
    make_mixed_views,
    masked_cross_entropy,
    mix_at_layer,
    mixed_copy_targets,
    mndcg_loss,
    mrl_loss,
    ranking_rows,
    same_class_rows,
    sample_lams,
)

NAME = "rankmixup"
LOSS_NAMES = {"mrl": "rankmixup_mrl", "mndcg": "rankmixup_mndcg"}
DEFAULT_WEIGHT = 0.1
OFFICIAL_CLIP = 2.0


class RankMixupOptions(PluginOptions):
    """Options of the ``rankmixup`` section (defaults: the official CIFAR-10 recipe)."""

    variant: Literal["mrl", "mndcg"] = Field(
        "mrl", description="ranking term: mrl (one copy) or mndcg (m copies)"
    )
    margin: float = Field(2.0, ge=0.0, description="MRL hinge margin (logit units with mrl_space=logit)")
    num_mixup: int | None = Field(
        None, ge=1, description="mixed copies m per step (default: 1 for mrl, 3 for mndcg)"
    )
    alpha: float = Field(2.0, ge=0.0, description="Beta(alpha, alpha) of each copy's lam (0: lam = 1)")
    mrl_mask: Literal["official", "per_sample", "none"] = Field(
        "official",
        description="same-class pairs: official = mean(keep)*mean(hinge); per_sample zeroes them; none keeps them",
    )
    mrl_space: Literal["logit", "prob"] = Field(
        "logit", description="compare max logits (official) or max probabilities"
    )
    mndcg_ratio: Literal["minmax", "plain"] = Field(
        "minmax", description="min(DCG,IDCG)/max(DCG,IDCG) (official) or DCG/IDCG"
    )
    separate_forward: bool = Field(
        True, description="forward raw and mixed batches in two calls (separate BatchNorm statistics)"
    )
    mixed_bn_update: bool = Field(
        True,
        description="the mixed call updates BatchNorm running statistics (official); false restores them "
        "afterwards so evaluation uses raw-batch statistics only (ours, not in the paper)",
    )
    stable_sort: bool = Field(True, description="order tied M-NDCG gains by copy index (deterministic)")
    layer_mix: str = Field(
        "input",
        description="where the copies are mixed: input (official layer_mix 0), last (the model's last "
        "feature_info module, e.g. layer4 of a ResNet: official layer_mix 4) or a module name (model.get_submodule)",
    )
    ignore_index: int | None = Field(
        None,
        description="samples with this target are left out of CE and of the ranking term, and are never "
        "partners (null: every target is a class)",
    )

    @property
    def copies(self) -> int:
        """The number of mixed copies m actually used."""
        if self.num_mixup is not None:
            return self.num_mixup
        return 1 if self.variant == "mrl" else 3


def _validate(options: RankMixupOptions, config: Any) -> list[str]:
    if options.variant == "mrl" and options.copies != 1:
        raise ConfigError(
            f"rankmixup.num_mixup: the MRL variant compares each sample with exactly one mixed copy, "
            f"got num_mixup={options.copies}; use num_mixup=1 or variant=mndcg (options of plugin 'rankmixup')"
        )
    warnings: list[str] = []
    if options.layer_mix != "input" and not options.separate_forward:
        warnings.append(
            "rankmixup.separate_forward=false with feature mixing: one call returns the raw and the mixed rows "
            "(the layers after rankmixup.layer_mix see them together)"
        )
    clip = getattr(getattr(config, "train", None), "clip_grad_norm", None)
    if clip is None:
        warnings.append(
            f"the official recipe clips the global gradient norm at {OFFICIAL_CLIP} and the config sets no "
            f"train.clip_grad_norm; clip in the loop that steps the optimizer: mixhub train: "
            f"train.clip_grad_norm={OFFICIAL_CLIP}; timm's train.py (MixhubTask): --clip-grad {OFFICIAL_CLIP}; "
            f"your own loop: torch.nn.utils.clip_grad_norm_(params, {OFFICIAL_CLIP}) before optimizer.step()"
        )
    if options.variant == "mrl" and options.mrl_space == "prob" and options.margin >= 1.0:
        warnings.append(
            f"rankmixup.margin={options.margin} with mrl_space=prob: probabilities differ by less than 1, "
            "so the hinge never reaches zero; use a margin below 1"
        )
    return warnings


PLUGIN = PluginSpec(
    name=NAME,
    options=RankMixupOptions,
    slots=("sample_pairs", "mix_batch", "forward", "compute_loss"),
    task_kinds=("classification",),
    aux_loss_weights={name: DEFAULT_WEIGHT for name in LOSS_NAMES.values()},
    description="RankMixup (ICCV 2023): CE on raw samples + MRL / M-NDCG ranking of mixed copies, for calibration",
    validate=_validate,
    example={"train": {"clip_grad_norm": OFFICIAL_CLIP}, "rankmixup": {"variant": "mrl"}},
)


def _num_classes(state: State, model: Any = None) -> int:
    if state.num_classes:
        return int(state.num_classes)
    head = getattr(model, "num_classes", None)
    if head:
        return int(head)
    raise ConfigError("rankmixup needs the number of classes (state.num_classes is unset)")


@contextmanager
def _restore_bn_stats(model: torch.nn.Module) -> Iterator[None]:
    """Run the block on copies of the BatchNorm running statistics, then put the originals back.

    The buffers are swapped rather than copied back in place: autograd may hold the tensors the
    block updated, and an in-place restore would invalidate the backward pass.
    """
    names = ("running_mean", "running_var", "num_batches_tracked")
    saved = [
        (m, [getattr(m, n) for n in names])
        for m in model.modules()
        if isinstance(m, _BatchNorm) and m.running_mean is not None and m.running_var is not None
    ]
    for m, tensors in saved:
        for n, t in zip(names, tensors):
            setattr(m, n, None if t is None else t.clone())
    try:
        yield
    finally:
        for m, tensors in saved:
            for n, t in zip(names, tensors):
                setattr(m, n, t)


# ---------------------------------------------------------------------------------- slots
@hookimpl
def mixhub_configure_model(model: torch.nn.Module, state: State) -> None:
    """Resolve ``layer_mix`` once, so that a wrong module name fails at startup."""
    opts: RankMixupOptions = state.options(NAME)
    if opts.layer_mix != "input":
        _mix_layer(state, model, opts.layer_mix)


@hookimpl
def mixhub_sample_pairs(batch: Batch, state: State) -> MixPlan:
    opts: RankMixupOptions = state.options(NAME)
    b, device = batch.size, batch.inputs.device
    plan = MixPlan.identity(b, device=device)
    lams = sample_lams(opts.copies, opts.alpha, state.generator)
    plan.extras["views"] = [
        {
            "index": _permutation(b, batch.targets, opts.ignore_index, state.generator, device),
            "lam": torch.full((b,), lam, dtype=torch.float64, device=device),  # float64, as the official lam
            "lam_value": float(lam),  # the same float64 value on the host: mixing reads no device value
        }
        for lam in lams
    ]
    return plan


def _permutation(
    b: int, targets: torch.Tensor, ignore_index: int | None, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """A random permutation of the batch; with ``ignore_index``, labelled samples are permuted among
    themselves and unlabelled ones stay in place (no host synchronisation)."""
    if ignore_index is None:
        return torch.randperm(b, generator=generator).to(device)
    labelled = (targets != ignore_index).to(device)
    keys = torch.rand(b, generator=generator).to(device)
    # positions of labelled rows (natural order) and the same rows in random order; unlabelled rows
    # follow in natural order in both lists, so they map to themselves
    slots = torch.argsort((~labelled).to(torch.int8), stable=True)
    shuffled = torch.argsort(torch.where(labelled, keys, torch.full_like(keys, 2.0)), stable=True)
    return torch.empty_like(slots).scatter_(0, slots, shuffled)


@hookimpl
def mixhub_mix_batch(batch: Batch, plan: MixPlan, state: State) -> Batch:
    views = plan.extras.get("views")
    if not views:
        raise RuntimeError(
            "rankmixup: the plan carries no mixed views (extras['views']); is sample_pairs owned by rankmixup?"
        )
    opts: RankMixupOptions = state.options(NAME)
    # float64 host values (or float64 0-d device tensors for plans made elsewhere): no device read
    lams = [float(v["lam_value"]) if "lam_value" in v else v["lam"].reshape(-1)[0] for v in views]
    perms = [v["index"] for v in views]
    num_classes = _num_classes(state, state.model)
    out = batch.replace()
    if opts.layer_mix == "input":
        x_views, t_views, _, _ = make_mixed_views(
            batch.inputs, batch.targets, num_classes, len(views), alpha=0.0, lams=lams, perms=perms,
            ignore_index=opts.ignore_index,
        )
        out.extras["rank_inputs"] = x_views
    else:
        t_views = mixed_copy_targets(batch.targets, num_classes, lams, perms, opts.ignore_index)
    out.extras["rank_targets"] = t_views
    out.extras["rank_lams"] = lams
    out.extras["rank_perms"] = perms
    return out


def _mix_layer(state: State, model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The module whose output is mixed: ``last`` = the last ``feature_info`` entry, else a module name."""
    scratch = state.scratch(NAME)
    key = (id(model), name)
    if getattr(scratch, "layer_key", None) == key:
        return scratch.layer  # type: ignore[no-any-return]
    target = name
    if name == "last":
        info = getattr(model, "feature_info", None)
        entries = info.get_dicts() if hasattr(info, "get_dicts") else info
        if not entries:
            raise ConfigError(
                "rankmixup.layer_mix=last: the model has no feature_info; name a module instead (options of plugin 'rankmixup')"
            )
        target = entries[-1]["module"]
    try:
        layer = model.get_submodule(target)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][:40]
        raise ConfigError(
            f"rankmixup.layer_mix: the model has no module {target!r} (some modules: {', '.join(names)})"
        ) from None
    scratch.layer, scratch.layer_key = layer, key
    return layer


@hookimpl
def mixhub_forward(model: torch.nn.Module, batch: Batch, plan: MixPlan, state: State) -> dict[str, Any]:
    opts: RankMixupOptions = state.options(NAME)
    if opts.layer_mix != "input":
        return _forward_feature_mix(model, batch, state, opts)
    x_mix = batch.extras["rank_inputs"]
    if opts.separate_forward:
        logits = model(batch.inputs)
        with nullcontext() if opts.mixed_bn_update else _restore_bn_stats(model):
            mixed_logits = model(x_mix)
    else:
        both = model(torch.cat([batch.inputs, x_mix], dim=0))
        logits, mixed_logits = both[: batch.size], both[batch.size :]
    return {"logits": logits, "mixed_logits": mixed_logits}


def _forward_feature_mix(
    model: torch.nn.Module, batch: Batch, state: State, opts: RankMixupOptions
) -> dict[str, Any]:
    base = state.model if state.model is not None else model
    layer = _mix_layer(state, base, opts.layer_mix)
    lams, perms = batch.extras["rank_lams"], batch.extras["rank_perms"]
    if opts.separate_forward:
        logits = model(batch.inputs)
        with nullcontext() if opts.mixed_bn_update else _restore_bn_stats(base), mix_at_layer(layer, lams, perms):
            mixed_logits = model(batch.inputs)
    else:
        with mix_at_layer(layer, lams, perms, keep_raw=True):
            both = model(batch.inputs)
        logits, mixed_logits = both[: batch.size], both[batch.size :]
    return {"logits": logits, "mixed_logits": mixed_logits}


@hookimpl
def mixhub_compute_loss(outputs: dict[str, Any], batch: Batch, plan: MixPlan, state: State) -> torch.Tensor:
    # Plain CE on the raw batch: RankMixup never trains on mixed labels.
    opts: RankMixupOptions = state.options(NAME)
    smoothing = state.config.train.label_smoothing
    if opts.ignore_index is not None:
        return masked_cross_entropy(outputs["logits"], batch.targets, opts.ignore_index, smoothing)
    return F.cross_entropy(outputs["logits"].float(), batch.targets, label_smoothing=smoothing)


# ---------------------------------------------------------------------------------- collectors
@hookimpl
def mixhub_aux_losses(
    outputs: dict[str, Any], batch: Batch, plan: MixPlan, state: State
) -> dict[str, torch.Tensor] | None:
    mixed_logits = outputs.get("mixed_logits")
    if mixed_logits is None:
        return None
    opts: RankMixupOptions = state.options(NAME)
    logits, targets = outputs["logits"], batch.extras["rank_targets"]
    valid = ranking_rows(batch.targets, batch.extras["rank_perms"], opts.ignore_index)
    if opts.variant == "mrl":
        term = mrl_loss(
            logits, mixed_logits, targets, opts.margin, opts.mrl_mask, space=opts.mrl_space, valid=valid
        )
    else:
        term = mndcg_loss(
            logits, mixed_logits, targets, opts.copies, ratio=opts.mndcg_ratio, stable_sort=opts.stable_sort,
            valid=valid,
        )
    _track(state, logits, mixed_logits, targets, opts.copies)
    return {LOSS_NAMES[opts.variant]: term}


def _track(
    state: State, logits: torch.Tensor, mixed_logits: torch.Tensor, targets: torch.Tensor, m: int
) -> None:
    with torch.no_grad():
        b = logits.shape[0]
        p = logits.float().softmax(1).max(1).values
        p_mix = mixed_logits.float().softmax(1).max(1).values.reshape(m, b)
        same = same_class_rows(targets).float().mean()
        gap = (p - p_mix).mean()
    acc = state.scratch(NAME)  # sums stay on the device; mixhub_metrics reads them once per epoch
    acc.same_sum = getattr(acc, "same_sum", 0.0) + same
    acc.gap_sum = getattr(acc, "gap_sum", 0.0) + gap
    acc.count = getattr(acc, "count", 0) + 1


@hookimpl
def mixhub_epoch_start(state: State) -> None:
    acc = state.scratch(NAME)
    acc.same_sum, acc.gap_sum, acc.count = 0.0, 0.0, 0


@hookimpl
def mixhub_metrics(stage: str, state: State) -> dict[str, float] | None:
    """Training-epoch means of the same-class share and of the raw-minus-mixed confidence gap."""
    acc = state.scratch(NAME)
    if stage != "train" or not getattr(acc, "count", 0):
        return None
    sums = torch.stack([torch.as_tensor(acc.same_sum, dtype=torch.float32), torch.as_tensor(acc.gap_sum, dtype=torch.float32)]).tolist()
    return {"rankmixup/same_class_frac": sums[0] / acc.count, "rankmixup/conf_gap": sums[1] / acc.count}


@hookimpl
def mixhub_bench_suites() -> list[Any]:
    from .suites import suites

    return suites()
