"""The HTTP backend against a REAL local HTTP server speaking OpenAI's chat-completions shape.

The server (`http.server.ThreadingHTTPServer` on 127.0.0.1, a free port, in a thread) is programmed per test
with a queue of replies (status, headers, a hang); once the queue is empty it answers with `default`.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from steps.evals.engines.base import EvalError
from steps.evals.engines.http_engine import OpenAIHTTPEngine, parse_retry_after
from steps.evals.scoring import JudgeScorer
from steps.evals.suites import Suite, SuiteItem, check_supported

SECRET = "sk-test-not-a-real-key-123"


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content: str | None = None  # None: echo the prompt
    hang: bool = False


class FakeOpenAI:
    """A programmable OpenAI-compatible server; records every request it receives."""

    def __init__(self) -> None:
        self.queue: list[Reply] = []
        self.default = Reply()
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def program(self, *replies: Reply, default: Reply | None = None) -> None:
        self.queue = list(replies)
        self.default = default or Reply()

    def take(self, request: dict[str, Any]) -> Reply:
        with self.lock:
            self.requests.append(request)
            return self.queue.pop(0) if self.queue else self.default


def _handler_for(server: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            reply = server.take({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            if reply.hang:
                server.release.wait(10)
                return
            if reply.status != 200:
                payload: dict[str, Any] = {"error": {"message": f"status {reply.status}"}}
            elif self.path.endswith("/completions") and "prompt" in body:
                payload = _echo_logprobs(body["prompt"])
            else:
                prompt = body["messages"][0]["content"]
                if prompt.startswith("slow"):
                    time.sleep(0.3)
                content = reply.content if reply.content is not None else f"echo: {prompt}"
                payload = {
                    "choices": [{"message": {"role": "assistant", "content": content}}],
                    "usage": {"completion_tokens": len(content.split())},
                }
            data = json.dumps(payload).encode()
            self.send_response(reply.status)
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _echo_logprobs(prompt: str) -> dict[str, Any]:
    """Echo the prompt as word tokens (" word"), each with log-prob -1.0 (the first: None), plus one new token."""
    tokens, offsets, position = [], [], 0
    for word in prompt.split(" "):
        piece = word if position == 0 else " " + word
        tokens.append(piece)
        offsets.append(position)
        position += len(piece)
    logprobs = [None] + [-1.0] * (len(tokens) - 1)
    return {
        "choices": [
            {
                "text": prompt + " x",
                "logprobs": {
                    "tokens": [*tokens, " x"],
                    "text_offset": [*offsets, position],
                    "token_logprobs": [*logprobs, -0.5],
                },
            }
        ]
    }


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    thread = threading.Thread(target=fake.httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    fake.release.set()
    fake.httpd.shutdown()
    fake.httpd.server_close()


def _engine(url: str, **kw: Any) -> OpenAIHTTPEngine:
    options: dict[str, Any] = {"timeout_s": 1.0, "max_retries": 2, "backoff_initial_s": 0.05, "concurrency": 4}
    return OpenAIHTTPEngine(url, "tiny-chat", **(options | kw))


def test_generate_runs_concurrently_and_returns_in_input_order(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN an API key in OPENAI_API_KEY and a first prompt the server answers slowly
    WHEN five prompts are generated with concurrency 4
    THEN replies come back in input order with token counts from usage, and the key is sent as a bearer token.
    """
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    prompts = ["slow one", "two", "three", "four", "five"]
    started = time.perf_counter()
    out = _engine(server.url).generate(prompts, max_new_tokens=16, temperature=0.0)
    elapsed = time.perf_counter() - started

    assert [g.text for g in out] == [f"echo: {p}" for p in prompts]
    assert [g.output_tokens for g in out] == [3, 2, 2, 2, 2]
    assert elapsed < 1.0  # the slow one did not hold the others back
    assert {r["auth"] for r in server.requests} == {f"Bearer {SECRET}"}
    assert server.requests[0]["body"]["model"] == "tiny-chat"
    assert server.requests[0]["body"]["max_tokens"] == 16


