"""The MLflow model-registry facade: versions, tags, aliases and their history.

The names below load on first use (PEP 562): `import registry.errors` (every command's error root) and
`llmrelease rollback`'s traffic switch must not pay for the facade's imports (pydantic, tenacity, httpx).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_HOME = {
    "AliasMove": "registry.history",
    "MlflowClientLike": "registry.client",
    "ModelRegistry": "registry.facade",
    "RegisteredVersion": "registry.facade",
    "VersionTagger": "registry.client",
    "format_history": "registry.history",
}


def __getattr__(name: str) -> Any:
    """Import the module that defines `name` when it is first asked for."""
    if name not in _HOME:
        raise AttributeError(f"module 'registry' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)
