"""AdAutoMix plugin: hooks only (the math is in ``functional``, model access in ``features``).

One iteration (official ``AdAutoMix.forward_train``), by hook:

* ``sample_pairs``: lambdas and permutations of the generator ("mb") and classifier ("bb")
  branches, and whether this step is adversarial;
* ``mix_batch``: teacher stage features (no graph), masks ``M_mb`` (with graph) and ``M_bb``
  (detached, ``lam_margin`` fallback), ``x_mb``, ``x_bb`` (the batch's inputs), ``x_lin`` (N > 2);
* ``forward``: teacher on ``x_mb`` and the sources, student on ``x``, ``x_lin``, ``x_bb``;
* ``compute_loss``: ``L_mix_q + L_re`` (the student); ``aux_losses``: ``L_gen`` (the generator);
* ``after_step``: EMA of the teacher with the scheduled momentum, parity counter.
"""

from __future__ import annotations

import copy
from collections.abc import Generator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from mixhub import Batch, MixPlan, PluginOptions, PluginSpec, State, Suite, hookimpl

from .features import mix_logits, one_hot_logits, probe_geometry, stage_features, unwrap
from .functional import (
    MaskGenerator,
    apply_lam_margin,
    cosine_consistency,
    ema_momentum,
    ema_update_,
    generator_objective,
    is_adversarial_step,
    mask_statistics,
    mix_ce,
    mix_with_masks,
    no_repeat_permutation,
    sample_mix_lambdas,
)

NAME = "adautomix"


class AdAutoMixOptions(PluginOptions):
    """Defaults follow the official CIFAR-100 ResNet-18 recipe (see the method card)."""

    alpha: float = Field(1.0, gt=0.0, description="Beta(alpha, alpha) of the lambda draws")
    mix_samples: int = Field(3, ge=2, description="N, the number of mixed samples (2 or 3 officially)")
    is_random: bool = Field(False, description="draw N ~ U{2..mix_samples} every step")
    mix_shuffle_no_repeat: bool = Field(
        False,
        description="official mix_shuffle_no_repeat: the generator-branch partner permutation moves every "
        "sample (redraws, then a cyclic shift) and the classifier-branch one is redrawn up to 10 times",
    )
    export: Literal["teacher", "student"] | None = Field(
        None,
        description="which network `checkpoints/export.pt` holds; must be eval_model (default: eval_model), "
        "so the saved weights are the ones whose metrics are recorded",
    )
    momentum: float = Field(0.999, ge=0.0, lt=1.0, description="teacher EMA momentum m_0")
    momentum_end: float = Field(0.999999, ge=0.0, le=1.0, description="final momentum of the cosine schedule")
    momentum_scope: tuple[float, float] = Field(
        (0.1, 1.0), description="adjust_scope of the schedule (fractions of the run)"
    )
    momentum_warmup: Literal["constant", "linear"] = "constant"
    momentum_schedule: Literal["official", "smooth"] = Field(
        "official", description="global-t cosine (jump at the scope start) or re-based"
    )
    lam_margin: float = Field(
        0.03,
        ge=0.0,
        lt=1.0,
        description="fall back to constant bb masks when lambda is this extreme (0: off)",
    )
    lam_margin_rule: Literal["official", "all"] = "official"
    lam_sampler: Literal["normalized_beta", "dirichlet"] = Field(
        "normalized_beta", description="N > 2 lambda vector"
    )
    mixup_radio: float = Field(
        0.5, ge=0.0, le=1.0, description="N > 2: weight of vanilla N-sample mixup in L_re"
    )
    beta_radio: float = Field(0.3, ge=0.0, le=1.0, description="beta of the adversarial objective")
    adv_interval: int = Field(
        2, ge=0, description="2: adversarial/cooperative alternation; 0: never adversarial; 1: always"
    )
    cos_term: Literal["official", "anchor"] = "official"
    cosine_every_step: bool = Field(
        True, description="teacher source forwards for the cosine term on every step (official)"
    )
    ema_buffers: bool = Field(False, description="also copy student buffers into the teacher (not official)")
    two_heads: bool = Field(True, description="separate one-hot and mix heads (official)")
    feature_index: int = Field(
        -2, description="stage read by the generator (timm forward_intermediates index)"
    )
    reduction: int = Field(2, ge=1)
    lam_concat: bool = False
    use_scale: bool = True
    scale_factor: int | None = Field(
        None, ge=1, description="upsampling factor; None: image side / feature side"
    )
    upsample_mode: Literal["bilinear", "nearest", "bicubic"] = "bilinear"
    norm: Literal["bn"] | None = None
    init_std: float = Field(0.01, gt=0.0, description="std of the generator's normal init")
    generator_init: Literal["normal", "kaiming"] = Field(
        "normal", description="normal (official) or kaiming (deviation)"
    )
    generator_lr: float | None = Field(None, gt=0.0, description="generator group lr (None: train.lr)")
    generator_weight_decay: float | None = Field(None, ge=0.0, description="None: train.weight_decay")
    generator_min_lr: float | None = Field(
        None, ge=0.0, description="generator schedule floor (None: train.min_lr)"
    )
    nan_policy: Literal["official", "raise"] = "official"
    eval_model: Literal["teacher", "student"] = Field(
        "teacher",
        description="the network evaluated and saved: its one-hot head gives the metrics, its weights are "
        "export.pt, best.pt's evaluated network and MixhubTask's checkpoint state_dict",
    )
    diagnostics_every: int = Field(
        0, ge=0, description="every k steps: teacher CE on generated vs vanilla mixes (0: off)"
    )

    @model_validator(mode="after")
    def _check(self) -> AdAutoMixOptions:
        lo, hi = self.momentum_scope
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError("momentum_scope must satisfy 0 <= start <= end <= 1")
        if self.momentum > self.momentum_end:
            raise ValueError("momentum (m_0) must not exceed momentum_end")
        if self.export is not None and self.export != self.eval_model:
            raise ValueError(
                f"export={self.export!r} differs from eval_model={self.eval_model!r}: the saved network must be the "
                "one whose metrics are recorded; set eval_model (export follows it)"
            )
        return self


