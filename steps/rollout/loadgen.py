"""An async load generator for OpenAI-compatible streaming chat endpoints (httpx, SSE).

Modes: `constant` (one request every 1/rate s), `poisson` (exponential gaps, seeded) and `concurrency` (N workers,
closed loop). Every run is bounded by a request count and/or a duration, and every request by a request timeout
and a stall timeout between chunks, so a run always ends by itself.

Coordinated omission: in the rate modes each request has a scheduled send time from the arrival process, fixed
before the run; TTFT and E2E are measured from that scheduled time, so a request that waited behind a slow one
(the client's loop fell behind, or the in-flight cap was full) is charged for its wait. The send lag (actual send
minus scheduled) is recorded per request, split into dispatch lag (the client's event loop was late) and queue
wait (the in-flight cap was full). In `concurrency` mode there is no schedule: latency counts from the send.

Keeping the client's own share of the latency small (see benchmarks/latency_client.py for the measurements):
a request is built `_LEAD_S` before its send time and sent on time to within tens of µs (a coarse sleep, then a
yield-spin over the last ms, since epoll rounds timeouts up to whole ms); network chunks are stamped on arrival,
before parsing, and a response ends at its last chunk, not after the pool's bookkeeping; the heap is frozen for
the measured phase, so that no full collection (tens of ms) pauses the loop mid-run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["LoadSpec", "RequestRecord", "LoadResult", "schedule", "run_load", "MAX_SCHEDULED"]

MAX_SCHEDULED = 1_000_000
_SPIN_S = 0.001  # epoll timeouts are whole ms, rounded up: sleep to 1 ms before a send time, then yield-spin
_LEAD_S = 0.002  # an open-loop request is created and built this long before its send time
_HEADERS = {"content-type": "application/json", "accept": "text/event-stream", "accept-encoding": "identity"}
_DEFAULT_PROMPT = "Summarize the release notes of this model in three sentences."


class LoadSpec(BaseModel):
    """What load to offer, to which endpoint, and the bounds that end the run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = Field(min_length=1)
    model: str = Field(min_length=1)
    mode: Literal["constant", "poisson", "concurrency"] = "constant"
    rate: float = Field(default=4.0, gt=0, description="requests/s offered in the rate modes")
    concurrency: int = Field(default=4, ge=1, description="workers in concurrency mode")
    max_in_flight: int = Field(default=256, ge=1, description="cap on requests in flight in the rate modes")
    requests: int | None = Field(default=40, ge=1)
    duration_s: float | None = Field(default=30.0, gt=0)
    warmup: int = Field(default=2, ge=0)
    seed: int = 0
    request_timeout_s: float = Field(default=30.0, gt=0)
    stall_timeout_s: float = Field(default=10.0, gt=0)
    max_tokens: int = Field(default=64, ge=1)
    prompt: str = _DEFAULT_PROMPT
    prompts: list[str] = Field(
        default_factory=list, max_length=1024, description="prompts sent in turn (request i: i mod n); empty: prompt"
    )

    @model_validator(mode="after")
    def _bounded(self) -> LoadSpec:
        if self.requests is None and self.duration_s is None:
            raise ValueError("set requests and/or duration_s: a load run must be bounded")
        return self

    @property
    def url(self) -> str:
        """The chat completions URL."""
        return self.base_url.rstrip("/") + "/chat/completions"

    def hard_deadline_s(self) -> float:
        """The longest the measured phase may take: the schedule's horizon plus one request timeout."""
        if self.mode == "concurrency" and self.duration_s is None:
            return math.ceil((self.requests or 1) / self.concurrency) * self.request_timeout_s + 1.0
        horizon = self.duration_s if self.mode == "concurrency" else (schedule(self) or [0.0])[-1]
        return (horizon or 0.0) + self.request_timeout_s + 1.0


