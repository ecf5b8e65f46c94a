"""An async load generator for OpenAI-compatible streaming chat endpoints (httpx, SSE).

Modes: `constant` (one request every 1/rate s), `poisson` (exponential gaps, seeded) and `concurrency` (N workers,
closed loop). Every run is bounded by a request count and/or a duration, and every request by a request timeout
and a stall timeout between chunks, so a run always ends by itself.

Coordinated omission: in the rate modes each request has a scheduled send time from the arrival process, fixed
before the run; TTFT and E2E are measured from that scheduled time, so a request that waited behind a slow one
(the client's loop fell behind, or the in-flight cap was full) is charged for its wait. The send lag (actual send
minus scheduled) is recorded per request, split into dispatch lag (the client's event loop was late) and queue
wait (the in-flight cap was full). In `concurrency` mode there is no schedule: latency counts from the send.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["LoadSpec", "RequestRecord", "LoadResult", "schedule", "run_load", "MAX_SCHEDULED"]

MAX_SCHEDULED = 1_000_000
_SPIN_S = 0.0015
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
        if self.mode == "concurrency":
            if self.duration_s is not None:
                return self.duration_s + self.request_timeout_s + 1.0
            return math.ceil((self.requests or 1) / self.concurrency) * self.request_timeout_s + 1.0
        offsets = schedule(self)
        return (offsets[-1] if offsets else 0.0) + self.request_timeout_s + 1.0


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
        out = asdict(self)
        out.update(
            ttft_ms=self.ttft_ms,
            e2e_ms=self.e2e_ms,
            e2e_from_send_ms=self.e2e_from_send_ms,
            send_lag_ms=self.send_lag_ms,
        )
        return out


@dataclass
class LoadResult:
    """The records of a run (warm-up apart), its wall time and the client's CPU use."""

    spec: LoadSpec
    records: list[RequestRecord]
    warmup: list[RequestRecord]
    wall_s: float
    client_cpu_s: float
    hit_hard_deadline: bool = False


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


def _body(spec: LoadSpec) -> bytes:
    return json.dumps(
        {
            "model": spec.model,
            "stream": True,
            "max_tokens": spec.max_tokens,
            "messages": [{"role": "user", "content": spec.prompt}],
            "stream_options": {"include_usage": True},
        }
    ).encode()


def _on_data(rec: RequestRecord, data: str, now: float) -> bool:
    """Account one SSE data payload; returns True at [DONE]."""
    if data == "[DONE]":
        return True
    chunk = json.loads(data)
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
    return False


async def _stream(client: httpx.AsyncClient, spec: LoadSpec, body: bytes, rec: RequestRecord, t0: float) -> None:
    loop = asyncio.get_running_loop()
    total_deadline = loop.time() + spec.request_timeout_s
    stall_armed = False
    headers = {"content-type": "application/json", "accept": "text/event-stream"}
    try:
        async with asyncio.timeout(total_deadline) as cm:
            async with client.stream("POST", spec.url, content=body, headers=headers) as resp:
                rec.status = resp.status_code
                if resp.status_code >= 400:
                    text = (await resp.aread()).decode(errors="replace")
                    rec.error = "http_5xx" if resp.status_code >= 500 else "http_4xx"
                    rec.detail = f"HTTP {resp.status_code}: {text[:200]}"
                    return
                done = False
                async for line in resp.aiter_lines():
                    if line.startswith("data:"):
                        done = _on_data(rec, line[5:].strip(), time.perf_counter() - t0) or done
                    stall_at = loop.time() + spec.stall_timeout_s
                    stall_armed = stall_at < total_deadline
                    cm.reschedule(min(stall_at, total_deadline))
                if not done:
                    rec.error, rec.detail = "protocol", "stream ended without data: [DONE]"
    except TimeoutError:
        stalled = stall_armed and loop.time() < total_deadline
        rec.error = "stall" if stalled else "timeout"
        rec.detail = (
            f"no chunk for {spec.stall_timeout_s:g} s mid-stream"
            if stalled
            else f"no complete response within {spec.request_timeout_s:g} s"
        )
    except httpx.ConnectError as e:
        rec.error, rec.detail = "connect", f"cannot connect to {spec.url}: {e}"
    except httpx.TimeoutException as e:
        rec.error, rec.detail = "timeout", f"{type(e).__name__}: {e}"
    except httpx.HTTPError as e:
        rec.error, rec.detail = "transport", f"{type(e).__name__}: {e}"
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        rec.error, rec.detail = "protocol", f"bad SSE payload: {e}"