@pytest.mark.parametrize(
    ("status", "fix"),
    [
        (401, "check the API key in env OPENAI_API_KEY"),
        (403, "may not use model 'tiny-chat'"),
        (400, "check the model name and parameters"),
        (404, "check base_url"),
    ],
)
def test_client_errors_are_not_retried(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, status: int, fix: str
) -> None:
    """GIVEN a server that answers 401/403/400/404
    WHEN a prompt is generated
    THEN exactly one request is sent and the EvalError names the status, the URL and the fix, never the key.
    """
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    server.program(default=Reply(status=status))
    engine = _engine(server.url)
    with pytest.raises(EvalError, match=fix) as caught:
        engine.generate(["hi"], max_new_tokens=4, temperature=0.0)
    assert str(caught.value).startswith(f"{status} from {server.url}/chat/completions")
    assert SECRET not in str(caught.value)
    assert len(server.requests) == 1 and engine.requests_sent == 1


def test_429_waits_for_retry_after_then_succeeds(server: FakeOpenAI) -> None:
    """GIVEN a server that answers 429 with Retry-After: 1, then 200
    WHEN a prompt is generated
    THEN it is retried once, after waiting at least ~1 s, and succeeds.
    """
    server.program(Reply(status=429, headers={"Retry-After": "1"}))
    started = time.perf_counter()
    out = _engine(server.url).generate(["hi"], max_new_tokens=4, temperature=0.0)
    assert out[0].text == "echo: hi"
    assert len(server.requests) == 2
    assert time.perf_counter() - started >= 0.95


def test_retry_after_parses_seconds_and_http_dates() -> None:
    """GIVEN Retry-After values as seconds, as an HTTP date, in the past and garbage
    WHEN they are parsed
    THEN seconds pass through, a date becomes the seconds until it, the past 0, garbage None.
    """
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=5), usegmt=True), now=now) == 5.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=5), usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_503_twice_then_200_succeeds(server: FakeOpenAI) -> None:
    """GIVEN a server that answers 503 twice, then 200
    WHEN a prompt is generated with max_retries=2
    THEN it succeeds on the third request.
    """
    server.program(Reply(status=503), Reply(status=503))
    out = _engine(server.url).generate(["hi"], max_new_tokens=4, temperature=0.0)
    assert out[0].text == "echo: hi"
    assert len(server.requests) == 3


def test_a_hanging_server_times_out_with_bounded_retries(server: FakeOpenAI) -> None:
    """GIVEN a server that never answers
    WHEN a prompt is generated with timeout_s=1 and max_retries=1
    THEN two requests are sent and a timeout EvalError comes after ~2 s, not later.
    """
    server.program(default=Reply(hang=True))
    started = time.perf_counter()
    with pytest.raises(EvalError, match=r"timeout after 1 s from .* \(gave up after 2 attempts\): raise timeout_s"):
        _engine(server.url, max_retries=1).generate(["hi"], max_new_tokens=4, temperature=0.0)
    elapsed = time.perf_counter() - started
    assert len(server.requests) == 2
    assert 1.9 <= elapsed < 4.0