@dataclass
class RequestRecord:
    """One request's timeline, in seconds from the start of the measured phase."""

    index: int
    scheduled_s: float
    dispatched_s: float = 0.0
    sent_s: float = 0.0
    first_token_s: float | None = None
    end_s: float = 0.0
    chunk_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int | None = None
    usage_reported: bool = False
    waited_for_cap: bool = False
    status: int | None = None
    error: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True when the request completed without error."""
        return self.error is None

    @property
    def ttft_ms(self) -> float | None:
        """Time to first token from the scheduled time."""
        return None if self.first_token_s is None else (self.first_token_s - self.scheduled_s) * 1000

    @property
    def e2e_ms(self) -> float:
        """End-to-end latency from the scheduled time."""
        return (self.end_s - self.scheduled_s) * 1000

    @property
    def e2e_from_send_ms(self) -> float:
        """End-to-end latency from the actual send (what a coordinated-omission-prone client would report)."""
        return (self.end_s - self.sent_s) * 1000

    @property
    def send_lag_ms(self) -> float:
        """Actual send minus scheduled send."""
        return (self.sent_s - self.scheduled_s) * 1000

    @property
    def itl_ms(self) -> list[float]:
        """Gaps between consecutive streamed content chunks."""
        return [(b - a) * 1000 for a, b in itertools.pairwise(self.chunk_s)]

    def to_json(self) -> dict[str, Any]:
        """The record with its derived latencies, for the report."""
        derived = {"ttft_ms": self.ttft_ms, "e2e_ms": self.e2e_ms, "e2e_from_send_ms": self.e2e_from_send_ms}
        return {**asdict(self), **derived, "send_lag_ms": self.send_lag_ms}


@dataclass
class LoadResult:
    """The records of a run (warm-up apart), its wall time, the client's CPU use and its garbage-collector pauses."""

    spec: LoadSpec
    records: list[RequestRecord]
    warmup: list[RequestRecord]
    wall_s: float
    client_cpu_s: float
    hit_hard_deadline: bool = False
    gc_pause_s: float = 0.0
    gc_pause_max_s: float = 0.0


def schedule(spec: LoadSpec) -> list[float]:
    """Scheduled send offsets (s) of the rate modes; the same spec (seed included) gives the same list."""
    if spec.mode == "concurrency":
        return []
    limit = min(spec.requests or MAX_SCHEDULED, MAX_SCHEDULED)
    horizon = spec.duration_s if spec.duration_s is not None else math.inf
    rng = random.Random(spec.seed)
    out: list[float] = []
    t = 0.0
    while len(out) < limit and t < horizon:
        out.append(t)
        t += 1.0 / spec.rate if spec.mode == "constant" else rng.expovariate(spec.rate)
    return out


def _bodies(spec: LoadSpec) -> list[bytes]:
    """One request body per prompt; request i sends body i mod n."""
    out = []
    for prompt in spec.prompts or [spec.prompt]:
        messages = [{"role": "user", "content": prompt}]
        body = {"model": spec.model, "stream": True, "max_tokens": spec.max_tokens, "messages": messages}
        out.append(json.dumps({**body, "stream_options": {"include_usage": True}}).encode())
    return out


def _build(client: httpx.AsyncClient, spec: LoadSpec, body: bytes) -> httpx.Request:
    """The request, built before its send time so that building it is not charged to its latency."""
    return client.build_request("POST", spec.url, content=body, headers=_HEADERS)


def _on_data(rec: RequestRecord, data: bytes, now: float) -> bool:
    """Account one SSE data payload; returns True at [DONE] or at a choice's finish_reason.

    Servers differ in how a stream ends: OpenAI and vLLM send `data: [DONE]`, `transformers serve` ends with a
    chunk carrying `finish_reason` and no [DONE]. Either completes the request; a stream cut before both is
    a protocol error.
    """
    if data == b"[DONE]":
        return True
    chunk = json.loads(data)
    finished = any((c or {}).get("finish_reason") for c in chunk.get("choices") or ())
    usage = chunk.get("usage")
    if usage:
        rec.usage_reported = True
        rec.output_tokens = int(usage.get("completion_tokens") or 0)
        rec.prompt_tokens = usage.get("prompt_tokens")
    for choice in chunk.get("choices") or ():
        text = (choice.get("delta") or {}).get("content") or (choice.get("text") or "")
        if text:
            if rec.first_token_s is None:
                rec.first_token_s = now
            rec.chunk_s.append(now)
            if not rec.usage_reported:
                rec.output_tokens += 1
    return finished