async def _request(
    client: httpx.AsyncClient, spec: LoadSpec, body: bytes, rec: RequestRecord, t0: float, closed_loop: bool = False
) -> None:
    rec.sent_s = time.perf_counter() - t0
    if closed_loop:  # no schedule: the send is the scheduled time
        rec.scheduled_s = rec.dispatched_s = rec.sent_s
    try:
        await _stream(client, spec, body, rec, t0)
    except asyncio.CancelledError:
        rec.error, rec.detail = "timeout", "cut at the run's hard deadline"
        raise
    finally:
        rec.end_s = time.perf_counter() - t0


async def _capped(
    sem: asyncio.Semaphore, client: httpx.AsyncClient, spec: LoadSpec, body: bytes, rec: RequestRecord, t0: float
) -> None:
    rec.waited_for_cap = sem.locked()
    async with sem:
        await _request(client, spec, body, rec, t0)


async def _sleep_until(target: float) -> None:
    """Sleep to `target` (perf_counter): coarse sleep, then yield-spin the last ms (epoll rounds to whole ms)."""
    delay = target - time.perf_counter()
    if delay > _SPIN_S:
        await asyncio.sleep(delay - _SPIN_S)
    while time.perf_counter() < target:
        await asyncio.sleep(0)


async def _open_loop(
    client: httpx.AsyncClient, spec: LoadSpec, body: bytes, t0: float, records: list[RequestRecord]
) -> None:
    sem = asyncio.Semaphore(spec.max_in_flight)
    tasks: list[asyncio.Task[None]] = []
    try:
        for i, offset in enumerate(schedule(spec)):
            await _sleep_until(t0 + offset)
            rec = RequestRecord(index=i, scheduled_s=offset, dispatched_s=time.perf_counter() - t0)
            records.append(rec)
            tasks.append(asyncio.create_task(_capped(sem, client, spec, body, rec, t0)))
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _closed_loop(
    client: httpx.AsyncClient, spec: LoadSpec, body: bytes, t0: float, records: list[RequestRecord]
) -> None:
    counter = itertools.count()

    async def worker() -> None:
        while True:
            i = next(counter)
            now = time.perf_counter() - t0
            if (spec.requests is not None and i >= spec.requests) or (
                spec.duration_s is not None and now >= spec.duration_s
            ):
                return
            rec = RequestRecord(index=i, scheduled_s=now, dispatched_s=now)
            records.append(rec)
            await _request(client, spec, body, rec, t0, closed_loop=True)

    await asyncio.gather(*(worker() for _ in range(spec.concurrency)))


async def _warm_up(client: httpx.AsyncClient, spec: LoadSpec, body: bytes) -> list[RequestRecord]:
    t0 = time.perf_counter()
    recs = [RequestRecord(index=-1 - i, scheduled_s=0.0) for i in range(spec.warmup)]
    for rec in recs:
        await _request(client, spec, body, rec, t0, closed_loop=True)
        if rec.error == "connect":
            break  # nothing listens: measuring will say so, no need to wait for more warm-ups
    return recs


async def run_load(spec: LoadSpec, client: httpx.AsyncClient | None = None) -> LoadResult:
    """Warm up (excluded), then offer the load; returns every request's record. Never runs past its bound."""
    cap = spec.concurrency if spec.mode == "concurrency" else spec.max_in_flight
    own = client is None
    client = client or httpx.AsyncClient(
        timeout=httpx.Timeout(spec.request_timeout_s),
        limits=httpx.Limits(max_connections=cap, max_keepalive_connections=cap),
    )
    body = _body(spec)
    try:
        warm = await _warm_up(client, spec, body)
        records: list[RequestRecord] = []
        drive = _closed_loop if spec.mode == "concurrency" else _open_loop
        cpu0, t0 = time.process_time(), time.perf_counter()
        hit = False
        try:
            async with asyncio.timeout(spec.hard_deadline_s()):
                await drive(client, spec, body, t0, records)
        except TimeoutError:
            hit = True
        wall = max([r.end_s for r in records] + [time.perf_counter() - t0 if not records else 0.0])
        return LoadResult(spec, records, warm, wall, time.process_time() - cpu0, hit)
    finally:
        if own:
            await client.aclose()
