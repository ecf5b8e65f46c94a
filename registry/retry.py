"""The one retry policy for calls to other services: MLflow, S3 and provider (OpenAI-compatible) HTTP APIs.

A call is retried only on transient failures (the server could not be reached, a timeout, 429/502/503/504),
with exponential backoff and jitter (or exactly the server's Retry-After), until a TOTAL deadline: no new try
starts when it could not finish before the deadline. The deadline defaults to 60 s; `LLMRELEASE_SERVICE_DEADLINE_S`
sets it for a process (the platform policy's `service_deadline_s` sets it per environment, see
`steps.release.policy`). An answer the server gave on purpose (400, 401, 403, 404, 500, an MLflow error code) is
never retried: it propagates at once. When the deadline passes, the caller gets ONE full-length line naming the
service, its URL, the tries, the last error and what to check, as the `ReleaseError` subclass the caller chose.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
)
from tenacity.stop import stop_base

from registry.errors import TRANSIENT_EXIT_CODE, ReleaseError, SpecError

__all__ = [
    "DEADLINE_ENV",
    "DEFAULT_DEADLINE_S",
    "RETRY_STATUSES",
    "RetryPolicy",
    "Service",
    "Transient",
    "describe_error",
    "is_connection_error",
    "is_transient",
    "service_deadline",
    "shorten",
]

DEFAULT_DEADLINE_S = 60.0
"""The total deadline of one call to another service, retries included, when nothing sets one."""
DEADLINE_ENV = "LLMRELEASE_SERVICE_DEADLINE_S"
"""The environment variable that sets the deadline for a process (seconds, > 0)."""
RETRY_STATUSES = frozenset({429, 502, 503, 504})
"""HTTP statuses worth another try: rate limited, or a gateway/overload answer."""

_CONNECTION_HINTS = (
    "Connection refused",
    "NewConnectionError",
    "ConnectionError",
    "ConnectTimeout",
    "RemoteDisconnected",
    "Name or service not known",
    "Failed to establish",
    "Connection reset",
    "Connection aborted",
)
_CONNECTION_TYPES = frozenset(
    {
        "ConnectionError",
        "ConnectTimeout",
        "NewConnectionError",
        "MaxRetryError",
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ConnectionClosedError",
    }
)
_TIMEOUT_TYPES = frozenset({"ReadTimeout", "ReadTimeoutError", "Timeout", "TimeoutException"})
_S3_TRANSIENT_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "503", "500"})
_T = TypeVar("_T")


class Transient(Exception):  # noqa: N818 (a signal to retry, not an error a user sees)
    """Raise from a call to ask for another try; `retry_after` is the server's Retry-After in seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Service:
    """Who a call talks to, for the final error line.

    Attributes:
        name: e.g. "MLflow tracking server", "S3", "provider API".
        url: The URL (or bucket URI) called.
        check: What to check, the end of the line (e.g. "start it or set MLFLOW_TRACKING_URI").
        error: The `ReleaseError` subclass to raise when the deadline passes.
    """

    name: str
    url: str
    check: str
    error: type[ReleaseError] = ReleaseError


