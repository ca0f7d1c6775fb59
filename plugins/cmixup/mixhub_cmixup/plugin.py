"""mixhub hooks for C-Mixup (hooks only; the math lives in ``functional.py``).

``mixhub_sample_pairs`` draws a partner *dataset index* per anchor from the label kernel over
the whole training set (``state.train_targets``; official ``src/algorithm.py::train``, mixup
branch) and one lam per batch. With the core's loader the partner draw happens earlier, in
``mixhub_extend_indices`` (the batch sampler, before loading), so the partners are decoded in
the DataLoader workers with the anchors; without it the core fetches them one by one. Input mode leaves mixing and
the loss to the core defaults (linear interpolation, MSE on ``lam y_a + (1 - lam) y_b``).
Manifold mode claims ``mix_batch`` (the batch passes unmixed) and ``forward``: the trunk runs
on anchors and partners in two calls, the features are mixed, then the rest of the model runs
(official ``src/models.py::forward_mixup``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mixhub import Batch, ConfigError, MixPlan, PluginOptions, PluginSpec, State, hookimpl

from . import functional as F
from .suites import cmixup_suites

NAME = "cmixup"


class CMixupOptions(PluginOptions):
    """Options of the ``cmixup`` section (defaults follow the official ``src/`` code)."""

    bandwidth: float = Field(
        1.0, gt=0.0, description="kernel bandwidth sigma (official --kde_bandwidth), in `bandwidth_units`"
    )
    kernel: Literal["gaussian", "tophat", "uniform"] = Field(
        "gaussian",
        description="gaussian (official), tophat (kde_type='tophat'), uniform (official mixtype=random)",
    )
    alpha: float = Field(2.0, gt=0.0, description="lam ~ Beta(alpha, alpha)")
    lam_mode: Literal["batch", "sample"] = Field(
        "batch", description="one lam per batch (official) or per sample (PovertyMap)"
    )
    include_self: bool = Field(
        True, description="an anchor may pair with itself (official; needed for sigma -> 0 = ERM)"
    )
    pool: Literal["dataset", "batch2B", "batch"] = Field(
        "dataset",
        description="partners from the whole training set (official), the RCF-MNIST 2B pool, or the batch",
    )
    mix_on: Literal["input", "manifold"] = Field(
        "input", description="mix inputs, or features at `manifold_layer`"
    )
    manifold_layer: str = Field(
        "auto",
        description="module whose output is mixed (auto: `blocks.0` for mlp, else the last feature_info module)",
    )
    bidirectional: bool = Field(
        False,
        description="PovertyMap: also mix (x_j, x_i) with a second lam (2B samples per step; input mode)",
    )
    bandwidth_units: Literal["raw", "std"] = Field(
        "raw", description="raw label units (official) or multiples of the bank's pooled std"
    )
    sampler: Literal["auto", "gumbel", "sorted"] = Field(
        "auto", description="exact sampler: Gumbel-max over the bank, or the sorted 1-D rejection sampler"
    )


def _claims(opts: CMixupOptions) -> tuple[str, ...]:
    if opts.mix_on == "manifold":
        return ("sample_pairs", "mix_batch", "forward")
    if opts.bidirectional:
        return ("sample_pairs", "mix_batch")
    return ("sample_pairs",)


def _validate(opts: CMixupOptions, config: Any) -> list[str]:
    if opts.bidirectional and opts.mix_on == "manifold":
        raise ConfigError("cmixup.bidirectional needs cmixup.mix_on=input (PovertyMap mixes inputs)")
    warnings = []
    if opts.pool == "batch2B" and opts.kernel == "uniform":
        warnings.append("pool=batch2B with kernel=uniform is plain mixup over a 2B pool")
    if not config.train.drop_last:
        warnings.append("train.drop_last=false: the official loop drops the last partial batch")
    return warnings


PLUGIN = PluginSpec(
    name=NAME,
    options=CMixupOptions,
    claims=_claims,
    task_kinds=("regression",),
    description="C-Mixup: mixup partners drawn by label similarity (regression)",
    validate=_validate,
    example={"cmixup": {"bandwidth": 0.1}},
)


# =============================================================================== helpers
def _bank(state: State, opts: CMixupOptions, cpu: bool = False) -> tuple[Tensor | F.SortedLabelBank, float]:
    """The label bank (sorted once for the 1-D sampler) and the bandwidth in raw units, cached;
    ``cpu`` gives a CPU copy for the loader's batch sampler (``mixhub_extend_indices``)."""
    scratch = state.scratch(NAME)
    attr = "bank_cpu" if cpu else "bank"
    if getattr(scratch, attr, None) is None:
        if state.train_targets is None:
            raise RuntimeError("cmixup needs state.train_targets (the training label bank)")
        labels = F.as_label_matrix(state.train_targets.detach(), "state.train_targets")
        if cpu:
            labels = labels.cpu()
        scratch.bandwidth = F.effective_bandwidth(opts.bandwidth, labels, opts.bandwidth_units)
        big = labels.shape[0] * max(state.batch_size, 1) > F.DEFAULT_ELEMENT_BUDGET
        use_sorted = labels.shape[1] == 1 and (opts.sampler == "sorted" or (opts.sampler == "auto" and big))
        setattr(scratch, attr, F.SortedLabelBank(labels) if use_sorted else labels)
    return getattr(scratch, attr), scratch.bandwidth


