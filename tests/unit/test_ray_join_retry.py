"""Joining a Ray cluster through Ray Client retries a session server that failed to start, and nothing else.

The failure is the head's: its proxier forks one session server per client, and of two clients arriving within a
second one sometimes fails to start (seen in `make demo`: "Initialization failure from server"). A real head cannot
be made to fail that way on demand, so `ray.init` is replaced here by a function that raises what Ray Client raised
(said plainly: this is the one stand-in of the module); the retry policy itself is the real tenacity one.
"""

from __future__ import annotations

from typing import Any

import pytest

from steps.evals import ray_connect
from steps.evals.engines.base import EvalError

SERVER_FAILED = ConnectionAbortedError("Initialization failure from server: Traceback ... RuntimeError")


class FakeInit:
    """Raises the queued errors, one per call, then succeeds."""

    def __init__(self, *errors: Exception) -> None:
        self.errors, self.calls = list(errors), 0

    def __call__(self, **_: Any) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)


@pytest.fixture
def ray_init(monkeypatch: pytest.MonkeyPatch) -> Any:
    import ray

    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr("tenacity.nap.time.sleep", lambda _: None)

    def install(fake: FakeInit) -> FakeInit:
        monkeypatch.setattr(ray, "init", fake)
        return fake

    return install


def test_a_session_server_that_failed_to_start_is_retried_then_joined(ray_init: Any) -> None:
    """GIVEN a head whose first two session servers fail to start WHEN joining THEN the third try joins."""
    fake = ray_init(FakeInit(SERVER_FAILED, SERVER_FAILED))
    ray_connect._join("ray://head", timeout_s=1)
    assert fake.calls == 3


def test_it_gives_up_after_three_tries_in_one_line(ray_init: Any) -> None:
    """GIVEN a head that never starts a session server WHEN joining THEN one EvalError line after 3 tries."""
    fake = ray_init(FakeInit(SERVER_FAILED, SERVER_FAILED, SERVER_FAILED, SERVER_FAILED))
    with pytest.raises(EvalError, match="^RAY_ADDRESS=ray://head: cannot join the Ray cluster") as info:
        ray_connect._join("ray://head", timeout_s=1)
    assert fake.calls == 3 and "\n" not in str(info.value)


def test_other_connection_errors_are_not_retried(ray_init: Any) -> None:
    """GIVEN a refused token (Ray Client reports a connection timeout) WHEN joining THEN no retry, one line."""
    fake = ray_init(FakeInit(ConnectionError("ray client connection timeout")))
    with pytest.raises(EvalError, match="ray client connection timeout"):
        ray_connect._join("ray://head", timeout_s=1)
    assert fake.calls == 1