PLUGIN = PluginSpec(
    name=NAME,
    options=AdAutoMixOptions,
    slots=("sample_pairs", "mix_batch", "forward", "compute_loss", "eval_forward"),
    task_kinds=("classification",),
    aux_loss_weights={"adautomix_generator": 1.0},
    needs_max_steps=True,  # the teacher's momentum follows a cosine schedule over the whole run
    description="Adversarial AutoMixup: learned N-sample mask generator trained against an EMA teacher",
)


# =============================================================================== helpers
def _scratch(state: State) -> Any:
    s = state.scratch(NAME)
    if not hasattr(s, "iter"):
        s.iter = 0
        s.momentum = float(state.options(NAME).momentum)
        s.acc = {}
        s.first = None
        s.last = {}
    return s


def _teacher(state: State) -> nn.Module:
    return state.module(NAME, "teacher")


def _head(state: State, net: str) -> nn.Module | None:
    """The mix head of the ``"student"`` or the ``"teacher"`` (``None`` with ``two_heads=false``)."""
    key = "head_mix" if net == "student" else "teacher_head_mix"
    return state.module(NAME, key) if f"{NAME}.{key}" in state.modules else None


def _accumulate(s: Any, values: dict[str, Any]) -> None:
    """Window sums: device tensors stay on the device (read once per window, ``_window_means``)."""
    for k, v in values.items():
        total, count = s.acc.get(k, (0.0, 0))
        s.acc[k] = (total + (v.detach().float() if isinstance(v, Tensor) else float(v)), count + 1)


