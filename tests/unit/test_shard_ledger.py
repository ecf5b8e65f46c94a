"""Shard claims and first-writer-wins shard records (`steps.evals.shard_ledger`) on a local folder and on a real
moto S3 server: no Ray, no engine."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest

from steps.evals.results import ExampleResult
from steps.evals.shard_ledger import ShardLedger
from steps.evals.store import EvalStore, eval_store


@pytest.fixture(params=["local", "s3"])
def stores(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[EvalStore]:
    """Six handles on one shard folder: six drivers (pods) of one run key."""
    if request.param == "local":
        return [EvalStore(tmp_path / "run", "eval shards") for _ in range(6)]
    endpoint = request.getfixturevalue("moto_endpoint")
    for key, value in {
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    bucket = f"ledger-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    env = {"LLMRELEASE_S3_BUCKET": bucket}
    return [eval_store("shards", tmp_path, "eval shards", env, s3=boto3.client("s3")).child("run") for _ in range(6)]


def _rows(tag: str) -> list[ExampleResult]:
    return [
        ExampleResult(
            suite="qa",
            id=f"q{i}",
            task="contains",
            prompt="p",
            output=tag,
            score=1,
            passed=True,
            latency_ms=1,
            output_tokens=1,
        )
        for i in range(3)
    ]


def test_a_claim_holds_until_it_goes_stale_then_exactly_one_driver_takes_it_over(stores: list[EvalStore]) -> None:
    """GIVEN a driver that claimed shard 0 and then stopped renewing (its pod died)
    WHEN the other five try to claim it while it is fresh, and all at once once it is stale
    THEN none gets it while fresh; exactly one gets it when stale; the winner's renewals keep it; a released
    claim is free again.
    """
    ledgers = [ShardLedger(s, ttl_s=0.6) for s in stores]
    assert ledgers[0].claim(0)
    assert ledgers[0].claim(0)  # ours already
    assert not any(ledger.claim(0) for ledger in ledgers[1:])
    time.sleep(0.8)
    start = threading.Barrier(5)

    def take(i: int) -> bool:
        start.wait()
        return ledgers[i].claim(0)

    with ThreadPoolExecutor(5) as pool:
        won = list(pool.map(take, range(1, 6)))
    assert won.count(True) == 1, won
    winner = ledgers[1 + won.index(True)]
    for _ in range(3):
        time.sleep(0.3)
        winner.renew()
    assert not ledgers[0].claim(0)  # the old owner, back to life, finds a fresh claim of another
    winner.release(0)
    assert ledgers[0].claimable(0) and ledgers[0].claim(0)


def test_two_drivers_recording_one_shard_keep_the_first_rows(stores: list[EvalStore]) -> None:
    """GIVEN two drivers that both computed shard 1 (overlapping attempts)
    WHEN both record it at once
    THEN both get the same rows (the first writer's), which `finished` returns; no claim is left.
    """
    a, b = ShardLedger(stores[0]), ShardLedger(stores[1])
    ids = [f"q{i}" for i in range(3)]
    start = threading.Barrier(2)

    def record(ledger: ShardLedger, tag: str) -> list[ExampleResult]:
        ledger.claim(1)
        start.wait()
        return ledger.record(1, ids, _rows(tag))

    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(record, (a, b), ("a", "b")))
    assert got[0] == got[1] == a.finished(1, ids) and got[0] in (_rows("a"), _rows("b"))
    assert b.finished(1, ["q0"]) is None  # rows for other item ids are not this shard's
    assert stores[0].read("claim-1.json") is None
