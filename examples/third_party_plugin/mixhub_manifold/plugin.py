"""Manifold Mixup hooks: draw pairs, lam and a layer; mix inside the forward pass."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from mixhub import Batch, MixPlan, PluginOptions, PluginSpec, State, hookimpl

from .functional import default_layers, draw_layer, manifold_forward


class Options(PluginOptions):
    alpha: float = Field(2.0, gt=0.0, description="Beta(alpha, alpha) for lam")
    layers: list[str] | None = Field(None, description="module names to mix at ('' is the input); default: input + stages")


PLUGIN = PluginSpec(
    name="manifold",
    options=Options,
    slots=("sample_pairs", "mix_batch", "forward"),
    task_kinds=("classification", "regression"),
    description="Manifold Mixup: interpolate hidden states at a random layer",
)


@hookimpl
def mixhub_sample_pairs(batch: Batch, state: State) -> MixPlan:
    import numpy as np
    import torch

    opts = state.options("manifold")
    g = state.generator
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    lam = float(np.random.default_rng(seed).beta(opts.alpha, opts.alpha))
    index = torch.randperm(batch.size, generator=g).to(batch.inputs.device)
    layers = opts.layers if opts.layers is not None else default_layers(state.model)
    return MixPlan.pairs(index, lam, extras={"manifold_layer": draw_layer(layers, g)})


@hookimpl
def mixhub_mix_batch(batch: Batch, plan: MixPlan, state: State) -> Batch:
    return batch  # mixing happens inside the forward pass


@hookimpl
def mixhub_forward(model: Any, batch: Batch, plan: MixPlan, state: State) -> dict[str, Any]:
    return {"logits": manifold_forward(model, batch.inputs, plan, plan.extras["manifold_layer"])}
