"""The MLflow client the registry facade talks to, and how it survives an unreachable tracking server.

MlflowClient retries failed HTTP requests itself, by default for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES,
backoff factor 2). So before each facade operation an HTTP tracking server's `/health` is probed with httpx,
retried with tenacity (exponential backoff, bounded by `retry_seconds`); MLflow's own long retries then only
start if the server dies in the middle of an operation. Every client call is also wrapped in the same bounded
retry, on connection errors only: an answer from the server (404, 400, 500) is never retried here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from registry.errors import RegistryError

__all__ = [
    "MlflowClientLike",
    "VersionTagger",
    "call_with_retry",
    "check_reachable",
    "error_code",
    "is_connection_error",
    "is_http",
    "short_error",
]

_CONNECTION_HINTS = (
    "Connection refused",
    "NewConnectionError",
    "ConnectionError",
    "ConnectTimeout",
    "RemoteDisconnected",
    "Name or service not known",
    "Failed to establish",
)
_CONNECTION_TYPES = frozenset({"ConnectionError", "ConnectTimeout", "NewConnectionError", "MaxRetryError"})
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


def call_with_retry(fn: Callable[..., _T], *args: Any, uri: str, retry_seconds: float, **kwargs: Any) -> _T:
    """Call `fn(*args, **kwargs)`, retrying connection errors with exponential backoff.

    Args:
        fn: The call to make.
        *args: Its positional arguments.
        uri: The tracking URI, named in the error.
        retry_seconds: No new try starts after this many seconds.
        **kwargs: Its keyword arguments.

    Returns:
        What `fn` returns.

    Raises:
        RegistryError: Every try failed to connect. Other errors propagate unchanged, untried again.
    """
    from tenacity import RetryError, Retrying, retry_if_exception, stop_before_delay, wait_exponential

    retrying = Retrying(
        stop=stop_before_delay(retry_seconds),
        wait=wait_exponential(multiplier=0.25, max=4.0),
        retry=retry_if_exception(is_connection_error),
    )
    started = time.monotonic()
    try:
        return retrying(fn, *args, **kwargs)
    except RetryError as e:
        last = e.last_attempt
        raise RegistryError(
            f"MLflow tracking server at {uri} unreachable after {last.attempt_number} tries "
            f"({time.monotonic() - started:.1f}s, last error: {short_error(last.exception())}): "
            "start it or set MLFLOW_TRACKING_URI"
        ) from last.exception()


def check_reachable(uri: str, retry_seconds: float) -> None:
    """Probe an HTTP(S) tracking server's /health until it answers; no-op for other stores.

    Raises:
        RegistryError: The server did not answer within `retry_seconds`.
    """
    if not is_http(uri):
        return
    import httpx

    def probe() -> None:
        httpx.get(f"{uri.rstrip('/')}/health", timeout=min(5.0, max(retry_seconds, 0.5)))

    call_with_retry(probe, uri=uri, retry_seconds=retry_seconds)


def is_connection_error(exc: BaseException) -> bool:
    """True for failures to reach a server (refused, DNS, connect timeout), not for answers it gave."""
    import httpx

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionError | httpx.TransportError):
            return True
        if type(seen).__name__ in _CONNECTION_TYPES:
            return True
        seen = seen.__cause__ or seen.__context__
    return "API request to" in str(exc) and any(hint in str(exc) for hint in _CONNECTION_HINTS)


def is_http(uri: str) -> bool:
    """Whether `uri` names a tracking server (rather than a database or folder)."""
    return uri.startswith(("http://", "https://"))


def error_code(exc: BaseException) -> str:
    """The MLflow error code of `exc` (RESOURCE_ALREADY_EXISTS, ...), or ""."""
    return str(getattr(exc, "error_code", ""))


def short_error(exc: BaseException | None) -> str:
    """`exc` as `Type: message` on one line, cut to 160 characters."""
    text = " ".join(str(exc).split()) if exc is not None else ""
    name = type(exc).__name__ if exc is not None else "error"
    return f"{name}: {text[:160]}{'...' if len(text) > 160 else ''}"
