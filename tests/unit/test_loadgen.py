"""The load generator's SSE accounting, fault reporting and self-diagnosis, over httpx's MockTransport.

No sockets: each test serves canned SSE bytes (split wherever it likes) through a real httpx.AsyncClient, so the
byte-level cases are exact. Timing assertions are relative or generous: another test run may share the CPU.
"""

import asyncio
import gc
import json
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from pydantic import ValidationError

from steps.latency import Slo, summarize
from steps.rollout.loadgen import LoadResult, LoadSpec, run_load, schedule

URL = "http://llm.test/v1"


def _event(payload: object) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _token(text: str) -> bytes:
    return _event({"choices": [{"index": 0, "delta": {"content": text}}]})


class _Chunks(httpx.AsyncByteStream):
    """A response body delivered as the given network chunks; an exception instance is raised where it stands."""

    def __init__(self, chunks: list[bytes | Exception], gap_s: float = 0.0) -> None:
        self.chunks = chunks
        self.gap_s = gap_s

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            if self.gap_s:
                await asyncio.sleep(self.gap_s)
            if isinstance(chunk, Exception):
                raise chunk
            yield chunk


def _run(handler: Callable[[httpx.Request], httpx.Response], **kw: object) -> LoadResult:
    fields: dict[str, object] = {"base_url": URL, "model": "m", "warmup": 0, "requests": 3, "rate": 100, **kw}
    spec = LoadSpec.model_validate(fields)

    async def go() -> LoadResult:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await run_load(spec, client)

    return asyncio.run(go())


def _sse(chunks: list[bytes | Exception], gap_s: float = 0.0) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=_Chunks(chunks, gap_s))

    return handler


def test_sse_lines_split_across_network_chunks_and_crlf_are_counted_once() -> None:
    """GIVEN a stream whose data lines are cut mid-way between network chunks, with CRLF line ends
    WHEN 3 requests are measured
    THEN each has 3 tokens (3 chunk times), no error, and TTFT <= E2E.
    """
    body = (_token("a") + _token("b")).replace(b"\n", b"\r\n") + _token("c") + b"data: [DONE]\n\n"
    result = _run(_sse([body[:7], body[7:61], body[61:62], body[62:]]))
    assert [r.error for r in result.records] == [None, None, None]
    assert all(r.output_tokens == 3 and len(r.chunk_s) == 3 for r in result.records)
    assert all(r.ttft_ms is not None and 0 <= r.ttft_ms <= r.e2e_ms for r in result.records)


def test_the_usage_chunk_overrides_the_counted_tokens() -> None:
    """GIVEN a stream of 2 content chunks and a usage chunk saying 5 completion tokens for a 7-token prompt
    WHEN it is measured
    THEN output_tokens is 5 (the server's count), prompt_tokens is 7, and 2 chunk times are kept for ITL.
    """
    usage = _event({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5}})
    rec = _run(_sse([_token("ab") + _token("cde"), usage + b"data: [DONE]\n\n"]), requests=1).records[0]
    assert rec.ok and rec.usage_reported
    assert (rec.output_tokens, rec.prompt_tokens, len(rec.chunk_s)) == (5, 7, 2)


@pytest.mark.parametrize(
    ("chunks", "kind", "detail"),
    [
        ([_token("a")], "protocol", "stream ended without data: [DONE]"),
        ([b"data: {not json\n\n"], "protocol", "bad SSE payload"),
        ([_token("a"), httpx.ReadError("connection reset by peer")], "transport", "ReadError: connection reset"),
        ([_token("a"), httpx.RemoteProtocolError("peer closed")], "transport", "RemoteProtocolError: peer closed"),
    ],
    ids=["no-done", "bad-json", "reset-mid-stream", "closed-mid-stream"],
)
def test_a_broken_stream_is_an_error_with_a_reason_not_a_crash(
    chunks: list[bytes | Exception], kind: str, detail: str
) -> None:
    """GIVEN a stream that ends early, carries bad JSON, or breaks mid-way at the transport
    WHEN 3 requests are measured
    THEN every request is an error of the expected kind with a reason naming the fault, and the run completes.
    """
    result = _run(_sse(chunks))
    assert {r.error for r in result.records} == {kind}
    assert all(detail in r.detail for r in result.records)
    assert summarize(result, Slo())["errors"]["rate"] == 1.0


