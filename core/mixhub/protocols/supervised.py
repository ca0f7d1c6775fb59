"""Supervised training: epochs, validation, the best checkpoint and the final test.

::

    for epoch:
        mixhub_epoch_start(state)
        for batch in run.epoch_batches(epoch):
            logs = run.train_step(batch)          # Session.step + optimizer step + after_step
            every train.log_every steps: run.records.step_done -> RunLog.step
        mixhub_epoch_end(state)
        write_epoch_record(train means + mixhub_metrics("train"))
            every train.eval_every_steps batches (optional): validate, keep the best checkpoints
        every train.eval_every epochs: validate, keep best.pt (train.select) and best-<m>.pt (train.best_metrics)
        checkpoint last.pt
    final_evaluation(): best weights, temperature on val, test and extra splits

The step logs stay on the device; the run's records part (``RunRecords.step_done``) reads them on the host every
``train.log_every`` steps (one step record) and ``epoch_means`` once per epoch
(``write_epoch_record``).
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

from .. import checkpoint as ckpt
from ..metrics import fit_temperature, reliability_bins
from ..run import Run, RunInterrupted
from ..run.plots import plot_reliability
from ..selection import criteria, improved, step_eval_due

__all__ = ["SupervisedProtocol"]

log = logging.getLogger("mixhub")


class SupervisedProtocol:
    """Drives a ``Run`` through ``train.epochs`` epochs; ``run()`` returns the summary."""

    def __init__(self, run: Run) -> None:
        self.run = run
        cfg = run.config.train
        self.criteria = criteria(cfg.select, cfg.select_mode, cfg.best_metrics, run.state.task_kind)
        self.select_key, self.select_high = self.criteria[0].metric, self.criteria[0].high

    # ------------------------------------------------------------------ records
    def epoch_means(self) -> dict[str, float]:
        """The epoch's mean of every step log (one host read; averaged over processes under DDP)."""
        import torch

        run, tally = self.run, self.run.records.tally
        keys = sorted(tally.sums)
        if not keys:
            return {}
        vals = torch.stack([torch.as_tensor(tally.sums[k]).detach().to("cpu", torch.float64) for k in keys] + [torch.tensor(float(tally.count), dtype=torch.float64)])
        if run.world_size > 1:
            import torch.distributed as dist

            t = vals.to(run.device)
            dist.all_reduce(t)
            vals = t.cpu()
        total = max(float(vals[-1]), 1.0)
        return {k: float(v) / total for k, v in zip(keys, vals[:-1].tolist())}

    def write_epoch_record(self, record: dict[str, Any]) -> None:
        """The one place epoch records (train, val, final) are written: ``RunLog.epoch``
        (``metrics.jsonl`` and ``mixhub_log``)."""
        self.run.records.log.epoch(record)

    # ------------------------------------------------------------------ the loop
    def run_epochs(self) -> None:
        run = self.run
        cfg = run.config
        state = run.state
        epochs = range(run.start_epoch, cfg.train.epochs)
        for epoch in run.console.progress(epochs, total=len(epochs), desc="epochs"):
            state.epoch = epoch
            if run.batch_in_epoch == 0:
                run.host.collect("mixhub_epoch_start", state=state)
                run.records.tally.reset()  # a resumed epoch keeps the sums and time of its first part
            eval_at_end = (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs
            for batch in run.console.progress(run.epoch_batches(epoch), total=state.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.train.epochs}"):
                logs = run.train_step(batch)
                run.batch_in_epoch += 1
                if logs is not None:
                    run.records.tally.add(logs)  # type: ignore[arg-type]  # tensors: summed on their device
                if step_eval_due(run.batch_in_epoch, cfg.train.eval_every_steps, cfg.train.eval_steps_offset) and not (
                    eval_at_end and run.batch_in_epoch == state.steps_per_epoch
                ):  # the epoch's end validates these weights anyway
                    self.validate(epoch + 1)
                    run.records.pause_clock()
                if run.guards.stop_requested:
                    run.records.tally.reduce_ranks()  # the interrupted epoch's sums of every rank go into the checkpoint
                    run.checkpoints.save("last")
                    raise RunInterrupted(f"stopped by signal {run.guards.stop_signal} at step {state.step}; resume with `mixhub train --resume {run.folder.path}`")
            run.batch_in_epoch = 0
            run.host.collect("mixhub_epoch_end", state=state)
            train_rec = {"epoch": epoch + 1, "split": "train", "step": state.step, **self.epoch_means(), "time_s": run.records.tally.seconds()}
            skipped = run.bad_samples.report(f"epoch {epoch + 1}" + (f" (rank {run.rank})" if run.world_size > 1 else ""))
            if run.world_size > 1:  # every rank's skipped files count
                import torch
                import torch.distributed as dist

                n_bad = torch.tensor([float(skipped)], device=run.device if run.device.type == "cuda" else "cpu")
                dist.all_reduce(n_bad)
                skipped = int(n_bad.item())
            if skipped or run.config.data.on_bad_sample == "skip":
                train_rec["bad_samples"] = skipped
            for extra in run.host.collect("mixhub_metrics", stage="train", state=state):
                train_rec.update({k: float(v) for k, v in extra.items()})
            self.write_epoch_record(train_rec)
            if eval_at_end:
                val = self.validate(epoch + 1)
                msg = f"epoch {epoch + 1}/{cfg.train.epochs} train loss {train_rec.get('loss', float('nan')):.4f} " + " ".join(f"val {k} {val[k]:.4f}" for k in ("acc", "nll", "ece", "rmse") if k in val)
                run.console.message(msg)
            state.epoch = epoch + 1
            run.checkpoints.save("last")
            run.records.pause_clock()

    def run_all(self) -> dict[str, Any]:
        self.run_epochs()
        return self.final_evaluation()

    def validate(self, epoch: int) -> dict[str, float]:
        """Validate the current weights (``epoch``: 1-based, the epoch in progress or just done):
        one ``val`` record (with the optimizer ``step``), then the kept best checkpoints."""
        run = self.run
        val = run.evaluation.evaluate(run.bundle.val, "val")
        self.write_epoch_record({"epoch": epoch, "split": "val", "step": run.state.step, **val})
        self.maybe_best(val, epoch)
        return val

    def maybe_best(self, val: dict[str, float], epoch: int) -> None:
        """Keep the weights for every criterion (``train.select``: ``best.pt``; each of
        ``train.best_metrics``: ``best-<metric>.pt``) whose metric improved."""
        run, keeper = self.run, self.run.checkpoints
        best = keeper.best
        if "kept" not in best:  # a fresh run, or a checkpoint that kept one best only
            old = best.get("value")
            best["kept"] = {} if old is None else {best.get("metric", self.select_key): {"value": old, "epoch": best["epoch"]}}
        kept = best["kept"]
        for c in improved(self.criteria, kept, val):
            kept[c.metric] = {"value": val[c.metric], "epoch": epoch, "step": run.state.step}
            if c.name == "best":
                best.update(value=val[c.metric], epoch=epoch, metric=c.metric, step=run.state.step)
            if keeper.writes:
                done, run.state.epoch = run.state.epoch, epoch  # best checkpoints, like last.pt, hold the epoch count (== best_epoch)
                try:
                    keeper.save(c.name)
                finally:
                    run.state.epoch = done
            elif c.name == "best":  # no run folder: keep the best weights in memory for the final test
                keeper.best_in_memory = copy.deepcopy({k: v for k, v in keeper.payload().items() if k in ("model", "ema", "modules", "plugins")})
                if run.parallel.sharded:
                    keeper.best_in_memory["sharded_state"] = copy.deepcopy(run.train_forward.state_dict())

    def final_evaluation(self) -> dict[str, Any]:
        """Test metrics of the best-validation checkpoint (temperature fitted on validation)."""
        run, keeper, evaluation = self.run, self.run.checkpoints, self.run.evaluation
        best_path = run.folder.checkpoints / "best.pt"
        if run.dist.enabled and keeper.write:
            import torch.distributed as dist

            dist.barrier()  # rank 0 has finished writing best.pt before anyone reads it
        if keeper.writes and best_path.exists():
            keeper.load_weights(ckpt.load_checkpoint(best_path))
        elif keeper.best_in_memory is not None:
            keeper.load_weights(keeper.best_in_memory)
        keeper.write_export()
        summary: dict[str, Any] = {"best_epoch": keeper.best["epoch"], "select": self.select_key, "steps": run.state.step}
        labels = evaluation.class_labels()
        if labels is not None:
            summary["classes"] = labels  # the label of each model output
        if len(self.criteria) > 1 or run.config.train.eval_every_steps:
            kept = keeper.best.get("kept", {})
            summary["best"] = {c.metric: {**kept.get(c.metric, {}), "checkpoint": f"{c.name}.pt"} for c in self.criteria}
        temperature = None
        val_outs, val_t = evaluation.predict(run.bundle.val, "val")
        if run.state.task_kind == "classification":
            temperature = fit_temperature(val_outs["logits"], val_t)
        summary["val"] = evaluation.metrics_from(val_outs, val_t, temperature)
        if not run.config.train.final_test:  # tuning: the test split stays unseen
            self.write_epoch_record({"epoch": run.config.train.epochs, "split": "final_val", **summary["val"]})
            return summary
        summary["test"] = evaluation.evaluate(run.bundle.test, "test", temperature)
        evaluation.last_outputs_test = evaluation.last_outputs
        for name, ds in run.bundle.extra_splits.items():
            summary[name] = evaluation.evaluate(ds, name, temperature)
        if run.state.task_kind == "classification" and run.folder.enabled and run.config.train.plots and evaluation.last_outputs_test is not None:
            outs, t = evaluation.last_outputs_test
            conf, acc, counts = reliability_bins(outs["logits"], t)
            plot_reliability(conf, acc, counts, run.folder.path / "reliability.png", "test reliability", ece=summary["test"].get("ece"))
            (run.folder.path / "reliability.json").write_text(json.dumps({"conf": conf.tolist(), "acc": acc.tolist(), "counts": counts.tolist()}))
        for k in ("val", "test", *run.bundle.extra_splits):
            self.write_epoch_record({"epoch": run.config.train.epochs, "split": f"final_{k}", **summary[k]})
        return summary
