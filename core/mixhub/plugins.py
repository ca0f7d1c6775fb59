"""Plugin discovery, activation, slot ownership and error context.

Discovery is not activation: ``discover()`` reads entry points (group ``mixhub``) without
importing anything; a run activates only the plugins its config names.

Length: discovery, the host (slots, collectors, wrappers) and the compatibility checks share
the error-context code that names a failing plugin, its distribution and the hook.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from ._util import did_you_mean
from .errors import PluginHookError, PluginLoadError, SlotConflictError
from .spec import TASK_KINDS, PluginOptions, PluginSpec

__all__ = [
    "PluginSpec",
    "PluginOptions",
    "EntryPointInfo",
    "LoadedPlugin",
    "discover",
    "duplicates",
    "load_plugin",
    "PluginHost",
    "TASK_KINDS",
]

log = logging.getLogger("mixhub.plugins")
GROUP = "mixhub"


@dataclass(frozen=True)
class EntryPointInfo:
    name: str
    value: str
    distribution: str
    version: str


@dataclass
class LoadedPlugin:
    name: str
    obj: Any  # module or object holding hookimpls
    spec: PluginSpec
    distribution: str = "<in-process>"
    version: str = "0"

    @property
    def label(self) -> str:
        return f"plugin {self.name!r} ({self.distribution} {self.version})"


def discover_all() -> dict[str, list[EntryPointInfo]]:
    """Every installed registration by plugin name (one name may be registered by several distributions)."""
    found: dict[str, list[EntryPointInfo]] = {}
    for ep in metadata.entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        info = EntryPointInfo(
            name=ep.name,
            value=ep.value,
            distribution=dist.metadata["Name"] if dist is not None else "?",
            version=dist.version if dist is not None else "?",
        )
        same = found.setdefault(ep.name, [])
        if not any((i.distribution, i.value) == (info.distribution, info.value) for i in same):
            same.append(info)  # one distribution seen twice on sys.path is not a conflict
    return found


def duplicate_message(name: str, infos: list[EntryPointInfo]) -> str:
    both = " and ".join(f"{i.distribution} {i.version} ({i.value})" for i in infos)
    return f"plugin name {name!r} is registered by {len(infos)} installed distributions: {both}; uninstall all but one"


def discover() -> dict[str, EntryPointInfo]:
    """Installed plugins by name, from entry-point metadata only (nothing is imported).

    A name registered by several distributions maps to the first; ``duplicates()`` lists them,
    and activating such a name is an error (``resolve_plugins``).
    """
    return {name: infos[0] for name, infos in discover_all().items()}


def duplicates() -> dict[str, list[EntryPointInfo]]:
    """Plugin names that several installed distributions register."""
    return {name: infos for name, infos in discover_all().items() if len(infos) > 1}


def spec_of(obj: Any, name: str, where: str) -> PluginSpec:
    spec = getattr(obj, "PLUGIN", None)
    if not isinstance(spec, PluginSpec):
        raise PluginLoadError(f"{where} has no `PLUGIN = mixhub.PluginSpec(...)` declaration")
    if spec.name != name:
        raise PluginLoadError(f"{where} declares name {spec.name!r} but is registered as {name!r}")
    return spec


def load_plugin(info: EntryPointInfo) -> LoadedPlugin:
    """Import one discovered plugin; any failure becomes a ``PluginLoadError`` naming it."""
    where = f"plugin {info.name!r} ({info.distribution} {info.version}, entry point {info.value!r})"
    try:
        module_name, _, attr = info.value.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in filter(None, attr.split(".")):
            obj = getattr(obj, part)
    except BaseException as exc:  # noqa: BLE001 - a plugin must never take the host down
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise PluginLoadError(f"{where} failed to import: {type(exc).__name__}: {exc}") from exc
    spec = spec_of(obj, info.name, where)
    return LoadedPlugin(info.name, obj, spec, info.distribution, info.version)


def unknown_hooks_message(obj: Any, exc: Exception) -> str:
    """``declares unknown hook 'mixhub_x' (did you mean ...)``, or pluggy's own text for other validation errors."""
    unknown = sorted(
        a for a in dir(obj) if a.startswith("mixhub_") and hasattr(getattr(obj, a, None), "mixhub_impl") and not hasattr(hookspecs, a)
    )
    if not unknown:
        return str(exc).replace(repr(obj), "it")
    known = [h for h in dir(hookspecs) if h.startswith("mixhub_")]
    return "; ".join(f"declares unknown hook {h!r}{did_you_mean(h, known)}" for h in unknown)