def test_connection_refused_is_retried_then_reported() -> None:
    """GIVEN a port nothing listens on
    WHEN a prompt is generated with max_retries=2
    THEN three attempts are made and the EvalError says the endpoint cannot be reached and what to check.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    engine = _engine(f"http://127.0.0.1:{port}/v1")
    with pytest.raises(
        EvalError, match=r"cannot reach .*\(ConnectError\) \(gave up after 3 attempts\): check base_url"
    ):
        engine.generate(["hi"], max_new_tokens=4, temperature=0.0)
    assert engine.requests_sent == 3


def test_circuit_breaker_opens_fails_fast_then_closes_after_a_probe(server: FakeOpenAI) -> None:
    """GIVEN a server that keeps answering 503 and a breaker with threshold 3 and a 0.3 s cool-down
    WHEN three requests fail, a fourth is tried, and after the cool-down the server recovers
    THEN the fourth fails fast without reaching the server; after the cool-down one probe closes the breaker.
    """
    server.program(default=Reply(status=503))
    engine = _engine(server.url, max_retries=0, breaker_threshold=3, breaker_cooldown_s=0.3)
    for _ in range(3):
        with pytest.raises(EvalError, match="503 from"):
            engine.generate(["hi"], max_new_tokens=4, temperature=0.0)
    started = time.perf_counter()
    with pytest.raises(EvalError, match=r"circuit breaker for .* is open after 3 consecutive failures \(last: 503\)"):
        engine.generate(["hi"], max_new_tokens=4, temperature=0.0)
    assert time.perf_counter() - started < 0.2
    assert len(server.requests) == 3

    time.sleep(0.35)
    server.program(default=Reply())
    assert engine.generate(["hi"], max_new_tokens=4, temperature=0.0)[0].text == "echo: hi"
    assert engine.breaker.state == "closed"


def test_request_budget_is_checked_before_sending_and_counts_retries(server: FakeOpenAI) -> None:
    """GIVEN a budget of 2 requests
    WHEN 3 prompts are generated, and then 1 prompt against a server that keeps failing
    THEN the first call fails before sending anything; the second stops when retries spend the budget.
    """
    engine = _engine(server.url, budget_requests=2, max_retries=4)
    with pytest.raises(EvalError, match="3 requests needed but the request budget of 2 has 2 left; nothing was sent"):
        engine.generate(["a", "b", "c"], max_new_tokens=4, temperature=0.0)
    assert server.requests == []

    server.program(default=Reply(status=503))
    with pytest.raises(EvalError, match="the request budget of 2 is spent"):
        engine.generate(["a"], max_new_tokens=4, temperature=0.0)
    assert len(server.requests) == 2


def test_multiple_choice_needs_logprobs_on_http(server: FakeOpenAI) -> None:
    """GIVEN a suite with a multiple_choice item
    WHEN it is checked against an HTTP engine without logprobs, and scored through one with logprobs
    THEN the first is refused naming suite, item and the fix; the second sums the continuation's echoed log-probs.
    """
    item = SuiteItem(id="q1", prompt="2+2=?", task="multiple_choice", choices=("4", "5"), answer=0)
    suite = Suite(name="golden", path="suites/golden.jsonl", sha256="0" * 64, items=(item,))
    expected = (
        "suite golden item q1: task multiple_choice needs log-likelihoods, which backend http cannot give; "
        "run it on the transformers or vllm backend or drop the item"
    )
    with pytest.raises(EvalError) as caught:
        check_supported(suite, _engine(server.url))
    assert str(caught.value) == expected

    engine = _engine(server.url, logprobs=True)
    check_supported(suite, engine)
    assert engine.loglikelihood([("the answer is", " four"), ("the answer", " is five")]) == [-1.0, -2.0]
    assert server.requests[0]["path"] == "/v1/completions" and server.requests[0]["body"]["echo"] is True


def test_judge_scores_pass_fail_and_flags_unparseable_verdicts(server: FakeOpenAI) -> None:
    """GIVEN a judge endpoint answering PASS, then "FAIL.", then "Probably fine"
    WHEN three judge items are scored (concurrency 1, so replies arrive in order)
    THEN they score 1, 0, and 0 with a note; the judge prompt carried the rubric.
    """
    server.program(Reply(content="PASS"), Reply(content="FAIL."), Reply(content="Probably fine"))
    items = [SuiteItem(id=f"j{i}", prompt="Say hi", task="judge", rubric="greets politely") for i in range(3)]
    scores = JudgeScorer(_engine(server.url, concurrency=1)).score(items, ["hi", "go away", "hello"])
    assert [(s.score, s.passed) for s in scores] == [(1.0, True), (0.0, False), (0.0, False)]
    assert scores[2].note == "judge verdict unparseable: 'Probably fine'"
    assert "greets politely" in server.requests[0]["body"]["messages"][0]["content"]
