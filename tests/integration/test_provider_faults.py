"""A provider that misbehaves on purpose: 429, 500, garbage. The onboarding probe and the eval engine meet it.

The server is a real `http.server.ThreadingHTTPServer` on 127.0.0.1 in a thread, answering from a script of
faults. 429/500 are retried with bounded backoff (honouring Retry-After, never past the deadline), then fail
with one line naming the API, the URL and what to check; garbage (not JSON, truncated JSON, the wrong shape)
fails at once, after one request. A failed probe writes no onboarding record, so nothing can be registered.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from registry.errors import OnboardingError
from steps.evals.engines.base import EvalError
from steps.evals.engines.http_engine import OpenAIHTTPEngine
from steps.evals.engines.probe import API_KEY_ENV, probe_provider
from tests.unit.test_onboard import Workspace, new_workspace

DEADLINE_S = 2.0
GOOD = json.dumps({"choices": [{"message": {"role": "assistant", "content": "OK"}}], "usage": {}})


@dataclass(frozen=True)
class Fault:
    """One answer: a status, a raw body, headers."""

    status: int = 200
    body: str = GOOD
    headers: dict[str, str] = field(default_factory=dict)


class Misbehaving:
    """A chat-completions server answering from `script` (then `default`), counting the requests."""

    def __init__(self, default: Fault, *script: Fault) -> None:
        self.default, self.script, self.requests = default, list(script), 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def next(self) -> Fault:
        with self.lock:
            self.requests += 1
            return self.script.pop(0) if self.script else self.default

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                fault = server.next()
                data = fault.body.encode()
                self.send_response(fault.status)
                for key, value in {"Content-Type": "application/json", **fault.headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[Misbehaving] = []

    def start(default: Fault, *script: Fault) -> Misbehaving:
        server = Misbehaving(default, *script)
        threading.Thread(target=server.httpd.serve_forever, args=(0.05,), daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.httpd.shutdown()
        server.httpd.server_close()


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """The onboarding workspace of tests/unit/test_onboard.py, with a key and a 2 s service deadline."""
    space = new_workspace(tmp_path)
    monkeypatch.setenv(API_KEY_ENV, "test-key")
    monkeypatch.setenv("LLMRELEASE_SERVICE_DEADLINE_S", str(DEADLINE_S))
    return space


def _probe_fails(ws: Workspace, server: Misbehaving) -> tuple[str, float]:
    """Onboard the provider model at `server`: expect one line, no record; returns it and the seconds taken."""
    ws.spec(model__source=f"{server.url}#demo-qa")
    started = time.monotonic()
    with pytest.raises(OnboardingError) as info:
        ws.onboard(probe=probe_provider)
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    assert f"provider model 'demo-qa' at {server.url}" in message and f"{server.url}/chat/completions" in message
    assert message.endswith("(nothing was registered)"), message
    assert not ws.record.exists() and not list(ws.work.glob(".onboarding-record*"))
    return message, elapsed


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        (Fault(429, '{"error": {"message": "slow down"}}', {"Retry-After": "1"}), "the server is overloaded"),
        (Fault(500, '{"error": {"message": "boom"}}'), "the server kept failing (boom): check its status page"),
        (Fault(503, "upstream down"), "the server is overloaded"),
    ],
    ids=["429-retry-after", "500", "503-not-json"],
)
def test_a_provider_that_keeps_failing_is_retried_until_the_deadline_then_refused(
    ws: Workspace, serve: Any, fault: Fault, check: str
) -> None:
    """GIVEN a provider answering 429 (Retry-After: 1) / 500 / 503 to every request and a 2 s deadline
    WHEN it is onboarded with the real probe
    THEN it is retried more than once, gives up within the deadline plus slack with one line naming the API,
    the URL, the tries, the deadline and what to check, and no record is written."""
    server = serve(fault)
    message, elapsed = _probe_fails(ws, server)
    assert server.requests >= 2 and elapsed < DEADLINE_S + 5, (server.requests, elapsed)
    assert f"OpenAI-compatible API: {fault.status} from {server.url}/chat/completions" in message, message
    assert f"attempts within the {DEADLINE_S:g} s deadline (LLMRELEASE_SERVICE_DEADLINE_S" in message, message
    assert check in message, message


def test_a_retry_after_beyond_the_deadline_is_not_waited_for(ws: Workspace, serve: Any) -> None:
    """GIVEN a provider answering 429 with Retry-After: 3600 and a 2 s deadline
    WHEN it is onboarded THEN it gives up after the one request, at once, saying what the server asked for."""
    server = serve(Fault(429, "{}", {"Retry-After": "3600"}))
    message, elapsed = _probe_fails(ws, server)
    assert server.requests == 1 and elapsed < DEADLINE_S, (server.requests, elapsed)
    assert "gave up after 1 attempts" in message and "asked to retry after 3600 s" in message, message


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("<html>Bad Gateway</html>", "answered 200 with a body that is not JSON ('<html>Bad Gateway</html>')"),
        ('{"choices": [{"message": {"content": "O', "answered 200 with a body that is not JSON"),
        ('["OK"]', "answered JSON that is not an object (list)"),
        ('{"id": "x", "object": "chat.completion"}', "no text at choices[0].message.content (keys: id, object)"),
        ('{"choices": [{"message": {"content": {"text": "OK"}}}]}', "no text at choices[0].message.content"),
    ],
    ids=["html", "truncated-json", "json-list", "no-choices", "content-not-text"],
)
def test_garbage_from_a_provider_fails_at_once_with_one_line(ws: Workspace, serve: Any, body: str, says: str) -> None:
    """GIVEN a provider answering 200 with garbage (not JSON, truncated JSON, the wrong shape)
    WHEN it is onboarded THEN one request is sent, and one line says what came back; no record."""
    server = serve(Fault(200, body))
    message, _ = _probe_fails(ws, server)
    assert server.requests == 1 and says in message, message


def test_the_eval_engine_rides_out_500_and_429_then_answers(serve: Any) -> None:
    """GIVEN a provider answering 500, then 429 with Retry-After: 1, then well
    WHEN the eval engine generates THEN it retries both, waits the second out, and returns the answer."""
    server = serve(Fault(), Fault(500, "{}"), Fault(429, "{}", {"Retry-After": "1"}))
    engine = OpenAIHTTPEngine(server.url, "demo-qa", timeout_s=2.0, backoff_initial_s=0.05, deadline_s=DEADLINE_S * 2)
    started = time.monotonic()
    out = engine.generate(["hi"], max_new_tokens=1, temperature=0.0)
    assert [g.text for g in out] == ["OK"] and server.requests == 3
    assert time.monotonic() - started >= 0.95


def test_the_eval_engine_refuses_garbage_in_a_batch_after_one_request_each(serve: Any) -> None:
    """GIVEN a provider answering truncated JSON WHEN a batch of 3 prompts is generated (concurrency 1)
    THEN the first garbage reply fails the batch with an EvalError, and the rest are not sent."""
    server = serve(Fault(200, '{"choices": ['))
    engine = OpenAIHTTPEngine(server.url, "demo-qa", timeout_s=2.0, concurrency=1, deadline_s=DEADLINE_S)
    with pytest.raises(EvalError, match="body that is not JSON"):
        engine.generate(["a", "b", "c"], max_new_tokens=1, temperature=0.0)
    assert server.requests == 1