def _hook_codes(obj: Any) -> set[Any]:
    codes = set()
    for attr in dir(obj):
        if attr.startswith("mixhub_"):
            fn = getattr(obj, attr, None)
            fn = getattr(fn, "__func__", fn)
            code = getattr(fn, "__code__", None)
            if code is not None:
                codes.add(code)
    return codes


class PluginHost:
    """The typed facade over pluggy for one run: active plugins, slot owners, error context.

    The core's defaults are a plugin too (``mixhub.defaults``), registered like any other and
    called last.
    """

    def __init__(self, plugins: list[LoadedPlugin], slot_owners: dict[str, str] | None = None) -> None:
        from . import defaults

        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, LoadedPlugin] = {}
        self.core = LoadedPlugin("core", defaults, defaults.PLUGIN, "mixhub", _core_version())
        self.pm.register(defaults, name="core")
        # Collectors run in reverse registration order; register reversed to run in config order.
        for plugin in reversed(plugins):
            try:
                self.pm.register(plugin.obj, name=plugin.name)
            except Exception as exc:
                raise PluginLoadError(f"{plugin.label} has invalid hooks: {exc}") from exc
            self.plugins[plugin.name] = plugin
        self.plugins = {p.name: self.plugins[p.name] for p in plugins}
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            culprit = next((p for p in self.plugins.values() if p.obj is exc.plugin), None)
            label = culprit.label if culprit is not None else f"plugin {getattr(exc.plugin, '__name__', type(exc.plugin).__name__)!r}"
            raise PluginLoadError(f"{label}: {unknown_hooks_message(exc.plugin, exc)}") from exc
        self._codes = {name: _hook_codes(p.obj) for name, p in self.plugins.items()}
        self._codes["core"] = _hook_codes(defaults)
        self.slot_owners: dict[str, str] = dict(slot_owners or {})
        self._slot_callers: dict[str, Any] = {}
        for slot, hookname in hookspecs.SLOTS.items():
            owner = self.slot_owners.get(slot)
            others = [p.obj for n, p in self.plugins.items() if n != owner]
            self._slot_callers[slot] = (
                self.pm.subset_hook_caller(hookname, remove_plugins=others) if others else getattr(self.pm.hook, hookname)
            )
        if os.environ.get("MIXHUB_TRACE_HOOKS", "") not in ("", "0"):
            self._enable_trace()

    # ------------------------------------------------------------------ tracing
    def _enable_trace(self) -> None:
        def before(hook_name: str, impls: Any, kwargs: Any) -> None:
            names = [i.plugin_name for i in impls]
            print(f"[mixhub trace] {hook_name} -> {', '.join(reversed(names))}", file=sys.stderr)

        def after(outcome: Any, hook_name: str, impls: Any, kwargs: Any) -> None:
            exc = outcome.exception
            if exc is not None:
                print(f"[mixhub trace] {hook_name} raised {type(exc).__name__}: {exc}", file=sys.stderr)

        self.pm.add_hookcall_monitoring(before, after)

    # ------------------------------------------------------------------ error context
    def _culprit(self, exc: BaseException) -> str:
        culprit = "core"
        for frame, _ in traceback.walk_tb(exc.__traceback__):
            for name, codes in self._codes.items():
                if frame.f_code in codes:
                    culprit = name
        return culprit

    def _label(self, name: str) -> str:
        plugin = self.plugins.get(name, self.core)
        return plugin.label if name != "core" else f"mixhub core ({self.core.version})"

    @contextmanager
    def context(self, hook: str) -> Iterator[None]:
        try:
            yield
        except PluginHookError:
            raise
        except Exception as exc:
            name = self._culprit(exc)
            if name == "core":
                raise
            raise PluginHookError(
                f"{self._label(name)} raised in hook {hook}: {type(exc).__name__}: {exc}", plugin=name, hook=hook
            ) from exc

    # ------------------------------------------------------------------ calls
    def owner(self, slot: str) -> str:
        return self.slot_owners.get(slot, "core")

    def slot(self, slot: str, expected: type | tuple[type, ...] | None = None, allow_none: bool = False, **kwargs: Any) -> Any:
        """Call a slot's owner (or the core default); check the result's type.

        ``allow_none`` accepts ``None`` as an answer (e.g. ``replay_retrieve`` on an empty buffer).
        """
        hookname = hookspecs.SLOTS[slot]
        with self.context(hookname):
            result = self._slot_callers[slot](**kwargs)
        if result is None and allow_none:
            return None
        if result is None:
            raise PluginHookError(f"no implementation of {hookname} returned a value", plugin="core", hook=hookname)
        if expected is not None and not isinstance(result, expected):
            names = expected.__name__ if isinstance(expected, type) else " or ".join(t.__name__ for t in expected)
            owner = self.owner(slot)
            raise PluginHookError(
                f"{self._label(owner)} returned {type(result).__name__} from {hookname}; expected {names}",
                plugin=owner,
                hook=hookname,
            )
        return result

    def collect(self, hookname: str, **kwargs: Any) -> list[Any]:
        """Call a collector; results in config order (core default last), ``None`` dropped."""
        with self.context(hookname):
            results = getattr(self.pm.hook, hookname)(**kwargs)
        return [r for r in results if r is not None]

    def per_plugin(self, hookname: str, **kwargs: Any) -> dict[str, Any]:
        """Call a collector plugin by plugin; ``{plugin: result}`` (for state dicts)."""
        out: dict[str, Any] = {}
        for name, plugin in self.plugins.items():
            fn = getattr(plugin.obj, hookname, None)
            if fn is None or not hasattr(fn, "mixhub_impl"):
                continue
            with self.context(hookname):
                result = fn(**kwargs)
            if result is not None:
                out[name] = result
        return out

    def call_plugin(self, name: str, hookname: str, **kwargs: Any) -> Any:
        fn = getattr(self.plugins[name].obj, hookname, None)
        if fn is None or not hasattr(fn, "mixhub_impl"):
            return None
        with self.context(hookname):
            return fn(**kwargs)

    @contextmanager
    def wrap(self, hookname: str, **kwargs: Any) -> Iterator[None]:
        """Run the ``wrapper=True`` implementations of ``hookname`` around a block.

        Outermost first (``tryfirst`` wrappers are outermost, as in pluggy); teardown runs in
        reverse order even when the block (or another wrapper) raises.
        """
        impls = [i for i in getattr(self.pm.hook, hookname).get_hookimpls() if i.wrapper]
        entered: list[tuple[Any, Any]] = []
        try:
            for impl in reversed(impls):
                with self.context(hookname):
                    gen = impl.function(*[kwargs[a] for a in impl.argnames])
                    next(gen)
                entered.append((impl, gen))
        except BaseException:
            self._unwind(entered, sys.exc_info()[1], hookname)
            raise
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:  # noqa: BLE001 - handed to the wrappers, then re-raised
            error = exc
        final = self._unwind(entered, error, hookname)
        if final is not None:
            raise final

    def _unwind(self, entered: list[tuple[Any, Any]], error: BaseException | None, hookname: str) -> BaseException | None:
        for _impl, gen in reversed(entered):
            try:
                try:
                    if error is None:
                        gen.send(None)
                    else:
                        gen.throw(error)
                except StopIteration:
                    continue  # a wrapper cannot swallow the error: it propagates on
                raise RuntimeError(f"a {hookname} wrapper yielded more than once")
            except BaseException as exc:  # noqa: BLE001
                if exc is error:  # the block's own error passing through: not the wrapper's fault
                    continue
                try:
                    with self.context(hookname):
                        raise exc
                except BaseException as named:  # noqa: BLE001
                    error = named
        return error


