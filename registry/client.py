"""The MLflow client the registry facade talks to, and how it survives an unreachable tracking server.

MlflowClient retries failed HTTP requests itself, by default for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7,
backoff factor 2): `bounded_mlflow_client` turns that off (unless the variable is set) so that the one policy
of `registry.retry` bounds every call: connection errors, timeouts and 429/502/503/504 are retried with
exponential backoff until the total deadline (60 s by default, LLMRELEASE_SERVICE_DEADLINE_S), then one
`RegistryError` line names the server, its URL and what to check. Before each facade operation an HTTP tracking
server's `/health` is probed under the same policy. An answer from the server (404, 400, 500) is never retried.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from registry.errors import RegistryError
from registry.retry import RETRY_STATUSES, RetryPolicy, Service, describe_error, is_connection_error, service_deadline

__all__ = [
    "MlflowClientLike",
    "RetryingClient",
    "VersionTagger",
    "bounded_mlflow_client",
    "call_with_retry",
    "check_reachable",
    "error_code",
    "is_connection_error",
    "is_http",
    "mlflow_service",
    "plain_mlflow_client",
    "short_error",
]

_T = TypeVar("_T")


class VersionTagger(Protocol):
    """What a step that only tags a model version needs: `ModelRegistry`, or a fake in a test."""

    def tag_version(self, name: str, version: str | int, key: str, value: str) -> None:
        """Set tag `key` = `value` on version `version` of registered model `name`."""


class MlflowClientLike(Protocol):
    """The part of `mlflow.tracking.MlflowClient` the facade uses (signatures as in MLflow 3)."""

    def get_experiment_by_name(self, name: str) -> Any: ...  # noqa: D102
    def create_experiment(self, name: str, artifact_location: str | None = ...) -> str: ...  # noqa: D102
    def create_run(  # noqa: D102
        self,
        experiment_id: str,
        start_time: int | None = ...,
        tags: dict[str, Any] | None = ...,
        run_name: str | None = ...,
    ) -> Any: ...
    def get_run(self, run_id: str) -> Any: ...  # noqa: D102
    def search_runs(  # noqa: D102
        self,
        experiment_ids: list[str],
        filter_string: str = ...,
        run_view_type: int = ...,
        max_results: int = ...,
    ) -> Any: ...
    def log_dict(self, run_id: str, dictionary: dict[str, Any], artifact_file: str) -> Any: ...  # noqa: D102
    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = ...) -> Any: ...  # noqa: D102
    def log_batch(self, run_id: str, metrics: Any = ..., params: Any = ..., tags: Any = ...) -> Any: ...  # noqa: D102
    def set_tag(self, run_id: str, key: str, value: Any) -> Any: ...  # noqa: D102
    def set_terminated(self, run_id: str, status: str | None = ...) -> Any: ...  # noqa: D102
    def create_registered_model(  # noqa: D102
        self, name: str, tags: dict[str, Any] | None = ..., description: str | None = ...
    ) -> Any: ...
    def get_registered_model(self, name: str) -> Any: ...  # noqa: D102
    def set_registered_model_tag(self, name: str, key: str, value: Any) -> Any: ...  # noqa: D102
    def set_registered_model_alias(self, name: str, alias: str, version: str) -> Any: ...  # noqa: D102
    def delete_registered_model_alias(self, name: str, alias: str) -> Any: ...  # noqa: D102
    def delete_registered_model_tag(self, name: str, key: str) -> Any: ...  # noqa: D102
    def search_model_versions(  # noqa: D102
        self,
        filter_string: str | None = ...,
        max_results: int = ...,
        order_by: list[str] | None = ...,
        page_token: str | None = ...,
    ) -> Any: ...
    def create_model_version(  # noqa: D102
        self,
        name: str,
        source: str,
        run_id: str | None = ...,
        tags: dict[str, Any] | None = ...,
        run_link: str | None = ...,
        description: str | None = ...,
    ) -> Any: ...
    def get_model_version(self, name: str, version: str) -> Any: ...  # noqa: D102
    def set_model_version_tag(self, name: str, version: str, key: str, value: Any) -> Any: ...  # noqa: D102


def mlflow_service(uri: str) -> Service:
    """The MLflow tracking server at `uri`, for the retry policy's final line."""
    return Service("MLflow tracking server", uri, "start it or set MLFLOW_TRACKING_URI", RegistryError)


