"""A step starts its Ray Client join on a thread at its start (`join_early`) and waits for it only when it needs
workers (`connect_ray`).

The head here is a real TCP listener on loopback (what `join_early` probes) and the join's thread is real; what
cannot be had on demand is a Ray Client session, so `ray_connect._join` is replaced by a function that records the
thread it ran on and returns or raises as told (said plainly: the one stand-in of the module). The real join
through a Ray head is tests/integration/test_eval_warm_pool.py's
`test_a_step_joins_ray_client_early_while_it_imports_mlflow`.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from steps.evals import ray_connect
from steps.evals.engines.base import EvalError


class FakeJoin:
    """Stands for `_join`: records (address, thread name), waits until `release` is set, raises `error` if given."""

    def __init__(self, error: Exception | None = None, *, held: bool = False) -> None:
        self.error = error
        self.calls: list[tuple[str, str]] = []
        self.release = threading.Event()
        self.finished = threading.Event()
        if not held:
            self.release.set()

    def __call__(self, address: str, timeout_s: float) -> None:
        self.calls.append((address, threading.current_thread().name))
        self.release.wait(timeout=30)
        self.finished.set()
        if self.error is not None:
            raise self.error


@pytest.fixture
def head() -> Iterator[str]:
    """A listening TCP port on 127.0.0.1, as a Ray head's client port; its ray:// address."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield f"ray://127.0.0.1:{server.getsockname()[1]}"


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No join in flight before or after; this process's SIGTERM handler as it was."""
    monkeypatch.setattr(ray_connect, "_joining", None)
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def test_the_join_starts_on_a_thread_and_connect_ray_waits_for_it(head: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN RAY_ADDRESS=ray://<an answering head> WHEN join_early, then connect_ray
    THEN join_early returns with the join still in flight, the join ran once on its own thread, connect_ray
    returned after it; SIGTERM now exits through SystemExit (as ray.init sets it on the main thread)."""
    monkeypatch.setenv("RAY_ADDRESS", head)
    fake = FakeJoin(held=True)
    monkeypatch.setattr(ray_connect, "_join", fake)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    ray_connect.join_early()
    assert not fake.finished.is_set()  # join_early returned with the join still in flight
    threading.Timer(0.2, fake.release.set).start()
    ray_connect.connect_ray()
    assert fake.finished.is_set()
    assert len(fake.calls) == 1 and fake.calls[0][0] == head
    assert fake.calls[0][1].startswith("ray-join") and ray_connect._joining is None
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler)
    with pytest.raises(SystemExit):
        handler(signal.SIGTERM, None)


def test_a_failed_early_join_is_the_error_of_connect_ray(head: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN an early join that fails WHEN connect_ray THEN it raises that join's one-line EvalError, once."""
    monkeypatch.setenv("RAY_ADDRESS", head)
    error = EvalError(f"RAY_ADDRESS={head}: cannot join the Ray cluster (ConnectionError: refused)")
    monkeypatch.setattr(ray_connect, "_join", FakeJoin(error=error))
    ray_connect.join_early()
    with pytest.raises(EvalError) as info:
        ray_connect.connect_ray()
    assert info.value is error and ray_connect._joining is None


@pytest.mark.parametrize(
    "address",
    ["", "127.0.0.1:6379", "auto"],
    ids=["unset", "a GCS address", "auto"],
)
def test_no_early_join_without_a_ray_client_address(address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN RAY_ADDRESS unset or not a ray:// address WHEN join_early THEN nothing starts (connect_ray joins)."""
    monkeypatch.setenv("RAY_ADDRESS", address)
    fake = FakeJoin()
    monkeypatch.setattr(ray_connect, "_join", fake)
    ray_connect.join_early()
    assert ray_connect._joining is None and fake.calls == []


def test_no_early_join_when_the_head_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN ray://<a port nothing listens on> WHEN join_early THEN it starts nothing: connect_ray keeps its
    bounded wait and its one-line error."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RAY_ADDRESS", f"ray://127.0.0.1:{port}")
    fake = FakeJoin()
    monkeypatch.setattr(ray_connect, "_join", fake)
    ray_connect.join_early()
    assert ray_connect._joining is None and fake.calls == []


def test_a_second_call_starts_no_second_join(head: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN a join in flight WHEN join_early is called again THEN still one join."""
    monkeypatch.setenv("RAY_ADDRESS", head)
    fake = FakeJoin(held=True)
    monkeypatch.setattr(ray_connect, "_join", fake)
    ray_connect.join_early()
    ray_connect.join_early()
    fake.release.set()
    ray_connect.connect_ray()
    assert len(fake.calls) == 1


def test_ray_inits_thread_warning_is_dropped(head: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN join_early WHEN Ray's worker logger warns that it set no SIGTERM handler off the main thread
    THEN that record is dropped (join_early set the handler); its other records pass."""
    import logging

    monkeypatch.setenv("RAY_ADDRESS", head)
    monkeypatch.setattr(ray_connect, "_join", FakeJoin())
    ray_connect.join_early()
    ray_connect.connect_ray()
    logger = logging.getLogger("ray._private.worker")
    make: Any = logger.makeRecord
    warning = make(logger.name, logging.WARNING, __file__, 1, "SIGTERM handler is not set because ...", (), None)
    other = make(logger.name, logging.INFO, __file__, 1, "Connected to Ray cluster.", (), None)
    assert not logger.filter(warning) and logger.filter(other)


def test_a_shared_import_not_installed_is_skipped_and_a_thread_caller_sets_no_handler(
    head: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN a shared import that is not installed, and join_early called off the main thread (where Python
    refuses a signal handler) WHEN the join is awaited THEN it started all the same, and no handler was set."""
    monkeypatch.setenv("RAY_ADDRESS", head)
    monkeypatch.setattr(ray_connect, "_JOIN_IMPORTS", ("llmrelease_no_such_module", "json"))
    fake = FakeJoin()
    monkeypatch.setattr(ray_connect, "_join", fake)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            ray_connect.join_early()
        except BaseException as e:  # the assertion below shows it
            errors.append(e)

    caller = threading.Thread(target=call)
    caller.start()
    caller.join()
    ray_connect.connect_ray()
    assert errors == [] and len(fake.calls) == 1
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
