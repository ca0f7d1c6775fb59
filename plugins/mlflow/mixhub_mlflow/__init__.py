"""MLflow tracking for mixhub (the hooks live in ``mixhub_mlflow.plugin``)."""

from .plugin import flatten_params, metric_key, tracking_uri

__all__ = ["flatten_params", "metric_key", "tracking_uri"]
