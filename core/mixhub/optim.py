"""Parameter groups as timm builds them, plus the groups of plugin modules.

The model's groups come from timm's own helpers, the ones ``timm.optim.create_optimizer_v2``
runs when it is handed a model: ``param_groups_layer_decay`` when ``train.layer_decay`` is set
(per-layer ``lr_scale`` from the model's ``group_matcher``), else ``param_groups_weight_decay``;
both honour the model's ``no_weight_decay()`` (e.g. a ViT's ``pos_embed`` and ``cls_token``)
and keep 1-D tensors (norms, biases) free of decay. The groups are built here rather than by
passing the model to the factory because the ``mixhub_create_optimizer`` slot hands one list of
groups to whichever plugin owns it (e.g. AdamP); ``tests/test_session.py`` checks that the
model's groups equal the ones ``create_optimizer_v2(model, ...)`` builds itself.

Plugin modules registered with ``state.register_module(..., trainable=True)`` follow as one
group each (named ``<plugin>.<module>``, with their own ``lr``/``weight_decay``/``min_lr``),
then the groups plugins return from ``mixhub_param_groups``.

**Optimizers for loops that build their own** (timm's ``train.py``: ``--opt NAME``). A package
that provides optimizers declares an entry point in the group ``mixhub.timm_optimizers``, named
after its plugin, pointing at a function that registers its optimizers into timm's registry
(idempotent) and returns ``{timm name: optimizer class}``::

    [project.entry-points."mixhub.timm_optimizers"]
    adamp = "mixhub_adamp.registry:timm_optimizers"

``register_timm_optimizers()`` runs every installed one (``import mixhub.timm_task`` does), so
``--opt mixhubadamp`` works in ``train.py`` without further imports.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

__all__ = ["TIMM_OPTIMIZER_GROUP", "model_param_groups", "param_groups", "register_timm_optimizers"]

log = logging.getLogger("mixhub")

#: Entry-point group of functions that register a package's optimizers into timm's registry.
TIMM_OPTIMIZER_GROUP = "mixhub.timm_optimizers"

_registered: dict[str, dict[str, type]] = {}


def model_param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict[str, Any]]:
    """The model's parameter groups exactly as ``create_optimizer_v2(model, ...)`` makes them."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    own = getattr(model, "no_weight_decay", None)
    no_decay: set[str] = set(own()) if callable(own) else set()
    if layer_decay is not None:
        return param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay, no_weight_decay_list=no_decay)
    return param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=no_decay)


def param_groups(model: nn.Module, state: Any, host: Any, config: Any) -> list[dict[str, Any]]:
    """Model groups (timm), then one group per trainable plugin module, then ``mixhub_param_groups``."""
    groups = model_param_groups(model, config.train.weight_decay, config.train.layer_decay)
    for spec in state.modules.values():
        params = [p for p in spec.module.parameters() if p.requires_grad]
        if spec.trainable and params:
            groups.append({"params": params, "name": f"{spec.owner}.{spec.name}", **spec.group})
    for extra in host.collect("mixhub_param_groups", model=model, state=state):
        groups.extend(extra)
    for g in groups:
        g["params"] = list(g["params"])  # a generator would be used up by the check below
    return [g for g in groups if g["params"]]


def register_timm_optimizers() -> dict[str, dict[str, type]]:
    """Run every installed ``mixhub.timm_optimizers`` entry point (once each): ``{plugin: {timm
    name: class}}``. One that fails to load is skipped with a warning naming it and its
    distribution; the others are still registered."""
    from importlib import metadata

    for ep in metadata.entry_points(group=TIMM_OPTIMIZER_GROUP):
        if ep.name in _registered:
            continue
        dist = getattr(ep, "dist", None)
        where = f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
        try:
            names = ep.load()()
            _registered[ep.name] = {str(k): v for k, v in dict(names).items()}
        except Exception as exc:  # noqa: BLE001 - a broken package must not stop the others
            log.warning("plugin %r (%s): its timm optimizers (%s = %s) could not be registered: %s: %s", ep.name, where, TIMM_OPTIMIZER_GROUP, ep.value, type(exc).__name__, exc)
    return dict(_registered)
