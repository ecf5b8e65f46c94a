"""The capacity search: the highest request rate at which the latency SLO holds (the goodput of `vllm bench serve`).

Starting from the rate the release had to hold (held or not), the search brackets the capacity by doubling (or
halving) the rate, then bisects the bracket until it is `precision` narrow, the highest rate to try is reached, the
client itself becomes the bottleneck where the SLO held (the SLO then held at the rate the client did offer, which
counts; a miss under a lagging client is still a miss), or the time budget is spent. A probe is one measured run at
a rate; the caller's `measure` runs it within the time left and says whether the SLO held. The capacity is the
highest rate at which it held (None when none did);
every probe is kept for the latency-vs-rate table.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from steps.release.traffic import DEFAULT_CAPACITY, CapacitySearch, merge
from steps.rollout.loadgen import LoadSpec, run_load
from steps.rollout.slo import Slo, client_fault, slo_held, summarize

__all__ = [
    "MIN_RATE",
    "Capacity",
    "Probe",
    "capacity_note",
    "measure_capacity",
    "over_capacity",
    "probe_load",
    "search_capacity",
]

MIN_RATE = 0.01  # req/s: halving stops below this


@dataclass(frozen=True)
class Probe:
    """One rate tried: whether the SLO held there, and what was measured."""

    rate: float
    holds: bool
    p95_e2e_ms: float | None
    error_rate: float
    req_per_s: float
    goodput_req_per_s: float
    requests: int
    wall_s: float
    reason: str = ""
    client_bound: bool = False


@dataclass
class Capacity:
    """The search's outcome: the capacity (req/s), every probe in the order tried, and why it stopped."""

    start_rate: float
    capacity_req_per_s: float | None
    stopped: str
    elapsed_s: float
    probes: list[Probe] = field(default_factory=list)

    def table(self) -> list[Probe]:
        """The probes by rate (the latency-vs-rate table)."""
        return sorted(self.probes, key=lambda p: p.rate)

    def to_json(self) -> dict[str, Any]:
        """The outcome for the latency report, probes sorted by rate."""
        return {
            "start_rate": self.start_rate,
            "capacity_req_per_s": self.capacity_req_per_s,
            "stopped": self.stopped,
            "elapsed_s": self.elapsed_s,
            "probes": [asdict(p) for p in self.table()],
        }


def _next_rate(lo: float | None, hi: float | None, max_rate: float, precision: float) -> tuple[float | None, str]:
    """The next rate to try, or None and why the search is over."""
    if hi is None:
        assert lo is not None
        if lo >= max_rate:
            return None, f"the SLO held at max_rate {max_rate:g} req/s"
        return min(lo * 2, max_rate), ""
    if lo is None:
        if hi / 2 < MIN_RATE:
            return None, f"the SLO held at no rate tried, down to {hi:g} req/s"
        return hi / 2, ""
    if hi - lo <= precision * lo:
        return None, f"bracketed within {precision:.0%}"
    return (lo + hi) / 2, ""


def search_capacity(
    measure: Callable[[float, float], Probe | None],
    *,
    start: float,
    start_holds: bool,
    max_time_s: float,
    min_probe_s: float,
    max_rate: float,
    precision: float,
    clock: Callable[[], float] = time.monotonic,
) -> Capacity:
    """Search the highest rate at which the SLO holds, within `max_time_s`.

    Args:
        measure: `measure(rate, time_left_s)` runs one probe at `rate` (req/s) and returns it, or None when it
            could not finish within `time_left_s` (then the search ends without it).
        start: The rate already measured (the required load).
        start_holds: Whether the SLO held at `start`.
        max_time_s: The whole search's budget; a probe starts only with at least `min_probe_s` left.
        min_probe_s: The shortest a probe can take.
        max_rate: The highest rate to try.
        precision: Stop when (high - low) <= precision * low.
        clock: Seconds, monotonic (tests pass their own).
    """
    t0 = clock()
    lo, hi = (start, None) if start_holds else (None, start)
    probes: list[Probe] = []
    stopped = ""
    while not stopped:
        rate, stopped = _next_rate(lo, hi, max_rate, precision)
        left = max_time_s - (clock() - t0)
        if rate is None:
            break
        if left < min_probe_s:
            stopped = f"time budget of {max_time_s:g} s spent"
            break
        probe = measure(rate, left)
        if probe is None:
            stopped = f"time budget of {max_time_s:g} s spent (the probe at {rate:.3g} req/s was cut)"
            break
        probes.append(probe)
        if probe.holds and probe.client_bound:  # the offered load fell short of the rate: it held at what was sent
            offered = probe.req_per_s
            if offered > 0 and (lo is None or offered > lo):
                lo = offered
            stopped = (
                f"the load client was the bottleneck at {rate:.3g} req/s ({probe.reason}); the SLO held at the "
                f"{offered:.3g} req/s it offered"
            )
        elif probe.holds:
            lo = rate
        else:
            hi = rate
    return Capacity(start, lo, stopped, clock() - t0, probes)