async def _read_stream(
    resp: httpx.Response, spec: LoadSpec, rec: RequestRecord, t0: float, deadline: asyncio.Timeout, total: float
) -> None:
    """Consume the SSE body, stamping chunks on arrival; after the first, one must come every `stall_timeout_s`."""
    loop = asyncio.get_running_loop()
    pending, done, now = b"", False, 0.0
    async for chunk in resp.aiter_bytes():
        now = time.perf_counter() - t0
        *lines, pending = (pending + chunk).split(b"\n")  # an SSE line may span network chunks
        for line in lines:
            if line.startswith(b"data:"):
                done = _on_data(rec, line[5:].strip(), now) or done
        deadline.reschedule(min(loop.time() + spec.stall_timeout_s, total))
    if pending.startswith(b"data:"):
        done = _on_data(rec, pending[5:].strip(), now) or done
    rec.end_s = now or time.perf_counter() - t0
    if not done:
        rec.error, rec.detail = "protocol", "stream ended without data: [DONE] or a finish_reason"


async def _exchange(
    client: httpx.AsyncClient, spec: LoadSpec, req: httpx.Request, rec: RequestRecord, t0: float
) -> None:
    """Send, then read the status and the stream; every failure becomes the record's error, never an exception."""
    loop = asyncio.get_running_loop()
    total = loop.time() + spec.request_timeout_s
    deadline = asyncio.timeout_at(total)
    try:
        async with deadline:
            resp = await client.send(req, stream=True)
            try:
                rec.status = resp.status_code
                if resp.status_code >= 400:
                    text = (await resp.aread()).decode(errors="replace")
                    rec.error = "http_5xx" if resp.status_code >= 500 else "http_4xx"
                    rec.detail = f"HTTP {resp.status_code}: {text[:200]}"
                    return
                await _read_stream(resp, spec, rec, t0, deadline, total)
            finally:
                await resp.aclose()
    except TimeoutError:
        if (deadline.when() or total) < total:  # the stall timer fired, not the request timeout
            rec.error, rec.detail = "stall", f"no chunk for {spec.stall_timeout_s:g} s mid-stream"
        else:
            rec.error, rec.detail = "timeout", f"no complete response within {spec.request_timeout_s:g} s"
    except httpx.ConnectError as e:
        rec.error, rec.detail = "connect", f"cannot connect to {spec.url}: {e}"
    except httpx.TimeoutException as e:
        rec.error, rec.detail = "timeout", f"{type(e).__name__}: {e}"
    except httpx.HTTPError as e:
        rec.error, rec.detail = "transport", f"{type(e).__name__}: {e}"
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        rec.error, rec.detail = "protocol", f"bad SSE payload: {e}"


async def _request(
    client: httpx.AsyncClient, spec: LoadSpec, req: httpx.Request, rec: RequestRecord, t0: float, closed: bool = False
) -> None:
    rec.sent_s = time.perf_counter() - t0
    if closed:  # closed loop, no schedule: the send is the scheduled time
        rec.scheduled_s = rec.dispatched_s = rec.sent_s
    try:
        await _exchange(client, spec, req, rec, t0)
    except asyncio.CancelledError:
        rec.error, rec.detail = "timeout", "cut at the run's hard deadline"
        raise
    finally:
        rec.end_s = rec.end_s or time.perf_counter() - t0  # set at the last chunk when the stream was read


async def _scheduled(
    sem: asyncio.Semaphore, client: httpx.AsyncClient, spec: LoadSpec, body: bytes, rec: RequestRecord, t0: float
) -> None:
    """One open-loop request: built ahead, sent at its scheduled time (or as soon as the cap lets it).

    A coarse sleep to `_SPIN_S` before the send time, then a yield-spin: the loop keeps serving I/O meanwhile.
    """
    request = _build(client, spec, body)
    target = t0 + rec.scheduled_s
    if (delay := target - time.perf_counter()) > _SPIN_S:
        await asyncio.sleep(delay - _SPIN_S)
    while time.perf_counter() < target:
        await asyncio.sleep(0)
    rec.dispatched_s = time.perf_counter() - t0
    rec.waited_for_cap = sem.locked()
    async with sem:
        await _request(client, spec, request, rec, t0)


