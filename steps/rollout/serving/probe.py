"""The AnalysisTemplate's Job metric: probe the canary and stable Services once, judge, exit 0 unless Failed.

    python -m steps.rollout.serving.probe --model demo-qa --canary http://demo-qa-canary.llmrelease.svc:8000/v1 \
        --stable http://demo-qa-stable.llmrelease.svc:8000/v1 --probes 8 --max-error-rate 0.01 ...

One measurement with the local canary's rules (`steps.rollout.analysis.judge_measurement`): `--probes` real chat
completions to each side, one at a time (like for like), the canary's error rate against `--max-error-rate` and its
p95 against the stable's (`--max-p95-ratio`, `--p95-slack-ms`). The measurement is printed as one JSON line (Argo
Rollouts keeps a Job metric's result, not its log, so the line is for `kubectl logs`). Exit 1 on Failed: the Job
fails and Argo counts a failed measurement. A Job metric has no Inconclusive, so Inconclusive (too few samples)
exits 0 and says so on that line; the Prometheus metrics of the same template carry Inconclusive.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import httpx

from steps.rollout.analysis import AnalysisPolicy, Sample, judge_measurement, side_stats

__all__ = ["main", "probe_side"]

_PROMPT = [{"role": "user", "content": "Reply with one word: ready"}]


def probe_side(client: httpx.Client, base_url: str, model: str, side: str, count: int) -> list[Sample]:
    """`count` one-token chat completions to one side, one at a time; a transport error is a failed sample."""
    samples: list[Sample] = []
    for _ in range(count):
        started = time.perf_counter()
        try:
            response = client.post(
                base_url.rstrip("/") + "/chat/completions",
                json={"model": model, "messages": _PROMPT, "max_tokens": 4},
            )
            ok = response.status_code == 200
        except httpx.HTTPError:
            ok = False
        latency = (time.perf_counter() - started) * 1000
        samples.append(Sample(served_by=side, latency_ms=latency, ok=ok, via="direct"))
    return samples


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m steps.rollout.serving.probe", description=__doc__)
    parser.add_argument("--model", required=True, help="the served model name")
    parser.add_argument("--canary", required=True, help="the canary Service's base URL (…/v1)")
    parser.add_argument("--stable", required=True, help="the stable Service's base URL (…/v1)")
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--min-samples", type=int, default=3)
    parser.add_argument("--max-error-rate", type=float, default=0.01)
    parser.add_argument("--max-p95-ratio", type=float, default=1.5)
    parser.add_argument("--p95-slack-ms", type=float, default=50.0)
    parser.add_argument("--timeout-s", type=float, default=30.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Probe both sides, print the measurement, return 1 on Failed and 0 otherwise."""
    args = _parser().parse_args(argv)
    if args.probes < 1:
        print(f"--probes {args.probes}: give at least 1", file=sys.stderr)
        return 2
    policy = AnalysisPolicy(
        count=1, min_samples=args.min_samples, max_error_rate=args.max_error_rate,
        max_p95_ratio=args.max_p95_ratio, p95_slack_ms=args.p95_slack_ms,
    )  # fmt: skip
    with httpx.Client(timeout=args.timeout_s) as client:
        canary = probe_side(client, args.canary, args.model, "canary", args.probes)
        stable = probe_side(client, args.stable, args.model, "stable", args.probes)
    phase, reasons = judge_measurement(canary, stable, policy)
    line = {"phase": phase, "reasons": reasons, "canary": side_stats(canary), "stable": side_stats(stable)}
    print(json.dumps(line, sort_keys=True))
    return 1 if phase == "Failed" else 0


if __name__ == "__main__":
    sys.exit(main())
