"""Serving model versions: the `ServingPlane` interface and its one factory, and the planes.

The local plane runs in this process or as a service reached by `RemoteServing`; on a cluster (`plane: kubernetes`)
`RolloutPlane` drives one Argo Rollouts `Rollout` per model serving vLLM (`rollout_plane` picks it). The names
below load on first use (PEP 562), so that importing one plane does not import the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from steps.rollout.serving.base import PlaneState, ServerState, ServingError, ServingPlane, server_name
    from steps.rollout.serving.cluster import RolloutPlane
    from steps.rollout.serving.factory import rollout_plane, serving_plane
    from steps.rollout.serving.local import LocalServing, ready_check
    from steps.rollout.serving.remote import RemoteServing

__all__ = [
    "LocalServing",
    "PlaneState",
    "ServerState",
    "ServingError",
    "ServingPlane",
    "RemoteServing",
    "RolloutPlane",
    "ready_check",
    "rollout_plane",
    "server_name",
    "serving_plane",
]

_HOME = {
    **dict.fromkeys(["PlaneState", "ServerState", "ServingError", "ServingPlane", "server_name"], "base"),
    "RolloutPlane": "cluster",
    "rollout_plane": "factory",
    "serving_plane": "factory",
    "LocalServing": "local",
    "ready_check": "local",
    "RemoteServing": "remote",
}


def __getattr__(name: str) -> Any:
    """Import the module that defines `name` when it is first asked for."""
    if name not in _HOME:
        raise AttributeError(f"module 'steps.rollout.serving' has no attribute {name!r}")
    return getattr(importlib.import_module(f"steps.rollout.serving.{_HOME[name]}"), name)
