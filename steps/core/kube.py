"""The Kubernetes client, configured once the way every cluster-facing step needs it, and its errors described."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from registry.errors import ReleaseError

__all__ = ["api_error_fix", "api_status", "describe_api_error", "kube_client"]

_RENEW = "renew the credentials of the step's ServiceAccount or kubeconfig"


def kube_client(error: type[ReleaseError], what: str) -> Any:
    """The `kubernetes.client` module, configured from the pod's service account, else the local kubeconfig.

    Args:
        error: the ReleaseError subclass to raise (the caller's own, e.g. RoutingError).
        what: what needs the cluster, for the message (e.g. "HTTPRoute llmrelease/demo-qa").

    Raises:
        error: the `kubernetes` package is missing, or no configuration can be loaded.
    """
    try:
        from kubernetes import client, config  # heavy and optional: only where a cluster is driven
    except ImportError as e:
        raise error("kubernetes client not installed: pip install 'llmrelease[steps]'") from e
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as e:
            raise error(f"no Kubernetes configuration for {what}: run in a pod or set KUBECONFIG") from e
    return client


def api_status(error: Exception) -> int | None:
    """The HTTP status of a `kubernetes.client.ApiException` (None for urllib3 and other errors)."""
    status = getattr(error, "status", None)
    return status if isinstance(status, int) else None


def describe_api_error(error: Exception) -> str:
    """A one-line description of a Kubernetes API error: `403 Forbidden`, else the exception, shortened."""
    status, reason = api_status(error), getattr(error, "reason", None)
    if status is not None:
        return f"{status} {reason or ''}".strip()
    return " ".join(f"{type(error).__name__}: {error}".split())[:200]


def api_error_fix(error: Exception, hints: Mapping[int, str]) -> str:
    """The fix to name for a Kubernetes API error: the caller's hint for its status (401 has a default)."""
    return {401: _RENEW, **hints}.get(api_status(error) or 0, "check the API server is reachable and retry")
