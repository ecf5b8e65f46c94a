"""The canary analysis' Prometheus query against a real Prometheus (Debian 2.42) scraping a real Pushgateway."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from steps.rollout.analysis import AnalysisPolicy, PrometheusCheck, judge_measurement, query_prometheus, run_analysis

for _binary in ("prometheus", "prometheus-pushgateway"):
    if shutil.which(_binary) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{_binary} missing in CI: run .ci/install-system-packages.sh", pytrace=False)
        pytest.skip(f"{_binary} not installed: run .ci/install-system-packages.sh as root", allow_module_level=True)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(Prometheus URL, Pushgateway address): Prometheus scrapes the gateway every second."""
    root = tmp_path_factory.mktemp("prom")
    gw_port, prom_port = _port(), _port()
    config = root / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: pushgateway\n    honor_labels: true\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{gw_port}']}}]\n"
    )
    procs = [
        subprocess.Popen(
            ["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{gw_port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        _wait_port(gw_port)
        _wait_port(prom_port)
        yield f"http://127.0.0.1:{prom_port}", f"127.0.0.1:{gw_port}"
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


def _push(gateway: str, values: dict[str, float]) -> None:
    registry = CollectorRegistry()
    gauge = Gauge("canary_error_ratio", "5xx ratio per server", ["server"], registry=registry)
    for server, value in values.items():
        gauge.labels(server=server).set(value)
    push_to_gateway(gateway, job="router", registry=registry)


def _eventually(check: PrometheusCheck, canary: str, want: float, timeout: float = 30) -> float:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = query_prometheus(check, canary)
            if value == want:
                return value
        except (ValueError, KeyError, IndexError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"Prometheus never returned {want} for {check.query}")
        time.sleep(0.5)


def test_a_prometheus_value_above_its_ceiling_fails_the_measurement(prometheus: tuple[str, str]) -> None:
    """GIVEN Prometheus scraping canary_error_ratio{server="v2"} = 0.25 and a check with ceiling 0.05
    WHEN the analysis queries it for canary v2 ({canary} substituted)
    THEN the value is read back and the measurement is Failed, naming the query."""
    url, gateway = prometheus
    _push(gateway, {"v1": 0.0, "v2": 0.25})
    check = PrometheusCheck(url=url, query='max(canary_error_ratio{server="{canary}"})', max_value=0.05)

    value = _eventually(check, "v2", 0.25)

    phase, reasons = judge_measurement([], [], AnalysisPolicy(prometheus=check, min_samples=0), value)
    assert phase == "Failed" and "canary_error_ratio" in reasons[0] and "0.25 > 0.05" in reasons[0]


def test_a_query_returning_several_series_is_an_error_measurement(prometheus: tuple[str, str]) -> None:
    """GIVEN a query that matches two series  WHEN measured  THEN the measurement is Error (not a silent pass)."""
    url, gateway = prometheus
    _push(gateway, {"v1": 0.0, "v2": 0.0})
    check = PrometheusCheck(url=url, query="canary_error_ratio", max_value=1)
    _eventually(PrometheusCheck(url=url, query='max(canary_error_ratio{server="v2"})', max_value=1), "v2", 0.0)

    def measure() -> tuple[list, list, float]:  # type: ignore[type-arg]
        return [], [], query_prometheus(check, "v2")

    phase, measurements = run_analysis(measure, AnalysisPolicy(count=1, prometheus=check), sleep=lambda s: None)
    assert phase == "Error" and "exactly one value" in measurements[0].reasons[0]


def test_unreachable_prometheus_raises_so_the_measurement_is_an_error(tmp_path: Path) -> None:
    """GIVEN no Prometheus on the configured URL  WHEN queried  THEN an error is raised (counted as Error)."""
    check = PrometheusCheck(url=f"http://127.0.0.1:{_port()}", query="up", max_value=1)
    with pytest.raises(Exception, match="(?i)connect"):
        query_prometheus(check, "v2", timeout=2)
