"""The config sections of the core's protocols: ``continual`` (task streams, the replay buffer,
forgetting) and ``testtime`` (``mixhub eval --stream``). Registered on import; ``config`` imports
this module when it resolves a run's sections (``SECTION_MODULES``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .config import Section, register_section

__all__ = ["ContinualConfig", "TestTimeConfig"]


class ContinualConfig(Section):
    """The ``continual`` config section (used only when the data is a task stream)."""

    protocol: Literal["online", "iid"] = Field(
        "online", description="online: the task stream; iid: offline on the union of tasks (upper bound)"
    )
    batch_size: int = Field(10, ge=1, description="stream batch size (Mai's ER: 10)")
    memory_size: int = Field(100, ge=0, description="replay buffer capacity M (0: no buffer)")
    retrieve_size: int = Field(
        10, ge=1, description="memory samples retrieved per step (Mai's eps_mem_batch: 10)"
    )
    passes: int = Field(1, ge=1, description="passes over each task (online learning: 1)")
    iid_epochs: int = Field(1, ge=1, description="protocol=iid: epochs over the union of the tasks")
    forgetting: Literal["paper", "mai"] = Field(
        "paper", description="paper: over T-1 tasks (DualMix Eq. 15); mai: over all T tasks"
    )
    shuffle: bool = Field(True, description="shuffle within each task (seeded)")
    eval_val: bool = Field(True, description="also evaluate every task's validation set after each task")


register_section("continual", ContinualConfig)


class TestTimeConfig(Section):
    """The ``testtime`` section: how ``mixhub eval --stream`` builds and runs the streams."""

    __test__ = False  # not a pytest class

    setting: Literal["single", "continual", "mixed"] = Field("continual", description="single: reset per domain; continual: no reset; mixed: one shuffled stream of all domains")
    order: Literal["iid", "dirichlet"] = Field("iid", description="iid: plain shuffle; dirichlet: label-correlated (class-blocked) order")
    delta: float = Field(0.1, gt=0.0, description="Dirichlet concentration of the label-correlated order (smaller: longer class runs)")
    batch_size: int = Field(64, ge=1, description="stream batch size")
    domains: list[str] = Field(default_factory=list, description="domains (extra splits) in stream order; empty: every extra split, else the test split")
    seed: int | None = Field(None, description="seed of the stream order (default: the run seed)")
    max_tries: int = Field(1000, ge=1, description="dirichlet: seeded tries before giving up")
    min_chunk: int = Field(10, ge=1, description="dirichlet: the least samples a chunk must hold")
    plot: bool = Field(True, description="write the per-batch accuracy trace PNG")


register_section("testtime", TestTimeConfig)
