"""Where eval and gate runs are logged in MLflow: the same store as the registry, one experiment per kind."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["llmrelease_home", "tracking_uri", "mlflow_client", "experiment_id"]


def llmrelease_home(environ: Mapping[str, str] | None = None) -> Path:
    """$LLMRELEASE_HOME (absolute), default ./.llmrelease: local stores and caches live there."""
    env = os.environ if environ is None else environ
    return Path(env.get("LLMRELEASE_HOME") or ".llmrelease").resolve()


def tracking_uri(environ: Mapping[str, str] | None = None) -> str:
    """MLFLOW_TRACKING_URI, else the local sqlite store `ModelRegistry.from_env` uses too."""
    env = os.environ if environ is None else environ
    return env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{llmrelease_home(env) / 'mlflow.db'}"


def mlflow_client(environ: Mapping[str, str] | None = None) -> Any:
    """An MlflowClient on the tracking and registry store of `tracking_uri`."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(environ)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(client: Any, name: str, home: Path) -> str:
    """The id of experiment `name`, created on first use (local stores keep artifacts under `home/mlartifacts`)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    remote = str(client.tracking_uri).startswith(("http://", "https://"))
    location = None if remote else (home / "mlartifacts").resolve().as_uri()
    return str(client.create_experiment(name, location))