def _core_version() -> str:
    try:
        return metadata.version("mixhub")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def resolve_plugins(
    names: list[str],
    extra: dict[str, Any] | None = None,
    registry: dict[str, dict[str, Any]] | None = None,
) -> list[LoadedPlugin]:
    """Load the named plugins: in-process ones from ``extra`` first, then entry points.

    An unknown name is an error naming it, the closest installed plugin and, when the
    registry knows it, its ``pip install`` line.
    """
    extra = extra or {}
    installed = discover()
    clashes = duplicates()
    out: list[LoadedPlugin] = []
    for name in names:
        if name in extra:
            obj = extra[name]
            spec = spec_of(obj, name, f"in-process plugin {name!r}")
            out.append(LoadedPlugin(name, obj, spec, "<in-process>", "0"))
        elif name in installed:
            if name in clashes:
                raise PluginLoadError(duplicate_message(name, clashes[name]))
            out.append(load_plugin(installed[name]))
        else:
            hint = ""
            if registry and name in registry:
                hint = f"; it is not installed: {registry[name].get('install', 'pip install ' + registry[name]['distribution'])}"
            else:
                hint = did_you_mean(name, list(installed) + list(extra))
            raise PluginLoadError(f"unknown plugin {name!r} in `plugins`{hint}")
    return out


