"""TensorBoard logging for mixhub (the hooks live in ``mixhub_tensorboard.plugin``)."""

from .plugin import log_dir

__all__ = ["log_dir"]
