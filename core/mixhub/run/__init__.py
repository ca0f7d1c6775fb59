"""The run: ``Run`` (``core``) and the parts it holds, one file per role.

::

    core.py         Run: data, model, Session, optimizer, schedule, the guarded optimizer step
    parallel.py     Parallel: SyncBatchNorm/FSDP2 before the optimizer, DDP, gradient check, means
    recorder.py     RunLog (records -> files, console, mixhub_log) and RunRecords (the part)
    step_meter.py   StepMeter: step scalars on the device, read at log steps; grad_norm, group_lrs
    guards.py       Guards: batch checks, non-finite messages, stop signals
    evaluation.py   Evaluation: predict, evaluate, metrics, the predictions CSV
    keeper.py       CheckpointKeeper: save, load, resume, export, kept bests, registered state
    folder.py       RunFolder (lock, atomic writes, metrics files), EpochTally
    plots.py        what a run draws: curves, reliability, accuracy matrix, test-time trace
    startup.py      seeds, data checks, the default folder, the start lines
"""

from __future__ import annotations

from ..sampling import EpochSampler, collate
from .core import Run
from .guards import NonFiniteError, RunInterrupted
from .startup import seed_everything

__all__ = ["Run", "RunInterrupted", "NonFiniteError", "seed_everything", "collate", "EpochSampler"]
