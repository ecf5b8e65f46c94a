"""The latency step and its load generator against a real fake OpenAI server on 127.0.0.1.

Timing assertions are relative (bands around a known service time, ratios): another test run may share the CPU.
"""

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from steps.latency import CostModel, Inputs, Slo, describe, gpu_cost, judge, provider_cost, run, summarize
from steps.rollout.loadgen import LoadResult, LoadSpec, run_load, schedule
from tests.fake_openai_server import FakeConfig, FakeServer, unused_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[FakeServer]:
    config = getattr(request, "param", FakeConfig())
    with FakeServer(config) as s:
        yield s


def load(base_url: str, **kw: object) -> LoadResult:
    fields: dict[str, object] = {"base_url": base_url, "model": "fake", "warmup": 0, **kw}
    return asyncio.run(run_load(LoadSpec.model_validate(fields)))


@pytest.mark.parametrize("server", [FakeConfig(service_ms=50, tokens=1)], indirect=True)
def test_p50_e2e_is_near_the_fixed_service_time(server: FakeServer) -> None:
    """GIVEN a server that answers one token after a fixed 50 ms
    WHEN 20 requests arrive at a constant 20 req/s (after warm-up)
    THEN every request succeeds, p50 E2E and TTFT lie in a generous band around 50 ms, and the SLO passes.
    """
    result = load(server.base_url, rate=20, requests=20, warmup=2)
    metrics = summarize(result, Slo())
    assert metrics["completed"] == 20 and metrics["warmup"] == {"requests": 2, "errors": 0}
    assert 40 <= metrics["e2e_ms"]["p50"] <= 150
    assert 40 <= metrics["ttft_ms"]["p50"] <= 150
    assert judge(metrics, Slo(), CostModel())[0] == "pass"


@pytest.mark.parametrize("server", [FakeConfig(service_ms=20, tokens=11, itl_ms=20)], indirect=True)
def test_tpot_and_itl_follow_the_definitions(server: FakeServer) -> None:
    """GIVEN a server streaming 11 tokens 20 ms apart after a 20 ms service time
    WHEN 10 requests are measured
    THEN TPOT = (E2E - TTFT)/(tokens - 1) per request, TPOT and ITL p50 are close to 20 ms (ratio), and
    ITL pools 10 gaps per request, and E2E is about TTFT + 10 gaps.
    """
    result = load(server.base_url, rate=20, requests=10)
    metrics = summarize(result, Slo())
    assert metrics["completed"] == 10 and metrics["output_tokens"] == 110
    assert metrics["itl_ms"]["n"] == 100
    rec = result.records[0]
    assert rec.ttft_ms is not None
    tpot = (rec.e2e_ms - rec.ttft_ms) / (rec.output_tokens - 1)
    assert tpot == pytest.approx(sum(rec.itl_ms) / len(rec.itl_ms), rel=0.15)
    assert 0.8 <= metrics["tpot_ms"]["p50"] / 20 <= 1.5
    assert 0.8 <= metrics["itl_ms"]["p50"] / 20 <= 1.5
    assert metrics["e2e_ms"]["p50"] / (metrics["ttft_ms"]["p50"] + 10 * metrics["tpot_ms"]["p50"]) == pytest.approx(
        1.0, rel=0.1
    )


def test_a_refused_endpoint_fails_every_request_with_a_clear_message(tmp_path: Path) -> None:
    """GIVEN a port nothing listens on
    WHEN the step measures it
    THEN every request is a connect error, the error rate is 1.0, and the verdict fails naming the URL.
    """
    url = f"http://127.0.0.1:{unused_port()}/v1"
    spec = LoadSpec(base_url=url, model="fake", rate=50, requests=10)
    outputs = run(Inputs(load=spec, work_dir=tmp_path))
    path, verdict, summary = outputs.report_path, outputs.verdict, describe(outputs)
    report = json.loads(path.read_text())
    assert verdict == "fail" and report["verdict"] == "fail"
    assert report["metrics"]["errors"]["rate"] == 1.0
    assert report["metrics"]["errors"]["by_kind"] == {"connect": 10}
    assert f"cannot connect to {url}/chat/completions" in summary
    assert "\n" not in summary


@pytest.mark.parametrize("server", [FakeConfig(service_ms=5, fail_every=2)], indirect=True)
def test_5xx_answers_are_counted_errors(server: FakeServer) -> None:
    """GIVEN a server that answers 503 to every second request
    WHEN 10 requests are measured
    THEN 5 are http_5xx errors, the error rate is 0.5 and the verdict fails on availability.
    """
    metrics = summarize(load(server.base_url, rate=50, requests=10), Slo())
    assert metrics["errors"]["by_kind"] == {"http_5xx": 5}
    assert metrics["errors"]["rate"] == 0.5 and "HTTP 503" in metrics["errors"]["first"]
    verdict, reasons, _ = judge(metrics, Slo(), CostModel())
    assert verdict == "fail" and "error rate 0.500" in reasons[0]


