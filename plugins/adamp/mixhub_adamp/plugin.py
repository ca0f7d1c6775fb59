"""mixhub hooks of the ``adamp`` plugin: the optimizer slot, projection metrics, bench suites.

No math here: the optimizers live in ``optim.py`` / ``functional.py``. The slot registers
``mixhubadamp``/``mixhubsgdp`` into timm's registry (on activation only) and builds the
optimizer through ``timm.optim.create_optimizer_v2`` from the core's parameter groups, so
weight-decay filtering, layer decay and the ``lookahead_`` prefix behave as on the default path.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from mixhub import ConfigError, PluginOptions, PluginSpec, State, hookimpl

from .functional import KINDS
from .optim import IMPLS
from .registry import register_timm, timm_registry

#: ``optimizer.name`` values this plugin answers, and the optimizer each means.
NAMES = {"adamp": "adamp", "mixhubadamp": "adamp", "sgdp": "sgdp", "mixhubsgdp": "sgdp", "adamw": "adamp"}


class AdamPOptions(PluginOptions):
    """Options of the ``adamp`` config section (lr and weight decay: ``train.*``; betas, eps
    and SGDP's momentum: ``optimizer.*``, as for every optimizer)."""

    optimizer: Literal["adamp", "sgdp"] | None = Field(
        None,
        description="AdamP or SGDP; default: from optimizer.name (adamp, sgdp; the core default adamw means adamp)",
    )
    delta: float = Field(
        0.1,
        ge=0.0,
        description="cosine threshold: a view is scale-invariant when max |cos| < delta/sqrt(dim)",
    )
    wd_ratio: float = Field(0.1, ge=0.0, description="weight-decay multiplier of projected tensors")
    nesterov: bool = Field(False, description="Nesterov momentum (official class default False)")
    dampening: float = Field(0.0, ge=0.0, le=1.0, description="SGDP dampening")
    buffer_alias: bool = Field(
        True, description="SGDP without nesterov: project the momentum buffer itself (official)"
    )
    impl: Literal["auto", "reference", "foreach", "fused"] = Field(
        "auto",
        description="auto: fused C++ kernel on CPU, capturable multi-tensor step on CUDA; reference: official loop",
    )
    foreach: bool | None = Field(
        None, description="multi-tensor step (same as impl=foreach when impl is reference)"
    )
    track_projection: bool = Field(
        False, description="CUDA: read the projection decisions every step (one sync) for metrics"
    )


def _which(options: AdamPOptions, config: Any) -> tuple[str, bool]:
    """(``adamp``/``sgdp``, lookahead) from the plugin options and ``optimizer.name``."""
    name = config.optimizer.name.lower()
    lookahead = name.startswith("lookahead_")
    base = name.removeprefix("lookahead_")
    if options.optimizer is not None:
        return options.optimizer, lookahead
    if base not in NAMES:
        raise ConfigError(
            f"optimizer.name={config.optimizer.name!r}: the adamp plugin fills the optimizer slot with AdamP or "
            f"SGDP; use optimizer.name=adamp or sgdp (optionally lookahead_adamp), or set adamp.optimizer"
        )
    return NAMES[base], lookahead


def _validate(options: AdamPOptions, config: Any) -> list[str]:
    _which(options, config)
    assert options.impl in IMPLS
    return []


PLUGIN = PluginSpec(
    name="adamp",
    options=AdamPOptions,
    slots=("create_optimizer",),
    task_kinds=("classification", "regression", "continual"),
    description="AdamP / SGDP: no radial update on scale-invariant weights (Heo et al., ICLR 2021)",
    validate=_validate,
)


@hookimpl
def mixhub_create_optimizer(
    param_groups: list[dict[str, Any]], config: Any, state: State
) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2

    options: AdamPOptions = state.options("adamp")
    which, lookahead = _which(options, config)
    if timm_registry() is None:  # timm < 1.0.12 has no registry: build our class directly
        return _direct(which, param_groups, options, config)
    register_timm()
    opt = config.optimizer
    kwargs: dict[str, Any] = dict(opt.kwargs)
    if opt.eps is not None:
        kwargs["eps"] = opt.eps
    kwargs.update(delta=options.delta, wd_ratio=options.wd_ratio, nesterov=options.nesterov)
    kwargs.update(impl=options.impl, track_projection=options.track_projection)
    if options.foreach is not None:
        kwargs["foreach"] = options.foreach
        if options.impl == "auto" and options.foreach:
            kwargs["impl"] = "foreach"
    if which == "adamp":
        if opt.betas is not None:
            kwargs["betas"] = tuple(opt.betas)
    else:
        kwargs.update(dampening=options.dampening, buffer_alias=options.buffer_alias)
    name = ("lookahead_" if lookahead else "") + ("mixhubadamp" if which == "adamp" else "mixhubsgdp")
    return create_optimizer_v2(
        param_groups,
        opt=name,
        lr=config.train.lr,
        weight_decay=config.train.weight_decay,
        momentum=opt.momentum,
        **kwargs,
    )


def _direct(
    which: str, groups: list[dict[str, Any]], options: AdamPOptions, config: Any
) -> torch.optim.Optimizer:
    from .optim import SGDP, AdamP

    common = dict(
        lr=config.train.lr,
        weight_decay=config.train.weight_decay,
        delta=options.delta,
        wd_ratio=options.wd_ratio,
    )
    common.update(nesterov=options.nesterov, impl=options.impl)
    if which == "adamp":
        return AdamP(groups, **common)
    return SGDP(
        groups,
        momentum=config.optimizer.momentum,
        dampening=options.dampening,
        buffer_alias=options.buffer_alias,
        **common,
    )


def _base(optimizer: Any) -> Any:
    while optimizer is not None and not hasattr(optimizer, "projection_kinds"):
        optimizer = getattr(optimizer, "_base_optimizer", None) or getattr(optimizer, "optimizer", None)
    return optimizer


@hookimpl
def mixhub_metrics(stage: str, state: State) -> dict[str, float] | None:
    """Projection shares of the last step over >=2-D tensors, and the mean norm of projected ones."""
    if stage != "train":
        return None
    opt = _base(state.optimizer)
    if opt is None:
        return None
    kinds = opt.projection_kinds()
    tested = {p: k for p, k in kinds.items() if k != "1d"}
    if not tested:
        return None
    out = {f"adamp/{k}_frac": sum(v == k for v in tested.values()) / len(tested) for k in KINDS[:3]}
    projected = [float(p.detach().norm()) for p, k in tested.items() if k in ("channel", "layer")]
    if projected:
        out["adamp/invariant_norm"] = sum(projected) / len(projected)
    return out


@hookimpl
def mixhub_bench_suites() -> list[Any]:
    from .suites import adamp_suites

    return adamp_suites()
