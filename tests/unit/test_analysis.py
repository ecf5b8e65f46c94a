"""Canary analysis: Argo Rollouts' AnalysisRun meanings (count, interval, failureLimit, inconclusiveLimit)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from steps.rollout.analysis import AnalysisPolicy, Sample, judge_measurement, run_analysis


def _side(name: str, n: int, ms: float, errors: int = 0, via: str = "direct") -> list[Sample]:
    return [Sample(served_by=name, latency_ms=ms, ok=i >= errors, via=via) for i in range(n)]  # type: ignore[arg-type]


GOOD = (_side("v2", 6, 100), _side("v1", 6, 100), None)
BAD = (_side("v2", 6, 100, errors=3), _side("v1", 6, 100), None)
THIN = (_side("v2", 1, 100), _side("v1", 6, 100), None)


def _measures(*results: object) -> Iterator[object]:
    yield from results


def _run(policy: AnalysisPolicy, *results: object) -> tuple[str, list[str], list[float]]:
    it = _measures(*results)
    slept: list[float] = []

    def measure() -> object:
        value = next(it)
        if isinstance(value, Exception):
            raise value
        return value

    phase, ms = run_analysis(measure, policy, sleep=slept.append)  # type: ignore[arg-type]
    return phase, [m.phase for m in ms], slept


def test_all_good_measurements_succeed_with_interval_between_them() -> None:
    """GIVEN count 3, interval 2 s  WHEN every measurement is good  THEN Successful, 3 measurements, 2 waits."""
    assert _run(AnalysisPolicy(count=3, interval_s=2), GOOD, GOOD, GOOD) == ("Successful", ["Successful"] * 3, [2, 2])


def test_failures_up_to_the_limit_are_tolerated_and_one_more_fails_the_run_at_once() -> None:
    """GIVEN failureLimit 1  WHEN one measurement fails THEN Successful; WHEN two fail THEN Failed, stopping early."""
    assert _run(AnalysisPolicy(count=3, failure_limit=1), BAD, GOOD, GOOD)[0] == "Successful"
    assert _run(AnalysisPolicy(count=4, failure_limit=1), BAD, BAD, GOOD, GOOD)[:2] == ("Failed", ["Failed"] * 2)


def test_too_few_canary_samples_are_inconclusive_and_pause() -> None:
    """GIVEN inconclusiveLimit 0  WHEN the canary has fewer samples than min_samples  THEN Inconclusive."""
    assert _run(AnalysisPolicy(count=2, inconclusive_limit=0, min_samples=3), THIN, GOOD)[:2] == (
        "Inconclusive",
        ["Inconclusive"],
    )


def test_consecutive_errors_beyond_the_limit_error_the_run_and_all_errors_never_succeed() -> None:
    """GIVEN consecutiveErrorLimit 1  WHEN two measurements raise in a row  THEN Error; a run of only errors
    below the limit is Error too (never a success without data)."""
    boom = RuntimeError("probe failed")
    assert _run(AnalysisPolicy(count=3, consecutive_error_limit=1), boom, boom, GOOD)[:2] == (
        "Error",
        ["Error", "Error"],
    )
    assert _run(AnalysisPolicy(count=2, consecutive_error_limit=4), boom, boom)[0] == "Error"


@pytest.mark.parametrize(
    ("canary_ms", "champion_ms", "phase"),
    [(300, 100, "Failed"), (140, 100, "Successful"), (30, 10, "Successful")],
    ids=["3x-and-200ms-slower", "1.4x", "3x-but-within-slack"],
)
def test_latency_is_judged_on_ratio_and_slack(canary_ms: float, champion_ms: float, phase: str) -> None:
    """GIVEN max_p95_ratio 1.5, slack 50 ms  THEN only a canary both 1.5x and 50 ms slower than the champion fails."""
    policy = AnalysisPolicy(max_p95_ratio=1.5, p95_slack_ms=50)
    got, reasons = judge_measurement(_side("v2", 6, canary_ms), _side("v1", 6, champion_ms), policy)
    assert got == phase, reasons


def test_latency_compares_direct_probes_when_there_are_any() -> None:
    """GIVEN slow router samples of the canary (it took more of the concurrent load) and equal direct probes
    THEN the latency comparison uses the direct, like-for-like probes and the measurement succeeds."""
    canary = _side("v2", 4, 900, via="router") + _side("v2", 4, 100)
    phase, reasons = judge_measurement(canary, _side("v1", 4, 100), AnalysisPolicy())
    assert phase == "Successful", reasons


def test_error_rate_above_the_limit_fails_naming_the_counts() -> None:
    """GIVEN max_error_rate 0.01  WHEN 1 of 6 canary requests failed  THEN Failed, naming 1/6."""
    phase, reasons = judge_measurement(_side("v2", 6, 100, errors=1), _side("v1", 6, 100), AnalysisPolicy())
    assert phase == "Failed" and "(1/6)" in reasons[0]
