"""mixhub: a plugin registry of training methods for PyTorch and timm.

The public API: everything a plugin or a user's own training loop may import. Plugins
import only names exported here (never ``mixhub._*`` or another plugin).
"""

from __future__ import annotations

from .batch import Batch
from .bench.suite import Arm, Suite
from .defaults import mix_inputs, mixed_cross_entropy
from .engine import Session
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    MixhubError,
    PluginError,
    PluginHookError,
    PluginLoadError,
    SlotConflictError,
)
from .hookspecs import SLOTS, hookimpl, hookspec
from .norm import TestTimeNorm
from .plan import MixPlan
from .plugins import PluginOptions, PluginSpec
from .records import LogRecord
from .state import ModuleSpec, State
from .tracking import TrackInfo, track_info

__version__ = "0.1.0"

__all__ = [
    "Arm",
    "Batch",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "LogRecord",
    "MixPlan",
    "MixhubError",
    "ModuleSpec",
    "PluginError",
    "PluginHookError",
    "PluginLoadError",
    "PluginOptions",
    "PluginSpec",
    "SLOTS",
    "Session",
    "SlotConflictError",
    "State",
    "Suite",
    "TestTimeNorm",
    "TrackInfo",
    "hookimpl",
    "hookspec",
    "mix_inputs",
    "mixed_cross_entropy",
    "track_info",
]
