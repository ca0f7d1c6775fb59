"""mixhub plugin ``decoupled``: Decoupled Mixup as the primary loss, on top of any static mix.

Owns only the ``compute_loss`` slot: it reads ``plan.y_a``, ``plan.y_b`` and ``plan.lam`` from
whichever plugin samples and mixes (the ``mixup`` plugin in mixup or CutMix mode, C-Mixup in
classification mode, a third-party mixer) and never sees smoothed soft targets. N-source plans
(``plan.sources``, k >= 3 classes per mix) go through ``decoupled_multimix_loss``. The math lives
in ``mixhub_decoupled.functional``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from mixhub import Batch, ConfigError, MixPlan, PluginOptions, PluginSpec, State, Suite, hookimpl

from .functional import OFFICIAL_MIN_SMOOTHING, decoupled_mixup_loss, decoupled_multimix_loss
from .mechanism import fixed_test_mixes, mixed_top2_rate

NAME = "decoupled"
#: Values of a sampler's ``lam_mode`` option meaning "one lam per sample" (mixhub's ``mixup``
#: plugin uses ``sample``; timm calls them ``elem`` and ``pair``).
PER_SAMPLE_LAM_MODES = ("sample", "elem", "pair", "per_sample")


class DecoupledOptions(PluginOptions):
    """Options of the ``decoupled`` section."""

    eta: float = Field(0.1, ge=0.0, description="weight of the decoupled regulariser (0: plain mixup CE)")
    mode: Literal["both", "less", "more"] = Field(
        "both", description="regularise both components, the minority (less) or the dominant (more) one"
    )
    thr: float = Field(0.5, ge=0.0, le=1.0, description="lam threshold of modes less/more")
    lam_pow: float = Field(
        1.0, ge=0.0, description="exponent p of the weights eta * lam**p (0: constant eta); the base of lam_scale_mode=exp"
    )
    lam_scale_mode: Literal["pow", "exp", "none"] = Field(
        "pow",
        description="rescaling of each eta weight below lam_thr: pow (thr**-p * w**p), exp (an exponential ramp "
        "to 1 at lam_thr) or none (constant eta); the head's lam_scale_mode",
    )
    lam_thr: float = Field(
        1.0, gt=0.0, le=1.0, description="weights at or above lam_thr are not rescaled (eta * 1); the head's lam_thr"
    )
    class_weight: list[float] | None = Field(
        None, description="one weight per class for the mixup CE and the decoupled terms (null: all 1)"
    )
    official_eta_order: bool = Field(
        True,
        description="official pairing: swap the eta weights batch-wide when y_a > y_b in the first mixed row",
    )
    official_skip: bool = Field(
        True, description="official rule: no regulariser at lam = 0.5 or lam within 1e-3 of 0 or 1"
    )
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=1.0, description="DM's own label smoothing (train.label_smoothing must stay 0)"
    )
    smoothing_target: Literal["official", "onehot"] = Field(
        "official",
        description="official: s >= 0.1 only, all-ones decoupled targets (the official bug); onehot: smoothing on the mixup CE only",
    )
    top2_mixes: int = Field(
        1000, ge=0, description="fixed test mixes of the decoupled/mixed_top2 metric (0: off)"
    )
    top2_mixer: Literal["auto", "mixup", "cutmix"] = Field(
        "auto", description="how the test mixes are built (auto: cutmix if training plans carry a mask)"
    )
    top2_seed: int = Field(0, description="seed of the fixed test mixes (independent of the run seed)")
    top2_stages: list[str] = Field(
        default_factory=lambda: ["test"], description="evaluation stages that report decoupled/mixed_top2"
    )


    @model_validator(mode="after")
    def _exp_base(self) -> DecoupledOptions:
        if self.lam_scale_mode == "exp" and self.lam_pow in (0.0, 1.0):
            raise ValueError(
                f"lam_scale_mode=exp needs lam_pow (the base) other than 0 and 1, got {self.lam_pow}"
            )
        if self.class_weight is not None and any(w < 0 for w in self.class_weight):
            raise ValueError("class_weight must be non-negative")
        return self


def _sampler_lam_modes(config: Any) -> list[tuple[str, str]]:
    """``[(plugin, lam_mode)]`` of the active plugins (or the named sampler) that expose ``lam_mode``."""
    options: dict[str, Any] = getattr(config, "options", {}) or {}
    owner = (getattr(config, "slots", {}) or {}).get("sample_pairs")
    names = [owner] if owner in options else [n for n in options if n != NAME]
    found = []
    for name in names:
        lam_mode = getattr(options[name], "lam_mode", None)
        if isinstance(lam_mode, str):
            found.append((name, lam_mode))
    return found


def validate(options: DecoupledOptions, config: Any) -> list[str]:
    """Reject settings that break the official loss; return warnings for surprising ones."""
    warnings: list[str] = []
    core_smoothing = float(getattr(getattr(config, "train", None), "label_smoothing", 0.0) or 0.0)
    if core_smoothing > 0:
        raise ConfigError(
            f"decoupled: train.label_smoothing={core_smoothing} would smooth a loss that Decoupled Mixup replaces; "
            f"set train.label_smoothing=0 and use decoupled.label_smoothing={core_smoothing} instead"
        )
    flags = [f for f in ("official_eta_order", "official_skip") if getattr(options, f)]
    if flags:
        for sampler, lam_mode in _sampler_lam_modes(config):
            if lam_mode in PER_SAMPLE_LAM_MODES:
                raise ConfigError(
                    f"decoupled: {sampler}.lam_mode={lam_mode!r} draws one λ per sample, but Decoupled Mixup's official "
                    f"flags ({', '.join('decoupled.' + f + '=true' for f in flags)}) need one λ per batch; set "
                    f"{sampler}.lam_mode=batch, or decoupled.official_eta_order=false and decoupled.official_skip=false "
                    "(the per-sample extension)"
                )
    s = options.label_smoothing
    if options.smoothing_target == "official" and 0 < s < OFFICIAL_MIN_SMOOTHING:
        warnings.append(
            f"decoupled.label_smoothing={s} is below 0.1 and is ignored with smoothing_target=official (as in the "
            "official code); use smoothing_target=onehot to apply it"
        )
    elif options.smoothing_target == "official" and s >= OFFICIAL_MIN_SMOOTHING:
        warnings.append(
            "decoupled.smoothing_target=official with label smoothing reproduces the official bug (all-ones "
            "decoupled targets); smoothing_target=onehot is the intended variant"
        )
    if len(getattr(config, "plugins", [])) <= 1:
        warnings.append(
            "decoupled is the only active plugin: nothing mixes, so the loss is plain cross-entropy"
        )
    return warnings


PLUGIN = PluginSpec(
    name=NAME,
    options=DecoupledOptions,
    slots=("compute_loss",),
    task_kinds=("classification",),
    conflicts=("rankmixup", "adautomix", "dualmix"),
    example={"plugins": ["mixup"]},  # DM is a loss on another plugin's mix: without a mixer it is plain CE
    description="Decoupled Mixup: mixup CE plus a decoupled-softmax regulariser on any static mix (NeurIPS 2023)",
    validate=validate,
)


# ----------------------------------------------------------------------------- hooks
@hookimpl
def mixhub_compute_loss(outputs: dict[str, Any], batch: Batch, plan: MixPlan, state: State) -> Tensor:
    opts: DecoupledOptions = state.options(NAME)
    if opts.class_weight is not None and state.num_classes and len(opts.class_weight) != state.num_classes:
        raise ConfigError(
            f"decoupled.class_weight: {len(opts.class_weight)} weights for {state.num_classes} classes"
        )
    if plan.sources is not None and len(plan.sources) > 2:
        return _multimix_loss(outputs, batch, plan, state, opts)
    if plan.sources is not None:  # two sources given in the N-source form
        (idx_a, w_a), (idx_b, _) = plan.sources
        plan = MixPlan.pairs(idx_b, w_a, y_a=batch.targets[idx_a], y_b=batch.targets[idx_b], mask=plan.mask)
    if plan.y_a is None or plan.y_b is None:
        raise ValueError("decoupled: the plan's targets (plan.y_a, plan.y_b) are not resolved")
    official = opts.official_eta_order or opts.official_skip
    lam: float | Tensor
    # the sampler's host lam when it gave one; otherwise only the official rules (which need a
    # scalar) read plan.lam on the host to find it constant
    batch_lam = plan.lam_value if plan.lam_value is not None or not official else plan.batch_lam
    if batch_lam is not None:
        lam = batch_lam
    elif official:
        raise ValueError(
            "decoupled: the active sampler drew per-sample λ (plan.lam varies across the batch), but the official "
            "flags need one λ per batch; use the sampler's batch mode, or set decoupled.official_eta_order=false "
            "and decoupled.official_skip=false"
        )
    else:
        lam = plan.lam
    loss, parts = decoupled_mixup_loss(
        outputs["logits"],
        plan.y_a,
        plan.y_b,
        lam,
        eta=opts.eta,
        mode=opts.mode,
        thr=opts.thr,
        lam_pow=opts.lam_pow,
        official_eta_order=opts.official_eta_order,
        official_skip=opts.official_skip,
        label_smoothing=opts.label_smoothing,
        smoothing_target=opts.smoothing_target,
        lam_scale_mode=opts.lam_scale_mode,
        lam_thr=opts.lam_thr,
        class_weight=opts.class_weight,
        return_parts=True,
    )
    _log(state, plan, parts)
    return loss


def _log(state: State, plan: MixPlan, parts: dict[str, Tensor]) -> None:
    scratch = state.scratch(NAME)
    scratch.saw_mask = bool(getattr(scratch, "saw_mask", False) or plan.mask is not None)
    state.log[f"{NAME}/reg"] = parts["reg"].detach().mean()  # tensors: the core syncs once per step
    state.log[f"{NAME}/skipped_frac"] = parts["skipped"].float()


def _multimix_loss(
    outputs: dict[str, Any], batch: Batch, plan: MixPlan, state: State, opts: DecoupledOptions
) -> Tensor:
    """A k-source plan (k >= 3): one class per source, batch-constant source weights."""
    assert plan.sources is not None
    k = len(plan.sources)
    if opts.mode != "both":
        raise ConfigError(
            f"decoupled.mode={opts.mode!r}: the sampler mixes {k} classes, and modes less/more name one of two "
            "components; use decoupled.mode=both"
        )
    if opts.label_smoothing > 0 and opts.smoothing_target == "official":
        raise ConfigError(
            "decoupled.smoothing_target=official: the official loss forbids label smoothing with mixes of more "
            "than two classes; use decoupled.smoothing_target=onehot"
        )
    lams: list[float] = list(plan.source_lams) if plan.source_lams is not None else []
    for j, (_, w) in enumerate(plan.sources if plan.source_lams is None else []):  # read only when the sampler gave no numbers
        first = w.reshape(-1)[:1]
        if not bool(torch.all(w == first)):
            raise ValueError(
                f"decoupled: source {j} of the {k}-source plan has per-sample weights; Decoupled Mixup's "
                "k-source loss needs one weight per source for the whole batch"
            )
        lams.append(float(first))
    ys = torch.stack([batch.targets[idx] for idx, _ in plan.sources], dim=1)
    loss, parts = decoupled_multimix_loss(
        outputs["logits"],
        ys,
        lams,
        eta=opts.eta,
        lam_pow=opts.lam_pow,
        official_eta_order=opts.official_eta_order,
        official_skip=opts.official_skip,
        lam_scale_mode=opts.lam_scale_mode,
        lam_thr=opts.lam_thr,
        class_weight=opts.class_weight,
        label_smoothing=opts.label_smoothing,
        return_parts=True,
    )
    _log(state, plan, parts)
    return loss


@hookimpl
def mixhub_metrics(stage: str, state: State) -> dict[str, float] | None:
    opts: DecoupledOptions = state.options(NAME)
    if opts.top2_mixes <= 0 or stage not in opts.top2_stages or state.model is None or state.data is None:
        return None
    dataset = getattr(state.data, stage, None)
    if dataset is None:
        return None
    scratch = state.scratch(NAME)
    mixer = opts.top2_mixer
    if mixer == "auto":
        mixer = "cutmix" if getattr(scratch, "saw_mask", False) else "mixup"
    cache: dict[tuple[str, str], tuple[Tensor, Tensor, Tensor]] = getattr(scratch, "top2_cache", {})
    key = (stage, mixer)
    if key not in cache:
        inputs, targets = zip(*(dataset[i] for i in range(len(dataset))))
        cache[key] = fixed_test_mixes(
            torch.stack(list(inputs)),
            torch.stack([torch.as_tensor(t) for t in targets]).long(),
            n=opts.top2_mixes,
            seed=opts.top2_seed,
            mixer=mixer,
        )
        scratch.top2_cache = cache
    mixed, y_a, y_b = cache[key]
    model = state.model
    was_training = model.training
    model.eval()
    logits = []
    try:
        with torch.no_grad():
            for start in range(0, mixed.shape[0], 256):
                logits.append(model(mixed[start : start + 256].to(state.device)).float().cpu())
    finally:
        model.train(was_training)
    return {f"{NAME}/mixed_top2": mixed_top2_rate(torch.cat(logits), y_a, y_b)}


@hookimpl
def mixhub_state_dict(state: State) -> dict[str, Any]:
    return {"saw_mask": bool(getattr(state.scratch(NAME), "saw_mask", False))}


@hookimpl
def mixhub_load_state_dict(state_dict: dict[str, Any], state: State) -> None:
    state.scratch(NAME).saw_mask = bool(state_dict.get("saw_mask", False))


@hookimpl
def mixhub_bench_suites() -> list[Suite]:
    from .suites import suites

    return suites()
