"""Where bench cells run: in this process, in a local pool of processes, or on a Ray cluster.

An executor only places cells: each one calls ``mixhub.bench.cell.run_cell``, which writes the
finished cell; the runner and the report read those files, never the executor. Every executor
runs a failed cell once more, then records it as failed (arm, seed, error) and goes on with the
others. ``Progress`` prints one line: cells done, running and failed, and the time left.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from ..errors import MixhubError
from .cell import PARENT_ENV, CellSpec, cell_paths, run_cell
from .suite import RunFn

__all__ = ["Progress", "InlineExecutor", "LocalExecutor", "RayExecutor", "default_jobs", "visible_gpus", "make_executor"]

Failure = dict[str, Any]


def visible_gpus() -> list[str]:
    """CUDA device ids this process may use (``CUDA_VISIBLE_DEVICES`` respected), ``[]`` on CPU."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [d.strip() for d in listed.split(",") if d.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def default_jobs() -> int:
    """One cell per visible GPU; on CPU one cell at a time, using every thread."""
    return max(1, len(visible_gpus()))


def _fmt_s(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Cells done, running and failed, and an estimate of the time left.

    The estimate is the mean wall time of the cells finished so far times the cells left, divided
    by the cells that run at once (``jobs``); ``?`` until one cell has finished.
    """

    def __init__(self, name: str, total: int, jobs: int, done: int = 0, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.name, self.total, self.jobs = name, total, max(1, jobs)
        self.done, self.running, self.failed = done, 0, 0
        self.times: list[float] = []
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self._last = ""

    def started(self, cell: str | None = None) -> None:
        self.running += 1
        if cell is not None:
            self.say(f"bench {self.name}: cell {cell} ...")
        self.show()

    def finished(self, seconds: float | None = None, failed: bool = False, cell: str | None = None) -> None:
        self.running = max(0, self.running - 1)
        if failed:
            self.failed += 1
        else:
            self.done += 1
            if seconds is not None:
                self.times.append(seconds)
        if cell is not None:
            self.say(f"bench {self.name}: cell {cell} " + ("failed" if failed else f"done in {_fmt_s(seconds or 0.0)}"))
        self.show()

    def say(self, text: str) -> None:
        """One line about a cell: printed when the progress line is, else logged (``mixhub.bench``, INFO)."""
        if self.enabled:
            print(text, file=self.stream, flush=True)
        else:
            logging.getLogger("mixhub.bench").info("%s", text)

    def eta_s(self) -> float | None:
        left = self.total - self.done - self.failed
        if left <= 0:
            return 0.0
        if not self.times:
            return None
        return sum(self.times) / len(self.times) * math.ceil(left / self.jobs)

    def line(self) -> str:
        eta = self.eta_s()
        return (
            f"{self.name}: {self.done}/{self.total} cells done, {self.running} running, {self.failed} failed, "
            f"ETA {'?' if eta is None else _fmt_s(eta)}"
        )

    def show(self) -> None:
        text = self.line()
        if self.enabled and text != self._last:
            self._last = text
            print(text, file=self.stream, flush=True)


def _cell_name(spec: CellSpec) -> str:
    return f"{spec['arm']}/seed{spec['seed']}"


class InlineExecutor:
    """Cells one after another in this process (the default on CPU, and for suites with their own ``run``)."""

    def __init__(self, run_fn: RunFn | None = None, retries: int = 1) -> None:
        self.run_fn, self.retries = run_fn, retries

    def execute(self, specs: list[CellSpec], progress: Progress) -> list[Failure]:
        from ..run import RunInterrupted

        failures = []
        for spec in specs:
            progress.started(_cell_name(spec))
            t0 = time.time()
            for attempt in range(self.retries + 1):
                try:
                    run_cell(spec, self.run_fn)
                    progress.finished(time.time() - t0, cell=_cell_name(spec))
                    break
                except (RunInterrupted, KeyboardInterrupt):
                    raise
                except Exception as exc:  # noqa: BLE001 - one failed cell must not stop the others
                    if attempt == self.retries:
                        failures.append({"arm": spec["arm"], "seed": spec["seed"], "error": f"{type(exc).__name__}: {exc}"})
                        progress.finished(failed=True, cell=_cell_name(spec))
        return failures


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


class LocalExecutor:
    """``jobs`` cells at once, each in its own process (``python -m mixhub.bench.cell``).

    With GPUs, cell slot ``i`` sees only GPU ``gpus[i % len(gpus)]`` (``CUDA_VISIBLE_DEVICES``);
    every cell uses ``threads`` CPU threads (``OMP_NUM_THREADS`` and ``torch.set_num_threads``).
    A cell's output goes to ``cells/<arm>/seed<k>/cell.log``. Stopping the bench (Ctrl-C, SIGTERM)
    stops every cell; each checkpoints at its current step and resumes there on the next start.
    """

    def __init__(self, jobs: int, threads: int, gpus: list[str] | None = None, retries: int = 1, poll_s: float = 0.2) -> None:
        self.jobs, self.threads, self.gpus, self.retries, self.poll_s = max(1, jobs), max(1, threads), gpus or [], retries, poll_s

    def _start(self, spec: CellSpec, slot: int) -> subprocess.Popen[bytes]:
        folder, _ = cell_paths(spec["out"], spec["arm"], spec["seed"])
        folder.mkdir(parents=True, exist_ok=True)
        spec_path = folder / "spec.json"
        spec_path.write_text(json.dumps({**spec, "threads": self.threads}, default=str))
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads), PARENT_ENV: str(os.getpid())}
        env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)] if self.gpus else ""
        log = open(folder / "cell.log", "ab")  # noqa: SIM115 - closed when the process ends
        try:
            return subprocess.Popen([sys.executable, "-m", "mixhub.bench.cell", str(spec_path)], stdout=log, stderr=subprocess.STDOUT, env=env)
        finally:
            log.close()

    def execute(self, specs: list[CellSpec], progress: Progress) -> list[Failure]:
        queue = [(spec, 0) for spec in specs]
        running: dict[int, tuple[subprocess.Popen[bytes], CellSpec, int, float]] = {}
        failures: list[Failure] = []
        try:
            while queue or running:
                free = [s for s in range(self.jobs) if s not in running]
                while queue and free:
                    spec, attempt = queue.pop(0)
                    slot = free.pop(0)
                    running[slot] = (self._start(spec, slot), spec, attempt, time.time())
                    if attempt == 0:
                        progress.started(_cell_name(spec))
                time.sleep(self.poll_s)
                for slot, (proc, spec, attempt, t0) in list(running.items()):
                    rc = proc.poll()
                    if rc is None:
                        continue
                    del running[slot]
                    folder, cell_path = cell_paths(spec["out"], spec["arm"], spec["seed"])
                    if rc == 0 and cell_path.is_file():
                        progress.finished(time.time() - t0, cell=_cell_name(spec))
                    elif attempt < self.retries:
                        queue.insert(0, (spec, attempt + 1))
                    else:
                        failures.append({"arm": spec["arm"], "seed": spec["seed"], "error": f"exit status {rc}:\n{_log_tail(folder / 'cell.log')}"})
                        progress.finished(failed=True, cell=_cell_name(spec))
        except BaseException:
            for proc, *_ in running.values():  # each cell checkpoints and stops
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc, *_ in running.values():
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
            raise
        return failures


class RayExecutor:
    """Each cell as a Ray task on a cluster (``address``, else ``RAY_ADDRESS``, else a local instance).

    ``cpus``/``gpus``: the resources one cell asks for. The run folders go to the bench's ``--out``,
    which every node must see at the same path. A failed task is retried once by Ray
    (``max_retries=1, retry_exceptions=True``) and then recorded as failed.
    """

    def __init__(self, address: str | None = None, cpus: float = 1.0, gpus: float = 0.0, run_fn: RunFn | None = None, retries: int = 1) -> None:
        self.address, self.cpus, self.gpus, self.run_fn, self.retries = address, cpus, gpus, run_fn, retries

    @staticmethod
    def _ray() -> Any:
        try:
            import ray
        except ImportError:
            raise MixhubError("--executor ray needs Ray, which is not installed: pip install 'mixhub[ray]'") from None
        return ray

    def execute(self, specs: list[CellSpec], progress: Progress) -> list[Failure]:
        ray = self._ray()
        if not ray.is_initialized():
            ray.init(address=self.address or os.environ.get("RAY_ADDRESS") or None, log_to_driver=False)
        threads = max(1, int(self.cpus))
        task = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.retries, retry_exceptions=True)(run_cell)
        refs = {}
        for spec in specs:
            refs[task.remote({**spec, "threads": threads}, self.run_fn)] = (spec, time.time())
            progress.started(_cell_name(spec))
        failures: list[Failure] = []
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                spec, t0 = refs.pop(ref)
                try:
                    ray.get(ref)
                    progress.finished(time.time() - t0, cell=_cell_name(spec))
                except ray.exceptions.RayError as exc:
                    failures.append({"arm": spec["arm"], "seed": spec["seed"], "error": _ray_error(exc)})
                    progress.finished(failed=True, cell=_cell_name(spec))
        return failures


def _ray_error(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__


def make_executor(
    name: str,
    *,
    jobs: int | None = None,
    run_fn: RunFn | None = None,
    ray_address: str | None = None,
    cpus_per_cell: float | None = None,
    gpus_per_cell: float | None = None,
) -> tuple[Any, int]:
    """The executor ``name`` (``local`` or ``ray``) and how many cells it runs at once.

    ``local`` with one job runs cells in this process; with more, in a process pool (each cell
    with ``cpus_per_cell`` threads, default the machine's cores shared evenly). Suites with their
    own cell function (``Suite.run``) run in this process unless ``--jobs`` asks for more.
    """
    if name == "ray":
        gpus = gpus_per_cell if gpus_per_cell is not None else 0.0
        return RayExecutor(ray_address, cpus=cpus_per_cell or 1.0, gpus=gpus, run_fn=run_fn), jobs or 1
    if name != "local":
        raise MixhubError(f"--executor {name!r}: unknown executor (local or ray)")
    if ray_address or gpus_per_cell is not None:
        raise MixhubError("--ray-address and --gpus-per-cell belong to --executor ray")
    if jobs is not None and jobs < 1:
        raise MixhubError(f"--jobs {jobs}: must be at least 1")
    if run_fn is not None:  # a suite's own cell function lives in this process
        if jobs is not None and jobs > 1:
            raise MixhubError("this suite runs its cells with its own function (Suite.run); it runs in one process (--jobs 1) or on Ray")
        return InlineExecutor(run_fn), 1
    n = jobs if jobs is not None else default_jobs()
    if n == 1 and cpus_per_cell is None:
        return InlineExecutor(), 1
    threads = int(cpus_per_cell) if cpus_per_cell else max(1, (os.cpu_count() or 1) // n)
    return LocalExecutor(n, threads, visible_gpus()), n
