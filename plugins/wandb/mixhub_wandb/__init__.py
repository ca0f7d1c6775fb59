"""Weights & Biases logging for mixhub (hooks in ``mixhub_wandb.plugin``) and a reader of
offline run directories (``mixhub_wandb.offline``)."""

from .offline import OfflineRun, find_offline_runs, iter_records, read_offline_run

__all__ = ["OfflineRun", "find_offline_runs", "iter_records", "read_offline_run"]
