"""Where eval and gate runs are logged in MLflow: the same store as the registry, one experiment per kind."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from registry.settings import llmrelease_home, tracking_uri

__all__ = ["llmrelease_home", "tracking_uri", "mlflow_client", "experiment_id", "log_metrics"]


def mlflow_client(environ: Mapping[str, str] | None = None) -> Any:
    """An MlflowClient on the store of `tracking_uri`, every call under the one retry policy (`registry.retry`)."""
    from registry.client import bounded_mlflow_client
    from registry.retry import service_deadline

    return bounded_mlflow_client(tracking_uri(environ), service_deadline(environ))


def experiment_id(client: Any, name: str, home: Path) -> str:
    """The id of experiment `name`, created on first use (local stores keep artifacts under `home/mlartifacts`)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    remote = str(client.tracking_uri).startswith(("http://", "https://"))
    location = None if remote else (home / "mlartifacts").resolve().as_uri()
    try:
        return str(client.create_experiment(name, location))
    except Exception:
        # Parallel steps (batch-eval and safety) race to create it: the loser reads the winner's.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def log_metrics(client: Any, run_id: str, metrics: Mapping[str, float]) -> None:
    """Log `metrics` (key: value, step 0, now) to run `run_id` in one `log_batch` request, not one per metric.

    A request costs the local tracking server ~20 ms of CPU (it loads the registered model's versions and tags).
    """
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, value, now, 0) for key, value in metrics.items()])