def _window_means(acc: dict[str, Any]) -> dict[str, float]:
    """The window means of ``acc`` with one host read."""
    keys = sorted(acc)
    totals = torch.stack([torch.as_tensor(acc[k][0], dtype=torch.float32).cpu() for k in keys]).tolist() if keys else []
    return {k: t / max(acc[k][1], 1) for k, t in zip(keys, totals)}


def _perm(n: int, state: State, device: torch.device) -> Tensor:
    return torch.randperm(n, generator=state.generator).to(device)


def _no_repeat_pair(n: int, state: State, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(generator-branch, classifier-branch)`` partners under ``mix_shuffle_no_repeat``, drawn in the
    official order (classifier branch first, ``ignore_failure=True``; generator branch strict)."""
    bb = no_repeat_permutation(n, state.generator, ignore_failure=True)
    mb = no_repeat_permutation(n, state.generator, ignore_failure=False)
    return mb.to(device), bb.to(device)


# =============================================================================== model surgery
@hookimpl
def mixhub_configure_model(model: nn.Module, state: State) -> None:
    opts = state.options(NAME)
    geo = probe_geometry(model, tuple(state.data.input_shape), opts.feature_index, state.device)
    height, width = state.data.input_shape[1], state.data.input_shape[2]
    scale = opts.scale_factor
    if scale is None:
        if height % geo["height"] or width % geo["width"] or height // geo["height"] != width // geo["width"]:
            raise ValueError(
                f"adautomix: stage {opts.feature_index} is {geo['height']}x{geo['width']} for {height}x{width} inputs; "
                "set adautomix.scale_factor or choose another feature_index"
            )
        scale = height // geo["height"]
    elif (geo["height"] * scale, geo["width"] * scale) != (height, width):
        raise ValueError(
            f"adautomix: scale_factor {scale} maps the {geo['height']}x{geo['width']} stage to "
            f"{geo['height'] * scale}x{geo['width'] * scale}, not the {height}x{width} input"
        )
    # the mix heads are plugin modules, not attributes of the model: the model's state dict stays
    # a plain timm one (loadable by timm.create_model(..., checkpoint_path=...)), and so does the teacher's
    head = None
    if opts.two_heads:
        head = nn.Linear(geo["pre_logits"], int(state.num_classes or 0))
        nn.init.normal_(head.weight, 0.0, 0.01)
        nn.init.zeros_(head.bias)
        state.register_module(NAME, "head_mix", head, trainable=True)
    teacher = copy.deepcopy(model)
    state.register_module(NAME, "teacher", teacher, trainable=False, train_mode=True, export=opts.eval_model == "teacher")
    if head is not None:
        state.register_module(NAME, "teacher_head_mix", copy.deepcopy(head), trainable=False, train_mode=True)
    generator = MaskGenerator(
        geo["channels"],
        reduction=opts.reduction,
        lam_concat=opts.lam_concat,
        scale_factor=scale,
        upsample_mode=opts.upsample_mode,
        use_scale=opts.use_scale,
        norm=opts.norm,
        init_std=opts.init_std,
        nan_policy=opts.nan_policy,
    )
    generator.reset_parameters(opts.generator_init)
    group = {
        k: v
        for k, v in (
            ("lr", opts.generator_lr),
            ("weight_decay", opts.generator_weight_decay),
            ("min_lr", opts.generator_min_lr),
        )
        if v is not None
    }
    state.register_module(NAME, "generator", generator, trainable=True, **group)
    s = _scratch(state)
    s.geometry = {**geo, "scale_factor": scale}


# =============================================================================== sampling and mixing
@hookimpl
def mixhub_sample_pairs(batch: Batch, state: State) -> MixPlan:
    opts, s = state.options(NAME), _scratch(state)
    b, device, g = batch.size, batch.inputs.device, state.generator
    n = opts.mix_samples
    if opts.is_random:
        n = int(torch.randint(2, opts.mix_samples + 1, (1,), generator=g))
    if n == 2:
        lam_mb, lam_bb = sample_mix_lambdas(2, opts.alpha, g, sampler="raw_beta")
        ident = torch.arange(b, device=device)
        if opts.mix_shuffle_no_repeat:
            mb_partner, bb_partner = _no_repeat_pair(b, state, device)
        else:
            mb_partner, bb_partner = _perm(b, state, device), _perm(b, state, device)
        mb_index, bb_index = [ident, mb_partner], [ident, bb_partner]
        mb_lams, bb_lams = [lam_mb, 1.0 - lam_mb], [lam_bb, 1.0 - lam_bb]
    else:
        lams = sample_mix_lambdas(n, opts.alpha, g, sampler=opts.lam_sampler)
        if opts.mix_shuffle_no_repeat:
            # official co-mix: the generator branch's first two sources are the no-repeat draws
            mb_index = [*_no_repeat_pair(b, state, device), *(_perm(b, state, device) for _ in range(n - 2))]
        else:
            mb_index = [_perm(b, state, device) for _ in range(n)]
        bb_index = [_perm(b, state, device) for _ in range(n)]
        mb_lams = bb_lams = lams
    extras = {
        "n": n,
        "mb_index": mb_index,
        "mb_lams": mb_lams,
        "bb_index": bb_index,
        "bb_lams": bb_lams,
        "adversarial": is_adversarial_step(s.iter, opts.adv_interval),
    }
    sources = [(idx, torch.full((b,), float(lam), device=device)) for idx, lam in zip(bb_index, bb_lams)]
    return MixPlan.pairs(bb_index[1], bb_lams[0], sources=sources, extras=extras)


@hookimpl
def mixhub_mix_batch(batch: Batch, plan: MixPlan, state: State) -> Batch:
    opts, s, ex = state.options(NAME), _scratch(state), plan.extras
    x = batch.inputs
    generator = state.module(NAME, "generator")
    with torch.no_grad():
        feat = stage_features(_teacher(state), x, opts.feature_index).float()
    masks_mb = generator([feat[i] for i in ex["mb_index"]], ex["mb_lams"])
    with torch.no_grad():
        masks_bb = generator([feat[i] for i in ex["bb_index"]], ex["bb_lams"])
    masks_bb = apply_lam_margin(masks_bb, ex["bb_lams"], opts.lam_margin, rule=opts.lam_margin_rule)
    x_mb = mix_with_masks([x[i] for i in ex["mb_index"]], masks_mb)
    x_bb = mix_with_masks([x[i] for i in ex["bb_index"]], masks_bb)
    extras = dict(batch.extras)
    extras.update(x_clean=x, x_mb=x_mb, masks_mb=masks_mb, masks_bb=masks_bb)
    if ex["n"] > 2:
        extras["x_lin"] = sum(lam * x[i] for i, lam in zip(ex["bb_index"], ex["bb_lams"]))
    _accumulate(s, mask_statistics(masks_mb))
    return batch.replace(inputs=x_bb, extras=extras)


# =============================================================================== forward and losses
@hookimpl
def mixhub_forward(model: nn.Module, batch: Batch, plan: MixPlan, state: State) -> dict[str, Any]:
    opts, ex, s = state.options(NAME), plan.extras, _scratch(state)
    student, teacher = unwrap(model), _teacher(state)
    x = batch.extras["x_clean"]
    out: dict[str, Any] = {}
    # generator branch, through the frozen teacher (graph w.r.t. x_mb only)
    t_head, s_head = _head(state, "teacher"), _head(state, "student")
    out["logits_k"] = mix_logits(teacher, t_head, batch.extras["x_mb"])
    if opts.cosine_every_step or ex["adversarial"]:
        with torch.no_grad():
            out["source_logits"] = [mix_logits(teacher, t_head, x[i]) for i in ex["mb_index"]]
    # classifier branch, the student (official order: clean, linear mix, generated mix)
    out["logits_one"] = one_hot_logits(student, x)
    if "x_lin" in batch.extras:
        out["logits_lin"] = mix_logits(student, s_head, batch.extras["x_lin"])
    out["logits"] = mix_logits(student, s_head, batch.inputs)
    if opts.diagnostics_every and s.iter % opts.diagnostics_every == 0:
        _probe_teacher(teacher, t_head, x, batch, ex, s)
    return out


@torch.no_grad()
def _probe_teacher(teacher: nn.Module, head: nn.Module | None, x: Tensor, batch: Batch, ex: dict[str, Any], s: Any) -> None:
    """Teacher mix-CE (eval mode, no graph) on the generated mix vs the vanilla mix at the same lambdas."""
    targets = [batch.targets[i] for i in ex["mb_index"]]
    vanilla = sum(lam * x[i] for i, lam in zip(ex["mb_index"], ex["mb_lams"]))
    was_training = teacher.training
    teacher.eval()
    try:
        ce_gen = mix_ce(
            mix_logits(teacher, head, batch.extras["x_mb"].detach()), targets, ex["mb_lams"]
        )
        ce_van = mix_ce(mix_logits(teacher, head, vanilla), targets, ex["mb_lams"])
    finally:
        teacher.train(was_training)
    _accumulate(
        s,
        {
            "teacher_ce_generated": float(ce_gen),
            "teacher_ce_vanilla": float(ce_van),
            "teacher_ce_gap": float(ce_gen - ce_van),
        },
    )


@hookimpl
def mixhub_compute_loss(outputs: dict[str, Any], batch: Batch, plan: MixPlan, state: State) -> Tensor:
    opts, ex = state.options(NAME), plan.extras
    y = batch.targets
    loss_mix_q = mix_ce(outputs["logits"], [y[i] for i in ex["bb_index"]], ex["bb_lams"])
    loss_one = F.cross_entropy(outputs["logits_one"].float(), y)
    if "logits_lin" in outputs:
        loss_lin = mix_ce(outputs["logits_lin"], [y[i] for i in ex["bb_index"]], ex["bb_lams"])
        loss_re = (1.0 - opts.mixup_radio) * loss_one + opts.mixup_radio * loss_lin
    else:
        loss_re = loss_one
    state.log["adautomix/loss_mix_q"] = loss_mix_q.detach()
    state.log["adautomix/loss_one_q"] = loss_one.detach()
    return loss_mix_q + loss_re


@hookimpl
def mixhub_aux_losses(
    outputs: dict[str, Any], batch: Batch, plan: MixPlan, state: State
) -> dict[str, Tensor]:
    opts, ex, s = state.options(NAME), plan.extras, _scratch(state)
    y = batch.targets
    loss_k = mix_ce(outputs["logits_k"], [y[i] for i in ex["mb_index"]], ex["mb_lams"])
    cos: Tensor | float = 0.0
    if "source_logits" in outputs:
        cos = cosine_consistency(outputs["logits_k"], outputs["source_logits"], ex["mb_lams"])
    loss_gen = generator_objective(loss_k, cos, ex["adversarial"], opts.beta_radio, cos_term=opts.cos_term)
    stats: dict[str, Any] = {"loss_mix_k": loss_k.detach(), "adversarial": ex["adversarial"]}
    if isinstance(cos, Tensor):
        stats["cosine"] = cos.detach()
    _accumulate(s, stats)
    state.log.update({f"adautomix/{k}": v for k, v in stats.items()})
    return {"adautomix_generator": loss_gen}


# =============================================================================== after the step
@hookimpl
def mixhub_after_step(state: State) -> None:
    opts, s = state.options(NAME), _scratch(state)
    t = state.step - 1  # 0-based index of the step just completed
    m = ema_momentum(
        t,
        state.max_steps,
        opts.momentum,
        opts.momentum_end,
        tuple(opts.momentum_scope),
        opts.momentum_warmup,
        schedule=opts.momentum_schedule,
    )
    ema_update_(_teacher(state), state.model, m, buffers=opts.ema_buffers)
    if opts.two_heads:
        ema_update_(_head(state, "teacher"), _head(state, "student"), m)
    s.momentum = m
    s.iter += 1
    grads = [
        p.grad.detach().float().norm()
        for p in state.module(NAME, "generator").parameters()
        if p.grad is not None
    ]
    gnorm = torch.stack(grads).norm() if grads else 0.0  # stays on the device
    _accumulate(s, {"generator_grad_norm": gnorm, "momentum": m})
    state.log["adautomix/momentum"] = m


# =============================================================================== evaluation
@hookimpl(wrapper=True)
def mixhub_evaluate(model: nn.Module, state: State) -> Generator[None, Any, Any]:
    """Teacher and student (both feed the extra ``logits_*``) in eval mode, restored after."""
    nets = [_teacher(state), state.model]
    was_training = [net.training for net in nets]
    for net in nets:
        net.eval()
    try:
        return (yield)
    finally:
        for net, mode in zip(nets, was_training):
            net.train(mode)


@hookimpl
def mixhub_eval_forward(model: nn.Module, batch: Batch, state: State) -> dict[str, Any]:
    """``logits``: the one-hot head of ``model``, the network being evaluated (the core passes the
    teacher when ``eval_model=teacher``; timm's EMA copy evaluates itself). The teacher's and the
    student's one-hot and mix heads come along as ``logits_<net>[_mix]``."""
    given = unwrap(model)
    x = batch.inputs
    heads: dict[str, Tensor] = {}
    main = None
    for name, net in (("teacher", _teacher(state)), ("student", unwrap(state.model))):
        feats = net.forward_features(x)
        heads[name] = net.forward_head(feats)
        head = _head(state, name)
        heads[f"{name}_mix"] = (
            head(net.forward_head(feats, pre_logits=True)) if head is not None else heads[name]
        )
        if net is given:
            main = name
    if main is None:  # another copy of the network (e.g. timm's model EMA): its own one-hot head
        return {"logits": one_hot_logits(given, x), **{f"logits_{k}": v for k, v in heads.items()}}
    out = {"logits": heads[main]}
    out.update({f"logits_{k}": v for k, v in heads.items() if k != main})
    return out


@hookimpl
def mixhub_metrics(stage: str, state: State) -> dict[str, float] | None:
    """Training-window averages (mask statistics, generator gradient norm, teacher mix-CE)."""
    s = _scratch(state)
    if stage == "train":
        window = _window_means(s.acc)
        s.acc = {}
        if window:
            if s.first is None:
                s.first = dict(window)
            s.last = window
        return {f"adautomix/{k}": v for k, v in window.items()}
    out = {f"adautomix/{k}": v for k, v in s.last.items()}
    if s.first:
        out.update({f"adautomix/first_{k}": v for k, v in s.first.items() if k.startswith("mask_")})
    out["adautomix/momentum"] = float(s.momentum)
    return out


# =============================================================================== checkpoints
@hookimpl
def mixhub_state_dict(state: State) -> dict[str, Any]:
    s = _scratch(state)
    return {
        "iter": int(s.iter),
        "momentum": float(s.momentum),
        "acc": {k: [float(t), int(c)] for k, (t, c) in s.acc.items()},
        "first": dict(s.first) if s.first else {},
        "last": dict(s.last),
    }


@hookimpl
def mixhub_load_state_dict(state_dict: dict[str, Any], state: State) -> None:
    s = _scratch(state)
    s.iter = int(state_dict["iter"])
    s.momentum = float(state_dict["momentum"])
    s.acc = {k: (float(v[0]), int(v[1])) for k, v in state_dict.get("acc", {}).items()}
    s.first = dict(state_dict.get("first") or {}) or None
    s.last = dict(state_dict.get("last", {}))


@hookimpl
def mixhub_bench_suites() -> list[Suite]:
    from .suites import suites

    return suites()
