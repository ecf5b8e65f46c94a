"""How accurate and how fast is the latency step's load generator? Compared with truth and with wrk.

1. Start the fake OpenAI server (subprocess, pinned to CPU 1) with a fixed service time (20 ms, one token, so
   TTFT = E2E = service time + loopback).
2. Measure the loopback baseline: a raw-socket client, sequential requests to a zero-service-time route.
3. Ramp a constant rate (client pinned to CPU 0) until the client reports itself client-bound (or errors), keep
   the highest rate it sustained, and measure p50/p95 there against truth = service time + baseline.
4. Run wrk (a Lua script POSTs the same chat body, non-streaming) at the same connection count, and print its
   p50/p95 in the same table with ratios.

Run: `python benchmarks/latency_client.py [--service-ms 20] [--seconds 4]`.
"""

import argparse
import asyncio
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from steps.latency import Slo, summarize  # noqa: E402
from steps.loadgen import LoadSpec, run_load  # noqa: E402

RATES = (25, 50, 100, 200, 300, 400, 600, 800, 1200, 1600)
WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model": "fake", "stream": false, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}'
done = function(summary, latency, requests)
  io.write(string.format("P50_US %d\\nP95_US %d\\nP99_US %d\\nREQS %d\\n", latency:percentile(50),
    latency:percentile(95), latency:percentile(99), summary.requests))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, service_ms: float) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(REPO / "tests" / "fake_openai_server.py"), "--port", str(port)]
    cmd += ["--service-ms", str(service_ms), "--tokens", "1"]
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", "1", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc


def loopback_baseline_ms(port: int, n: int = 300) -> tuple[float, float]:
    """p50/p95 of a raw keep-alive GET to the zero-service route (/v1/models): loopback + server parsing."""
    req = f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    times = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(n):
            t = time.perf_counter()
            s.sendall(req)
            buf = b""
            while b"\r\n\r\n" not in buf or not buf.endswith(b"}]}"):
                buf += s.recv(65536)
            times.append((time.perf_counter() - t) * 1000)
    p50, p95 = np.percentile(times[20:], [50, 95])
    return float(p50), float(p95)


def measure(base_url: str, rate: float, seconds: float) -> dict:
    spec = LoadSpec(
        base_url=base_url,
        model="fake",
        rate=rate,
        requests=None,
        duration_s=seconds,
        warmup=20,
        max_tokens=1,
        request_timeout_s=10,
    )
    return summarize(asyncio.run(run_load(spec)), Slo())


def ramp(base_url: str, seconds: float) -> tuple[float, dict]:
    best: tuple[float, dict] | None = None
    for rate in RATES:
        m = measure(base_url, rate, seconds)
        status = "CLIENT-BOUND " + "; ".join(m["client_bound_reasons"]) if m["client_bound"] else "ok"
        print(
            f"  rate {rate:5d}/s: achieved {m['req_per_s']:7.1f} req/s, p50 {m['e2e_ms']['p50']:.2f} ms, "
            f"send lag p95 {m['send_lag_ms']['p95']:.3f} ms, cpu {m['client_cpu_fraction']:.0%}: {status}"
        )
        if m["client_bound"] or m["errors"]["count"]:
            break
        best = (rate, m)
    if best is None:
        raise SystemExit("the client is bound even at the lowest rate: nothing to report")
    return best


def run_wrk(port: int, connections: int, seconds: float) -> dict[str, float] | str:
    if not shutil.which("wrk"):
        return "wrk is not installed (apt-get install -y wrk) - row skipped"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_LUA)
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        f.name,
        f"http://127.0.0.1:{port}/v1/chat/completions",
    ]
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", "0", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False).stdout
    os.unlink(f.name)
    vals = dict(
        line.split() for line in out.splitlines() if line.split()[:1] in (["P50_US"], ["P95_US"], ["P99_US"], ["REQS"])
    )
    if not vals:
        return f"wrk gave no percentiles: {out[-300:]}"
    return {
        "p50": int(vals["P50_US"]) / 1000,
        "p95": int(vals["P95_US"]) / 1000,
        "req_per_s": int(vals["REQS"]) / max(1, round(seconds)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description="latency client accuracy vs truth and wrk")
    p.add_argument("--service-ms", type=float, default=20.0)
    p.add_argument("--seconds", type=float, default=4.0)
    a = p.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    port = free_port()
    server = start_server(port, a.service_ms)
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        b50, b95 = loopback_baseline_ms(port)
        print(f"loopback baseline (raw socket, zero service time): p50 {b50:.3f} ms, p95 {b95:.3f} ms")
        print(f"ramping a constant rate (service time {a.service_ms:g} ms, {a.seconds:g} s per step):")
        rate, _ = ramp(base_url, a.seconds)
        m = measure(base_url, rate, a.seconds * 1.5)
        conns = max(1, math.ceil(rate * m["e2e_ms"]["p50"] / 1000))
        wrk = run_wrk(port, conns, a.seconds * 1.5)
        report(a.service_ms, rate, m, (b50, b95), conns, wrk)
    finally:
        server.terminate()
        server.wait(timeout=5)


def report(
    service_ms: float, rate: float, m: dict, base: tuple[float, float], conns: int, wrk: dict[str, float] | str
) -> None:
    truth = {"p50": service_ms + base[0], "p95": service_ms + base[1]}
    print(
        f"\nhighest sustained rate without client-bound: {rate} req/s (achieved {m['req_per_s']:.1f}), "
        f"client CPU {m['client_cpu_fraction']:.0%}, send lag p95 {m['send_lag_ms']['p95']:.3f} ms; "
        f"wrk at {conns} connections"
    )
    print(f"{'source':<34}{'p50 ms':>9}{'p95 ms':>9}{'p50 err':>9}{'p95 err':>9}{'p50/wrk':>9}{'p95/wrk':>9}")
    rows: list[tuple[str, dict[str, float]]] = [
        ("truth (service + loopback)", truth),
        ("loadgen E2E (from scheduled)", {k: m["e2e_ms"][k] for k in ("p50", "p95")}),
        ("loadgen TTFT (from scheduled)", {k: m["ttft_ms"][k] for k in ("p50", "p95")}),
        ("loadgen E2E (from send)", {k: m["e2e_from_send_ms"][k] for k in ("p50", "p95")}),
    ]
    if isinstance(wrk, dict):
        rows.append((f"wrk --latency ({wrk['req_per_s']:.0f} req/s)", wrk))
    for name, r in rows:
        errs = [f"{(r[k] - truth[k]) / truth[k]:+8.1%}" for k in ("p50", "p95")]
        ratios = [f"{r[k] / wrk[k]:9.3f}" if isinstance(wrk, dict) else f"{'-':>9}" for k in ("p50", "p95")]
        print(f"{name:<34}{r['p50']:9.2f}{r['p95']:9.2f} {errs[0]} {errs[1]}{ratios[0]}{ratios[1]}")
    if isinstance(wrk, str):
        print(wrk)


if __name__ == "__main__":
    main()
