"""MLflow tracking for mixhub (the hooks live in ``mixhub_mlflow.plugin``)."""

from .plugin import artifact_location, flatten_params, metric_key, tracking_uri

__all__ = ["artifact_location", "flatten_params", "metric_key", "tracking_uri"]