def service_deadline(environ: Mapping[str, str] | None = None, default: float = DEFAULT_DEADLINE_S) -> float:
    """The total deadline in seconds: $LLMRELEASE_SERVICE_DEADLINE_S, else `default` (60 s unless a policy says).

    Raises:
        SpecError: The variable is set but not a positive number.
    """
    env = os.environ if environ is None else environ
    raw = env.get(DEADLINE_ENV, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise SpecError(f"{DEADLINE_ENV}={raw!r}: not a positive number of seconds: set e.g. 60 or unset it")
    return value


def shorten(text: str, limit: int = 300) -> str:
    """`text` on one line (whitespace runs as one space), cut at a word boundary near `limit`, never mid-word.

    A word that straddles `limit` is kept whole when cutting before it would drop most of the text.
    """
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat.rfind(" ", 0, limit)
    if cut < limit // 2:
        cut = flat.find(" ", limit)
        if cut < 0:
            return flat
    return flat[:cut].rstrip(" ,;:") + " …"


def describe_error(exc: BaseException | None, limit: int = 300) -> str:
    """`exc` as `Type: message` on one line, cut at a word boundary near `limit` characters."""
    if exc is None:
        return "error"
    text = str(exc).strip()
    return shorten(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, limit)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_connection_error(exc: BaseException) -> bool:
    """True for failures to reach a server (refused, reset, DNS, connect timeout), not for answers it gave."""
    import httpx

    for seen in _chain(exc):
        if isinstance(seen, ConnectionError | httpx.TransportError) or type(seen).__name__ in _CONNECTION_TYPES:
            return True
    text = str(exc)
    return "API request to" in text and any(hint in text for hint in _CONNECTION_HINTS)


def _status(exc: BaseException) -> int | None:
    """The HTTP status of an httpx/requests/botocore/MLflow error, when it carries one."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(response, dict):  # botocore ClientError
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else None


def is_transient(exc: BaseException) -> bool:
    """True for failures worth another try: unreachable, timed out, 429/502/503/504, S3 throttling."""
    if isinstance(exc, Transient) or is_connection_error(exc):
        return True
    for seen in _chain(exc):
        if isinstance(seen, TimeoutError) or type(seen).__name__ in _TIMEOUT_TYPES:
            return True
        if _status(seen) in RETRY_STATUSES:
            return True
        response = getattr(seen, "response", None)
        if isinstance(response, dict) and response.get("Error", {}).get("Code") in _S3_TRANSIENT_CODES:
            return True
    text = str(exc)
    return "API request to" in text and any(f"error code {s}" in text for s in RETRY_STATUSES)


def _retry_after(exc: BaseException | None) -> float | None:
    if isinstance(exc, Transient):
        return exc.retry_after
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        return max(0.0, float(headers.get("retry-after", "")))
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff within a total deadline; see the module docstring.

    Attributes:
        deadline_s: No try starts that the next wait would push past this many seconds after the first.
        initial_s: The first backoff; it doubles each try up to `max_wait_s`, plus up to `initial_s` of jitter.
        max_wait_s: The longest backoff between tries.
        max_attempts: An extra bound on tries (None: only the deadline bounds them).
        max_retry_after_s: The longest Retry-After honoured (never beyond the deadline either).
        retryable: Which failures are retried; `is_transient` by default.
    """

    deadline_s: float = DEFAULT_DEADLINE_S
    initial_s: float = 0.25
    max_wait_s: float = 8.0
    max_attempts: int | None = None
    max_retry_after_s: float = 60.0
    retryable: Callable[[BaseException], bool] = is_transient

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> RetryPolicy:
        """The policy with the deadline of `service_deadline(environ)`."""
        return cls(deadline_s=service_deadline(environ), **options)

    def wait(self, state: RetryCallState) -> float:
        """The server's Retry-After when it sent one (capped), else exponential backoff with jitter."""
        error = state.outcome.exception() if state.outcome else None
        after = _retry_after(error)
        if after is not None:
            return min(after, self.max_retry_after_s)
        backoff = min(self.max_wait_s, self.initial_s * 2 ** (state.attempt_number - 1))
        return backoff + random.uniform(0, self.initial_s)

    def tenacity_options(self) -> dict[str, Any]:
        """`stop`, `wait` and `retry` for a tenacity `Retrying`/`AsyncRetrying` of callers with their own loop."""
        stop: stop_base = stop_before_delay(self.deadline_s)
        if self.max_attempts is not None:
            stop = stop | stop_after_attempt(self.max_attempts)
        return {"stop": stop, "wait": self.wait, "retry": retry_if_exception(self.retryable)}

    def call(self, fn: Callable[..., _T], *args: Any, service: Service, **kwargs: Any) -> _T:
        """Call `fn(*args, **kwargs)` under the policy.

        Raises:
            ReleaseError: (`service.error`) every try failed transiently; other errors propagate untried again.
        """
        started = time.monotonic()
        try:
            return Retrying(**self.tenacity_options())(fn, *args, **kwargs)
        except RetryError as e:
            raise self.gave_up(service, e, started) from e.last_attempt.exception()

    async def acall(self, fn: Callable[[], Awaitable[_T]], *, service: Service) -> _T:
        """Await `fn()` under the policy (see `call`)."""
        started = time.monotonic()
        try:
            async for attempt in AsyncRetrying(**self.tenacity_options()):
                with attempt:
                    return await fn()
        except RetryError as e:
            raise self.gave_up(service, e, started) from e.last_attempt.exception()
        raise AssertionError("unreachable: tenacity either returns, raises or gives up")

    def gave_up(self, service: Service, error: RetryError, started: float) -> ReleaseError:
        """The one full-length line for a call whose tries all failed."""
        last = error.last_attempt
        cause = last.exception()
        what = "unreachable" if cause is not None and is_connection_error(cause) else "unavailable"
        bound = f"deadline {self.deadline_s:g} s, {DEADLINE_ENV}"
        if self.max_attempts is not None and last.attempt_number >= self.max_attempts:
            bound = f"at most {self.max_attempts} attempts"
        failure = service.error(
            f"{service.name} at {service.url} {what} after {last.attempt_number} tries in "
            f"{time.monotonic() - started:.1f} s ({bound}; last error: {describe_error(cause)}): {service.check}"
        )
        failure.exit_code = TRANSIENT_EXIT_CODE  # Argo's retryStrategy tries the step again later (pipelines/controls)
        return failure