@pytest.mark.parametrize("server", [FakeConfig(service_ms=5, tokens=6, itl_ms=5, stall_every=3)], indirect=True)
def test_a_stream_stalling_mid_way_is_a_stall_error_and_the_run_ends(server: FakeServer) -> None:
    """GIVEN a server that stalls every third stream after 2 tokens (for an hour)
    WHEN 6 requests are measured with a 0.3 s stall timeout and a long request timeout
    THEN 2 requests are stall errors with their 2 tokens seen, 4 succeed, and the run ends.
    """
    result = load(server.base_url, rate=50, requests=6, stall_timeout_s=0.3, request_timeout_s=20)
    stalls = [r for r in result.records if r.error]
    assert [r.error for r in stalls] == ["stall", "stall"]
    assert {r.detail for r in stalls} == {"no chunk for 0.3 s mid-stream"}
    assert all(len(r.chunk_s) == 2 for r in stalls)
    assert summarize(result, Slo())["completed"] == 4
    assert not result.hit_hard_deadline


@pytest.mark.parametrize("server", [FakeConfig(service_ms=2, tokens=2)], indirect=True)
def test_poisson_schedule_is_reproducible_with_a_seed(server: FakeServer) -> None:
    """GIVEN Poisson arrivals at 100 req/s
    WHEN the schedule is drawn twice with seed 7, once with seed 8, and a run uses seed 7
    THEN seed 7 gives the same send times twice (and in the run), seed 8 others, and the mean gap is ~10 ms.
    """
    spec = LoadSpec(base_url=server.base_url, model="fake", mode="poisson", rate=100, requests=2000, seed=7)
    first, again = schedule(spec), schedule(spec)
    other = schedule(spec.model_copy(update={"seed": 8}))
    assert first == again and first != other
    assert first[-1] / (len(first) - 1) == pytest.approx(0.01, rel=0.1)
    result = load(server.base_url, mode="poisson", rate=100, requests=15, seed=7)
    assert [r.scheduled_s for r in result.records] == first[:15]


@pytest.mark.parametrize("server", [FakeConfig(service_ms=10, tokens=1, slow_request=0, slow_ms=1000)], indirect=True)
def test_latency_counts_from_the_scheduled_time_behind_a_slow_request(server: FakeServer) -> None:
    """GIVEN a server that holds the first request 1 s, and a client capped at 1 request in flight
    WHEN 8 requests are offered at a constant 10 req/s
    THEN the 7 queued ones have scheduled-time E2E far above their E2E from the actual send (coordinated
    omission avoided), the send lag shows the wait, and the client is reported bound by its in-flight cap.
    """
    result = load(server.base_url, rate=10, requests=8, max_in_flight=1)
    queued = result.records[1:]
    assert all(r.ok for r in result.records)
    assert all(r.e2e_ms > 3 * r.e2e_from_send_ms for r in queued[:5])
    metrics = summarize(result, Slo())
    assert metrics["e2e_ms"]["p50"] > 5 * metrics["e2e_from_send_ms"]["p50"]
    assert metrics["send_lag_ms"]["p95"] > 300
    assert metrics["client_bound"] and "in-flight cap 1 saturated" in metrics["client_bound_reasons"][0]


@pytest.mark.parametrize("server", [FakeConfig(service_ms=5, tokens=4, stall_every=1, stall_after=0)], indirect=True)
def test_the_run_ends_within_its_bound_when_nothing_answers(server: FakeServer) -> None:
    """GIVEN a server that never sends a token
    WHEN a duration-bounded constant run (1 s, no request count) and a concurrency run (0.5 s) are measured
    THEN both end by themselves within their hard deadlines, every request a timeout naming the request timeout.
    """
    started = time.perf_counter()
    result = load(server.base_url, rate=5, requests=None, duration_s=1.0, request_timeout_s=0.5)
    assert time.perf_counter() - started < result.spec.hard_deadline_s() + 5
    assert len(result.records) == 5 and {r.error for r in result.records} == {"timeout"}
    assert {r.detail for r in result.records} == {"no complete response within 0.5 s"}
    started = time.perf_counter()
    closed = load(
        server.base_url, mode="concurrency", concurrency=2, requests=None, duration_s=0.5, request_timeout_s=0.3
    )
    assert time.perf_counter() - started < closed.spec.hard_deadline_s() + 5
    assert 2 <= len(closed.records) <= 8 and {r.error for r in closed.records} == {"timeout"}


