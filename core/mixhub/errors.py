"""mixhub's exceptions: each names the culprit (field, plugin, file)."""

from __future__ import annotations

__all__ = [
    "MixhubError",
    "ConfigError",
    "PluginError",
    "PluginLoadError",
    "PluginHookError",
    "SlotConflictError",
    "DataError",
    "CheckpointError",
]


class MixhubError(Exception):
    """Base class of mixhub's errors."""


class ConfigError(MixhubError, ValueError):
    """A configuration key is unknown, mistyped or out of range."""


class PluginError(MixhubError):
    """A plugin is unknown, broken, conflicting or misbehaving."""


class PluginLoadError(PluginError):
    """A plugin failed to import or declares itself wrongly."""


class PluginHookError(PluginError):
    """A plugin raised inside a hook, or returned the wrong type from a slot."""

    def __init__(self, message: str, *, plugin: str, hook: str) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.hook = hook


class SlotConflictError(PluginError):
    """Two active plugins claim one slot."""


class DataError(MixhubError, ValueError):
    """A dataset is missing, empty, corrupt, or a batch is malformed."""


class CheckpointError(MixhubError):
    """A checkpoint is corrupt, truncated, unsafe or does not match the run."""