def check_compatibility(plugins: list[LoadedPlugin], options: dict[str, Any], task_kind: str, explicit: dict[str, str]) -> dict[str, str]:
    """Task kinds, conflicts and slot ownership; returns ``{slot: owner}``."""
    names = [p.name for p in plugins]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise PluginLoadError(f"plugin(s) {dup} listed twice in `plugins`")
    for p in plugins:
        if task_kind not in p.spec.task_kinds:
            raise PluginLoadError(
                f"{p.label} does not support {task_kind} runs (it supports: {', '.join(p.spec.task_kinds)})"
            )
        for other in p.spec.conflicts:
            if other in names:
                raise PluginLoadError(f"{p.label} conflicts with plugin {other!r}; activate only one")
    claims: dict[str, list[str]] = {}
    for p in plugins:
        for slot in p.spec.claimed_slots(options[p.name]):
            claims.setdefault(slot, []).append(p.name)
    owners: dict[str, str] = {}
    for slot, who in explicit.items():
        if slot not in hookspecs.SLOTS:
            raise SlotConflictError(f"`slots.{slot}`: unknown slot{did_you_mean(slot, hookspecs.SLOTS)}")
        if who != "core" and who not in names:
            raise SlotConflictError(f"`slots.{slot}` names {who!r}, which is not an active plugin")
        if who != "core" and who not in claims.get(slot, []):
            able = claims.get(slot, [])
            hint = (
                f"active plugins that implement it: {', '.join(repr(w) for w in able)} (or `core`)"
                if able else "no active plugin implements it; drop the entry or name `core`"
            )
            raise SlotConflictError(
                f"`slots.{slot}` names {who!r}, which does not implement the slot {slot!r} "
                f"({hookspecs.SLOTS[slot]}) with these options; {hint}"
            )
        owners[slot] = who
    for slot, claimants in claims.items():
        if slot in owners:
            continue
        if len(claimants) > 1:
            raise SlotConflictError(
                f"plugins {' and '.join(repr(w) for w in claimants)} both claim the slot {slot!r} "
                f"({hookspecs.SLOTS[slot]}); name the owner with `slots.{slot}=<plugin>` or drop one"
            )
        owners[slot] = claimants[0]
    return owners
