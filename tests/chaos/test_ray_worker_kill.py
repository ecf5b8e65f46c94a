"""kill -9 of a Ray worker mid-eval, from outside (as the OOM killer or a node loss would), not by the test hook.

A local Ray (2 CPUs) runs a 48-item suite in 6 shards on 2 actors with the HTTP engine against the project's
local OpenAI-compatible server (slow enough that a shard takes ~1 s). When the first shard is on disk, one
`ray::ShardWorker` process is SIGKILLed. The actor restarts, its shard is resubmitted, the run ends cleanly,
and every item is scored exactly once; a second run resumes from the persisted shards and runs none.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from steps.evals.cache import GenerationSettings
from steps.evals.engine_spec import EngineSpec
from steps.evals.sharding import ShardOptions, ShardStats, run_suite
from steps.evals.suites import load_suite
from tests.fake_openai_server import FakeConfig, FakeServer
from tests.integration.test_batch_eval import write_suite

pytestmark = pytest.mark.chaos

SETTINGS = GenerationSettings(max_new_tokens=1, backend="http", device="remote")


def _shard_workers() -> list[psutil.Process]:
    """This machine's Ray actor processes of `ShardWorker` (their title is `ray::ShardWorker...`)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if cmdline.startswith("ray::ShardWorker"):
            found.append(proc)
    return found


def _kill_a_worker_once_a_shard_is_done(folder: Path, killed: list[dict[str, Any]], stop: threading.Event) -> None:
    while not stop.is_set():
        workers = _shard_workers()
        if list(folder.glob("shard-*.jsonl")) and workers:
            victim = workers[0]
            os.kill(victim.pid, signal.SIGKILL)
            killed.append({"pid": victim.pid, "at": time.monotonic(), "done": len(list(folder.glob("shard-*")))})
            return
        time.sleep(0.05)


def test_kill_9_of_a_ray_worker_mid_eval_redoes_its_shard_and_scores_every_item_once(tmp_path: Path) -> None:
    """GIVEN a 48-item suite in 6 shards of 8 on 2 Ray actors, each shard ~1 s against a local server
    WHEN one actor process is SIGKILLed after the first shard was persisted
    THEN the run ends without error, at least one shard was retried, every item appears exactly once in suite
    order, each shard file holds exactly its items; a re-run skips every shard."""
    import ray

    from steps.evals.ray_connect import connect_ray

    suite = load_suite(write_suite(tmp_path / "qa.jsonl", n=48, multiple_choice=False))
    folder = tmp_path / "shards"
    killed: list[dict[str, Any]] = []
    stop = threading.Event()
    with FakeServer(FakeConfig(service_ms=120, tokens=1)) as server:
        spec = EngineSpec.of("http", base_url=server.base_url, model="demo-qa", concurrency=1, timeout_s=10.0)
        connect_ray(2)
        try:
            killer = threading.Thread(target=_kill_a_worker_once_a_shard_is_done, args=(folder, killed, stop))
            killer.start()
            started = time.monotonic()
            results, stats = run_suite(suite, spec, SETTINGS, folder, ShardOptions(workers=2, shard_size=8))
            elapsed = time.monotonic() - started
            stop.set()
            killer.join()
            again, second = run_suite(suite, spec, SETTINGS, folder, ShardOptions(workers=2, shard_size=8))
        finally:
            stop.set()
            ray.shutdown()

    assert killed, "no ShardWorker process was found to kill"
    _report(stats, killed, elapsed)
    assert stats.retried, (stats.attempts, killed)
    assert sorted(stats.ran) == list(range(6)) and stats.skipped == []
    ids = [r.id for r in results]
    assert ids == [item.id for item in suite.items] and len(set(ids)) == 48
    for k in range(6):
        rows = (folder / f"shard-{k}.jsonl").read_text().splitlines()
        assert [json.loads(line)["id"] for line in rows if line.strip()] == ids[k * 8 : (k + 1) * 8]
    assert not list(folder.glob(".*")), "a temporary shard file was left"
    assert second.ran == [] and second.skipped == list(range(6)) and [r.id for r in again] == ids


def _report(stats: ShardStats, killed: list[dict[str, Any]], elapsed: float) -> None:
    print(
        f"\nray worker kill: pid {killed[0]['pid']} after {killed[0]['done']} shard(s) on disk; attempts "
        f"{stats.attempts}; retried {stats.retried}; run {elapsed:.1f} s"
    )
