"""Evaluation of a ``Run``: predictions through the eval hooks, metrics."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from . import distributed as D
from .data.loader import BadSampleLog, eval_loader
from .errors import DataError
from .metrics import classification_metrics, regression_metrics

__all__ = ["EvaluationMixin"]


class EvaluationMixin:
    """Evaluation methods of ``mixhub.run.Run`` (attributes are the run's)."""

    config: Any
    model: nn.Module
    ema: Any
    session: Any
    host: Any
    state: Any
    device: torch.device
    world_size: int
    dist: Any
    sharded: bool
    last_outputs: tuple[dict[str, Tensor], Tensor]
    last_outputs_test: tuple[dict[str, Tensor], Tensor]
    last_index: Tensor

    if TYPE_CHECKING:  # defined by Run

        def _sync_buffers(self) -> None: ...

    def eval_model(self) -> nn.Module:
        """The network evaluated (and saved as such): a plugin module registered with
        ``export=True`` (``Session.eval_network``), else the EMA, else the model."""
        net = self.session.eval_network()
        if net is not self.model:
            return net  # type: ignore[no-any-return]
        return self.ema.module if self.ema is not None else self.model

    @torch.no_grad()
    def predict(self, dataset: Dataset, stage: str, batch_size: int | None = None) -> tuple[dict[str, Tensor], Tensor]:
        """Outputs (every tensor output key) and targets over a dataset, through the eval hooks.

        With several processes each predicts its share of the batches (``distributed.ShardedEval``)
        and every process gets all rows back in dataset order, so metrics equal one process's.
        BatchNorm statistics are first agreed as ``train.dist_bn`` says.
        """
        state, host = self.state, self.host
        self._sync_buffers()
        model = self.eval_model()
        state.phase, state.stage = "eval", stage
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise DataError(f"the {stage} split is empty")
        shard = D.ShardedEval(n, batch_size or max(self.config.train.batch_size, 128), self.dist)
        loader = eval_loader(dataset, shard.batch_size, self.config.data, device=self.device, world_size=self.world_size, indices=shard.indices())
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
                if self.sharded:  # every FSDP forward is a collective: match rank 0's number of calls
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
        labels = self.class_labels()  # type: ignore[attr-defined]
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
