"""Device-to-host synchronisations per training step, for ERM and every in-tree training plugin.

Each arm trains its plugin's smoke config (the tiny run of its task kind, as the contract tests)
for a few steps with ``train.log_every`` steps between logs (timed logs off: ``train.log_seconds=0``), and counts, in each optimizer step,
the reads of device values on the host (``mixhub.hostsync.HostSyncCounter``: ``item``,
``__bool__``, ``tolist``, ``__int__``, ``__float__``, ``numpy``, nonzero-style ops...). The counted
region is the step a protocol runs per batch: ``Run.train_step`` (sampling, mixing, forward,
loss, backward, optimizer, plugins' after-step hooks, the step record) plus, in continual runs,
the replay slots around it. Data loading and evaluation are not counted.

Prints one line per plugin (the most syncs on a step between log steps and on a log step, the
host reads that are free on a GPU, where the syncs happen), then ``max syncs at a log step M``
(target M <= 1) and, last, ``max syncs per step N``: the most on any step between log steps
(target N = 0). On CUDA (``--device
cuda``) the count comes from ``torch.cuda.set_sync_debug_mode("warn")`` instead: every warning
is one synchronisation.

    python benchmarks/host_syncs.py            # all arms
    python benchmarks/host_syncs.py mixup dualmix --steps 8 --log-every 4
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from mixhub import Batch, MixPlan, PluginSpec, State, hookimpl
from mixhub.config import apply_overrides
from mixhub.doctor import smoke_config
from mixhub.hostsync import HostSyncCounter
from mixhub.plugins import PluginHost, discover, load_plugin
from mixhub.registry import load_registry
from mixhub.run import Run
from mixhub.testing import tiny_config, tiny_regression_config

#: the in-tree plugins' folders
IN_TREE = Path(__file__).resolve().parents[1] / "plugins"
#: plugins that never train (trackers) or only adapt at test time
NOT_TRAINING = {"tent"}
#: extra arms: (label, plugin, overrides); ``three-sources`` is the in-process sampler below
EXTRA = [
    ("erm", None, {}),
    ("erm-regression", "regression", {}),
    ("mixup-cutmix", "mixup", {"mixup": {"mode": "cutmix"}}),
    ("decoupled-elem", "decoupled", {"plugins": ["timm-mixup", "decoupled"], "timm-mixup": {"mode": "elem"}, "decoupled": {"official_eta_order": False, "official_skip": False}}),
    ("decoupled-ksource", "decoupled", {"plugins": ["three-sources", "decoupled"]}),
]


class ThreeSources:
    """A third-party sampler mixing three samples with batch-constant weights 0.5/0.3/0.2
    (Decoupled Mixup's k-source path)."""

    PLUGIN = PluginSpec(name="three-sources", slots=("sample_pairs",), description="three-source mixing for the benchmark")

    @hookimpl
    def mixhub_sample_pairs(self, batch: Batch, state: State) -> MixPlan:
        b, dev = batch.size, batch.inputs.device
        perms = [torch.arange(b, device=dev)] + [torch.randperm(b, generator=state.generator).to(dev) for _ in range(2)]
        sources = [(p, torch.full((b,), w, device=dev)) for p, w in zip(perms, (0.5, 0.3, 0.2))]
        return MixPlan.pairs(perms[1], 0.5, sources=sources, source_lams=[0.5, 0.3, 0.2])


def training_plugins() -> list[str]:
    """The in-tree training plugins (``plugins/<name>`` of this checkout) that are installed;
    plugins installed from elsewhere (a third party's, an author's new one) are not arms."""
    registry = load_registry()
    names = []
    for name, info in sorted(discover().items()):
        if (registry.get(name) or {}).get("kind") == "logger" or name in NOT_TRAINING:
            continue
        if not (IN_TREE / name.replace("-", "_")).is_dir():
            continue
        spec = load_plugin(info).spec
        if spec.task_kinds and spec.task_kinds[0] == "test-time":
            continue
        names.append(name)
    return names


def arm_config(label: str, plugin: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    if plugin is None:
        return tiny_config()
    if plugin == "regression":
        return tiny_regression_config()
    info = discover()[plugin]
    cfg = smoke_config(load_plugin(info).spec)
    assert cfg is not None, label
    return apply_overrides(cfg, overrides) if overrides else cfg


class StepCounts:
    """Per optimizer step: how many synchronisations, and where.

    On CPU one ``HostSyncCounter`` is active for the whole run (so it sees where every tensor was
    made: the loader's batches and the plugins' generator draws are host tensors) and counts only
    inside ``counting()``; on CUDA ``torch.cuda.set_sync_debug_mode("warn")`` is on there instead.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.steps: list[tuple[bool, int, int, dict[str, int]]] = []  # (log step, syncs, host reads, sites)
        self.counter = HostSyncCounter()
        self.counter.enabled = False
        self._sites: Counter[str] = Counter()
        self._n = 0
        self._host = 0
        self._active = False

    @contextmanager
    def run(self) -> Iterator[None]:
        if self.device == "cuda":
            yield
            return
        with self.counter:
            yield

    @contextmanager
    def counting(self) -> Iterator[None]:
        """Count inside (nested regions count once)."""
        if self._active:
            yield
            return
        self._active = True
        try:
            if self.device == "cuda":
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                    try:
                        yield
                    finally:
                        torch.cuda.set_sync_debug_mode("default")
                        torch.cuda.synchronize()
                for w in caught:
                    if "synchroniz" in str(w.message):
                        self._n += 1
                        self._sites[f"{w.filename}:{w.lineno}"] += 1
            else:
                c = self.counter
                c.reset()
                c.enabled = True
                try:
                    yield
                finally:
                    c.enabled = False
                self._n += c.count
                self._host += c.host_reads
                self._sites.update(c.sites())
        finally:
            self._active = False

    def end_step(self, log_step: bool) -> None:
        self.steps.append((log_step, self._n, self._host, dict(self._sites)))
        self._n = self._host = 0
        self._sites = Counter()


def measure(cfg: dict[str, Any], steps: int, log_every: int, device: str, extra_plugins: dict[str, Any] | None = None) -> StepCounts:
    """Train ``cfg`` for ``steps`` optimizer steps with the step region counted."""
    cfg = copy.deepcopy(cfg)
    cfg = apply_overrides(cfg, {"train": {"log_every": log_every, "log_seconds": 0, "device": device, "epochs": 1, "max_steps_per_epoch": steps}})
    counts = StepCounts(device)
    original_step = Run.train_step
    original_slot = PluginHost.slot

    def train_step(self: Run, batch: Any) -> Any:
        with counts.counting():
            out = original_step(self, batch)
        counts.end_step(self.records.meter.is_log_step(self.state.step))
        return out

    def slot(self: PluginHost, name: str, *args: Any, **kwargs: Any) -> Any:
        if name in ("replay_retrieve", "replay_update") and kwargs.get("state") is not None and kwargs["state"].phase == "train":
            with counts.counting():
                return original_slot(self, name, *args, **kwargs)
        return original_slot(self, name, *args, **kwargs)

    from mixhub.trainer import train

    Run.train_step = train_step  # type: ignore[method-assign]
    PluginHost.slot = slot  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as d, counts.run():
            train(cfg, out=d, extra_plugins=extra_plugins)
    finally:
        Run.train_step = original_step  # type: ignore[method-assign]
        PluginHost.slot = original_slot  # type: ignore[method-assign]
    return counts


def summarise(label: str, counts: StepCounts, skip_first: int = 1) -> tuple[str, int, int]:
    """``(line, max on non-log steps, max on log steps)``; the first ``skip_first`` steps
    (one-time work such as the loss-name check and optimizer state allocation) are left out."""
    rows = counts.steps[skip_first:]
    plain = [n for log_step, n, _, _ in rows if not log_step]
    logged = [n for log_step, n, _, _ in rows if log_step]
    host = max((h for _, _, h, _ in rows), default=0)
    sites: Counter[str] = Counter()
    for _, _, _, s in rows:
        sites.update(s)
    worst_plain = max(plain, default=0)
    worst_log = max(logged, default=0)
    where = ", ".join(f"{k} x{v}" for k, v in sites.most_common(6)) or "-"
    line = (
        f"{label:<20} steps {len(rows):>3} (log {len(logged):>2})  syncs non-log {worst_plain:>3}  log {worst_log:>3}  "
        f"host reads {host:>3}  sites: {where}"
    )
    return line, worst_plain, worst_log


def arms() -> list[tuple[str, str | None, dict[str, Any]]]:
    out = [EXTRA[0], EXTRA[1]]
    out += [(name, name, {}) for name in training_plugins()]
    out += EXTRA[2:]
    return out


def measure_arm(label: str, steps: int, log_every: int, device: str = "cpu", **overrides: Any) -> StepCounts:
    """The counts of one arm (``arms()`` label); ``overrides`` are merged into its config."""
    for name, plugin, arm_overrides in arms():
        if name == label:
            cfg = arm_config(name, plugin, arm_overrides)
            if overrides:
                cfg = apply_overrides(cfg, overrides)
            return measure(cfg, steps, log_every, device, {"three-sources": ThreeSources()})
    raise KeyError(f"no arm {label!r} (have: {', '.join(a[0] for a in arms())})")


def step_batches(trainer: Any, n: int, slots: Any = nullcontext) -> Iterator[Any]:
    """``n`` training batches for ``trainer`` as its protocol builds them: in a continual run, the
    raw stream batch goes through the replay slots (``replay_update`` after the previous step,
    ``replay_retrieve`` before this one), so the batch carries a memory batch. The slots run
    inside ``slots()`` (the counted region); loading the batch does not."""
    from mixhub import ReplayBuffer

    continual = trainer.state.task_kind == "continual"
    buffer = ReplayBuffer(trainer.config.continual.memory_size if continual else 0, trainer.device)
    it = iter(trainer.loader)
    for _ in range(n):
        loaded = next(it)
        batch = loaded.to(trainer.device)
        raw = batch.replace(extras={"host_targets": loaded.targets})
        if continual and len(buffer) > 0:
            with slots():
                memory = trainer.host.slot("replay_retrieve", expected=Batch, allow_none=True, buffer=buffer, batch=raw, state=trainer.state)
            if memory is not None:
                batch.extras["memory"] = memory
        yield batch
        if continual:
            with slots():
                trainer.host.slot("replay_update", buffer=buffer, batch=raw, state=trainer.state)


def quick_counts(label: str, steps: int = 4, log_every: int = 3) -> StepCounts:
    """``label``'s counts over ``steps`` optimizer steps run directly (no evaluation, no run
    folder): the fast form the test suite uses. The replay slots of continual arms are counted."""
    from mixhub.trainer import Trainer

    plugin, overrides = next((p, o) for name, p, o in arms() if name == label)
    cfg = apply_overrides(
        arm_config(label, plugin, overrides),
        {"train": {"log_every": log_every, "log_seconds": 0, "device": "cpu", "max_steps_per_epoch": steps, "checkpoint": False}},
    )
    counts = StepCounts("cpu")
    with counts.run():
        trainer = Trainer(cfg, extra_plugins={"three-sources": ThreeSources()}, write=False)
        trainer.records.meter.max_steps = trainer.state.max_steps = steps
        for batch in step_batches(trainer, steps, counts.counting):
            with counts.counting():
                trainer.train_step(batch)
            counts.end_step(trainer.records.meter.is_log_step(trainer.state.step))
        trainer.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("only", nargs="*", help="arm labels to run (default: all)")
    ap.add_argument("--steps", type=int, default=9)
    ap.add_argument("--log-every", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    worst, worst_log = 0, 0
    for label, plugin, overrides in arms():
        if args.only and label not in args.only:
            continue
        counts = measure(arm_config(label, plugin, overrides), args.steps, args.log_every, args.device, {"three-sources": ThreeSources()})
        line, plain, logged = summarise(label, counts)
        print(line, flush=True)
        worst, worst_log = max(worst, plain), max(worst_log, logged)
    print(f"max syncs at a log step {worst_log}")
    print(f"max syncs per step {worst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
