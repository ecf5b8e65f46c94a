"""The HTTP backend: any OpenAI-compatible chat-completions endpoint (provider APIs, vLLM or transformers serve).

Reliability, in the order a request meets it:

1. request budget: `generate` refuses up front to start more requests than `budget_requests` allows, and every
   attempt (retries included) spends one, so a misbehaving endpoint cannot run up a bill;
2. circuit breaker: after `breaker_threshold` consecutive failed attempts it opens for `breaker_cooldown_s`
   and every request fails fast; then one probe is let through (half-open) and closes it again on success;
3. per-request deadline: `timeout_s` bounds each attempt (connect, read and the whole exchange);
4. retries under the platform's one policy (`registry.retry.RetryPolicy`) ONLY on 429/500/502/503/504, connection
   errors and timeouts (500 too, unlike MLflow's: providers answer it for transient faults and document a
   retry), at most `max_retries` times and within a total deadline per request (`deadline_s`, default
   LLMRELEASE_SERVICE_DEADLINE_S or 60 s), with exponential backoff and jitter, or exactly the server's
   Retry-After (seconds or an HTTP date, capped at `max_retry_after_s`; none beyond the deadline); when they run
   out, ONE line names the API, the URL, the tries, the deadline and what to check. 400/401/403/404, other
   errors and a garbage reply (not JSON, truncated, the wrong shape) fail at once with an `EvalError` naming the fix.

The API key is read from the environment variable named by `api_key_env` (a Kubernetes Secret in production),
sent as a bearer token and never logged or put in an error message.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import httpx
from tenacity import AsyncRetrying

from registry.retry import DEADLINE_ENV, RetryPolicy, Transient, service_deadline, shorten
from steps.evals.engines.base import (
    GENERATE,
    LOGLIKELIHOOD,
    EvalError,
    Generation,
    PromptMessages,
    chat_messages,
    prefixed_context,
)

__all__ = ["RETRY_STATUSES", "CircuitBreaker", "OpenAIHTTPEngine", "parse_retry_after"]

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
"""Retried statuses: rate limited, a transient server fault, a gateway/overload answer."""
_Json = dict[str, Any]
_Reply = tuple[str, _Json, float]  # (url, JSON body, latency of the successful attempt in ms)


class _Transient(Transient):
    """A failed attempt worth retrying; `fix` ends the final error message if retries run out."""

    def __init__(self, message: str, fix: str, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after)
        self.fix = fix


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None when absent or invalid."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class CircuitBreaker:
    """Closed -> (threshold consecutive failures) -> open -> (cool-down) -> half-open: one probe decides."""

    def __init__(
        self, target: str, threshold: int = 5, cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.target = target
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self.failures = 0
        self.state = "closed"
        self._opened_at = 0.0
        self._last = ""

    def before(self) -> None:
        """Let an attempt through, or fail fast while open (or while the half-open probe is in flight)."""
        if self.state == "closed":
            return
        left = self._opened_at + self.cooldown_s - self._clock()
        if self.state == "open" and left <= 0:
            self.state = "half_open"  # this caller is the probe
            return
        why = "a probe is in flight" if self.state == "half_open" else f"failing fast for {left:.1f} s more"
        raise EvalError(
            f"circuit breaker for {self.target} is open after {self.failures} consecutive failures "
            f"(last: {self._last}); {why}: check the endpoint's health, then re-run"
        )

    def success(self) -> None:
        """An attempt reached a healthy server: close the breaker."""
        self.failures = 0
        self.state = "closed"

    def failure(self, reason: str) -> None:
        """An attempt failed (server error, timeout, connection): count it and open when due."""
        self.failures += 1
        self._last = reason
        if self.state == "half_open" or self.failures >= self.threshold:
            self.state = "open"
            self._opened_at = self._clock()


class OpenAIHTTPEngine:
    """An `Engine` on an OpenAI-compatible API: POST {base_url}/chat/completions, concurrently.

    Args:
        base_url: The API root, e.g. http://vllm:8000/v1 (without /chat/completions).
        model: The model name the server knows.
        api_key_env: The environment variable holding the API key; unset means no Authorization header.
        timeout_s: Deadline of one attempt.
        max_retries: Retries after the first attempt, for retryable failures only.
        budget_requests: The most HTTP requests (attempts) this engine may send in its lifetime; None: no limit.
        concurrency: Requests in flight at once.
        breaker_threshold: Consecutive failed attempts that open the circuit breaker.
        breaker_cooldown_s: How long the breaker stays open before a probe.
        backoff_initial_s: First backoff; doubles each retry up to `backoff_max_s`, plus up to as much jitter.
        max_retry_after_s: Cap on a server's Retry-After.
        deadline_s: Total deadline of one request, retries included; None: `registry.retry.service_deadline()`.
        logprobs: The server's /completions supports `echo` with `logprobs` (vLLM does): enables `loglikelihood`.
        messages: A release prompt's rendered messages, sent before every item's user message.
    """

    name = "http"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 30.0,
        max_retries: int = 4,
        budget_requests: int | None = None,
        concurrency: int = 8,
        *,
        breaker_threshold: int = 5,
        breaker_cooldown_s: float = 30.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 8.0,
        max_retry_after_s: float = 60.0,
        deadline_s: float | None = None,
        logprobs: bool = False,
        messages: PromptMessages = (),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.budget_requests = budget_requests
        self.concurrency = concurrency
        self.capabilities = frozenset({GENERATE, LOGLIKELIHOOD} if logprobs else {GENERATE})
        self.requests_sent = 0
        self.messages = tuple(messages)
        self.breaker = CircuitBreaker(self.base_url, breaker_threshold, breaker_cooldown_s)
        self._policy = RetryPolicy(
            deadline_s=service_deadline() if deadline_s is None else deadline_s,
            initial_s=backoff_initial_s,
            max_wait_s=backoff_max_s,
            max_attempts=max_retries + 1,
            max_retry_after_s=max_retry_after_s,
            retryable=lambda e: isinstance(e, _Transient),
        )

    def generate(self, prompts: list[str], *, max_new_tokens: int, temperature: float) -> list[Generation]:
        """Answer each prompt as one user message (after the release prompt's); in input order (see `agenerate`)."""
        return asyncio.run(self.agenerate(prompts, max_new_tokens=max_new_tokens, temperature=temperature))

    async def agenerate(self, prompts: list[str], *, max_new_tokens: int, temperature: float) -> list[Generation]:
        """Async `generate`, for callers already inside an event loop.

        Raises:
            EvalError: Budget too small, a non-retryable status, retries exhausted, or the breaker open.
        """
        bodies = [
            {
                "model": self.model,
                "messages": chat_messages(self.messages, p),
                "max_tokens": max_new_tokens,
                "temperature": temperature,
            }
            for p in prompts
        ]
        replies = await self._post_all("/chat/completions", bodies)
        return [self._generation(url, data, ms) for url, data, ms in replies]

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Sum of the continuation's token log-probs via /completions with echo (needs `logprobs=True`).

        Put the separating space at the start of the continuation (" Paris"), as tokenizers attach it there.
        """
        if LOGLIKELIHOOD not in self.capabilities:
            raise EvalError(
                f"backend http ({self.base_url}) was built without logprobs: pass logprobs=True if the server's "
                "/completions supports echo with logprobs, or use the transformers or vllm backend"
            )
        return asyncio.run(self._aloglikelihood(pairs))

    async def _aloglikelihood(self, pairs: list[tuple[str, str]]) -> list[float]:
        bodies = [
            {
                "model": self.model,
                "prompt": prefixed_context(self.messages, ctx) + cont,
                "max_tokens": 1,
                "temperature": 0.0,
                "echo": True,
                "logprobs": 0,
            }
            for ctx, cont in pairs
        ]
        replies = await self._post_all("/completions", bodies)
        return [
            _continuation_logprob(url, data, len(full := prefixed_context(self.messages, ctx)), len(full) + len(cont))
            for (url, data, _), (ctx, cont) in zip(replies, pairs, strict=True)
        ]

    async def _post_all(self, path: str, bodies: list[_Json]) -> list[_Reply]:
        """POST every body concurrently (at most `concurrency` in flight); replies in input order."""
        if self.budget_requests is not None and self.requests_sent + len(bodies) > self.budget_requests:
            left = self.budget_requests - self.requests_sent
            raise EvalError(
                f"backend http ({self.base_url}): {len(bodies)} requests needed but the request budget of "
                f"{self.budget_requests} has {left} left; nothing was sent: raise budget_requests or shrink the suite"
            )
        limit = asyncio.Semaphore(self.concurrency)
        timeout = httpx.Timeout(self.timeout_s)
        async with httpx.AsyncClient(timeout=timeout, headers=self._headers()) as client:

            async def one(body: _Json) -> _Reply:
                async with limit:
                    return await self._post(client, path, body)

            return await _gather_or_cancel([one(body) for body in bodies])

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env, "")
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def _post(self, client: httpx.AsyncClient, path: str, body: _Json) -> _Reply:
        """One request with retries; returns (url, JSON reply, latency of the successful attempt in ms)."""
        url = self.base_url + path
        retrying = AsyncRetrying(**self._policy.tenacity_options(), reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(client, url, body)
        except _Transient as e:
            raise self._gave_up(e, int(retrying.statistics.get("attempt_number", 0))) from e
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    def _gave_up(self, error: _Transient, tries: int) -> EvalError:
        """The one line for a request whose retries ran out: the API, the URL, the tries, the bound, the fix."""
        bound = "" if tries >= self.max_retries + 1 else f" within the {self._policy.deadline_s:g} s deadline"
        hint = "" if not bound else f" ({DEADLINE_ENV})"
        asked = "" if error.retry_after is None else f", the server last asked to retry after {error.retry_after:g} s"
        return EvalError(
            f"OpenAI-compatible API: {error} (gave up after {tries} attempts{bound}{hint}){asked}: {error.fix}"
        )

    async def _attempt(self, client: httpx.AsyncClient, url: str, body: _Json) -> _Reply:
        self.breaker.before()
        if self.budget_requests is not None and self.requests_sent >= self.budget_requests:
            raise EvalError(
                f"backend http ({self.base_url}): the request budget of {self.budget_requests} is spent "
                "(retries count): raise budget_requests or fix the endpoint's errors"
            )
        self.requests_sent += 1
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await client.post(url, json=body)
        except (httpx.TimeoutException, TimeoutError) as e:
            self.breaker.failure("timeout")
            fix = "raise timeout_s or check the server's load"
            raise _Transient(f"timeout after {self.timeout_s:g} s from {url}", fix) from e
        except httpx.TransportError as e:
            self.breaker.failure(type(e).__name__)
            fix = "check base_url and that the server is up"
            raise _Transient(f"cannot reach {url} ({type(e).__name__})", fix) from e
        latency_ms = (time.perf_counter() - start) * 1000
        self._check_status(url, response)
        self.breaker.success()
        try:
            data = response.json()
        except ValueError as e:
            raise EvalError(
                f"OpenAI-compatible API at {url} answered {response.status_code} with a body that is not JSON "
                f"({shorten(repr(response.text[:200]), 80)}): check base_url (it usually ends in /v1) and that the "
                "server speaks the OpenAI API"
            ) from e
        if not isinstance(data, dict):
            raise EvalError(
                f"OpenAI-compatible API at {url} answered JSON that is not an object ({type(data).__name__}): "
                "check base_url and that the server speaks the OpenAI API"
            )
        return url, data, latency_ms

    def _check_status(self, url: str, response: httpx.Response) -> None:
        """Raise `_Transient` for retryable statuses and `EvalError` for the rest of the errors."""
        status = response.status_code
        if status < 400:
            return
        if status in RETRY_STATUSES:
            self.breaker.failure(f"{status}")
            wait = parse_retry_after(response.headers.get("retry-after"))
            fix = "the server is overloaded: retry later or lower concurrency"
            if status == 500:
                fix = f"the server kept failing ({_detail(response)}): check its status page or logs, then retry"
            raise _Transient(f"{status} from {url}", fix, wait)
        if status >= 500:
            self.breaker.failure(f"{status}")
            raise EvalError(f"{status} from {url} ({_detail(response)}): the server failed; check its logs")
        self.breaker.success()  # the server is up; the request is wrong
        key_state = "" if os.environ.get(self.api_key_env) else ", which is not set"
        fixes = {
            401: f"check the API key in env {self.api_key_env}{key_state}",
            403: f"the API key in env {self.api_key_env} may not use model {self.model!r}: check its permissions",
            404: f"check base_url (it usually ends in /v1) and the model name {self.model!r}",
            400: f"the server rejected the request ({_detail(response)}): check the model name and parameters",
        }
        fix = fixes.get(status, f"the server refused the request ({_detail(response)}): check the request")
        raise EvalError(f"{status} from {url}: {fix}")

    def _generation(self, url: str, data: _Json, latency_ms: float) -> Generation:
        try:
            text = data["choices"][0]["message"]["content"] or ""
            if not isinstance(text, str):
                raise TypeError(f"content is a {type(text).__name__}")
        except (KeyError, IndexError, TypeError) as e:
            raise EvalError(
                f"OpenAI-compatible API at {url}: reply has no text at choices[0].message.content "
                f"(keys: {', '.join(sorted(map(str, data))[:8]) or 'none'}): check it is OpenAI-compatible"
            ) from e
        usage = data.get("usage") or {}
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        return Generation(
            text=str(text), output_tokens=tokens if isinstance(tokens, int) else None, latency_ms=latency_ms
        )


async def _gather_or_cancel(jobs: list[Coroutine[Any, Any, _Reply]]) -> list[_Reply]:
    """`asyncio.gather` in input order; on the first failure cancel the rest, then raise that failure."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _continuation_logprob(url: str, data: _Json, start: int, end: int) -> float:
    """Sum the echoed prompt tokens' log-probs whose text offset lies in [start, end)."""
    try:
        logprobs = data["choices"][0]["logprobs"]
        pairs = zip(logprobs["text_offset"], logprobs["token_logprobs"], strict=True)
        values = [lp for offset, lp in pairs if start <= offset < end and lp is not None]
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise EvalError(f"{url}: reply has no echoed logprobs: check the server supports echo with logprobs") from e
    if not values:
        raise EvalError(f"{url}: no tokens of the continuation in the echoed prompt: check the continuation")
    return float(sum(values))


def _detail(response: httpx.Response) -> str:
    """The server's error message, short, for an error line."""
    try:
        error = response.json().get("error", {})
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = response.text
    return shorten(str(message or response.reason_phrase), 200)
