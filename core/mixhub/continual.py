"""Online class-incremental (OCI) learning: config, replay buffer, ER helpers and metrics.

The protocol itself (the task loop) is ``mixhub.protocols.continual``: ``Trainer.fit()`` hands
it a run whose data is a task stream (``DataBundle.task == "continual"``, e.g. ``split-digits``).
This module holds what the loop and the replay plugins share: the config section, the buffer,
the ER helpers and the metrics. The protocol follows Mai et al.'s online
continual-learning code (``RaptorMai/online-continual-learning``: ``agents/exp_replay.py``,
``utils/buffer/reservoir_update.py``, ``utils/buffer/random_retrieve.py``,
``experiment/metrics.py``)::

    for task t:                                           # disjoint classes, known boundaries
        mixhub_task_start(state)                          # state.task, state.old_classes
        for stream batch (continual.batch_size, shuffled within the task, drop_last, one pass):
            memory = mixhub_replay_retrieve(buffer, batch, state)   # slot; skipped while empty
            batch.extras["memory"] = memory               # a Batch, for the forward/loss owners
            trainer.train_step(batch)                     # sample_pairs ... step, after_step
            mixhub_replay_update(buffer, raw batch, state)          # slot; after the step
        mixhub_task_end(state)
        evaluate every task's test set -> row t of the accuracy matrix, error shares
        checkpoint (model, optimizer, ... and the buffer)

One head over all classes from the start, no masking, no task identity at test time. The core's
default forward and loss ignore the memory: without a replay plugin (``replay``, ``dualmix``) a
run is the *fine-tune* lower bound. ``continual.protocol: iid`` trains offline on the union of
the tasks (shuffled, ``continual.iid_epochs`` passes): the *i.i.d.* upper bound.

Metrics (``a[i, j]``: accuracy on task j's test set after training task i, T tasks):

* average accuracy ``A_T = mean_j a[T-1, j]`` over all tasks (unseen ones count);
* average forgetting, ``forgetting: paper`` (DualMix Eq. 15, the default):
  ``F_T = 1/(T-1) sum_{j<T-1} (max_{l<T-1} a[l, j] - a[T-1, j])``; ``forgetting: mai``
  (``experiment/metrics.py``) averages over all T tasks with the max over all rows;
* error shares after task i (``agents/base.py``): er(n,o), the share of misclassified test
  samples of the current task's classes that were predicted as an old class; er(o,n), the share
  of misclassified old-class test samples that were predicted as a current-task class.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from .batch import Batch
from .config import Section, register_section

__all__ = [
    "ContinualConfig",
    "ReplayBuffer",
    "average_accuracy",
    "average_forgetting",
    "error_shares",
    "plot_accuracy_matrix",
    "memory_of",
    "replay_forward",
    "replay_loss",
    "soft_cross_entropy",
]

log = logging.getLogger("mixhub.continual")


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


# =============================================================================== the buffer
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


# =============================================================================== metrics
def _rows(matrix: list[list[float]] | Tensor) -> Tensor:
    return torch.as_tensor(matrix, dtype=torch.float64)


def average_accuracy(matrix: list[list[float]] | Tensor, after: int | None = None) -> float:
    """``mean_j a[i, j]`` over all tasks j, after task ``i = after`` (default: the last row)."""
    a = _rows(matrix)
    i = a.shape[0] - 1 if after is None else after
    return float(a[i].mean())


def average_forgetting(
    matrix: list[list[float]] | Tensor, mode: str = "paper", after: int | None = None
) -> float:
    """Average forgetting after task ``i`` (default: the last row; 0-based; needs ``i >= 1``).

    ``paper`` (DualMix Eq. 15): ``1/i sum_{j<i} (max_{l<i} a[l, j] - a[i, j])``.
    ``mai`` (as Mai's ``experiment/metrics.py`` reports it per run): the max runs over all rows so
    far, the current one included, and the mean over all ``i + 1`` seen tasks (the current
    task's term is then usually 0): ``1/(i+1) sum_{j<=i} (max_{l<=i} a[l, j] - a[i, j])``.
    """
    a = _rows(matrix)
    i = a.shape[0] - 1 if after is None else after
    if i < 1:
        return 0.0
    if mode == "paper":
        best = a[:i, :i].max(0).values
        return float((best - a[i, :i]).mean())
    if mode == "mai":
        best = a[: i + 1, : i + 1].max(0).values
        return float((best - a[i, : i + 1]).mean())
    raise ValueError(f"forgetting mode must be 'paper' or 'mai', got {mode!r}")


def error_shares(
    pred: Tensor, targets: Tensor, new_classes: list[int], old_classes: list[int]
) -> dict[str, float | None]:
    """er(n,o) and er(o,n) over test samples of the seen classes (Mai's ``agents/base.py``).

    er(n,o): among misclassified samples of ``new_classes``, the share predicted as an old
    class. er(o,n): among misclassified samples of ``old_classes``, the share predicted as a new
    class. ``None`` where there is no such misclassified sample (e.g. no old classes yet).
    """
    pred, targets = pred.cpu(), targets.cpu()
    new = torch.as_tensor(new_classes, dtype=torch.long)
    old = torch.as_tensor(old_classes, dtype=torch.long)
    wrong = pred != targets
    is_new_y, is_old_y = torch.isin(targets, new), torch.isin(targets, old)
    wn, wo = wrong & is_new_y, wrong & is_old_y
    out: dict[str, float | None] = {"er_no": None, "er_on": None}
    if int(wn.sum()) > 0 and old.numel():
        out["er_no"] = float(torch.isin(pred[wn], old).float().mean())
    if int(wo.sum()) > 0:
        out["er_on"] = float(torch.isin(pred[wo], new).float().mean())
    return out


def plot_accuracy_matrix(
    matrix: list[list[float]], path: Path, title: str = "accuracy after each task"
) -> Path:
    """Heat map of ``a[i, j]`` (rows: after task i; columns: test set of task j), in percent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = _rows(matrix).numpy() * 100
    n_rows, n_cols = a.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * n_cols, 0.9 + 0.6 * n_rows))
    im = ax.imshow(a, vmin=0, vmax=100, cmap="viridis")
    for i in range(n_rows):
        for j in range(n_cols):
            ax.text(
                j,
                i,
                f"{a[i, j]:.0f}",
                ha="center",
                va="center",
                color="w" if a[i, j] < 60 else "k",
                fontsize=8,
            )
    ax.set_xticks(range(n_cols), [f"T{j + 1}" for j in range(n_cols)])
    ax.set_yticks(range(n_rows), [f"after T{i + 1}" for i in range(n_rows)])
    ax.set_xlabel("test set of task")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
