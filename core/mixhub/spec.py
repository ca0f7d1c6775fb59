"""What a plugin declares: ``PluginSpec`` and the base of its options, ``PluginOptions``.

Kept apart from ``plugins.py`` (discovery and the host) so the core's own defaults, a plugin
like any other, can declare themselves without importing the host that registers them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from . import hookspecs
from ._util import did_you_mean
from .errors import PluginLoadError

__all__ = ["PluginSpec", "PluginOptions", "TASK_KINDS"]

TASK_KINDS = ("classification", "regression", "continual", "test-time")


class PluginOptions(BaseModel):
    """Base class of plugin option schemas: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


@dataclass(frozen=True)
class PluginSpec:
    """What a plugin declares, as ``PLUGIN = PluginSpec(...)`` in its plugin module.

    Attributes:
        name: the plugin's name (= its entry-point name and config section).
        options: a ``PluginOptions`` subclass: the schema of its config section.
        slots: the slots it claims (short names, see ``hookspecs.SLOTS``).
        claims: optional ``claims(options) -> slots`` when the claimed slots depend on the
            options (e.g. a forward slot only in manifold mode); overrides ``slots``.
        task_kinds: the task kinds it supports.
        conflicts: plugins it cannot run with.
        aux_loss_weights: default weights of the aux losses it returns.
        description: one line for listings.
        validate: optional ``validate(options, config) -> list[str]`` of warnings; raise
            ``ConfigError`` for incompatible settings.
        needs_max_steps: the plugin reads ``state.max_steps`` (a schedule over the whole run);
            a step without it is refused with an error saying how to pass it.
        example: a minimal config overlay that trains with this plugin (used by
            ``mixhub plugins doctor`` for its smoke run; e.g. the dataset or companion plugins
            it needs). Default: a tiny run of its first task kind.
    """

    name: str
    options: type[PluginOptions] = PluginOptions
    slots: tuple[str, ...] = ()
    claims: Callable[[Any], Iterable[str]] | None = None
    task_kinds: tuple[str, ...] = ("classification", "regression")
    conflicts: tuple[str, ...] = ()
    aux_loss_weights: dict[str, float] = field(default_factory=dict)
    description: str = ""
    validate: Callable[[Any, Any], list[str] | None] | None = None
    example: dict[str, Any] | None = None
    needs_max_steps: bool = False

    def claimed_slots(self, options: Any) -> tuple[str, ...]:
        slots = tuple(self.claims(options)) if self.claims is not None else self.slots
        for slot in slots:
            if slot not in hookspecs.SLOTS:
                raise PluginLoadError(
                    f"plugin {self.name!r} claims unknown slot {slot!r}{did_you_mean(slot, hookspecs.SLOTS)}"
                )
        return slots
