"""The online class-incremental (OCI) protocol: the task loop over a ``Run``.

``Trainer.fit()`` hands it a run whose data is a task stream (``DataBundle.task == "continual"``,
e.g. ``split-digits``). The protocol follows Mai et al.'s online continual-learning code
(``RaptorMai/online-continual-learning``: ``agents/exp_replay.py``, ``experiment/metrics.py``);
the buffer and the ER helpers are ``mixhub.replay_memory``, the metrics
``mixhub.continual_metrics``, the ``continual`` config section
``mixhub.protocol_sections.ContinualConfig``::

    for task t:
        mixhub_task_start(state)
        for stream batch:
            memory = mixhub_replay_retrieve(buffer, batch, state)   # slot; skipped while empty
            batch.extras["memory"] = memory
            run.train_step(batch)                                  # Session.step + optimizer step
            mixhub_replay_update(buffer, raw batch, state)          # slot; after the step
        mixhub_task_end(state)
        evaluate every task's test set -> row t of the accuracy matrix; write the task record
        checkpoint (the buffer and the matrix travel in it, ``CheckpointKeeper.register``)

Tasks have disjoint classes and known boundaries; each is one pass (``continual.passes``) of
``continual.batch_size`` batches, shuffled within the task, ``drop_last``. One head over all classes
from the start, no masking, no task identity at test time. The core's default forward and loss
ignore the memory: without a replay plugin (``replay``, ``dualmix``) a run is the *fine-tune*
lower bound. ``continual.protocol: iid`` trains offline on the union of the tasks (shuffled,
``continual.iid_epochs`` passes): the *i.i.d.* upper bound.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
from torch import Tensor

from ..batch import Batch
from ..continual_metrics import average_accuracy, average_forgetting, error_shares
from ..errors import DataError
from ..protocol_sections import ContinualConfig
from ..replay_memory import ReplayBuffer
from ..run import Run, RunInterrupted
from ..run.plots import plot_accuracy_matrix
from .meter import LogMeter

__all__ = ["ContinualProtocol"]

log = logging.getLogger("mixhub.continual")


def _task_batches(
    dataset: Any, task: int, offset: int, cfg: ContinualConfig, seed: int, n_pass: int, skip: int
) -> list[tuple[int, Tensor]]:
    """The task's stream batches (shuffled from (seed, task, pass), ``drop_last``), skipping ``skip``."""
    n = len(dataset)
    bs = cfg.batch_size
    per_pass = n // bs
    out: list[tuple[int, Tensor]] = []
    for p in range(n_pass):
        if cfg.shuffle:
            g = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * task + p)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        for b in range(per_pass):
            k = p * per_pass + b
            if k < skip:
                continue
            out.append((k, order[b * bs : (b + 1) * bs]))  # type: ignore[arg-type]
    return out


def _load_batch(dataset: Any, rows: Tensor, offset: int, task: int) -> Batch:
    xs, ys = zip(*(dataset[int(i)] for i in rows.tolist()))
    return Batch(
        inputs=torch.stack(xs),
        targets=torch.stack([torch.as_tensor(y) for y in ys]),
        index=rows.long() + offset,
        task_id=torch.full((len(rows),), task, dtype=torch.long),
    )


