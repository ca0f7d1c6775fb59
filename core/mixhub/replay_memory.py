"""The replay memory of online continual learning: ``ReplayBuffer`` and the experience-replay (ER)
helpers the replay plugins share.

The continual protocol (``mixhub.protocols.continual``) holds one buffer per run, fills it through
the ``mixhub_replay_update`` slot after each step and draws from it through
``mixhub_replay_retrieve`` before the next; the buffer travels in every checkpoint. The defaults
follow Mai et al.'s online continual-learning code (``RaptorMai/online-continual-learning``:
``utils/buffer/reservoir_update.py``, ``utils/buffer/random_retrieve.py``,
``agents/exp_replay.py``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .batch import Batch

__all__ = ["ReplayBuffer", "memory_of", "replay_forward", "replay_loss", "soft_cross_entropy"]


class ReplayBuffer:
    """A fixed-capacity memory of raw stream samples (inputs, targets, dataset index, task id).

    Storage is allocated at the first update, on ``device``. ``reservoir_update`` and
    ``random_retrieve`` are the default policies (the core's ``mixhub_replay_update`` and
    ``mixhub_replay_retrieve``); plugins implementing those slots may use ``add``/``replace``/
    ``batch`` to write their own policies. ``state_dict`` holds tensors and ints only.
    """

    def __init__(self, capacity: int, device: torch.device | str = "cpu") -> None:
        self.capacity = int(capacity)
        self.device = torch.device(device)
        self.inputs: Tensor | None = None
        self.targets: Tensor | None = None
        self.index: Tensor | None = None
        self.task_id: Tensor | None = None
        #: a CPU copy of the stored targets (host bookkeeping such as pairing by class reads it
        #: without a device read); written from ``batch.extras["host_targets"]`` when given
        self.targets_host: Tensor | None = None
        self.size = 0  # filled slots
        self.seen = 0  # stream samples offered so far (reservoir counter)

    def __len__(self) -> int:
        return self.size

    def _allocate(self, batch: Batch) -> None:
        cap = self.capacity
        self.inputs = torch.zeros(
            (cap, *batch.inputs.shape[1:]), dtype=batch.inputs.dtype, device=self.device
        )
        self.targets = torch.zeros(
            (cap, *batch.targets.shape[1:]), dtype=batch.targets.dtype, device=self.device
        )
        self.index = torch.full((cap,), -1, dtype=torch.long, device=self.device)
        self.targets_host = torch.zeros((cap, *batch.targets.shape[1:]), dtype=batch.targets.dtype)
        self.task_id = torch.full((cap,), -1, dtype=torch.long, device=self.device)

    def write(self, slot: int, batch: Batch, row: int) -> None:
        """Store row ``row`` of ``batch`` in ``slot`` (detached, on the buffer's device)."""
        self.write_rows([slot], batch, [row])

    def write_rows(self, slots: list[int], batch: Batch, rows: list[int]) -> None:
        """Store rows ``rows`` of ``batch`` in ``slots`` with one indexed copy per field, on the
        device (no value is read on the host); a slot named twice keeps its last row."""
        assert (
            self.inputs is not None
            and self.targets is not None
            and self.index is not None
            and self.task_id is not None
        )
        last = dict(zip(slots, rows))  # later rows win, as writing them one by one would
        if not last:
            return
        dst = torch.tensor(list(last), dtype=torch.long).to(self.device, non_blocking=True)
        src = torch.tensor(list(last.values()), dtype=torch.long).to(batch.inputs.device, non_blocking=True)
        self.inputs[dst] = batch.inputs.detach()[src].to(self.device)
        self.targets[dst] = batch.targets.detach()[src].to(self.device)
        self.index[dst] = batch.index[src].to(self.device, torch.long)
        task_id = torch.full_like(batch.index, -1) if batch.task_id is None else batch.task_id
        self.task_id[dst] = task_id[src].to(self.device, torch.long)
        if self.targets_host is not None:
            host = batch.extras.get("host_targets")
            rows_cpu, slots_cpu = torch.tensor(list(last.values()), dtype=torch.long), torch.tensor(list(last), dtype=torch.long)
            self.targets_host[slots_cpu] = (host if host is not None else batch.targets.detach().cpu())[rows_cpu].to(self.targets_host.dtype)

    def reservoir_update(self, batch: Batch, generator: torch.Generator | None = None) -> list[int]:
        """Reservoir sampling (Vitter's algorithm R), one sample at a time; returns the slots written.

        While the buffer has room, samples are appended. Afterwards the n-th stream sample
        (1-based) replaces a uniformly drawn slot with probability ``capacity / n``, so the buffer
        is a uniform sample of the stream so far. (Mai's ``reservoir_update.py`` draws against
        the count before the batch; here the count advances per sample.) The decisions are made on
        the host (counters and the CPU generator); the rows are then copied in one go.
        """
        if self.capacity <= 0 or batch.size == 0:
            return []
        if self.inputs is None:
            self._allocate(batch)
        written, rows = [], []
        for row in range(batch.size):
            self.seen += 1
            if self.size < self.capacity:
                slot = self.size
                self.size += 1
            else:
                j = int(torch.randint(0, self.seen, (1,), generator=generator))
                if j >= self.capacity:
                    continue
                slot = j
            written.append(slot)
            rows.append(row)
        self.write_rows(written, batch, rows)
        return written

    def batch(self, slots: Tensor | None = None) -> Batch:
        """The stored samples at ``slots`` (default: all filled slots) as a ``Batch``."""
        if self.inputs is None or self.size == 0:
            raise ValueError("the replay buffer is empty")
        if slots is None:
            slots = torch.arange(self.size, device=self.device)
        extras = {}
        if self.targets_host is not None and slots.device.type == "cpu":
            extras["host_targets"] = self.targets_host[slots]
        slots = slots.to(self.device)
        assert self.targets is not None and self.index is not None and self.task_id is not None
        return Batch(
            inputs=self.inputs[slots],
            targets=self.targets[slots],
            index=self.index[slots],
            task_id=self.task_id[slots],
            extras=extras,
        )

    def random_retrieve(self, n: int, generator: torch.Generator | None = None) -> Batch | None:
        """``min(n, len(self))`` distinct filled slots drawn uniformly (Mai's ``random_retrieve``); ``None`` when empty."""
        if self.size == 0:
            return None
        slots = torch.randperm(self.size, generator=generator)[: min(n, self.size)]
        return self.batch(slots)

    def class_counts(self, num_classes: int) -> list[int]:
        if self.size == 0 or self.targets is None:
            return [0] * num_classes
        return torch.bincount(self.targets[: self.size].long().cpu(), minlength=num_classes).tolist()

    def state_dict(self) -> dict[str, Any]:
        sd: dict[str, Any] = {"capacity": self.capacity, "size": self.size, "seen": self.seen}
        if self.inputs is not None:
            assert self.targets is not None and self.index is not None and self.task_id is not None
            sd.update(
                inputs=self.inputs.cpu(),
                targets=self.targets.cpu(),
                index=self.index.cpu(),
                task_id=self.task_id.cpu(),
            )
        return sd

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if int(sd["capacity"]) != self.capacity:
            raise ValueError(
                f"replay buffer capacity differs: checkpoint {sd['capacity']}, config {self.capacity}"
            )
        self.size, self.seen = int(sd["size"]), int(sd["seen"])
        if "inputs" in sd:
            self.inputs = sd["inputs"].to(self.device)
            self.targets = sd["targets"].to(self.device)
            self.index = sd["index"].to(self.device)
            self.task_id = sd["task_id"].to(self.device)
            self.targets_host = sd["targets"].cpu().clone()


# =============================================================================== ER helpers
def memory_of(batch: Batch) -> Batch | None:
    """The replay batch the core retrieved for this step (``batch.extras["memory"]``), if any."""
    mem = batch.extras.get("memory")
    return mem if isinstance(mem, Batch) and mem.size > 0 else None


def replay_forward(
    model: torch.nn.Module, batch: Batch, memory_inputs: Tensor | None = None
) -> dict[str, Any]:
    """ER's two forwards (Mai's ``exp_replay.py``): ``logits`` = f(stream) and, when there is a
    memory batch, ``memory_logits`` = f(memory) in a separate call (BatchNorm sees each alone)."""
    out: dict[str, Any] = {"logits": model(batch.inputs)}
    if memory_inputs is None:
        mem = memory_of(batch)
        memory_inputs = None if mem is None else mem.inputs
    if memory_inputs is not None and memory_inputs.shape[0] > 0:
        out["memory_logits"] = model(memory_inputs)
    return out


def soft_cross_entropy(logits: Tensor, soft_targets: Tensor) -> Tensor:
    """Mean over rows of ``-sum_c t_c log softmax(z)_c`` (dense targets, rows summing to 1)."""
    return -(soft_targets.to(torch.float32) * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def replay_loss(
    outputs: dict[str, Any],
    batch: Batch,
    plan: Any,
    label_smoothing: float = 0.0,
    memory_targets: Tensor | None = None,
) -> Tensor:
    """ER's loss: the stream loss through the plan (identity for plain ER) plus the memory CE.

    The gradients of both terms reach one optimizer step, as Mai's two ``backward`` calls
    before one ``opt.step()``. ``memory_targets`` (default: the retrieved memory's class ids)
    may be dense soft targets ``[N, C]``.
    """
    from .defaults import mixed_cross_entropy

    loss = mixed_cross_entropy(outputs["logits"], plan, label_smoothing)
    mem_logits = outputs.get("memory_logits")
    if mem_logits is None:
        return loss
    if memory_targets is None:
        mem = memory_of(batch)
        if mem is None:
            raise ValueError("replay_loss: outputs hold memory_logits but the batch carries no memory")
        memory_targets = mem.targets
    if memory_targets.is_floating_point():
        return loss + soft_cross_entropy(mem_logits, memory_targets)
    return loss + F.cross_entropy(mem_logits.float(), memory_targets, label_smoothing=label_smoothing)
