"""The evaluation part of a ``Run`` (``run.evaluation``): predictions through the eval hooks, metrics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .. import distributed as D
from ..config import RunConfig
from ..data.loader import BadSampleLog, eval_loader
from ..engine import Session
from ..errors import DataError
from ..metrics import classification_metrics, regression_metrics
from .parallel import Parallel

__all__ = ["Evaluation"]


class Evaluation:
    """The run's evaluation (``run.evaluation``).

    Interface:

    * ``eval_model() -> nn.Module``: the network evaluated and saved as the model;
    * ``predict(dataset, stage) -> (outputs, targets)``: every ``logits*`` output over a dataset,
      through ``mixhub_evaluate`` and the ``eval_forward`` slot, sharded over processes;
    * ``evaluate(dataset, stage) -> metrics``: ``predict``, ``metrics_from`` and the plugins'
      ``mixhub_metrics(stage)``; the outputs stay in ``last_outputs``;
    * ``metrics_from(outputs, targets)``: classification or regression metrics;
    * ``write_predictions(path, dataset, outputs, targets)``: a CSV of the last ``predict``.

    It uses the ``session`` (its host, state, eval network and ``eval_batch``), the ``config``
    (``train.batch_size``, ``data``), the distribution part (``parallel``: shards, BatchNorm
    statistics), the weight ``ema`` (or ``None``) and ``class_labels()`` (the data's labels).
    """

    def __init__(
        self,
        session: Session,
        config: RunConfig,
        parallel: Parallel,
        ema: Any = None,
        class_labels: Callable[[], list[Any] | None] = lambda: None,
    ) -> None:
        self.session = session
        self.host = session.host
        self.state = session.state
        self.config = config
        self.parallel = parallel
        self.ema = ema
        self.class_labels = class_labels
        self.device = session.device
        #: outputs and targets of the last ``evaluate`` (``last_outputs_test``: of the final test)
        self.last_outputs: tuple[dict[str, Tensor], Tensor] | None = None
        self.last_outputs_test: tuple[dict[str, Tensor], Tensor] | None = None
        #: the dataset index of each row of the last ``predict``
        self.last_index = torch.empty(0, dtype=torch.long)

    def eval_model(self) -> nn.Module:
        """The network evaluated (and saved as such): a plugin module registered with
        ``export=True`` (``Session.eval_network``), else the EMA, else the model."""
        model = self.session.model
        net = self.session.eval_network()
        if net is not model:
            return net
        return self.ema.module if self.ema is not None else model  # type: ignore[no-any-return]

    def modules(self) -> list[nn.Module]:
        """The modules whose BatchNorm statistics an evaluation reads: the model, the plugin
        modules and the EMA copy."""
        out = [self.session.model, *(spec.module for spec in self.state.modules.values())]
        if self.ema is not None:
            out.append(self.ema.module)
        return out

    @torch.no_grad()
    def predict(self, dataset: Dataset, stage: str, batch_size: int | None = None) -> tuple[dict[str, Tensor], Tensor]:
        """Outputs (every tensor output key) and targets over a dataset, through the eval hooks.

        With several processes each predicts its share of the batches (``distributed.ShardedEval``)
        and every process gets all rows back in dataset order, so metrics equal one process's.
        BatchNorm statistics are first agreed as ``train.dist_bn`` says.
        """
        state, host = self.state, self.host
        self.parallel.sync_buffers(self.modules())
        model = self.eval_model()
        state.phase, state.stage = "eval", stage
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise DataError(f"the {stage} split is empty")
        shard = D.ShardedEval(n, batch_size or max(self.config.train.batch_size, 128), self.parallel.ctx)
        loader = eval_loader(dataset, shard.batch_size, self.config.data, device=self.device, world_size=self.parallel.ctx.world_size, indices=shard.indices())
        skipped = BadSampleLog()
        outs: dict[str, list[Tensor]] = {}
        targets = []
        rows: list[Tensor] = []
        sizes: list[int] = []
        was_training = model.training
        model.eval()  # before the wrappers, so a wrapper's own mode choice stands

        def forward(batch: Any) -> dict[str, Any]:
            return self.session.eval_batch(batch.to(self.device), model)  # type: ignore[no-any-return]

        try:
            with host.wrap("mixhub_evaluate", model=model, state=state):
                for batch in loader:
                    skipped.add(batch)
                    o = forward(batch)
                    sizes.append(len(batch.targets))
                    for k, v in o.items():
                        if isinstance(v, Tensor) and k.startswith("logits"):
                            outs.setdefault(k, []).append(v.float().cpu())
                    targets.append(batch.targets.cpu())
                    rows.append(batch.index.cpu())
                if self.parallel.sharded:  # every FSDP forward is a collective: match rank 0's number of calls
                    for _ in range(shard.missing_batches()):
                        forward(next(iter(eval_loader(dataset, shard.batch_size, self.config.data, indices=list(shard.batch_rows(0))))))
        finally:
            model.train(was_training)
            state.phase = "train"
        skipped.report(f"{stage} split")
        local = {k: torch.cat(v) for k, v in outs.items()}
        local["__targets"] = torch.cat(targets) if targets else torch.empty(0)
        local["__index"] = torch.cat(rows) if rows else torch.empty(0, dtype=torch.long)
        full = shard.gather(local, sizes)
        full_targets = full.pop("__targets")
        #: the dataset index of each predicted row (rows of skipped bad samples are absent)
        self.last_index = full.pop("__index")
        if full_targets.shape[0] == 0:
            raise DataError(f"the {stage} split is empty")
        return full, full_targets

    def evaluate(self, dataset: Dataset, stage: str, temperature: float | None = None, batch_size: int | None = None) -> dict[str, float]:
        """Metrics of the eval model on ``dataset`` (outputs kept in ``self.last_outputs``)."""
        outs, targets = self.predict(dataset, stage, batch_size)
        self.last_outputs = (outs, targets)
        metrics = self.metrics_from(outs, targets, temperature)
        for extra in self.host.collect("mixhub_metrics", stage=stage, state=self.state):
            metrics.update({k: float(v) for k, v in extra.items()})
        return metrics

    def write_predictions(self, path: str | Path, dataset: Dataset, outs: dict[str, Tensor], targets: Tensor) -> Path:
        """A CSV of the last ``predict`` rows: dataset index, sample name (file) when the dataset
        names its samples, target and prediction in the data's own labels (``class_labels``, e.g.
        ``-1`` and ``7`` rather than the ids 0 and 1) and the prediction's probability; for
        regression the target and predicted values, one column each."""
        import csv

        path = Path(path)
        logits = outs["logits"]
        index = self.last_index.tolist()
        name = getattr(dataset, "name", None)
        labels = self.class_labels()
        head = ["index"] + (["name"] if callable(name) else [])
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            if self.state.task_kind == "regression":
                t, p = targets.reshape(len(targets), -1), logits.reshape(len(logits), -1)
                cols = [""] if t.shape[1] == 1 else [f"_{j}" for j in range(t.shape[1])]
                w.writerow(head + [f"target{c}" for c in cols] + [f"prediction{c}" for c in cols])
                for r, i in enumerate(index):
                    w.writerow([i] + ([name(i)] if callable(name) else []) + t[r].tolist() + p[r].tolist())
                return path
            prob = torch.softmax(logits, dim=1)
            conf, pred = prob.max(dim=1)

            def label(c: int) -> Any:
                return labels[c] if labels is not None and c < len(labels) else c

            w.writerow(head + ["target", "prediction", "probability"])
            for r, i in enumerate(index):
                w.writerow([i] + ([name(i)] if callable(name) else []) + [label(int(targets[r])), label(int(pred[r])), f"{float(conf[r]):.6g}"])
        return path

    def metrics_from(self, outs: dict[str, Tensor], targets: Tensor, temperature: float | None = None) -> dict[str, float]:
        logits = outs["logits"]
        if self.state.task_kind == "regression":
            m = regression_metrics(logits, targets)
            m["loss"] = m["mse"]
            return m
        m = classification_metrics(logits, targets, temperature=temperature)
        m["loss"] = m["nll"]
        for k, v in outs.items():
            if k != "logits":
                m[f"acc_{k.removeprefix('logits_')}"] = float((v.argmax(1) == targets).float().mean())
        return m