def _log_pairs(state: State, y_a: Tensor, y_b: Tensor, same: Tensor) -> None:
    """Pair statistics as device tensors (the core reads the logs at log steps only); the labels
    were checked finite when the bank was built, so no check reads them here."""
    y_a, y_b = y_a.detach().float(), y_b.detach().float().to(y_a.device)
    gap = (y_a.reshape(y_a.shape[0], -1) - y_b.reshape(y_b.shape[0], -1)).norm(dim=1)
    state.log[f"{NAME}/self_pair_frac"] = same.float().mean()
    state.log[f"{NAME}/mean_label_gap"] = gap.mean()


# =============================================================================== slots
@hookimpl
def mixhub_sample_pairs(batch: Batch, state: State) -> MixPlan:
    opts: CMixupOptions = state.options(NAME)
    bank, bw = _bank(state, opts)
    labels = bank.labels if isinstance(bank, F.SortedLabelBank) else bank
    gen = state.generator
    b = batch.size
    anchors = batch.index.to(labels.device)
    query = labels[anchors]
    lam = F.sample_lam(
        opts.alpha, b, per_sample=opts.lam_mode == "sample", generator=gen, device=batch.inputs.device
    )
    method = opts.sampler
    loaded = batch.extras.get("extended", {}).get(NAME)
    if opts.pool == "dataset" and loaded is not None and loaded.size == b:
        # partners drawn by mixhub_extend_indices and decoded with the anchors by the loader
        index = loaded.index.to(batch.inputs.device)
        plan = MixPlan.pairs(index, lam, partner_source="dataset", partner=loaded)
        _log_pairs(state, query, labels[index.to(labels.device)], index.to(anchors.device) == anchors)
    elif opts.pool == "dataset":
        exclude = None if opts.include_self else anchors
        index = F.sample_partners(query, bank, bw, gen, opts.kernel, exclude_index=exclude, method=method)
        plan = MixPlan.pairs(index.to(batch.inputs.device), lam, partner_source="dataset")
        same = index.to(anchors.device) == anchors
        _log_pairs(state, query, labels[index.to(labels.device)], same)
    elif opts.pool == "batch":
        exclude = None if opts.include_self else torch.arange(b, device=labels.device)
        pos = F.sample_partners(query, query, bw, gen, opts.kernel, exclude_index=exclude, method="gumbel")
        plan = MixPlan.pairs(pos.to(batch.inputs.device), lam, partner_source="batch")
        _log_pairs(state, query, query[pos], pos == torch.arange(b, device=pos.device))
    else:  # batch2B: official RCF-MNIST path (uniform draws, then re-drawn from the 2B-pool kernel)
        rnd = torch.randint(0, labels.shape[0], (b,), generator=gen, device=gen.device).to(labels.device)
        index = F.pool_partners(
            query, anchors, labels[rnd], rnd, bw, gen, opts.kernel, include_self=opts.include_self
        )
        plan = MixPlan.pairs(index.to(batch.inputs.device), lam, partner_source="dataset")
        _log_pairs(state, query, labels[index.to(labels.device)], index.to(anchors.device) == anchors)
    if opts.bidirectional:
        plan.extras["lam2"] = F.sample_lam(
            opts.alpha, b, per_sample=opts.lam_mode == "sample", generator=gen, device=batch.inputs.device
        )
    return plan


def _partner_inputs(batch: Batch, plan: MixPlan) -> Tensor:
    if plan.partner_source == "dataset":
        assert plan.partner is not None, "the core fetches dataset partners before mix_batch"
        return plan.partner.inputs
    return batch.inputs[plan.index]


