"""UnMix-TNS hooks (the math lives in ``mixhub_unmixtns.functional``).

Active only in the core's test-time phase (``state.phase == "test-time"``): the
``mixhub_evaluate`` wrapper (outermost, ``tryfirst``) swaps every BatchNorm for an UnMix-TNS
layer before the episode, from components seeded by ``unmixtns.seed`` (every episode starts
from the same components, as the official reset does), and puts the original BN objects back
afterwards, even on error. No slot is owned: with the core's default ``eval_forward`` this is
the standalone UnMix-TNS arm; under ``tent`` TENT trains the layers' affine parameters.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Generator
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from mixhub import PluginOptions, PluginSpec, State, hookimpl

from .functional import replace_batchnorm, restore_batchnorm, unmix_layers

NAME = "unmixtns"
log = logging.getLogger("mixhub_unmixtns")


class UnMixTNSOptions(PluginOptions):
    num_components: int = Field(16, ge=1, description="K: 16 official for single-domain and continual, 128 for mixed domains")
    batch_size_max: int = Field(64, ge=1, description="B_max of the momentum formula (64; 16 for ImageNet-C)")
    batch_size: int | None = Field(None, ge=1, description="B of the momentum formula (null: the stream batch size)")
    momentum: float | None = Field(None, gt=0.0, le=1.0, description="explicit component momentum (null: 1 - (1 - m)^(B/B_max))")
    temperature: float = Field(0.07, gt=0.0, description="softmax temperature of the cosine assignment")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="share of the source variance spread over the component means at init")
    seed: int | None = Field(None, description="seed of the component noise (null: the run seed)")
    update: Literal["always", "train", "never"] = Field("always", description="always (official): every forward updates; train: only in train mode; never")
    bn1d: Literal["source", "keep"] = Field("source", description="source (official): BatchNorm1d becomes a fixed source-statistics layer; keep: untouched")
    momentum_from_actual_batch: bool = Field(False, description="recompute the momentum from each call's batch size")


PLUGIN = PluginSpec(
    name=NAME,
    options=UnMixTNSOptions,
    task_kinds=("classification", "test-time"),
    description="UnMix-TNS: per-instance test-time normalisation from K online statistics components",
)


def _track(module: nn.Module, inputs: Any, output: Any) -> None:
    p = getattr(module, "last_assignment", None)
    if p is None:
        return
    with torch.no_grad():
        p = p.float()
        stats = module._mixhub_stats  # type: ignore[attr-defined]
        stats["entropy"] += float(-(p * p.clamp_min(1e-12).log()).sum())
        stats["mass"] = stats["mass"] + p.sum(0).cpu()
        stats["n"] += p.shape[0]


@hookimpl(wrapper=True, tryfirst=True)
def mixhub_evaluate(model: nn.Module, state: State) -> Generator[None, Any, Any]:
    if state.phase != "test-time":
        return (yield)
    opts: UnMixTNSOptions = state.options(NAME)
    sc = state.scratch(NAME)
    device = next((b.device for b in model.buffers()), state.device)
    seed = opts.seed if opts.seed is not None else state.config.seed
    gen = torch.Generator(device=device).manual_seed(int(seed))
    try:
        replace_batchnorm(
            model,
            opts.num_components,
            gen,
            batch_size=opts.batch_size or state.batch_size or opts.batch_size_max,
            batch_size_max=opts.batch_size_max,
            momentum=opts.momentum,
            bn1d=opts.bn1d,
            update=opts.update,
            temperature=opts.temperature,
            alpha=opts.alpha,
            momentum_from_actual_batch=opts.momentum_from_actual_batch,
        )
        layers = unmix_layers(model)
        if not layers:
            log.warning("unmixtns: model %s has no BatchNorm layer; UnMix-TNS does nothing", type(model).__name__)
        pending = getattr(sc, "pending", None)
        if pending:
            _load_components(layers, pending)
            sc.pending = None
        sc.hooks = []
        for layer in layers.values():
            if hasattr(layer, "update"):
                layer._mixhub_stats = {"entropy": 0.0, "mass": torch.zeros(layer.num_components), "n": 0}
                sc.hooks.append(layer.register_forward_hook(_track))
        sc.model = model
        return (yield)
    finally:
        for h in getattr(sc, "hooks", []):
            h.remove()
        sc.hooks, sc.model = [], None
        restore_batchnorm(model)


def _load_components(layers: dict[str, nn.Module], sd: dict[str, Any]) -> None:
    with torch.no_grad():
        for name, entry in sd.items():
            if name in layers:
                layers[name].component_means.copy_(entry["component_means"])
                layers[name].component_vars.copy_(entry["component_vars"])


@hookimpl
def mixhub_metrics(stage: str, state: State) -> dict[str, float] | None:
    sc = state.scratch(NAME)
    model = getattr(sc, "model", None)
    if stage != "test-time" or model is None:
        return None
    layers = [m for m in unmix_layers(model).values() if hasattr(m, "_mixhub_stats") and m._mixhub_stats["n"]]
    if not layers:
        return None
    ent, active, drift = [], [], []
    for m in layers:
        st = m._mixhub_stats
        ent.append(st["entropy"] / st["n"])
        share = st["mass"] / st["mass"].sum()
        active.append(float((share >= 0.01).sum()))
        sd = m.source_var.sqrt().norm().clamp_min(1e-12)
        drift.append(float((m.component_means - m.source_mean).norm(dim=1).mean() / sd))
    n = len(layers)
    return {
        "unmixtns/assign_entropy": sum(ent) / n,
        "unmixtns/assign_entropy_max": math.log(layers[0].num_components) if layers[0].num_components > 1 else 0.0,
        "unmixtns/active_components": sum(active) / n,
        "unmixtns/drift": sum(drift) / n,
    }


@hookimpl
def mixhub_state_dict(state: State) -> dict[str, Any] | None:
    model = getattr(state.scratch(NAME), "model", None)
    if model is None:
        return None
    return {
        name: {"component_means": m.component_means.detach().cpu().clone(), "component_vars": m.component_vars.detach().cpu().clone()}
        for name, m in unmix_layers(model).items()
    }


@hookimpl
def mixhub_load_state_dict(state_dict: dict[str, Any], state: State) -> None:
    sc = state.scratch(NAME)
    model = getattr(sc, "model", None)
    if model is not None:
        _load_components(unmix_layers(model), state_dict)
    else:
        sc.pending = state_dict  # applied at the next swap


@hookimpl
def mixhub_bench_suites() -> list[Any]:
    from .suites import suites

    return suites()
