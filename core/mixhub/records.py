"""The records a run emits, as plain data: what ``mixhub_log`` receives and how a tracker names a run.

These types sit below the hook specifications (``hookspecs`` may import them) and import nothing
of the core but ``errors``; ``mixhub.run.recorder.RunLog`` makes the records and dispatches them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["LogRecord", "RECORD_KINDS", "TrackInfo", "name_clash"]

RECORD_KINDS = ("config", "step", "epoch", "summary", "artifact")


@dataclass(frozen=True)
class LogRecord:
    """One record of a run, as ``mixhub_log`` receives it.

    Attributes:
        kind: ``config``, ``step``, ``epoch``, ``summary`` or ``artifact``.
        step: optimizer steps done when the record was made (the x axis for trackers).
        epoch: the epoch (continual runs: the task), 1-based as in ``metrics.jsonl`` and on the
            console: the epoch in progress (``config``, ``step``), the record's (``epoch``), the
            last one trained (``summary``, ``artifact``; 0 when none was).
        split: epoch records: ``train``, ``val``, ``task``, ``final_test`` ...
        scalars: the numbers of the record by their plain name (``loss``, ``acc``, ``lr/head``).
        data: structured content: the config (``config``) or the summary (``summary``).
        path: the file of an ``artifact`` record.
        name: an artifact's name (default: the file name).
    """

    kind: str
    step: int
    epoch: int | None = None
    split: str | None = None
    scalars: Mapping[str, float] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in RECORD_KINDS:
            raise ValueError(f"LogRecord.kind must be one of {RECORD_KINDS}, got {self.kind!r}")
        if self.kind == "artifact" and self.path is None:
            raise ValueError("an artifact LogRecord needs a path")
        if self.kind == "epoch" and not self.split:
            raise ValueError("an epoch LogRecord needs a split")
        clash = name_clash(self.scalars)
        if clash is not None:
            raise ValueError(
                f"{self.kind} record: scalar {clash[0]!r} is also the folder of {clash[1]!r}; a metric name cannot be both "
                "(stores that file metrics by name, such as MLflow's file store, cannot hold the two)"
            )

    @property
    def prefix(self) -> str:
        """The namespace of the record's scalars in trackers.

        ``train`` for step records, ``train_epoch`` for epoch means of training,
        ``<split>`` for other epoch records (``val``, ``final_test``), ``summary`` for summaries.
        """
        if self.kind == "step":
            return "train"
        if self.kind == "epoch":
            return "train_epoch" if self.split == "train" else str(self.split)
        return self.kind

    def metrics(self) -> dict[str, float]:
        """The scalars under the names every tracker uses: ``<prefix>/<name>``.

        Non-finite values are kept (trackers decide how to show them).
        """
        return {f"{self.prefix}/{k}": float(v) for k, v in self.scalars.items()}


def name_clash(names: Iterable[str]) -> tuple[str, str] | None:
    """A pair ``(a, a/b)`` of ``names`` where one name is a ``/``-folder of another, else ``None``.

    Every tracker's store must hold every metric name: ``train/lr`` next to ``train/lr/head``
    would need ``lr`` as both a file and a folder in a store that files metrics by name.
    """
    ordered = sorted(set(names))
    for i, name in enumerate(ordered):  # a name's children sort right after it, among the names it prefixes
        for other in ordered[i + 1 :]:
            if not other.startswith(name):
                break
            if other.startswith(name + "/"):
                return name, other
    return None


@dataclass(frozen=True)
class TrackInfo:
    """How a tracker names and files a run (from the ``track`` config section).

    Attributes:
        experiment: ``track.experiment`` or ``"mixhub"``.
        name: ``track.name``, else the run folder's name, else ``"run"``.
        tags: ``track.tags``.
        root: where the tracker keeps its local files: ``<track.dir>/<tool>`` when ``track.dir``
            is set (a store shared by several runs, e.g. a bench suite), else ``<run_dir>/<tool>``;
            ``None`` when the run writes no folder and ``track.dir`` is unset.
        shared: whether ``root`` is shared with other runs (``track.dir`` set).
        tool: the tracker this info was made for.
    """

    experiment: str
    name: str
    tags: Mapping[str, str]
    root: Path | None
    shared: bool
    tool: str = ""

    def require_root(self, option: str) -> Path:
        """``root``, or a ``ConfigError`` naming the tracker's own folder ``option`` when the run
        writes no folder and ``track.dir`` is unset."""
        if self.root is None:
            raise ConfigError(f"{self.tool}: the run writes no folder; set {option} (or track.dir)")
        return self.root
