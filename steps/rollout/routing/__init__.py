"""Traffic splitting between model versions: the `Router` interface and its two implementations.

`HAProxyRouter` runs a real HAProxy on this machine (CI, the demo); `GatewayRouter` patches a Gateway API
HTTPRoute on a cluster. The canary step is given a `Router` and never knows which one it drives.
"""

from steps.rollout.routing.base import BackendRouter, Router, RoutingError, canary_split, validate_weights
from steps.rollout.routing.gateway import GatewayRouter
from steps.rollout.routing.haproxy import HAProxyRouter

__all__ = [
    "BackendRouter",
    "GatewayRouter",
    "HAProxyRouter",
    "Router",
    "RoutingError",
    "canary_split",
    "validate_weights",
]