@pytest.mark.parametrize("server", [FakeConfig(service_ms=20, tokens=3)], indirect=True)
def test_concurrency_mode_measures_from_the_send(server: FakeServer) -> None:
    """GIVEN 3 workers in closed loop
    WHEN 12 requests run
    THEN all 12 complete, each with zero send lag, and E2E is near the 20 ms service time.
    """
    result = load(server.base_url, mode="concurrency", concurrency=3, requests=12)
    metrics = summarize(result, Slo())
    assert metrics["completed"] == 12 and metrics["send_lag_ms"]["max"] == 0.0
    assert 15 <= metrics["e2e_ms"]["p50"] <= 100


def test_cost_arithmetic_on_known_numbers() -> None:
    """GIVEN a 0.8 USD/h GPU at 100 output tok/s and 2 req/s, and a provider at 1/2 USD per 1M in/out tokens
    WHEN the costs are computed
    THEN they equal the hand arithmetic, and a ceiling below the cost fails the verdict.
    """
    gpu = gpu_cost(0.8, 100.0, 2.0)
    assert gpu["usd_per_1k_output_tokens"] == pytest.approx(0.8 / 3600 / 100 * 1000)
    assert gpu["usd_per_request"] == pytest.approx(0.8 / 3600 / 2)
    prov = provider_cost(1.0, 2.0, input_tokens=1000, output_tokens=500, requests=5)
    assert prov["usd_per_1k_output_tokens"] == pytest.approx(0.004)
    assert prov["usd_per_request"] == pytest.approx(0.0004)
    metrics = {
        "completed": 5,
        "requests": 5,
        "errors": {"rate": 0.0, "by_kind": {}, "first": ""},
        "e2e_ms": {"p95": 100.0},
        "output_tok_per_s": 100.0,
        "req_per_s": 2.0,
        "input_tokens": 1000,
        "output_tokens": 500,
    }
    assert judge(metrics, Slo(), CostModel(max_usd_per_1k_output_tokens=0.01))[0] == "pass"
    verdict, reasons, figures = judge(metrics, Slo(), CostModel(max_usd_per_1k_output_tokens=0.001))
    assert verdict == "fail" and reasons[0].startswith("cost 0.0022")
    provider = CostModel(usd_per_1m_input=1.0, usd_per_1m_output=2.0, max_usd_per_1k_output_tokens=0.001)
    verdict, _, figures = judge(metrics, Slo(), provider)
    assert verdict == "fail" and figures["basis"] == "provider price table"


def _runner(tmp_path: Path, values: dict[str, str]) -> subprocess.CompletedProcess[str]:
    params = tmp_path / "params.json"
    params.write_text(json.dumps([{"name": k, "value": v} for k, v in values.items()]))
    env = {**os.environ, "hera__outputs_directory": str(tmp_path / "out"), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "hera.workflows.runner", "-e", "steps.latency:latency_step", str(params)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_latency_step_through_heras_runner_writes_its_outputs(tmp_path: Path) -> None:
    """GIVEN the fake server started from its command line
    WHEN latency_step runs through Hera's runner with every input in the JSON list (the rendered template's
    defaults, as Argo passes them), then with rate "abc"
    THEN the first writes the report and output parameters (verdict pass), the second exits 2 with one line.
    """
    port = unused_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tests" / "fake_openai_server.py"),
            "--port",
            str(port),
            "--service-ms",
            "10",
            "--tokens",
            "4",
            "--itl-ms",
            "2",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and "fake OpenAI server" in proc.stdout.readline()
        rendered = yaml.safe_load((REPO / "argo" / "golden-delivery.workflowtemplate.yaml").read_text())
        template = next(t for t in rendered["spec"]["templates"] if t["name"] == "latency")
        defaults = {p["name"]: p["default"] for p in template["inputs"]["parameters"] if "default" in p}
        values = {
            **defaults,  # every input in the list, as Argo passes them
            "base_url": f"http://127.0.0.1:{port}/v1",
            "model": "fake",
            "work_dir": str(tmp_path / "work"),
            "rate": "20",
            "requests": "10",
            "duration_s": "10",
        }
        done = _runner(tmp_path, values)
        assert done.returncode == 0, done.stderr[-2000:]
        out = tmp_path / "out" / "parameters"
        report_path = (out / "report-path").read_text()
        assert report_path == str(tmp_path / "work" / "latency-report.json")
        assert (out / "verdict").read_text() == "pass"
        assert (out / "summary").read_text().startswith("latency pass: 10/10 ok")
        report = json.loads(Path(report_path).read_text())
        assert len(report["records"]) == 10 and report["metrics"]["output_tokens"] == 40
        bad = _runner(tmp_path, {**values, "rate": "abc"})
        assert bad.returncode == 2
        assert bad.stderr.strip().count("\n") == 0 and bad.stderr.startswith("latency: parameter rate='abc'")
    finally:
        proc.terminate()
        proc.wait(timeout=5)
