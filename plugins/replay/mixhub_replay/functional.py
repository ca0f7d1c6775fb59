"""ER's loss as a pure function (Mai et al., ``agents/exp_replay.py`` of
``RaptorMai/online-continual-learning@6175ca0``).

ER runs the stream batch and the retrieved memory batch through the model in two separate
forward passes, takes a cross-entropy on each and makes one optimizer step with both
gradients (Mai calls ``backward`` twice before one ``opt.step()``; the gradient of the sum is
the same). The buffer itself (reservoir update, random retrieval) is the core's
``mixhub.ReplayBuffer``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["er_loss"]


def er_loss(
    stream_logits: Tensor,
    stream_targets: Tensor,
    memory_logits: Tensor | None = None,
    memory_targets: Tensor | None = None,
) -> Tensor:
    """``CE(f(x_s), y_s) + CE(f(x_m), y_m)``; the memory term is dropped when there is no memory.

    Example, in a plain loop::

        logits = model(x_s)
        mem = buffer.random_retrieve(10, g)            # mixhub.ReplayBuffer
        mem_logits = model(mem.inputs) if mem is not None else None
        loss = er_loss(logits, y_s, mem_logits, None if mem is None else mem.targets)
        opt.zero_grad(); loss.backward(); opt.step()
        buffer.reservoir_update(Batch(x_s, y_s, idx), g)   # raw stream batch, after the step
    """
    loss = F.cross_entropy(stream_logits.float(), stream_targets)
    if memory_logits is not None and memory_logits.shape[0] > 0:
        if memory_targets is None:
            raise ValueError("er_loss: memory_logits given without memory_targets")
        loss = loss + F.cross_entropy(memory_logits.float(), memory_targets)
    return loss
