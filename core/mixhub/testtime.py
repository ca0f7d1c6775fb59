"""Test-time evaluation on streams, with online adaptation through plugins.

A trained model is evaluated batch by batch, in stream order. Each batch is predicted on
arrival and never re-scored (the **online** error). The stream is cut into **episodes**; an
episode spans two resets::

    for episode in episodes(setting):       # single: one per domain; continual: one; mixed: one
        state.phase = "test-time"; state.domain = ...; state.batch_size = testtime.batch_size
        model.eval()
        with torch.no_grad():               # never inference_mode: TENT needs autograd inside
            with mixhub_evaluate(model, state):         # wrappers: swap layers / set up, restore
                for batch in episode:                   # i.i.d. or label-correlated order
                    outputs = mixhub_eval_forward(model, batch, state)   # slot: may adapt
                metrics |= mixhub_metrics("test-time", state)

Streams (``testtime`` config section):

* ``order: iid``: a plain shuffle; ``order: dirichlet``: the label-correlated order of NOTE
  (Gong et al. 2022) as used by UnMix-TNS (``datasets/data_loading.py``): Dirichlet(delta)
  class-to-chunk assignment, chunks emitted in turn, each class **one contiguous block** inside
  a chunk. It stays class-blocked for every delta; an i.i.d. stream is never a large delta.
* ``setting: single`` (reset per domain), ``continual`` (domains in sequence, no reset),
  ``mixed`` (all domains concatenated, then ordered as one stream).

Domains are the dataset's extra evaluation splits (e.g. ``digits-c``'s
``gaussian_noise-5``), else its test split. Metrics per domain and overall: error %, NLL, ECE;
the wall time per batch; a per-batch accuracy trace (``testtime_trace.png``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor
from torch.utils.data import Dataset

from .batch import Batch
from .config import Section, register_section
from .errors import ConfigError, DataError
from .metrics import ece, nll

__all__ = [
    "TestTimeConfig",
    "Episode",
    "iid_order",
    "dirichlet_order",
    "stream_stats",
    "build_episodes",
    "run_episode",
    "evaluate_streams",
    "evaluate_checkpoint_streams",
    "load_for_testtime",
]


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


# =============================================================================== streams
def iid_order(n: int, seed: int) -> np.ndarray:
    """A plain shuffle of ``range(n)``."""
    return np.random.default_rng(seed).permutation(n)


def dirichlet_order(labels: np.ndarray, delta: float, num_classes: int, seed: int, max_tries: int = 1000,
                    min_chunk: int = 10) -> np.ndarray:
    """Label-correlated order (NOTE's non-i.i.d. sampler, as in UnMix-TNS's ``data_loading.py``).

    1. Shuffle the indices; make ``num_classes`` empty chunks.
    2. For each class c: draw q ~ Dir(delta * 1); zero q_j for chunks already holding
       >= N / num_classes samples and renormalise; cut c's indices at the cumulative
       proportions and append the pieces to the chunks.
    3. If a chunk holds fewer than ``min_chunk`` samples, retry step 2 (``max_tries`` times).
    4. Emit chunk by chunk; inside a chunk, classes in shuffled order, each as one block.
    """
    labels = np.asarray(labels)
    n = len(labels)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    by_class = [perm[labels[perm] == c] for c in range(num_classes)]
    cap = n / num_classes
    for _ in range(max_tries):
        chunks: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
        sizes = np.zeros(num_classes)
        for c in range(num_classes):
            q = rng.dirichlet(np.full(num_classes, delta))
            q = q * (sizes < cap)
            total = q.sum()
            q = q / total if total > 0 else (sizes < cap) / max(1, int((sizes < cap).sum()))
            cuts = (np.cumsum(q) * len(by_class[c])).astype(int)[:-1]
            for j, piece in enumerate(np.split(by_class[c], cuts)):
                if len(piece):
                    chunks[j].append(piece)
                    sizes[j] += len(piece)
        if sizes.min() >= min_chunk:
            break
    else:
        raise DataError(
            f"label-correlated stream: no Dirichlet split with every chunk >= {min_chunk} samples after {max_tries} "
            f"tries (delta={delta}, N={n}, classes={num_classes}); raise testtime.delta or lower testtime.min_chunk"
        )
    out = []
    for pieces in chunks:
        for k in rng.permutation(len(pieces)):
            out.append(pieces[k])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def stream_stats(labels_in_order: np.ndarray, batch_size: int) -> dict[str, float]:
    """Mean distinct classes per batch and mean length of same-label runs of a stream."""
    y = np.asarray(labels_in_order)
    if len(y) == 0:
        return {"classes_per_batch": 0.0, "mean_run": 0.0}
    per_batch = [len(np.unique(y[i : i + batch_size])) for i in range(0, len(y), batch_size)]
    runs = np.diff(np.flatnonzero(np.concatenate([[True], y[1:] != y[:-1], [True]])))
    return {"classes_per_batch": float(np.mean(per_batch)), "mean_run": float(np.mean(runs))}


def dataset_targets(ds: Dataset) -> np.ndarray:
    t = getattr(ds, "target_tensor", None)
    if t is None:
        t = torch.stack([torch.as_tensor(ds[i][1]) for i in range(len(ds))])  # type: ignore[arg-type]
    return t.cpu().numpy()


@dataclass
class Episode:
    """Batches between two resets: each batch is ``(domain name, [(domain, index), ...])``."""

    name: str
    batches: list[tuple[str, list[tuple[str, int]]]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(len(b) for _, b in self.batches)


def _order(labels: np.ndarray, cfg: TestTimeConfig, seed: int, num_classes: int | None) -> np.ndarray:
    if cfg.order == "iid":
        return iid_order(len(labels), seed)
    if not num_classes:
        raise ConfigError("testtime.order=dirichlet needs a classification dataset")
    return dirichlet_order(labels, cfg.delta, num_classes, seed, cfg.max_tries, cfg.min_chunk)


def _chunk(items: list[tuple[str, int]], bs: int, name: str) -> list[tuple[str, list[tuple[str, int]]]]:
    return [(name, items[i : i + bs]) for i in range(0, len(items), bs)]


def build_episodes(domains: dict[str, Dataset], cfg: TestTimeConfig, seed: int, num_classes: int | None
                   ) -> tuple[list[Episode], dict[str, float]]:
    """Episodes of the configured setting and order, and the stream statistics."""
    if not domains:
        raise DataError("test-time evaluation: no domain to stream")
    bs = cfg.batch_size
    labels = {d: dataset_targets(ds) for d, ds in domains.items()}
    ordered: dict[str, list[tuple[str, int]]] = {}
    if cfg.setting == "mixed":
        pool = [(d, i) for d in domains for i in range(len(labels[d]))]
        y = np.concatenate([labels[d] for d in domains])
        order = _order(y, cfg, seed, num_classes)
        ordered["mixed"] = [pool[i] for i in order]
        episodes = [Episode("mixed", _chunk(ordered["mixed"], bs, "mixed"))]
    else:
        for d in domains:
            ordered[d] = [(d, int(i)) for i in _order(labels[d], cfg, seed, num_classes)]
        if cfg.setting == "single":
            episodes = [Episode(d, _chunk(ordered[d], bs, d)) for d in domains]
        else:
            episodes = [Episode("continual", [b for d in domains for b in _chunk(ordered[d], bs, d)])]
    stats = [stream_stats(np.array([labels[d][i] for d, i in seq]), bs) for seq in ordered.values()]
    return episodes, {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}


# =============================================================================== the loop
def _load_batch(domains: dict[str, Dataset], items: list[tuple[str, int]]) -> Batch:
    xs, ys = [], []
    for d, i in items:
        x, y = domains[d][i]
        xs.append(torch.as_tensor(x))
        ys.append(torch.as_tensor(y))
    return Batch(inputs=torch.stack(xs), targets=torch.stack(ys), index=torch.tensor([i for _, i in items]))


def run_episode(trainer: Any, episode: Episode, domains: dict[str, Dataset], cfg: TestTimeConfig) -> dict[str, Any]:
    """One episode: ``mixhub_evaluate`` around the batch loop, each batch through ``eval_forward``.

    Returns per-sample logits, targets and domains, per-batch accuracy and wall time, and the
    plugins' ``mixhub_metrics("test-time")`` taken before the wrappers restore the model.
    """
    state, host = trainer.state, trainer.host
    model = trainer.eval_model()
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
                batch = _load_batch(domains, items).to(trainer.device)
                sync()
                t0 = time.perf_counter()
                with trainer.autocast():
                    out = host.slot("eval_forward", expected=dict, model=model, batch=batch, state=state)
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


def _scores(logits: Tensor, targets: Tensor) -> dict[str, float]:
    acc = float((logits.argmax(1) == targets).float().mean())
    return {"err": 100.0 * (1.0 - acc), "nll": nll(logits, targets), "ece": ece(logits, targets), "n": int(len(targets))}


def plot_trace(batch_acc: list[float], batch_domain: list[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot(range(len(batch_acc)), [100 * a for a in batch_acc], lw=0.8)
    for i in range(1, len(batch_domain)):
        if batch_domain[i] != batch_domain[i - 1]:
            ax.axvline(i - 0.5, color="0.7", lw=0.5)
    ax.set_xlabel("batch (stream order)")
    ax.set_ylabel("batch accuracy %")
    ax.set_ylim(-2, 102)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def stream_domains(trainer: Any, cfg: TestTimeConfig) -> dict[str, Dataset]:
    """The configured domains: named extra splits, else every extra split, else the test split."""
    splits = dict(trainer.bundle.extra_splits)
    if cfg.domains:
        missing = [d for d in cfg.domains if d not in splits and d != "test"]
        if missing:
            from ._util import did_you_mean

            raise ConfigError(f"testtime.domains: unknown domain {missing[0]!r}{did_you_mean(missing[0], list(splits))} "
                              f"(known: {', '.join(['test', *splits])})")
        return {d: (trainer.bundle.test if d == "test" and d not in splits else splits[d]) for d in cfg.domains}
    return splits or {"test": trainer.bundle.test}


def evaluate_streams(trainer: Any, out_dir: str | Path | None = None, cfg: TestTimeConfig | None = None) -> dict[str, Any]:
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
            per_domain[d] = _scores(logits[mask], targets[mask])
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
        "overall": {**_scores(logits, targets), "mean_err": float(np.mean([v["err"] for v in per_domain.values()]))},
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
                      extra_plugins: dict[str, Any] | None = None) -> Any:
    """Rebuild a trained run from a checkpoint with ``overrides`` that add test-time plugins
    (``Trainer.from_checkpoint`` with ``allow_new_plugins=True``). The training run's plugins
    stay active (with their saved state): ``plugins`` in ``overrides`` names the ones to add."""
    from .trainer import Trainer

    overrides = with_training_plugins(checkpoint_path, overrides)
    return Trainer.from_checkpoint(checkpoint_path, overrides, extra_plugins=extra_plugins, allow_new_plugins=True)


def with_training_plugins(checkpoint_path: str | Path, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """``overrides`` whose ``plugins`` list starts with the checkpoint's own plugins (then the added ones)."""
    from .checkpoint import load_checkpoint
    from .config import plugin_names

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
    ``testtime_trace.png``).
    """
    trainer = load_for_testtime(checkpoint_path, overrides, extra_plugins=extra_plugins)
    return evaluate_streams(trainer, out_dir)