def test_4xx_is_reported_with_the_servers_message() -> None:
    """GIVEN an endpoint answering 404 with a JSON error
    WHEN it is measured
    THEN each request is an http_4xx error whose detail has the status and the server's message.
    """

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"message": "model m not found"}})

    result = _run(handler)
    assert {r.error for r in result.records} == {"http_4xx"}
    assert "HTTP 404" in result.records[0].detail and "model m not found" in result.records[0].detail


def test_a_slow_first_token_is_not_a_stall_but_a_silent_stream_is() -> None:
    """GIVEN a stream whose first (and only) chunk comes after 0.5 s, and one that sends a token then goes quiet
    WHEN each is measured with a 0.2 s stall timeout (the first also with a 0.3 s request timeout)
    THEN a slow first token under a long request timeout is fine (TTFT >= 0.45 s), under 0.3 s it is a timeout,
    and silence after a token is a stall naming the stall timeout, with the token seen.
    """
    slow = _sse([_token("a") + b"data: [DONE]\n\n"], gap_s=0.5)
    rec = _run(slow, requests=1, stall_timeout_s=0.2, request_timeout_s=5).records[0]
    assert rec.ok and rec.ttft_ms is not None and rec.ttft_ms >= 450
    rec = _run(slow, requests=1, stall_timeout_s=0.2, request_timeout_s=0.3).records[0]
    assert rec.error == "timeout" and rec.detail == "no complete response within 0.3 s"
    rec = _run(_stall_after_token(), requests=1, stall_timeout_s=0.2).records[0]
    assert rec.error == "stall" and rec.detail == "no chunk for 0.2 s mid-stream" and len(rec.chunk_s) == 1


def _stall_after_token() -> Callable[[httpx.Request], httpx.Response]:
    class Stalling(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield _token("a")
            await asyncio.sleep(5)
            yield b"data: [DONE]\n\n"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Stalling())

    return handler


def test_a_client_that_blocks_its_own_loop_reports_itself_as_the_bottleneck() -> None:
    """GIVEN a client whose transport blocks the event loop 30 ms per request (synchronous work)
    WHEN 10 requests are offered at 100 req/s (a 10 ms gap)
    THEN sends fall behind the schedule and the summary says the client's event loop was the bottleneck.
    """
    answer = _sse([_token("a"), b"data: [DONE]\n\n"])

    def handler(request: httpx.Request) -> httpx.Response:
        time.sleep(0.03)
        return answer(request)

    metrics = summarize(_run(handler, requests=10, rate=100), Slo())
    assert metrics["completed"] == 10
    assert metrics["send_lag_ms"]["p95"] > 20
    assert metrics["client_bound"] and "event loop behind schedule" in metrics["client_bound_reasons"][0]


def test_the_measured_phase_freezes_the_heap_and_restores_the_collector() -> None:
    """GIVEN the collector in its normal state
    WHEN a run completes
    THEN the collector is back as it was (nothing frozen, no callback left) and the run reports its GC pauses.
    """
    callbacks = list(gc.callbacks)
    result = _run(_sse([_token("a"), b"data: [DONE]\n\n"]), requests=5)
    assert gc.get_freeze_count() == 0 and gc.callbacks == callbacks and gc.isenabled()
    assert 0 <= result.gc_pause_max_s <= result.gc_pause_s + 1e-12


def test_the_schedule_is_exact_and_bounded() -> None:
    """GIVEN constant 50 req/s bounded by 10 requests, then by 0.1 s, then Poisson with a seed
    WHEN the schedules are drawn
    THEN the constant one is k/50 s, the duration bound cuts at 0.1 s, and Poisson is reproducible.
    """
    spec = LoadSpec(base_url=URL, model="m", rate=50, requests=10, duration_s=None)
    assert schedule(spec) == pytest.approx([k / 50 for k in range(10)])
    assert schedule(spec.model_copy(update={"requests": None, "duration_s": 0.1})) == pytest.approx(
        [0.0, 0.02, 0.04, 0.06, 0.08]
    )
    poisson = spec.model_copy(update={"mode": "poisson", "seed": 3})
    assert schedule(poisson) == schedule(poisson) != schedule(poisson.model_copy(update={"seed": 4}))


def test_an_unbounded_spec_is_refused() -> None:
    """GIVEN neither a request count nor a duration
    WHEN the spec is built
    THEN validation fails saying the run must be bounded.
    """
    with pytest.raises(ValidationError, match="must be bounded"):
        LoadSpec(base_url=URL, model="m", requests=None, duration_s=None)