@hookimpl
def mixhub_mix_batch(batch: Batch, plan: MixPlan, state: State) -> Batch | None:
    opts: CMixupOptions = state.options(NAME)
    if opts.mix_on == "manifold":
        return batch  # features are mixed in mixhub_forward
    if not opts.bidirectional:
        return None
    # PovertyMap: (x_i, x_j) with lam1 and (x_j, x_i) with lam2 = anchor i, partner j, weight 1 - lam2.
    x_j = _partner_inputs(batch, plan)
    lam2 = plan.extras["lam2"]
    assert plan.y_a is not None and plan.y_b is not None
    plan.extras["lam_forward"] = plan.lam
    plan.lam = torch.cat([plan.lam, 1 - lam2])
    plan.index = torch.cat([plan.index, plan.index])
    plan.y_a = torch.cat([plan.y_a, plan.y_a])
    plan.y_b = torch.cat([plan.y_b, plan.y_b])
    x = torch.cat([batch.inputs, batch.inputs])
    mixed = plan.lam_as(x) * x + (1 - plan.lam_as(x)) * torch.cat([x_j, x_j])
    return Batch(
        inputs=mixed,
        targets=torch.cat([batch.targets, batch.targets]),
        index=torch.cat([batch.index, batch.index]),
    )


class _StopForward(Exception):
    """Ends the partner's trunk-only pass once the mixing layer's output is captured."""


def _manifold_module(model: nn.Module, name: str) -> nn.Module:
    if name == "auto":
        blocks = getattr(model, "blocks", None)
        if (
            isinstance(blocks, nn.ModuleList)
            and len(blocks)
            and any(isinstance(m, nn.Linear) for m in blocks[0].modules())
        ):
            name = "blocks.0"  # the core MLP: after the first Linear + activation (official tabular MLP)
        else:
            info = getattr(model, "feature_info", None)
            entries = info.get_dicts() if hasattr(info, "get_dicts") else info
            if not entries:
                raise ConfigError("cmixup.manifold_layer=auto: the model has no feature_info; name a module")
            name = entries[-1]["module"]
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][:40]
        raise ConfigError(
            f"cmixup.manifold_layer: the model has no module {name!r} (some modules: {', '.join(names)})"
        ) from None


@hookimpl
def mixhub_forward(model: nn.Module, batch: Batch, plan: MixPlan, state: State) -> dict[str, Any]:
    """Manifold mixing: trunk(x_j) (partner pass stops at the layer), then model(x) with the
    layer's output replaced by ``lam h + (1 - lam) h_j``. Two calls, so BatchNorm in the trunk
    sees anchors and partners separately (official ``forward_mixup``)."""
    opts: CMixupOptions = state.options(NAME)
    base = state.model if state.model is not None else model
    scratch = state.scratch(NAME)
    if getattr(scratch, "layer_for", None) is not base:
        scratch.layer = _manifold_module(base, opts.manifold_layer)
        scratch.layer_for = base
    layer: nn.Module = scratch.layer
    captured: dict[str, Tensor] = {}

    def capture(module: nn.Module, args: Any, out: Tensor) -> None:
        captured["h"] = out
        raise _StopForward

    def mix(module: nn.Module, args: Any, out: Tensor) -> Tensor:
        lam = plan.lam.to(out.dtype).reshape(-1, *([1] * (out.dim() - 1)))
        return lam * out + (1 - lam) * captured["h"]

    handle = layer.register_forward_hook(capture)
    try:
        base(_partner_inputs(batch, plan))  # the unwrapped model: DDP syncs grads on the anchor pass
    except _StopForward:
        pass
    finally:
        handle.remove()
    if "h" not in captured:
        raise RuntimeError(
            f"cmixup: the manifold layer {opts.manifold_layer!r} did not run in the forward pass"
        )
    handle = layer.register_forward_hook(mix)
    try:
        logits = model(batch.inputs)
    finally:
        handle.remove()
    return {"logits": logits}


# =============================================================================== collectors
@hookimpl
def mixhub_extend_indices(index: Tensor, epoch: int, generator: torch.Generator, state: State) -> Tensor | None:
    """``pool=dataset``: each anchor's partner drawn from the label kernel in the loader's batch
    sampler, so partners are decoded in the DataLoader workers with the anchors."""
    opts: CMixupOptions = state.options(NAME)
    if opts.pool != "dataset":
        return None
    bank, bw = _bank(state, opts, cpu=True)
    labels = bank.labels if isinstance(bank, F.SortedLabelBank) else bank
    anchors = index.long()
    exclude = None if opts.include_self else anchors
    return F.sample_partners(labels[anchors], bank, bw, generator, opts.kernel, exclude_index=exclude, method=opts.sampler)


@hookimpl
def mixhub_bench_suites() -> list[Any]:
    return cmixup_suites()
