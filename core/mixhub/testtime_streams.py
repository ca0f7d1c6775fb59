"""Test-time streams: stream orders and episodes (the loop that runs them is
``mixhub.protocols.testtime``; the ``testtime`` config section is ``protocol_sections.TestTimeConfig``).

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
the wall time per batch; a per-batch accuracy trace (``testtime_trace.png``, ``mixhub.run.plots.plot_trace``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .batch import Batch
from .errors import ConfigError, DataError
from .metrics import ece, nll
from .protocol_sections import TestTimeConfig

__all__ = [
    "Episode",
    "iid_order",
    "dirichlet_order",
    "stream_stats",
    "build_episodes",
    "load_batch",
    "scores",
]


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
def load_batch(domains: dict[str, Dataset], items: list[tuple[str, int]]) -> Batch:
    xs, ys = [], []
    for d, i in items:
        x, y = domains[d][i]
        xs.append(torch.as_tensor(x))
        ys.append(torch.as_tensor(y))
    return Batch(inputs=torch.stack(xs), targets=torch.stack(ys), index=torch.tensor([i for _, i in items]))


def scores(logits: Tensor, targets: Tensor) -> dict[str, float]:
    acc = float((logits.argmax(1) == targets).float().mean())
    return {"err": 100.0 * (1.0 - acc), "nll": nll(logits, targets), "ece": ece(logits, targets), "n": int(len(targets))}