async def _open_loop(
    client: httpx.AsyncClient, spec: LoadSpec, bodies: list[bytes], t0: float, records: list[RequestRecord]
) -> None:
    sem = asyncio.Semaphore(spec.max_in_flight)
    tasks: list[asyncio.Task[None]] = []
    try:
        for i, offset in enumerate(schedule(spec)):
            delay = t0 + offset - _LEAD_S - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            rec = RequestRecord(index=i, scheduled_s=offset)
            records.append(rec)
            body = bodies[i % len(bodies)]
            tasks.append(asyncio.create_task(_scheduled(sem, client, spec, body, rec, t0)))
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _closed_loop(
    client: httpx.AsyncClient, spec: LoadSpec, bodies: list[bytes], t0: float, records: list[RequestRecord]
) -> None:
    counter = itertools.count()

    async def worker() -> None:
        while True:
            i, now = next(counter), time.perf_counter() - t0
            if i >= (spec.requests or math.inf) or now >= (spec.duration_s or math.inf):
                return
            rec = RequestRecord(index=i, scheduled_s=now)
            records.append(rec)
            await _request(client, spec, _build(client, spec, bodies[i % len(bodies)]), rec, t0, closed=True)

    await asyncio.gather(*(worker() for _ in range(spec.concurrency)))


async def _warm_up(client: httpx.AsyncClient, spec: LoadSpec, bodies: list[bytes]) -> list[RequestRecord]:
    t0 = time.perf_counter()
    recs = [RequestRecord(index=-1 - i, scheduled_s=0.0) for i in range(spec.warmup)]
    for i, rec in enumerate(recs):
        await _request(client, spec, _build(client, spec, bodies[i % len(bodies)]), rec, t0, closed=True)
        if rec.error == "connect":
            break  # nothing listens: measuring will say so, no need to wait for more warm-ups
    return recs


@contextlib.contextmanager
def _frozen_gc() -> Iterator[list[float]]:
    """Collect, then freeze the heap for the measured phase, and list the collector's pauses (s) meanwhile.

    A full collection scans every object of the process (pydantic, httpx, numpy...): tens of ms during which no
    request is sent or read. Frozen objects are not scanned, so what remains is a young generation's worth.
    """
    gc.collect()
    gc.freeze()
    pauses: list[float] = []

    def timer(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            pauses.append(-time.perf_counter())  # completed at "stop": minus the start plus the stop
        else:
            pauses[-1] += time.perf_counter()

    gc.callbacks.append(timer)
    try:
        yield pauses
    finally:
        gc.callbacks.remove(timer)
        gc.unfreeze()


async def _measure(
    client: httpx.AsyncClient, spec: LoadSpec, bodies: list[bytes], warm: list[RequestRecord]
) -> LoadResult:
    records: list[RequestRecord] = []
    drive = _closed_loop if spec.mode == "concurrency" else _open_loop
    hit = False
    with _frozen_gc() as pauses:
        cpu0, t0 = time.process_time(), time.perf_counter()
        try:
            async with asyncio.timeout(spec.hard_deadline_s()):
                await drive(client, spec, bodies, t0, records)
        except TimeoutError:
            hit = True
        cpu = time.process_time() - cpu0
    wall = max([r.end_s for r in records] + [time.perf_counter() - t0 if not records else 0.0])
    return LoadResult(spec, records, warm, wall, cpu, hit, sum(pauses), max(pauses, default=0.0))


async def run_load(spec: LoadSpec, client: httpx.AsyncClient | None = None) -> LoadResult:
    """Warm up (excluded), then offer the load; returns every request's record. Never runs past its bound."""
    cap = spec.concurrency if spec.mode == "concurrency" else spec.max_in_flight
    own = client is None
    limits = httpx.Limits(max_connections=cap, max_keepalive_connections=cap)
    client = client or httpx.AsyncClient(timeout=httpx.Timeout(spec.request_timeout_s), limits=limits)
    bodies = _bodies(spec)
    try:
        warm = await _warm_up(client, spec, bodies)
        return await _measure(client, spec, bodies, warm)
    finally:
        if own:
            await client.aclose()
