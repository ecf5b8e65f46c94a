"""The MLflow model-registry facade: versions, tags, aliases and their history."""

from registry.client import MlflowClientLike, VersionTagger
from registry.facade import ModelRegistry, RegisteredVersion
from registry.history import AliasMove, format_history

__all__ = [
    "AliasMove",
    "MlflowClientLike",
    "ModelRegistry",
    "RegisteredVersion",
    "VersionTagger",
    "format_history",
]
