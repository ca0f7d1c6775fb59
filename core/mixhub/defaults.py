"""The core's default implementations: a plugin like any other, registered first and called last."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batch import Batch
from .hookspecs import hookimpl
from .plan import MixPlan
from .spec import PluginSpec
from .state import State

PLUGIN = PluginSpec(
    name="core",
    task_kinds=("classification", "regression", "continual", "test-time"),
    description="mixhub's defaults: identity plan, linear mixing, model(x), CE/MSE, timm optimizers",
)


def mix_inputs(inputs: Tensor, plan: MixPlan, partner_inputs: Tensor | None = None) -> Tensor:
    """Interpolate inputs as the plan says: N sources, per-pixel mask, or two sources with lam.

    ``partner_inputs`` are the fetched partners of a dataset-partner plan.
    """
    if plan.sources is not None:
        out = torch.zeros_like(inputs)
        for idx, w in plan.sources:
            out = out + w.to(inputs.dtype).reshape(-1, *([1] * (inputs.dim() - 1))) * inputs[idx]
        return out
    other = partner_inputs if partner_inputs is not None else inputs[plan.index]
    if plan.mask is not None:
        mask = plan.mask.to(inputs.dtype)
        return mask * inputs + (1 - mask) * other
    lam = plan.lam_as(inputs)
    return lam * inputs + (1 - lam) * other


def mixed_cross_entropy(logits: Tensor, plan: MixPlan, label_smoothing: float = 0.0) -> Tensor:
    """``sum_k w_k * CE(logits, y_k)`` over the plan's sources, per-sample weights, mean over the batch."""
    logits = logits.float()
    assert plan.y_a is not None
    if plan.known_identity:
        return F.cross_entropy(logits, plan.y_a, label_smoothing=label_smoothing)
    total = logits.new_zeros(logits.shape[0])
    for targets, weight in plan.source_targets(plan.y_a):
        ce = F.cross_entropy(logits, targets, reduction="none", label_smoothing=label_smoothing)
        total = total + weight.to(ce.dtype) * ce
    return total.mean()


@hookimpl(trylast=True)
def mixhub_sample_pairs(batch: Batch, state: State) -> MixPlan:
    return MixPlan.identity(batch.size, device=batch.inputs.device)


@hookimpl(trylast=True)
def mixhub_mix_batch(batch: Batch, plan: MixPlan, state: State) -> Batch:
    if plan.known_identity:  # host-side: no read of lam or index
        return batch
    partner = plan.partner.inputs if plan.partner is not None else None
    return batch.replace(inputs=mix_inputs(batch.inputs, plan, partner))


@hookimpl(trylast=True)
def mixhub_forward(model: nn.Module, batch: Batch, plan: MixPlan, state: State) -> dict[str, Any]:
    return {"logits": model(batch.inputs)}


@hookimpl(trylast=True)
def mixhub_compute_loss(outputs: dict[str, Any], batch: Batch, plan: MixPlan, state: State) -> Tensor:
    logits = outputs["logits"]
    if state.task_kind == "regression":
        target = plan.mixed_regression_target()
        pred = logits.float().reshape(target.shape)
        return F.mse_loss(pred, target)
    return mixed_cross_entropy(logits, plan, state.config.train.label_smoothing)


@hookimpl(trylast=True)
def mixhub_create_optimizer(param_groups: list[dict[str, Any]], config: Any, state: State) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2

    opt = config.optimizer
    kwargs: dict[str, Any] = dict(opt.kwargs)
    if opt.betas is not None:
        kwargs["betas"] = tuple(opt.betas)
    if opt.eps is not None:
        kwargs["eps"] = opt.eps
    try:
        return create_optimizer_v2(
            param_groups,
            opt=opt.name,
            lr=config.train.lr,
            weight_decay=config.train.weight_decay,
            momentum=opt.momentum,
            **kwargs,
        )
    except (ValueError, TypeError, AssertionError) as exc:
        from .errors import ConfigError

        raise ConfigError(f"optimizer: timm could not build {opt.name!r} with these options: {exc}") from exc


@hookimpl(trylast=True)
def mixhub_eval_forward(model: nn.Module, batch: Batch, state: State) -> dict[str, Any]:
    return {"logits": model(batch.inputs)}


@hookimpl(trylast=True)
def mixhub_replay_update(buffer: Any, batch: Batch, state: State) -> bool:
    buffer.reservoir_update(batch, state.generator)
    return True


@hookimpl(trylast=True)
def mixhub_replay_retrieve(buffer: Any, batch: Batch, state: State) -> Batch | None:
    return buffer.random_retrieve(state.config.continual.retrieve_size, state.generator)

