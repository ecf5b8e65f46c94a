"""Serving model versions: the `ServingPlane` interface, its one factory, the local plane, vLLM on Kubernetes."""

from steps.rollout.serving.base import PlaneState, ServerState, ServingError, ServingPlane, server_name
from steps.rollout.serving.factory import serving_plane
from steps.rollout.serving.local import LocalServing, ready_check

__all__ = [
    "LocalServing",
    "PlaneState",
    "ServerState",
    "ServingError",
    "ServingPlane",
    "ready_check",
    "server_name",
    "serving_plane",
]
