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
    """Base class of mixhub's errors.

    An error raised in a DataLoader worker reaches the main process rebuilt from its formatted
    traceback ("Caught DataError in DataLoader worker process 0. Original Traceback ..."); the
    message is cut back to the original one, so the user reads one line, not the worker's stack.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (_original_message(args[0], type(self).__name__),)
        super().__init__(*args)


def _original_message(message: str, name: str) -> str:
    """The original message of a worker's re-raised error, else ``message`` unchanged."""
    if not message.startswith(f"Caught {name} ") or "\nOriginal Traceback" not in message:
        return message
    tail = message.rstrip()
    at = tail.rfind(f"{name}: ")
    return tail[at + len(name) + 2 :] if at >= 0 else message


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
