"""The latency step's capacity search against a real HTTP server whose capacity is known: it serves one request
at a time, each for a fixed service time, so it holds 1/service req/s and queues above that.

Timing bands are wide (another test run may share the CPU): a load of a quarter of the capacity must hold, twice
the capacity must not, and the measured capacity must fall between.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from steps.evidence.report import render_report
from steps.latency import Inputs, Slo, run
from steps.release.traffic import CapacitySearch
from steps.rollout.loadgen import LoadSpec
from tests.unit.test_evidence import run_inputs, write_run_files

SERVICE_S = 0.05  # one request at a time: a capacity of 20 req/s
_CHUNKS = [
    {"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
]
_BODY = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in _CHUNKS) + b"data: [DONE]\n\n"


class _Serial(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("content-length") or 0))
        with self.lock:  # the one "GPU": requests wait their turn
            time.sleep(SERVICE_S)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(_BODY)))
        self.end_headers()
        self.wfile.write(_BODY)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def serial_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Serial)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def _inputs(url: str, rate: float, work: Path) -> Inputs:
    load = LoadSpec(base_url=url, model="m", rate=rate, requests=None, duration_s=2.0, warmup=1)
    search = CapacitySearch(enabled=True, max_time_s=12, probe_s=1.0, max_rate=200, precision=0.25)
    return Inputs(load=load, slo=Slo(p95_e2e_ms=400, availability=0.99), capacity=search, work_dir=work)


def test_a_load_it_can_hold_passes_and_the_report_gives_the_capacity(serial_server: str, tmp_path: Path) -> None:
    """GIVEN a server of 20 req/s and a required 5 req/s under a p95 SLO of 400 ms
    WHEN the latency step runs with a 12 s capacity search
    THEN it passes; the report's capacity is between 10 and 40 req/s, found within the budget, with a probe
    table by rate; the log line gives it; the HTML report shows the table and the latency-vs-rate plot."""
    started = time.monotonic()
    out = run(_inputs(serial_server, 5.0, tmp_path / "work"))
    report = json.loads(out.report_path.read_text())
    cap = report["capacity"]
    assert out.verdict == "pass", out.summary
    assert 10 <= cap["capacity_req_per_s"] < 40, cap
    assert cap["elapsed_s"] <= 12 + 1 and time.monotonic() - started < 2 + 12 + 10
    rates = [p["rate"] for p in cap["probes"]]
    assert rates == sorted(rates) and any(not p["holds"] for p in cap["probes"])
    assert f"capacity {cap['capacity_req_per_s']:.3g} req/s" in out.summary and "\n" not in out.summary

    files = write_run_files(tmp_path / "run")
    files["latency"].write_text(json.dumps(report))
    from steps.evidence.bundle import write_bundle

    bundle = tmp_path / "bundle"
    write_bundle(run_inputs(files), bundle)
    html = render_report(bundle)
    start = html.index('id="plot-capacity"')
    assert html.index("<svg", start) < html.index("</figure>", start)
    assert f"{cap['capacity_req_per_s']:.3g} req/s</b>" in html and html.count("<tr><td>") >= len(rates)


def test_a_load_above_capacity_fails_with_the_measured_capacity_in_the_reason(
    serial_server: str, tmp_path: Path
) -> None:
    """GIVEN the same 20 req/s server and a required 40 req/s
    WHEN the latency step runs
    THEN it fails, and one reason says the required load is above the measured capacity, which lies in [5, 40)."""
    out = run(_inputs(serial_server, 40.0, tmp_path / "work"))
    report = json.loads(out.report_path.read_text())
    cap = report["capacity"]["capacity_req_per_s"]
    assert out.verdict == "fail"
    assert cap is not None and 5 <= cap < 40, report["capacity"]
    reason = next(r for r in report["reasons"] if "above the measured capacity" in r)
    assert reason.startswith(f"the required load (40 req/s) is above the measured capacity of {cap:.3g} req/s")
    assert reason in out.summary and "\n" not in out.summary
