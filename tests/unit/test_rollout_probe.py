"""The AnalysisTemplate's Job metric (`python -m steps.rollout.serving.probe`) against real HTTP servers."""

from __future__ import annotations

import json
from typing import Any

from steps.rollout.serving.probe import main
from tests.fake_openai_server import FakeConfig, FakeServer, unused_port


def _run(capsys: Any, canary: str, stable: str, *extra: str) -> tuple[int, dict[str, Any]]:
    code = main(["--model", "demo-qa", "--canary", canary, "--stable", stable, "--probes", "4", *extra])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_healthy_canary_passes_and_a_failing_one_fails_the_job(capsys: Any) -> None:
    """GIVEN a stable server and (a) a like-for-like canary, (b) one answering 503 every other request,
    (c) a closed port WHEN the probe runs THEN (a) exits 0 Successful, (b) and (c) exit 1 Failed naming the rate."""
    with FakeServer(FakeConfig(service_ms=5)) as stable, FakeServer(FakeConfig(service_ms=5)) as good, \
            FakeServer(FakeConfig(service_ms=5, fail_every=2)) as flaky:  # fmt: skip
        code, line = _run(capsys, good.base_url, stable.base_url)
        assert (code, line["phase"]) == (0, "Successful") and line["canary"]["requests"] == 4
        code, line = _run(capsys, flaky.base_url, stable.base_url)
        assert (code, line["phase"]) == (1, "Failed") and "canary error rate 0.500" in line["reasons"][0]
        code, line = _run(capsys, f"http://127.0.0.1:{unused_port()}/v1", stable.base_url, "--timeout-s", "2")
        assert (code, line["phase"]) == (1, "Failed") and line["canary"]["errors"] == 4


def test_too_few_samples_is_inconclusive_and_does_not_fail_the_job(capsys: Any) -> None:
    """GIVEN min-samples above the probe count WHEN the probe runs
    THEN the line says Inconclusive and the exit is 0 (a Job metric has no Inconclusive: the Prometheus ones do)."""
    with FakeServer(FakeConfig(service_ms=5)) as stable, FakeServer(FakeConfig(service_ms=5)) as canary:
        code, line = _run(capsys, canary.base_url, stable.base_url, "--min-samples", "10")
    assert (code, line["phase"]) == (0, "Inconclusive")
