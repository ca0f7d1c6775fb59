"""The test-time protocol: a trained ``Run`` evaluated on streams, batch by batch, with online
adaptation through plugins (streams and episodes: ``mixhub.testtime_streams``; the config section:
``mixhub.protocol_sections.TestTimeConfig``).

::

    for episode in episodes(setting):       # single: one per domain; continual: one; mixed: one
        state.phase = "test-time"; state.domain = ...; state.batch_size = testtime.batch_size
        model.eval()
        with torch.no_grad():               # never inference_mode: TENT needs autograd inside
            with mixhub_evaluate(model, state):         # wrappers: swap layers / set up, restore
                for batch in episode:
                    outputs = Session.eval_batch(batch, model)   # mixhub_eval_forward: may adapt
                metrics |= mixhub_metrics("test-time", state)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import ConfigError
from ..protocol_sections import TestTimeConfig
from ..run import Run
from ..run.plots import plot_trace
from ..testtime_streams import Episode, build_episodes, load_batch, scores

__all__ = ["run_episode", "stream_domains", "evaluate_streams", "load_for_testtime", "with_training_plugins", "evaluate_checkpoint_streams"]


def run_episode(trainer: Run, episode: Episode, domains: dict[str, Dataset], cfg: TestTimeConfig) -> dict[str, Any]:
    """One episode: ``mixhub_evaluate`` around the batch loop, each batch through ``eval_forward``.

    Returns per-sample logits, targets and domains, per-batch accuracy and wall time, and the
    plugins' ``mixhub_metrics("test-time")`` taken before the wrappers restore the model.
    """
    state, host = trainer.state, trainer.host
    model = trainer.evaluation.eval_model()
    saved = (state.phase, state.stage, state.domain, state.batch_size, model.training)
    state.phase, state.stage, state.domain, state.batch_size = "test-time", "test-time", episode.name, cfg.batch_size
    logits: list[Tensor] = []
    targets: list[Tensor] = []
    sample_domain: list[str] = []
    batch_acc: list[float] = []
    batch_ms: list[float] = []
    batch_domain: list[str] = []
    extra: dict[str, float] = {}
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    try:
        model.eval()
        with torch.no_grad(), host.wrap("mixhub_evaluate", model=model, state=state):
            for name, items in episode.batches:
                state.domain = name
                batch = load_batch(domains, items).to(trainer.device)
                sync()
                t0 = time.perf_counter()
                out = trainer.session.eval_batch(batch, model)
                lg = out["logits"].detach().float()
                sync()
                batch_ms.append((time.perf_counter() - t0) * 1e3)
                lg = lg.cpu()
                y = batch.targets.cpu()
                logits.append(lg)
                targets.append(y)
                sample_domain.extend(d for d, _ in items)
                batch_acc.append(float((lg.argmax(1) == y).float().mean()))
                batch_domain.append(name)
            for d in host.collect("mixhub_metrics", stage="test-time", state=state):
                extra.update({k: float(v) for k, v in d.items()})
    finally:
        state.phase, state.stage, state.domain, state.batch_size, training = saved
        model.train(training)
    return {
        "logits": torch.cat(logits) if logits else torch.zeros(0),
        "targets": torch.cat(targets) if targets else torch.zeros(0, dtype=torch.long),
        "domains": sample_domain,
        "batch_acc": batch_acc,
        "batch_ms": batch_ms,
        "batch_domain": batch_domain,
        "plugin_metrics": extra,
    }


def stream_domains(trainer: Run, cfg: TestTimeConfig) -> dict[str, Dataset]:
    """The configured domains: named extra splits, else every extra split, else the test split."""
    splits = dict(trainer.bundle.extra_splits)
    if cfg.domains:
        missing = [d for d in cfg.domains if d not in splits and d != "test"]
        if missing:
            from .._util import did_you_mean

            raise ConfigError(f"testtime.domains: unknown domain {missing[0]!r}{did_you_mean(missing[0], list(splits))} "
                              f"(known: {', '.join(['test', *splits])})")
        return {d: (trainer.bundle.test if d == "test" and d not in splits else splits[d]) for d in cfg.domains}
    return splits or {"test": trainer.bundle.test}


def evaluate_streams(trainer: Run, out_dir: str | Path | None = None, cfg: TestTimeConfig | None = None) -> dict[str, Any]:
    """Run every episode of the configured streams; returns (and writes) the summary."""
    cfg = cfg or trainer.config.testtime
    domains = stream_domains(trainer, cfg)
    seed = cfg.seed if cfg.seed is not None else trainer.config.seed
    episodes, stats = build_episodes(domains, cfg, seed, trainer.bundle.num_classes)
    results = [run_episode(trainer, ep, domains, cfg) for ep in episodes]
    logits = torch.cat([r["logits"] for r in results])
    targets = torch.cat([r["targets"] for r in results])
    sample_domain = [d for r in results for d in r["domains"]]
    per_domain = {}
    for d in domains:
        mask = torch.tensor([s == d for s in sample_domain])
        if mask.any():
            per_domain[d] = scores(logits[mask], targets[mask])
    batch_ms = [t for r in results for t in r["batch_ms"]]
    plugin_metrics: dict[str, float] = {}
    for r in results:
        for k, v in r["plugin_metrics"].items():
            plugin_metrics[k] = plugin_metrics.get(k, 0.0) + v / len(results)
    summary: dict[str, Any] = {
        "setting": cfg.setting,
        "order": cfg.order,
        "delta": cfg.delta if cfg.order == "dirichlet" else None,
        "batch_size": cfg.batch_size,
        "episodes": len(episodes),
        "overall": {**scores(logits, targets), "mean_err": float(np.mean([v["err"] for v in per_domain.values()]))},
        "domains": per_domain,
        "stream": stats,
        "ms_per_batch": float(np.mean(batch_ms)) if batch_ms else 0.0,
        "plugins": plugin_metrics,
        "active_plugins": list(trainer.config.plugins),
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "testtime.json").write_text(json.dumps(summary, indent=2))
        with open(out / "testtime_batches.csv", "w") as fh:
            fh.write("episode,batch,domain,acc,ms\n")
            for ep, r in zip(episodes, results):
                for i, (d, a, t) in enumerate(zip(r["batch_domain"], r["batch_acc"], r["batch_ms"])):
                    fh.write(f"{ep.name},{i},{d},{a:.6f},{t:.3f}\n")
        if cfg.plot:
            title = f"{cfg.setting}, {cfg.order}" + (f" delta={cfg.delta}" if cfg.order == "dirichlet" else "") + \
                f", B={cfg.batch_size}, plugins={','.join(trainer.config.plugins) or 'none'}"
            plot_trace([a for r in results for a in r["batch_acc"]], [d for r in results for d in r["batch_domain"]],
                       out / "testtime_trace.png", title)
    return summary


# =============================================================================== checkpoints
def load_for_testtime(checkpoint_path: str | Path, overrides: dict[str, Any] | None = None, *,
                      extra_plugins: dict[str, Any] | None = None) -> Run:
    """Rebuild a trained run from a checkpoint with ``overrides`` that add test-time plugins
    (``Run.from_checkpoint`` with ``allow_new_plugins=True``). The training run's plugins
    stay active (with their saved state): ``plugins`` in ``overrides`` names the ones to add."""
    overrides = with_training_plugins(checkpoint_path, overrides)
    return Run.from_checkpoint(checkpoint_path, overrides, extra_plugins=extra_plugins, allow_new_plugins=True)


def with_training_plugins(checkpoint_path: str | Path, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """``overrides`` whose ``plugins`` list starts with the checkpoint's own plugins (then the added ones)."""
    from ..checkpoint import load_checkpoint
    from ..config import plugin_names

    overrides = dict(overrides or {})
    if "plugins" not in overrides:
        return overrides
    saved = plugin_names(load_checkpoint(checkpoint_path).get("config", {}))
    added = plugin_names({"plugins": overrides["plugins"]})
    overrides["plugins"] = saved + [p for p in added if p not in saved]
    return overrides


