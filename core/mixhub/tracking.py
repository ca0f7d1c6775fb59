"""What trackers are told about a run: how it is named and filed (``track_info``: a
``records.TrackInfo`` from the ``track`` section) and which part of the config it used (``used_config``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .records import TrackInfo

if TYPE_CHECKING:
    from .state import State

__all__ = ["TrackInfo", "track_info", "used_config", "PROTOCOL_SECTIONS"]

#: Config sections that one protocol alone reads: trackers get them only from runs of that protocol.
PROTOCOL_SECTIONS = {"continual": "continual", "testtime": "testtime"}


def used_config(config: Mapping[str, Any], protocol: str) -> dict[str, Any]:
    """``config`` without the sections of the protocols other than ``protocol`` (``supervised``,
    ``continual`` or ``testtime``): what a run of that protocol reads, for trackers to log.
    ``config.yaml`` and ``summary.json`` keep the whole resolved config."""
    return {k: v for k, v in config.items() if PROTOCOL_SECTIONS.get(k, protocol) == protocol}


def track_info(state: State, tool: str) -> TrackInfo:
    """The ``TrackInfo`` of ``state``'s run for the tracker ``tool`` (e.g. ``"mlflow"``)."""
    track = getattr(state.config, "track", None)
    run_dir = state.run_dir
    shared_dir = getattr(track, "dir", None)
    root = Path(shared_dir) / tool if shared_dir else (Path(run_dir) / tool if run_dir is not None else None)
    name = getattr(track, "name", None) or (Path(run_dir).name if run_dir is not None else "run")
    return TrackInfo(
        experiment=getattr(track, "experiment", None) or "mixhub",
        name=name,
        tags=dict(getattr(track, "tags", None) or {}),
        root=root,
        shared=bool(shared_dir),
        tool=tool,
    )
