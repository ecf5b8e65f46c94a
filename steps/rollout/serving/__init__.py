"""Serving model versions: the `ServingPlane` interface and its one factory, and the planes.

The local plane runs in this process or as a service reached by `RemoteServing`; vLLM on Kubernetes is next.
"""

from steps.rollout.serving.base import PlaneState, ServerState, ServingError, ServingPlane, server_name
from steps.rollout.serving.factory import serving_plane
from steps.rollout.serving.local import LocalServing, ready_check
from steps.rollout.serving.remote import RemoteServing

__all__ = [
    "LocalServing",
    "PlaneState",
    "ServerState",
    "ServingError",
    "ServingPlane",
    "RemoteServing",
    "ready_check",
    "server_name",
    "serving_plane",
]
