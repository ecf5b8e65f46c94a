"""The MLflow model-registry facade: versions, tags, aliases and their history."""

from registry.client import MlflowClientLike
from registry.facade import (
    ALIAS_CANDIDATE,
    ALIAS_CHAMPION,
    ALIAS_PREVIOUS,
    DIGEST_TAG,
    EXPERIMENT_NAME,
    ModelRegistry,
    RegisteredVersion,
)
from registry.history import AliasMove, format_history

__all__ = [
    "ALIAS_CANDIDATE",
    "ALIAS_CHAMPION",
    "ALIAS_PREVIOUS",
    "DIGEST_TAG",
    "EXPERIMENT_NAME",
    "AliasMove",
    "MlflowClientLike",
    "ModelRegistry",
    "RegisteredVersion",
    "format_history",
]
