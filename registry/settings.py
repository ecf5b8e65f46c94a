"""Where llmrelease keeps its local state: $LLMRELEASE_HOME, default ./.llmrelease.

A light module on purpose: `llmrelease rollback` imports it before moving traffic.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["llmrelease_home", "tracking_uri"]


def llmrelease_home(environ: Mapping[str, str] | None = None) -> Path:
    """$LLMRELEASE_HOME (absolute), default ./.llmrelease: local stores and caches live there."""
    env = os.environ if environ is None else environ
    return Path(env.get("LLMRELEASE_HOME") or ".llmrelease").resolve()


def tracking_uri(environ: Mapping[str, str] | None = None) -> str:
    """MLFLOW_TRACKING_URI, else the local sqlite store under LLMRELEASE_HOME (registry and tracking alike)."""
    env = os.environ if environ is None else environ
    return env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{llmrelease_home(env) / 'mlflow.db'}"
