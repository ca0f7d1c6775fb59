"""DualMix for experience replay: hooks only (the math is in ``functional``).

The core runs the online class-incremental protocol and owns the buffer; the retrieved memory
arrives as ``batch.extras["memory"]``. DualMix changes only the memory side of the ER step:

* ``mixhub_sample_pairs``: the identity plan for the stream (never mixed); ``plan.extras``
  carries the EnMix permutation and mu, and the AdpMix pairs (old-class memory positions with
  random stream positions) and mu_x.
* ``mixhub_mix_batch``: builds the memory side, part A raw memory, B DA(memory), C EnMix(B),
  D AdpMix(old memory x stream), with its targets (class ids when every part is hard, else
  dense soft targets), as ``extras["dualmix_memory"]``.
* ``mixhub_forward``: ``logits`` = f(stream), ``memory_logits`` = f(memory side).
* ``mixhub_compute_loss``: CE(stream) + soft CE over the memory side (the core's ER loss).

With ``parts: [A]`` the step is the core's ER step (``replay`` plugin) exactly.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from mixhub import (
    Batch,
    MixPlan,
    PluginOptions,
    PluginSpec,
    State,
    Suite,
    hookimpl,
    memory_of,
    replay_forward,
    replay_loss,
)

from .functional import adpmix, augment, beta_sample, enmix, one_hot, pair_old_with_stream, soft_cross_entropy

NAME = "dualmix"
PARTS = ("A", "B", "C", "D")


class DualMixOptions(PluginOptions):
    alpha: float = Field(0.2, ge=0.0, description="Beta(alpha, alpha) for the EnMix mu and the AdpMix mu_x")
    kappa: float = Field(2.0, description="AdpMix gate: the norm ratio must exceed kappa")
    tau: float = Field(0.5, description="AdpMix gate: mu_x must exceed tau")
    delta: float = Field(
        0.05, ge=0.0, description="AdpMix: mu_y = min(mu_x + delta * r, 1) when the gate is open"
    )
    parts: list[Literal["A", "B", "C", "D"]] = Field(
        default_factory=lambda: list(PARTS), description="memory-side parts: A raw, B DA, C EnMix, D AdpMix"
    )
    mu_mode: Literal["batch", "sample"] = Field(
        "batch", description="one mu (and mu_x) per step, or one per pair"
    )
    norm_ratio: Literal["pair", "group"] = Field(
        "pair", description="r per pair (Eq. 9) or mean new-row / mean old-row norm"
    )
    adp_pairing: Literal["old_memory", "fixed_k"] = Field(
        "old_memory", description="pair every old-class memory sample, or draw adp_k pairs with replacement"
    )
    adp_k: int = Field(10, ge=1, description="adp_pairing=fixed_k: pairs per step")
    enmix_views: Literal["permuted", "two_draws"] = Field(
        "permuted", description="mix one DA draw with its permutation, or two independent DA draws"
    )
    memory_forward: Literal["concat", "per_part"] = Field(
        "concat", description="one forward over the memory side, or one per part"
    )
    memory_loss: Literal["mean_all", "sum_part_means"] = Field(
        "mean_all", description="mean over every memory-side sample, or the sum of per-part means"
    )
    da_per_sample: bool = Field(
        True, description="per-sample DA parameters (kornia); false: one set per step"
    )
    da_on_stream: bool = Field(False, description="also augment the stream (not the paper)")
    da_crop_scale: tuple[float, float] = Field((0.2, 1.0), description="RandomResizedCrop area range")
    da_hflip: bool = Field(True, description="random horizontal flip")
    da_jitter: tuple[float, float, float, float] = Field(
        (0.4, 0.4, 0.4, 0.1),
        description="ColorJitter brightness, contrast, saturation, hue (torchvision semantics: random order per "
        "sample, results clamped to [0, 1], hue shifted in HSV)",
    )
    da_jitter_p: float = Field(0.8, ge=0.0, le=1.0)
    da_grayscale_p: float = Field(0.2, ge=0.0, le=1.0)
    da_mean: tuple[float, ...] | None = Field(
        None, description="input normalisation mean: colour ops then run in [0, 1] pixel space"
    )
    da_std: tuple[float, ...] | None = Field(None, description="input normalisation std (with da_mean)")

    @field_validator("parts")
    @classmethod
    def _parts(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("parts must name at least one of A, B, C, D")
        return sorted(set(v), key=PARTS.index)


def _validate(opts: DualMixOptions, config: Any) -> list[str]:
    warnings = []
    if opts.da_on_stream:
        warnings.append("da_on_stream=true augments the stream, which the paper does not do")
    if (opts.da_mean is None) != (opts.da_std is None):
        from mixhub import ConfigError

        raise ConfigError("dualmix.da_mean and dualmix.da_std go together")
    if config.continual.memory_size == 0:
        warnings.append("continual.memory_size=0: there is no memory, DualMix does nothing")
    return warnings


PLUGIN = PluginSpec(
    name=NAME,
    options=DualMixOptions,
    slots=("sample_pairs", "mix_batch", "forward", "compute_loss"),
    task_kinds=("continual",),
    conflicts=("replay",),
    description="DualMix: EnMix (mixup of augmented memory) + AdpMix (old x new mixup, imbalance-adapted labels) on ER",
    validate=_validate,
)


# =============================================================================== diagnostics
def _diag(state: State) -> Any:
    s = state.scratch(NAME)
    if not hasattr(s, "task"):
        s.task = _zero()
        s.run = _zero()
    return s


def _on_host(acc: dict[str, Any]) -> dict[str, float]:
    """The sums as floats, with one host read for those on the device."""
    keys = sorted(acc)
    values = torch.stack([torch.as_tensor(acc[k], dtype=torch.float64).cpu() for k in keys]).tolist()
    return dict(zip(keys, values))


def _zero() -> dict[str, float]:
    return {
        "pairs": 0.0,
        "gate_open": 0.0,
        "r_sum": 0.0,
        "r_finite": 0.0,
        "shift_sum": 0.0,
        "group_sum": 0.0,
        "group_n": 0.0,
        "steps": 0.0,
    }


def _group_ratio(w: Tensor, state: State) -> Tensor | None:
    old, new = (
        state.old_classes,
        state.task_classes[state.task] if state.task < len(state.task_classes) else [],
    )
    if not old or not new:
        return None
    norms = w.detach().float().norm(dim=1)
    return norms[new].mean() / norms[old].mean()  # a device scalar: summed, read at metrics time


def _classifier_weight(state: State) -> Tensor:
    head = state.model.get_classifier()  # type: ignore[union-attr]
    return head.weight


# =============================================================================== hooks
@hookimpl
def mixhub_task_start(state: State) -> None:
    _diag(state).task = _zero()


@hookimpl
def mixhub_sample_pairs(batch: Batch, state: State) -> MixPlan:
    plan = MixPlan.identity(batch.size, device=batch.inputs.device)
    mem = memory_of(batch)
    if mem is None:
        return plan
    opts: DualMixOptions = state.options(NAME)
    g = state.generator
    m = mem.size
    if "C" in opts.parts:
        plan.extras["enmix"] = {
            "index": torch.randperm(m, generator=g),
            "lam": beta_sample(opts.alpha, m if opts.mu_mode == "sample" else 1, g),
        }
    if "D" in opts.parts:
        labels = mem.extras.get("host_targets")  # the replay buffer's host copy: no device read
        labels = labels if isinstance(labels, torch.Tensor) else mem.targets.cpu()
        mem_pos, stream_pos = pair_old_with_stream(labels, state.old_classes, batch.size, g)
        if opts.adp_pairing == "fixed_k" and mem_pos.numel() > 0:
            pick = torch.randint(0, mem_pos.numel(), (opts.adp_k,), generator=g)
            mem_pos, stream_pos = mem_pos[pick], torch.randint(0, batch.size, (opts.adp_k,), generator=g)
        p = mem_pos.numel()
        if p > 0:
            mu_x = beta_sample(opts.alpha, p if opts.mu_mode == "sample" else 1, g)
            plan.extras["adpmix"] = {"memory_pos": mem_pos, "stream_pos": stream_pos, "mu_x": mu_x}
    return plan


def _da(x: Tensor, opts: DualMixOptions, g: torch.Generator) -> Tensor:
    return augment(
        x,
        g,
        crop_scale=opts.da_crop_scale,
        hflip=opts.da_hflip,
        jitter=opts.da_jitter,
        jitter_p=opts.da_jitter_p,
        grayscale_p=opts.da_grayscale_p,
        per_sample=opts.da_per_sample,
        mean=opts.da_mean,
        std=opts.da_std,
    )


@hookimpl
def mixhub_mix_batch(batch: Batch, plan: MixPlan, state: State) -> Batch:
    opts: DualMixOptions = state.options(NAME)
    g = state.generator
    out = batch.replace(inputs=_da(batch.inputs, opts, g)) if opts.da_on_stream else batch
    mem = memory_of(batch)
    if mem is None:
        return out
    num_classes = int(state.num_classes or _classifier_weight(state).shape[0])
    xs: list[Tensor] = []
    ys: list[Tensor] = []  # class ids [n] or soft targets [n, C]
    names: list[str] = []
    x_aug = None
    if "A" in opts.parts:
        xs.append(mem.inputs), ys.append(mem.targets), names.append("A")
    if "B" in opts.parts or "C" in opts.parts:
        x_aug = _da(mem.inputs, opts, g)
    if "B" in opts.parts:
        xs.append(x_aug), ys.append(mem.targets), names.append("B")  # type: ignore[arg-type]
    if "C" in opts.parts:
        e = plan.extras["enmix"]
        other = _da(mem.inputs, opts, g) if opts.enmix_views == "two_draws" else x_aug
        lam = e["lam"].to(mem.inputs.device)
        lam_b = lam.expand(mem.size) if lam.numel() == 1 else lam
        idx = e["index"].to(mem.inputs.device)
        if opts.enmix_views == "two_draws":
            shape = (-1,) + (1,) * (mem.inputs.dim() - 1)
            x_e = lam_b.reshape(shape) * x_aug + (1 - lam_b).reshape(shape) * other[idx]  # type: ignore[index, operator]
            y1 = one_hot(mem.targets, num_classes)
            y_e = lam_b.reshape(-1, 1) * y1 + (1 - lam_b).reshape(-1, 1) * y1[idx]
        else:
            x_e, y_e = enmix(x_aug, one_hot(mem.targets, num_classes), lam=lam_b, index=idx)  # type: ignore[arg-type]
        xs.append(x_e), ys.append(y_e), names.append("C")
    d = _diag(state)
    w = _classifier_weight(state)
    grp = _group_ratio(w, state)
    if grp is not None:
        for acc in (d.task, d.run):
            acc["group_sum"] += grp
            acc["group_n"] += 1
    a = plan.extras.get("adpmix")
    if "D" in opts.parts and a is not None:
        mp, sp = a["memory_pos"].to(mem.inputs.device), a["stream_pos"].to(batch.inputs.device)
        new = state.task_classes[state.task] if state.task < len(state.task_classes) else None
        x_d, y_d, mu_y, info = adpmix(
            mem.inputs[mp],
            mem.targets[mp],
            batch.inputs[sp],
            batch.targets[sp],
            w,
            kappa=opts.kappa,
            tau=opts.tau,
            delta=opts.delta,
            mu_x=a["mu_x"],
            norm_ratio=opts.norm_ratio,
            old_classes=state.old_classes,
            new_classes=new,
            return_info=True,
            check_ids=False,  # the core checked the labels (stream and memory) on the device
        )
        xs.append(x_d), ys.append(y_d.to(mem.inputs.device)), names.append("D")
        r = info["r"]
        finite = torch.isfinite(r)
        gate_open = info["gate"].float().sum()
        r_sum = torch.where(finite, r, torch.zeros_like(r)).float().sum()
        r_finite = finite.float().sum()
        shift = (mu_y.float() - torch.as_tensor(info["mu_x"]).to(mu_y.device).float()).sum()
        for acc in (d.task, d.run):  # device sums (no host read in the step); pairs is a host count
            acc["pairs"] += float(r.numel())
            acc["gate_open"] = acc["gate_open"] + gate_open
            acc["r_sum"] = acc["r_sum"] + r_sum
            acc["r_finite"] = acc["r_finite"] + r_finite
            acc["shift_sum"] = acc["shift_sum"] + shift
    for acc in (d.task, d.run):
        acc["steps"] += 1
    if all(not y.is_floating_point() for y in ys):
        targets = torch.cat(ys)
    else:
        targets = torch.cat(
            [y if y.is_floating_point() else one_hot(y, num_classes).to(mem.inputs.device) for y in ys]
        )
    side = Batch(
        inputs=torch.cat(xs), targets=targets, index=torch.arange(targets.shape[0], device=targets.device)
    )
    out.extras["dualmix_memory"] = side
    out.extras["dualmix_parts"] = [(n, x.shape[0]) for n, x in zip(names, xs)]
    return out


@hookimpl
def mixhub_forward(model: nn.Module, batch: Batch, plan: MixPlan, state: State) -> dict[str, Any]:
    side = batch.extras.get("dualmix_memory")
    if side is None:
        return replay_forward(model, batch)
    opts: DualMixOptions = state.options(NAME)
    if opts.memory_forward == "concat":
        return replay_forward(model, batch, side.inputs)
    out: dict[str, Any] = {"logits": model(batch.inputs)}
    sizes = [n for _, n in batch.extras["dualmix_parts"]]
    out["memory_logits"] = torch.cat(
        [model(part) for part in torch.split(side.inputs, sizes) if part.shape[0] > 0]
    )
    return out


@hookimpl
def mixhub_compute_loss(outputs: dict[str, Any], batch: Batch, plan: MixPlan, state: State) -> Tensor:
    side = batch.extras.get("dualmix_memory")
    ls = state.config.train.label_smoothing
    if side is None:
        return replay_loss(outputs, batch, plan, ls)
    opts: DualMixOptions = state.options(NAME)
    if opts.memory_loss == "mean_all":
        return replay_loss(outputs, batch, plan, ls, memory_targets=side.targets)
    stream_only = {"logits": outputs["logits"]}
    loss = replay_loss(stream_only, batch, plan, ls)
    sizes = [n for _, n in batch.extras["dualmix_parts"]]
    num_classes = outputs["memory_logits"].shape[1]
    soft = side.targets if side.targets.is_floating_point() else one_hot(side.targets, num_classes)
    for z, t in zip(torch.split(outputs["memory_logits"], sizes), torch.split(soft, sizes)):
        if z.shape[0] > 0:
            loss = loss + soft_cross_entropy(z, t)
    return loss


@hookimpl
def mixhub_metrics(stage: str, state: State) -> dict[str, float] | None:
    d = _diag(state)
    if stage == "train":
        acc = d.task
    elif stage == "test":
        acc = d.run
    else:
        return None
    acc = _on_host(acc)
    out = {f"{NAME}/n_adp_pairs": acc["pairs"]}
    if acc["pairs"] > 0:
        out[f"{NAME}/gate_open_frac"] = acc["gate_open"] / acc["pairs"]
        out[f"{NAME}/mu_shift_mean"] = acc["shift_sum"] / acc["pairs"]
    if acc["r_finite"] > 0:
        out[f"{NAME}/norm_ratio_pair_mean"] = acc["r_sum"] / acc["r_finite"]
    if acc["group_n"] > 0:
        out[f"{NAME}/norm_ratio_group"] = acc["group_sum"] / acc["group_n"]
    return out


@hookimpl
def mixhub_state_dict(state: State) -> dict[str, Any]:
    d = _diag(state)
    return {"task": _on_host(d.task), "run": _on_host(d.run)}


@hookimpl
def mixhub_load_state_dict(state_dict: dict[str, Any], state: State) -> None:
    d = _diag(state)
    d.task = {k: float(v) for k, v in state_dict["task"].items()}
    d.run = {k: float(v) for k, v in state_dict["run"].items()}


@hookimpl
def mixhub_bench_suites() -> list[Suite]:
    from .suites import suites

    return suites()
