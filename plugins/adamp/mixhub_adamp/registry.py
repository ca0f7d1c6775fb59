"""Registration of ``AdamP``/``SGDP`` into timm's optimizer registry.

timm's factory lower-cases a name, splits it on ``_`` and keeps the last token (a first token
``lookahead`` wraps the result), so our names carry no underscore: ``mixhub_adamp`` would
silently resolve to timm's own ``adamp``. timm's ``adamp``/``sgdp`` are never replaced.
Nothing is registered at import: only an activated plugin, an explicit ``register_timm()``, or
mixhub's ``mixhub.timm_optimizers`` entry point (``timm_optimizers``), which ``import
mixhub.timm_task`` runs so that timm's ``train.py`` takes ``--opt mixhubadamp`` as it is.
"""

from __future__ import annotations

import logging
from typing import Any

from .optim import SGDP, AdamP

__all__ = ["TIMM_NAMES", "register_timm", "timm_optimizers", "timm_registry"]

log = logging.getLogger("mixhub.adamp")

#: Names registered into timm, with their class.
TIMM_NAMES = {"mixhubadamp": AdamP, "mixhubsgdp": SGDP}


def timm_registry() -> Any | None:
    """timm's global ``default_registry`` (``None`` with a warning when timm has none, < 1.0.12)."""
    try:
        import timm
    except ImportError:
        log.warning("timm is not installed; mixhub-adamp's optimizers are not registered there")
        return None
    try:
        from timm.optim._optim_factory import default_registry
    except ImportError:
        log.warning(
            "timm %s has no optimizer registry (it arrived in timm 1.0.12); "
            "use mixhub_adamp.AdamP / SGDP directly", getattr(timm, "__version__", "?"),
        )  # fmt: skip
        return None
    return default_registry


def register_timm(registry: Any | None = None) -> list[str]:
    """Register ``mixhubadamp`` and ``mixhubsgdp`` (idempotent); returns the names registered now.

    ``registry`` defaults to timm's ``default_registry``. Official class defaults are kept
    (``nesterov=False``, ``wd_ratio=0.1``); the factory still passes its ``momentum`` (0.9)
    to SGDP and filters weight decay off biases and 1-D tensors.
    """
    if registry is None:
        registry = timm_registry()
        if registry is None:
            return []
    from timm.optim._optim_factory import OptimInfo

    infos = [
        OptimInfo(
            name="mixhubadamp", opt_class=AdamP, has_betas=True,
            description="AdamP (mixhub-adamp): official defaults, fused CPU kernel with impl='auto'",
            defaults={"nesterov": False, "wd_ratio": 0.1},
        ),
        OptimInfo(
            name="mixhubsgdp", opt_class=SGDP, has_momentum=True,
            description="SGDP (mixhub-adamp): official defaults, fused CPU kernel with impl='auto'",
            defaults={"nesterov": False, "wd_ratio": 0.1},
        ),
    ]  # fmt: skip
    done = []
    known = getattr(registry, "_optimizers", {})
    for info in infos:
        current = known.get(info.name)
        if current is not None and current.opt_class is info.opt_class:
            continue
        registry.register(info)
        done.append(info.name)
    return done


def timm_optimizers() -> dict[str, Any]:
    """The ``mixhub.timm_optimizers`` entry point: register (idempotent), then ``{name: class}``.

    Empty when timm has no registry (< 1.0.12): nothing could be registered there.
    """
    if timm_registry() is None:
        return {}
    register_timm()
    return dict(TIMM_NAMES)
