"""Experience replay (ER): hooks only.

The core runs the online class-incremental protocol and owns the replay buffer (reservoir
update with the raw stream batch after the step, random retrieval before it; both are slots
other plugins may take). It hands the retrieved memory to the step as
``batch.extras["memory"]``. ER claims the forward and the loss: two forwards (stream, memory)
and the sum of both cross-entropies, one optimizer step. The stream part goes through the
plan, so a stream-mixing plugin (e.g. ``mixup``) composes with ER.

Without this plugin (or any other that reads the memory) a continual run is the fine-tune
lower bound.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from mixhub import Batch, MixPlan, PluginOptions, PluginSpec, State, hookimpl, replay_forward, replay_loss


class ReplayOptions(PluginOptions):
    """ER has no options of its own: memory size and retrieval size are the core's
    ``continual.memory_size`` and ``continual.retrieve_size``."""


PLUGIN = PluginSpec(
    name="replay",
    options=ReplayOptions,
    slots=("forward", "compute_loss"),
    task_kinds=("continual",),
    description="experience replay (ER): CE on the stream plus CE on a random memory batch, one step",
)


@hookimpl
def mixhub_forward(model: nn.Module, batch: Batch, plan: MixPlan, state: State) -> dict[str, Any]:
    return replay_forward(model, batch)


@hookimpl
def mixhub_compute_loss(outputs: dict[str, Any], batch: Batch, plan: MixPlan, state: State) -> Tensor:
    return replay_loss(outputs, batch, plan, state.config.train.label_smoothing)
