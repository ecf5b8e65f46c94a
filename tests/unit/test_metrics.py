"""steps.evidence.metrics: the metric table, the step and release batches, and pushes to a real Pushgateway.

The Pushgateway is Debian's `prometheus-pushgateway` binary, started on a free port per test module; the tests
read back what it serves on /metrics.
"""

import json
import logging
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from steps.evidence import write_bundle
from steps.evidence.metrics import (
    EXTERNAL_METRICS,
    GATEWAY_ENV,
    GROUPING_LABELS,
    METRICS,
    MetricsBatch,
    push,
    record_step,
    release_metrics,
)
from tests.unit.test_evidence import REPO, run_inputs, write_run_files

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def test_metric_table_is_valid_prometheus() -> None:
    """GIVEN the metric table WHEN checked THEN names and labels are valid, every help text is set, ours carry the
    llmrelease_ prefix and no label repeats a grouping label."""
    for name, spec in METRICS.items():
        assert name == spec.name and _NAME.match(name) and name.startswith("llmrelease_") and spec.help.strip()
        assert all(_LABEL.match(label) and label not in GROUPING_LABELS for label in spec.labels), name
    assert all(_NAME.match(name) and source for name, source in EXTERNAL_METRICS.items())
    assert not set(METRICS) & set(EXTERNAL_METRICS)


def test_batch_refuses_undeclared_metrics_and_labels() -> None:
    """GIVEN a batch WHEN an unknown metric or undeclared labels are set THEN ValueError names the metric."""
    batch = MetricsBatch(pipeline="golden-delivery", step="gate", model="demo-qa")
    with pytest.raises(ValueError, match="llmrelease_made_up"):
        batch.set("llmrelease_made_up", 1.0)
    with pytest.raises(ValueError, match="llmrelease_eval_score: labels"):
        batch.set("llmrelease_eval_score", 0.9, suite="qa")


def test_push_without_a_gateway_is_a_logged_no_op(caplog: pytest.LogCaptureFixture) -> None:
    """GIVEN no LLMRELEASE_PUSHGATEWAY WHEN a batch is pushed THEN nothing is sent, False, and an INFO line."""
    caplog.set_level(logging.INFO, logger="llmrelease.metrics")
    assert push(record_step("gate", "succeeded", 1.0, "demo-qa"), environ={}) is False
    assert f"{GATEWAY_ENV} unset" in caplog.text and "llmrelease_step_duration_seconds" in caplog.text


def test_push_to_a_gateway_that_is_down_warns_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    """GIVEN a gateway address nobody listens on WHEN pushed THEN False and a warning, never an exception."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    ok = push(record_step("gate", "failed", 1.0, "demo-qa"), environ={GATEWAY_ENV: f"127.0.0.1:{port}"}, timeout_s=2)
    assert ok is False and time.monotonic() - started < 10
    assert "metrics push to 127.0.0.1" in caplog.text and "the step goes on" in caplog.text


# ---- against a real Pushgateway ----


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import os

    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if binary is None:
        message = "prometheus-pushgateway not on PATH: apt-get install prometheus-pushgateway"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI must install it before the tests)", pytrace=False)
        pytest.skip(message)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = (tmp_path_factory.mktemp("pushgateway") / "pushgateway.log").open("w")
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail(f"pushgateway on {url} did not become ready; see {log.name}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _samples(url: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def test_step_metrics_reach_the_gateway_and_a_failure_survives_the_next_success(gateway: str) -> None:
    """GIVEN a running Pushgateway
    WHEN the gate step of demo-qa pushes a failure, then a success
    THEN /metrics serves the duration and success of the last run with the grouping labels, and the failure
    timestamp of the first push is still there (POST replaces only the names pushed)."""
    env = {GATEWAY_ENV: gateway}
    assert push(record_step("gate", "failed", 12.5, "demo-qa", now=1_700_000_000.0), environ=env)
    assert push(record_step("gate", "succeeded", 3.25, "demo-qa", now=1_700_000_100.0, run_cost_usd=0.02), environ=env)
    group = {"job": "llmrelease", "pipeline": "golden-delivery", "step": "gate", "model": "demo-qa"}
    assert [v for _, v in _samples(gateway, "llmrelease_step_duration_seconds", **group)] == [3.25]
    assert [v for _, v in _samples(gateway, "llmrelease_step_success", **group)] == [1.0]
    assert [v for _, v in _samples(gateway, "llmrelease_step_last_failure_timestamp_seconds", **group)] == [1.7e9]
    assert [v for _, v in _samples(gateway, "llmrelease_step_last_success_timestamp_seconds", **group)] == [1.7e9 + 100]
    assert [v for _, v in _samples(gateway, "llmrelease_run_cost_usd", **group)] == [0.02]
    assert _samples(gateway, "push_time_seconds", **group)


def test_release_metrics_of_an_aborted_canary(gateway: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN the evidence statement of a run aborted at 25% in canary
    WHEN its release metrics are pushed
    THEN eval scores by suite/metric/role, the gate, p95 latencies, tokens, cost, the canary weight (0 after the
    rollback), the rollback time and the outcome are served."""
    monkeypatch.chdir(REPO)
    write_bundle(run_inputs(write_run_files(tmp_path / "run")), tmp_path / "b")
    statement = json.loads((tmp_path / "b/statement.json").read_text())
    assert push(release_metrics(statement), environ={GATEWAY_ENV: gateway})
    group = {"step": "release", "model": "demo-qa"}
    scores = {
        (s["suite"], s["metric"], s["role"], s["version"]): v
        for s, v in _samples(gateway, "llmrelease_eval_score", **group)
    }
    assert scores[("golden-qa", "accuracy", "candidate", "3")] == pytest.approx(0.85)
    assert scores[("golden-qa", "accuracy", "champion", "2")] == pytest.approx(0.75)
    assert scores[("safety", "attack_success_rate", "candidate", "3")] == pytest.approx(0.025)
    assert _samples(gateway, "llmrelease_gate_passed", version="3", **group)[0][1] == 1.0
    p95 = {s["kind"]: v for s, v in _samples(gateway, "llmrelease_latency_p95_ms", **group)}
    assert set(p95) == {"ttft", "e2e"} and 0 < p95["ttft"] < p95["e2e"] < 1200
    tokens = {s["kind"]: v for s, v in _samples(gateway, "llmrelease_tokens", **group)}
    assert tokens["output"] > 80 * 32 and tokens["input"] == 80 * 14
    assert _samples(gateway, "llmrelease_run_cost_usd", **group)[0][1] > 0
    assert _samples(gateway, "llmrelease_canary_weight", version="3", **group)[0][1] == 0.0
    from datetime import datetime

    aborted = datetime.fromisoformat("2026-11-23T12:02:08+00:00").timestamp()
    assert _samples(gateway, "llmrelease_rollback_last_timestamp_seconds", **group)[0][1] == aborted
    [(labels, _)] = _samples(gateway, "llmrelease_release_outcome_timestamp_seconds", **group)
    assert labels["outcome"] == "rolled_back"
