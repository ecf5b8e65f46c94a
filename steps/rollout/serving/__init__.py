"""Serving model versions: the `ServingPlane` interface and its one factory, and the planes.

The local plane runs in this process or as a service reached by `RemoteServing`; on a cluster (`plane: kubernetes`)
`RolloutPlane` drives one Argo Rollouts `Rollout` per model serving vLLM (`rollout_plane` picks it).
"""

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
