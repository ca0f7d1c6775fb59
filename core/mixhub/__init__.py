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
from .protocol_sections import ContinualConfig, TestTimeConfig
from .records import LogRecord
from .replay_memory import ReplayBuffer, memory_of, replay_forward, replay_loss
from .state import ModuleSpec, State
from .tracking import TrackInfo, track_info

__version__ = "0.1.0"

__all__ = [
    "Arm",
    "Batch",
    "CheckpointError",
    "ConfigError",
    "ContinualConfig",
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
    "ReplayBuffer",
    "SLOTS",
    "Session",
    "SlotConflictError",
    "State",
    "Suite",
    "TestTimeConfig",
    "TestTimeNorm",
    "TrackInfo",
    "hookimpl",
    "hookspec",
    "memory_of",
    "mix_inputs",
    "mixed_cross_entropy",
    "replay_forward",
    "replay_loss",
    "track_info",
]