def evaluate_checkpoint_streams(checkpoint_path: str | Path, overrides: dict[str, Any], out_dir: str | Path | None, *,
                                extra_plugins: dict[str, Any] | None = None) -> dict[str, Any]:
    """``mixhub eval CHECKPOINT --stream [key=value ...]``: test-time evaluation of a checkpoint.

    ``overrides`` is a nested config dict (``plugins``, ``testtime.*``, plugin sections,
    ``data.*``); results go to ``out_dir`` (``testtime.json``, ``testtime_batches.csv``,
    ``testtime_trace.png``). With an ``out_dir`` the evaluation is also a tracked run: inside
    ``mixhub_fit``, logger plugins receive its config, its summary and those files
    (``state.run_dir`` is ``out_dir``).
    """
    trainer = load_for_testtime(checkpoint_path, overrides, extra_plugins=extra_plugins)
    if out_dir is None:
        return evaluate_streams(trainer, None)
    from ..run.recorder import RunLog

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer.state.run_dir = out
    runlog = RunLog(None, trainer.host, trainer.state)  # the files are written by evaluate_streams
    with trainer.host.wrap("mixhub_fit", state=trainer.state):
        runlog.config(trainer.config.to_dict(), {n: p.version for n, p in trainer.host.plugins.items()}, protocol="testtime")
        summary = evaluate_streams(trainer, out)
        runlog.summary(summary)
        for name in ("testtime.json", "testtime_trace.png"):
            runlog.artifact(out / name)
    return summary