class _Progress:
    """What the core must restore to resume mid-stream (saved in each checkpoint's ``extra``)."""

    def __init__(self) -> None:
        self.matrix: list[list[float]] = []
        self.val_matrix: list[list[float]] = []
        self.er: list[dict[str, float | None]] = []
        self.task_metrics: list[dict[str, float]] = []
        self.steps: list[int] = []

    def state_dict(self) -> dict[str, Any]:
        er = [{k: (-1.0 if v is None else v) for k, v in d.items()} for d in self.er]
        return {
            "matrix": self.matrix,
            "val_matrix": self.val_matrix,
            "er": er,
            "task_metrics": self.task_metrics,
            "steps": self.steps,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.matrix, self.val_matrix = sd["matrix"], sd["val_matrix"]
        self.er = [{k: (None if v == -1.0 else v) for k, v in d.items()} for d in sd["er"]]
        self.task_metrics, self.steps = sd["task_metrics"], sd["steps"]


def _register_state(run: Run, buffer: ReplayBuffer, progress: _Progress) -> None:
    """The buffer and the accuracy matrix travel in the run's own checkpoints."""

    def get() -> dict[str, Any]:
        return {"buffer": buffer.state_dict(), "progress": progress.state_dict()}

    def load(sd: dict[str, Any]) -> None:
        buffer.load_state_dict(sd["buffer"])
        progress.load_state_dict(sd["progress"])

    run.checkpoints.register("continual", get, load)


def _evaluate_tasks(
    run: Run, datasets: list[Any], stage: str, task: int, task_classes: list[list[int]]
) -> tuple[list[float], dict[str, float | None]]:
    """Accuracy on each task's split, and the error shares over the seen tasks' samples."""
    accs, preds, targets = [], [], []
    for j, ds in enumerate(datasets):
        outs, t = run.evaluation.predict(ds, f"{stage}_task{j + 1}")
        p = outs["logits"].argmax(1)
        accs.append(float((p == t).float().mean()) if len(t) else 0.0)
        if j <= task:
            preds.append(p)
            targets.append(t)
    old = sorted(c for cl in task_classes[:task] for c in cl)
    shares = error_shares(torch.cat(preds), torch.cat(targets), task_classes[task], old)
    return accs, shares


class ContinualProtocol:
    """Drives a ``Run`` whose data is a task stream; ``run_all()`` returns the summary."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def write_task_record(self, record: dict[str, Any]) -> None:
        """The one place per-task records are written: ``RunLog.epoch`` (``metrics.jsonl`` and ``mixhub_log``)."""
        self.run.records.log.epoch(record)
        self.run.records.pause_clock()

    def run_all(self) -> dict[str, Any]:
        return _fit_continual(self.run, self.write_task_record)


def _fit_continual(run: Run, write_record: Any) -> dict[str, Any]:
    """The whole OCI protocol for ``run``; returns the summary."""
    cfg: ContinualConfig = run.config.continual
    state, host, stream = run.state, run.host, run.bundle.stream
    if stream is None:
        raise DataError("continual runs need a dataset that returns a task stream (e.g. split-digits)")
    seed = int(run.config.seed)
    iid = cfg.protocol == "iid"
    n_tasks = len(stream.tasks)
    offsets = [sum(len(d) for d in stream.tasks[:t]) for t in range(n_tasks)]  # type: ignore[arg-type,misc]
    if iid:
        phases = [(run.bundle.train, 0, cfg.iid_epochs)]
        state.task_classes = [sorted(c for cl in stream.task_classes for c in cl)]
    else:
        phases = [(d, offsets[t], cfg.passes) for t, d in enumerate(stream.tasks)]
        state.task_classes = [list(c) for c in stream.task_classes]
    state.num_tasks = len(phases)
    state.batch_size = cfg.batch_size
    steps_per_phase = [(len(d) // cfg.batch_size) * p for d, _, p in phases]  # type: ignore[arg-type]
    state.steps_per_epoch = steps_per_phase[0]
    state.max_steps = sum(steps_per_phase)
    run.scheduler.total_steps = max(1, state.max_steps)
    buffer = ReplayBuffer(0 if iid else cfg.memory_size, state.device)
    progress = _Progress()
    start_task, skip = 0, 0
    resumed = state.step > 0 or state.task > 0  # resumed by CheckpointKeeper.resume()
    _register_state(run, buffer, progress)  # restores them now when resuming
    if resumed:
        start_task, skip = state.task, int(run.batch_in_epoch)
    t_start = time.time()
    for t in range(start_task, len(phases)):
        dataset, offset, n_pass = phases[t]
        state.task = state.epoch = t
        if skip == 0:
            host.collect("mixhub_task_start", state=state)
        meter = LogMeter()
        for k, rows in _task_batches(dataset, t, offset, cfg, seed, n_pass, skip):
            loaded = _load_batch(dataset, rows, offset, t)
            batch = loaded.to(state.device)
            raw = batch.replace(extras={"host_targets": loaded.targets})  # the buffer's host copy of the labels
            if len(buffer) > 0:
                memory = host.slot("replay_retrieve", expected=Batch, allow_none=True, buffer=buffer, batch=raw, state=state)
                if memory is not None:
                    batch.extras["memory"] = memory
            out = run.train_step(batch)
            if buffer.capacity > 0:
                host.slot("replay_update", buffer=buffer, batch=raw, state=state)
            run.batch_in_epoch = k + 1
            if out is not None:
                meter.add(out)
            if run.guards.stop_requested:
                run.checkpoints.save("last")
                raise RunInterrupted(
                    f"stopped at step {state.step} (task {t + 1}, batch {k + 1}); resume with `mixhub train --resume {run.folder.path}`"
                )
        skip = 0
        host.collect("mixhub_task_end", state=state)
        task_rec: dict[str, float] = {}
        for extra in host.collect("mixhub_metrics", stage="train", state=state):
            task_rec.update({key: float(v) for key, v in extra.items()})
        eval_task = n_tasks - 1 if iid else t
        eval_classes = stream.task_classes
        accs, shares = _evaluate_tasks(run, stream.test, "test", eval_task, eval_classes)
        progress.matrix.append(accs)
        progress.er.append(shares)
        progress.task_metrics.append(task_rec)
        progress.steps.append(state.step)
        val_accs: list[float] = []
        if cfg.eval_val and stream.val is not None:
            val_accs, _ = _evaluate_tasks(run, stream.val, "val", eval_task, eval_classes)
            progress.val_matrix.append(val_accs)
        rec = {
            "epoch": t + 1,  # 1-based, as everywhere a user reads an epoch (here: the task)
            "split": "task",
            "task": t + 1,
            "step": state.step,
            **meter.means(run.world_size, run.device),
        }
        rec.update({f"acc_task{j + 1}": a for j, a in enumerate(accs)})
        rec.update(avg_acc_seen=sum(accs[: eval_task + 1]) / (eval_task + 1), avg_acc=sum(accs) / len(accs))
        rec.update({k: v for k, v in shares.items() if v is not None})
        rec.update(task_rec)
        rec["buffer_size"] = len(buffer)
        write_record(rec)
        log.info(
            "task %d/%d: acc per task %s, er(n,o) %s, er(o,n) %s",
            t + 1,
            len(phases),
            [round(a, 3) for a in accs],
            shares["er_no"],
            shares["er_on"],
        )
        state.task = state.epoch = t + 1
        run.batch_in_epoch = 0
        run.checkpoints.save("last")
    state.task = len(phases) - 1
    return _summary(run, cfg, progress, buffer, time.time() - t_start)


def _summary(
    run: Run, cfg: ContinualConfig, progress: _Progress, buffer: ReplayBuffer, elapsed: float
) -> dict[str, Any]:
    matrix = progress.matrix
    iid = cfg.protocol == "iid"
    test: dict[str, Any] = {"avg_acc": average_accuracy(matrix)}
    test["acc"] = test["avg_acc"]
    if not iid:
        test["avg_forgetting"] = average_forgetting(matrix, cfg.forgetting)
    final = progress.er[-1]
    for key in ("er_no", "er_on"):
        if final[key] is not None:
            test[key] = final[key]
    test.update({f"acc_task{j + 1}": a for j, a in enumerate(matrix[-1])})
    for extra in run.host.collect("mixhub_metrics", stage="test", state=run.state):
        test.update({k: float(v) for k, v in extra.items()})
    summary: dict[str, Any] = {"test": test, "steps": run.state.step}
    if progress.val_matrix:
        val = {"avg_acc": average_accuracy(progress.val_matrix)}
        val["acc"] = val["avg_acc"]
        if not iid:
            val["avg_forgetting"] = average_forgetting(progress.val_matrix, cfg.forgetting)
        summary["val"] = val
    per_task: dict[str, float] = {}
    for i, (shares, extra) in enumerate(zip(progress.er, progress.task_metrics)):
        for k, v in {**shares, **extra}.items():
            if v is not None and isinstance(v, (int, float)) and math.isfinite(v):
                per_task[f"{k}_t{i + 1}"] = float(v)
        if i >= 1 and not iid:
            per_task[f"avg_acc_t{i + 1}"] = average_accuracy(matrix, i)
            per_task[f"avg_forgetting_t{i + 1}"] = average_forgetting(matrix, cfg.forgetting, i)
    summary["tasks"] = per_task
    summary["continual"] = {
        "protocol": cfg.protocol,
        "forgetting": cfg.forgetting,
        "acc_matrix": matrix,
        "val_acc_matrix": progress.val_matrix,
        "task_classes": run.state.task_classes if not iid else run.bundle.stream.task_classes,  # type: ignore[union-attr]
        "steps_after_task": progress.steps,
        "memory_size": cfg.memory_size if not iid else 0,
        "buffer_class_counts": buffer.class_counts(run.bundle.num_classes or 0),
        "er_no": [d["er_no"] for d in progress.er],
        "er_on": [d["er_on"] for d in progress.er],
        "task_metrics": progress.task_metrics,
        "stream_time_s": elapsed,
    }
    if run.folder.enabled and run.config.train.plots:
        plot_accuracy_matrix(
            matrix,
            run.folder.path / "accuracy_matrix.png",
            f"{'i.i.d. offline' if iid else 'accuracy after each task'}: A={test['avg_acc'] * 100:.1f}%",
        )
    for split in ("test", "val"):
        if split in summary:
            run.records.log.epoch({"epoch": len(matrix), "split": f"final_{split}", **summary[split]})
    return summary