def call_with_retry(
    fn: Callable[..., _T], *args: Any, uri: str, retry_seconds: float | None = None, **kwargs: Any
) -> _T:
    """Call `fn(*args, **kwargs)` under the one retry policy (`registry.retry`), naming MLflow at `uri`.

    Args:
        fn: The call to make.
        *args: Its positional arguments.
        uri: The tracking URI, named in the error.
        retry_seconds: The total deadline; None: `service_deadline()` (LLMRELEASE_SERVICE_DEADLINE_S, 60 s).
        **kwargs: Its keyword arguments.

    Returns:
        What `fn` returns.

    Raises:
        RegistryError: Every try failed transiently. Other errors propagate unchanged, untried again.
    """
    deadline = service_deadline() if retry_seconds is None else retry_seconds
    return RetryPolicy(deadline_s=deadline).call(fn, *args, service=mlflow_service(uri), **kwargs)


def check_reachable(uri: str, retry_seconds: float | None = None) -> None:
    """Probe an HTTP(S) tracking server's /health until it answers; no-op for other stores.

    Raises:
        RegistryError: The server did not answer within the deadline (`retry_seconds`, else the default).
    """
    if not is_http(uri):
        return
    import httpx

    deadline = service_deadline() if retry_seconds is None else retry_seconds

    def probe() -> None:
        response = httpx.get(f"{uri.rstrip('/')}/health", timeout=min(5.0, max(deadline, 0.5)))
        if response.status_code in RETRY_STATUSES:
            response.raise_for_status()

    call_with_retry(probe, uri=uri, retry_seconds=deadline)


class RetryingClient:
    """Any client (an `MlflowClient`) whose every method call runs under `call_with_retry`; attributes pass through."""

    def __init__(self, client: Any, uri: str, retry_seconds: float | None = None) -> None:
        """Wrap `client`, naming `uri` in errors; `retry_seconds` None: the default deadline."""
        self._client = client
        self._uri = uri
        self._retry_seconds = retry_seconds

    @property
    def wrapped(self) -> Any:
        """The client itself, for calls that must not be retried."""
        return self._client

    def __getattr__(self, name: str) -> Any:
        """`client.<name>`, retried under the policy when it is a method."""
        value = getattr(self._client, name)
        if not callable(value):
            return value

        def retried(*args: Any, **kwargs: Any) -> Any:
            return call_with_retry(value, *args, uri=self._uri, retry_seconds=self._retry_seconds, **kwargs)

        return retried


def plain_mlflow_client(uri: str) -> Any:
    """An `MlflowClient` on `uri` (tracking and registry) whose own HTTP retries are off: the caller retries.

    MLflow reads MLFLOW_HTTP_REQUEST_MAX_RETRIES on every request; it is set to 0 for this process unless the
    operator set it, so that the policy's deadline, not MLflow's minutes of backoff, bounds a call.
    """
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def bounded_mlflow_client(uri: str, retry_seconds: float | None = None) -> RetryingClient:
    """`plain_mlflow_client(uri)` with every call under the one policy (`RetryingClient`)."""
    return RetryingClient(plain_mlflow_client(uri), uri, retry_seconds)


def is_http(uri: str) -> bool:
    """Whether `uri` names a tracking server (rather than a database or folder)."""
    return uri.startswith(("http://", "https://"))


def error_code(exc: BaseException) -> str:
    """The MLflow error code of `exc` (RESOURCE_ALREADY_EXISTS, ...), or ""."""
    return str(getattr(exc, "error_code", ""))


def short_error(exc: BaseException | None) -> str:
    """`exc` as `Type: message` on one line, cut at a word boundary (never mid-word) near 300 characters."""
    return describe_error(exc)
