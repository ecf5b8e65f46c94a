"""The one retry policy (registry.retry): what is retried, for how long, and the line when it gives up."""

from __future__ import annotations

import time

import httpx
import pytest

from registry.errors import OnboardingError, SpecError
from registry.retry import RetryPolicy, Service, Transient, is_transient, service_deadline, shorten
from tests.fake_openai_server import unused_port

SERVICE = Service("provider API", "http://example.invalid/v1", "check base_url", OnboardingError)


def test_shorten_cuts_at_a_word_boundary_or_not_at_all() -> None:
    """GIVEN long texts WHEN shortened THEN no word is cut: the cut falls on a space, or a long word is kept."""
    text = " ".join(f"word{i}" for i in range(200))
    short = shorten(text, 100)
    assert len(short) <= 102 and short.endswith(" …")
    assert all(w in text.split() for w in short.removesuffix(" …").split())
    assert shorten("x" * 500, 100) == "x" * 500
    assert shorten("a\n  b", 100) == "a b"


def test_transient_failures_are_retried_until_success_and_answers_are_not() -> None:
    """GIVEN a call that fails transiently twice WHEN called THEN it succeeds on the third try;
    GIVEN a ValueError (an answer, not an outage) THEN it propagates after one try."""
    tries: list[int] = []

    def flaky() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise Transient("503 from server", retry_after=0.05)
        return "ok"

    assert RetryPolicy(deadline_s=10).call(flaky, service=SERVICE) == "ok" and len(tries) == 3
    assert not is_transient(ValueError("bad request")) and is_transient(TimeoutError())

    def answer() -> None:
        tries.append(1)
        raise ValueError("400: bad model name")

    tries.clear()
    with pytest.raises(ValueError):
        RetryPolicy(deadline_s=10).call(answer, service=SERVICE)
    assert len(tries) == 1


def test_a_closed_port_gives_up_within_the_deadline_with_one_full_line() -> None:
    """GIVEN a real HTTP call to a closed port and a 1.5 s deadline WHEN called under the policy
    THEN the caller's error class says service, URL, tries, deadline and what to check, within deadline + slack."""
    url = f"http://127.0.0.1:{unused_port()}/v1"
    service = Service("provider API", url, "check base_url and that the server is up", OnboardingError)
    started = time.monotonic()
    with pytest.raises(OnboardingError) as caught:
        RetryPolicy(deadline_s=1.5).call(httpx.get, url, timeout=1.0, service=service)
    assert time.monotonic() - started < 1.5 + 5
    message = str(caught.value)
    assert message.startswith(f"provider API at {url} unreachable after ") and "\n" not in message
    assert "deadline 1.5 s, LLMRELEASE_SERVICE_DEADLINE_S" in message and "ConnectError" in message
    assert message.endswith(": check base_url and that the server is up")


def test_a_retry_after_beyond_the_deadline_is_not_waited_for() -> None:
    """GIVEN a 429 whose Retry-After (30 s) exceeds the 1 s deadline WHEN called THEN it gives up at once."""
    started = time.monotonic()
    with pytest.raises(OnboardingError, match=r"unavailable after 1 tries"):
        RetryPolicy(deadline_s=1).call(lambda: (_ for _ in ()).throw(Transient("429", 30.0)), service=SERVICE)
    assert time.monotonic() - started < 5


def test_the_deadline_comes_from_the_environment_else_the_default() -> None:
    """GIVEN LLMRELEASE_SERVICE_DEADLINE_S set, unset or invalid THEN the deadline follows, or one SpecError line."""
    assert service_deadline({}) == 60.0 and service_deadline({}, default=20) == 20
    assert service_deadline({"LLMRELEASE_SERVICE_DEADLINE_S": "7.5"}, default=20) == 7.5
    with pytest.raises(SpecError, match="LLMRELEASE_SERVICE_DEADLINE_S='soon': not a positive number"):
        service_deadline({"LLMRELEASE_SERVICE_DEADLINE_S": "soon"})