def probe_load(load: LoadSpec, rate: float, probe_s: float, slo: Slo) -> LoadSpec:
    """The load of one probe at `rate`: constant arrivals for `probe_s` (at least 8 requests).

    One warm-up request first waits out what the previous probe left queued; requests are cut at 4x the SLO's
    p95 (at least 1 s): a rate whose requests take that long does not hold, and the search stays bounded.
    """
    timeout = min(load.request_timeout_s, max(1.0, 4 * slo.p95_e2e_ms / 1000))
    update = {"mode": "constant", "rate": rate, "requests": None, "duration_s": max(probe_s, 8 / rate)}
    stall = min(load.stall_timeout_s, timeout)
    return load.model_copy(update={**update, "warmup": 1, "request_timeout_s": timeout, "stall_timeout_s": stall})


def measure_capacity(load: LoadSpec, slo: Slo, search: CapacitySearch, metrics: dict[str, Any]) -> Capacity:
    """The capacity search after the required `load` was measured (`metrics`), with real probes of the endpoint.

    It starts from the load's rate (in concurrency mode, its measured req/s); unset fields of `search` take
    `steps.release.traffic.DEFAULT_CAPACITY`.
    """
    full = merge(search, DEFAULT_CAPACITY)
    probe_s = full.probe_s or 5.0

    def measure(rate: float, left_s: float) -> Probe | None:
        try:
            result = asyncio.run(asyncio.wait_for(run_load(probe_load(load, rate, probe_s, slo)), left_s))
        except TimeoutError:
            return None
        m = summarize(result, slo)
        held, why = slo_held(m, slo)
        client = client_fault(result, slo)
        p95, errors = m["e2e_ms"]["p95"], m["errors"]["rate"]
        figures = (m["req_per_s"], m["goodput_req_per_s"], m["requests"], m["wall_s"])
        return Probe(rate, held, p95, errors, *figures, reason="; ".join(why + client), client_bound=bool(client))

    start = load.rate if load.mode != "concurrency" else max(metrics["req_per_s"], MIN_RATE)
    return search_capacity(
        measure,
        start=start,
        start_holds=slo_held(metrics, slo)[0],
        max_time_s=full.max_time_s or 60.0,
        min_probe_s=probe_s,
        max_rate=full.max_rate or 1000.0,
        precision=full.precision or 0.1,
    )


def over_capacity(load: LoadSpec, metrics: dict[str, Any], cap: Capacity) -> str:
    """The one-line reason a required load the endpoint cannot hold fails, with the measured capacity."""
    if load.mode == "concurrency":
        required = f"concurrency {load.concurrency}, {metrics['req_per_s']:.3g} req/s"
    else:
        required = f"{load.rate:g} req/s"
    if cap.capacity_req_per_s is None:
        lowest = min((p.rate for p in cap.probes), default=cap.start_rate)
        return (
            f"the required load ({required}) is above the measured capacity: the SLO held at no rate tried, down "
            f"to {lowest:.3g} req/s; lower gates.latency.load or serve the model on more capacity"
        )
    return (
        f"the required load ({required}) is above the measured capacity of {cap.capacity_req_per_s:.3g} req/s "
        f"(the highest rate at which the SLO held; {cap.stopped}); lower gates.latency.load or add capacity"
    )


def capacity_note(cap: Capacity) -> str:
    """The capacity's part of the step's log line."""
    got = "none held" if cap.capacity_req_per_s is None else f"{cap.capacity_req_per_s:.3g} req/s"
    return f"capacity {got} ({len(cap.probes)} rates tried in {cap.elapsed_s:.0f} s, {cap.stopped})"
