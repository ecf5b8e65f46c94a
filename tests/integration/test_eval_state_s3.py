"""Durable eval state in S3: the result cache and the eval shards shared by every "pod" (a process with its own
LLMRELEASE_HOME), against a real moto S3 server (`ThreadedMotoServer`) and a real local OpenAI-compatible server
that records every prompt it answers (so "scored exactly once" is counted, not assumed).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from steps.evals.cache import CACHE_LABEL, GenerationSettings, ResultCache
from steps.evals.results import ExampleResult, SuiteResult
from steps.evals.store import EvalStore, eval_store

REPO = Path(__file__).resolve().parents[2]
NAME = "state-qa"
N_ITEMS, SHARD = 32, 4  # 8 shards
WHO = {"workflow_name": "t", "workflow_uid": "u", "git_commit": "c"}

_RUN_SUITE = r"""
import json, sys
from pathlib import Path
from steps.evals.cache import GenerationSettings
from steps.evals.shard_ledger import SHARDS_LABEL
from steps.evals.sharding import EngineSpec, ShardOptions, run_suite
from steps.evals.store import eval_store
from steps.evals.suites import load_suite

cfg = json.loads(sys.argv[1])
suite = load_suite(cfg["suite"], name="qa")
spec = EngineSpec.of("http", base_url=cfg["base_url"], model="m", concurrency=1, timeout_s=30.0)
store = eval_store("shards", Path(cfg["home"]) / "eval-shards", SHARDS_LABEL).child("run-key")
options = ShardOptions(workers=2, shard_size=cfg["shard"], cores=2, claim_ttl_s=cfg["ttl"])
results, stats = run_suite(suite, spec, GenerationSettings(max_new_tokens=4), store, options)
out = {"ids": [r.id for r in results], "outputs": [r.output for r in results], "ran": sorted(stats.ran),
       "skipped": stats.skipped, "shared": sorted(stats.shared)}
print("RESULT " + json.dumps(out), flush=True)
"""


class Recorder:
    """A local OpenAI-compatible chat server that answers `answer: <prompt>` after `delay_s` and logs prompts."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s, self.phase = delay_s, 1
        self.prompts: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][0]["content"]
                with recorder._lock:
                    recorder.prompts.append((recorder.phase, prompt))
                time.sleep(recorder.delay_s)
                data = json.dumps(
                    {"choices": [{"message": {"content": f"answer: {prompt}"}}], "usage": {"completion_tokens": 2}}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of_phase(self, phase: int) -> list[str]:
        with self._lock:
            return [p for ph, p in self.prompts if ph == phase]


@pytest.fixture
def bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket, configured as the platform ConfigMap does (LLMRELEASE_S3_BUCKET, AWS_ENDPOINT_URL_S3)."""
    env = {
        "AWS_ENDPOINT_URL_S3": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    name = f"evals-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    monkeypatch.setenv("LLMRELEASE_S3_BUCKET", name)
    return name


def keys(bucket: str, prefix: str) -> list[str]:
    listing = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def write_suite(path: Path, n: int = N_ITEMS) -> Path:
    rows = [{"id": f"q{i:02d}", "prompt": f"question {i}", "task": "contains", "expected": "answer"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _result(writer: int) -> SuiteResult:
    settings = GenerationSettings()
    examples = [
        ExampleResult(
            suite="qa",
            id=f"q{i}",
            task="contains",
            prompt=f"question {i}",
            output=f"writer {writer} " + "x" * 2000,
            score=1.0,
            passed=True,
            latency_ms=1.0,
            output_tokens=1,
        )
        for i in range(50)
    ]
    return SuiteResult(
        suite="qa",
        suite_sha256="ab" * 32,
        model_name=NAME,
        model_version="1",
        model_digest="sha256:" + "cd" * 32,
        backend=settings.backend,
        generation=settings.model_dump(mode="json"),
        examples=examples,
    )


@pytest.mark.parametrize("where", ["s3", "local"])
def test_concurrent_writers_of_one_cache_key_all_succeed_and_the_first_entry_stays(
    where: str, bucket: str, tmp_path: Path
) -> None:
    """GIVEN 8 writers (the parallel batch-eval and safety pods, many times over) holding different results for
    one cache key, in S3 and in a local folder
    WHEN they all `put` at once
    THEN every put succeeds; exactly one entry exists and it is one writer's result, whole; a later put of
    another result does not replace it; a corrupt entry is replaced.
    """
    stores = [  # one boto3 client each, built here: building clients is not thread-safe, using them is
        eval_store("results", tmp_path / "eval-cache", CACHE_LABEL, s3=boto3.client("s3"))
        if where == "s3"
        else EvalStore(tmp_path, CACHE_LABEL)
        for _ in range(8)
    ]
    caches = [ResultCache(s) for s in stores]
    results = [_result(w) for w in range(8)]
    start = threading.Barrier(8)

    def put(w: int) -> str:
        start.wait()
        return caches[w].put(results[w])

    with ThreadPoolExecutor(8) as pool:
        locations = list(pool.map(put, range(8)))

    assert len(set(locations)) == 1
    stored = caches[0].get(results[0].model_digest, results[0].suite_sha256, GenerationSettings())
    assert stored is not None and stored in results
    if where == "s3":
        assert locations[0].startswith(f"s3://{bucket}/evals/results/")
        assert len(keys(bucket, "evals/results/")) == 1 and not (tmp_path / "eval-cache").exists()
    else:
        assert [p.name for p in tmp_path.iterdir()] == [Path(locations[0]).name]  # no temporary file left
    caches[0].put(_result(99))
    assert caches[1].get(stored.model_digest, stored.suite_sha256, GenerationSettings()) == stored
    name = Path(locations[0]).name
    stores[0].write(name, "{not json")
    caches[0].put(results[3])
    assert caches[0].get(stored.model_digest, stored.suite_sha256, GenerationSettings()) == results[3]


# ---- batch-eval in two "pods": the second hits the S3 cache ----


def provider_record(base_url: str, model: str) -> dict[str, Any]:
    source = f"{base_url}#{model}"
    return {
        "name": NAME,
        "environment": "dev",
        "source_uri": source,
        "kind": "provider",
        "digest": "sha256:" + hashlib.sha256(source.encode()).hexdigest(),
        "files": [],
        "card": {"license": "apache-2.0", "intended_use": "tests", "constraints": [], "owner": "ml"},
    }


def write_spec(root: Path, suite_file: str) -> Path:
    spec = {
        "apiVersion": "llmrelease/v1",
        "name": NAME,
        "model": {"name": NAME, "source": "models/x", "card": {"license": "apache-2.0", "intended_use": "tests"}},
        "evals": {"suites": [{"name": "qa", "path": suite_file}], "safety": {"name": "safety", "path": suite_file}},
    }
    path = root / "releases" / "release.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(spec))
    return path


@pytest.mark.slow
def test_a_second_pod_with_a_fresh_home_reuses_the_results_from_s3(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN a champion and a candidate (provider models on a recording server) and the eval state in S3
    WHEN batch-eval runs in pod 1, then in pod 2 with a fresh LLMRELEASE_HOME and work dir
    THEN pod 1 sends each prompt once per model and keeps nothing on its local disk (results and shards are in
    the bucket); pod 2 sends no request and runs no shard: both results are S3 cache hits, its report equal.
    """
    import ray
    from mlflow.tracking import MlflowClient

    from registry import ModelRegistry
    from steps.evals import batch
    from steps.evals.batch import Inputs, run
    from steps.evals.ray_connect import connect_ray
    from steps.evals.results import EvalReport

    recorder = Recorder(delay_s=0.0)
    write_suite(tmp_path / "qa.jsonl", n=12)
    spec = write_spec(tmp_path, "qa.jsonl")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the tracking server both pods talk to
    registry = ModelRegistry.from_uri(uri, artifact_root=tmp_path / "mlartifacts")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = registry.register(provider_record(recorder.base_url, "old"), **WHO).version
    registry.promote(NAME, champion, actor="t", reason="first")
    candidate = registry.register(provider_record(recorder.base_url, "new"), **WHO).version

    def pod(n: int) -> Any:
        inputs = Inputs(
            release=str(spec),
            model_name=NAME,
            version=candidate,
            work_dir=str(tmp_path / f"pod{n}" / "work"),
            shards=2,
            root=str(tmp_path),
            home=str(tmp_path / f"pod{n}" / "home"),
        )
        return run(inputs, registry, client, log_to_mlflow=False)

    connect_ray(2)
    try:
        first = pod(1)
        assert Counter(recorder.of_phase(1)) == Counter({f"question {i}": 2 for i in range(12)})
        assert not (tmp_path / "pod1" / "home" / "eval-cache").exists()
        assert not (tmp_path / "pod1" / "work" / "eval-shards").exists()
        assert len(keys(bucket, "evals/results/")) == 2
        assert len([k for k in keys(bucket, "evals/shards/") if "/shard-" in k]) == 2  # one 12-item shard each
        assert not [k for k in keys(bucket, "evals/shards/") if "/claim-" in k]
        capsys.readouterr()

        recorder.phase = 2
        monkeypatch.setattr(batch, "run_suite", lambda *a, **k: pytest.fail("pod 2 ran a suite"))
        second = pod(2)
    finally:
        ray.shutdown()
    assert capsys.readouterr().out.count("cached result reused") == 2
    assert recorder.of_phase(2) == []
    assert EvalReport.load(second.report_path) == EvalReport.load(first.report_path)


# ---- an eval pod killed mid-run, resumed by two pods at once ----


def _start(cfg: dict[str, Any], home: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LLMRELEASE_HOME": str(home), "PYTHONPATH": str(REPO)}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", _RUN_SUITE, json.dumps({**cfg, "home": str(home)})],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` (the eval process, its local Ray and Ray's workers)."""
    for _ in range(3):
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid:  # fields after "(comm)": state ppid pgrp session ...
                try:
                    os.kill(int(stat.parent.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.3)


def _finish(proc: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> dict[str, Any]:
    try:
        proc.wait(timeout=timeout)
    finally:
        _kill_session(proc.pid)  # the local Ray it started
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    line = next(ln for ln in text.splitlines() if ln.startswith("RESULT "))
    return dict(json.loads(line.removeprefix("RESULT ")))


@pytest.mark.slow
def test_a_killed_eval_pod_is_resumed_from_s3_and_every_example_is_scored_once(bucket: str, tmp_path: Path) -> None:
    """GIVEN a 32-item suite in 8 shards of 4, answered by a recording server at ~0.25 s per request
    WHEN the eval process (its own LLMRELEASE_HOME, its own local Ray) is SIGKILLed once 2 shards are in S3,
    and two fresh pods (fresh homes: the retried pod and a parallel pod on the same run key) then run it at once
    THEN the shards stored before the kill are never requested again; every other prompt is requested exactly
    once by the two pods together (claims: no shard computed twice, the dead pod's claims taken over once
    stale); both pods return every item exactly once in suite order with the same outputs; each shard object
    holds exactly its items and the resuming pods leave no claim.
    """
    recorder = Recorder(delay_s=0.25)
    cfg = {"suite": str(write_suite(tmp_path / "qa.jsonl")), "base_url": recorder.base_url, "shard": SHARD}
    prefix = "evals/shards/run-key/"
    victim = _start({**cfg, "ttl": 6.0}, tmp_path / "pod0", tmp_path / "pod0.log")
    try:
        deadline = time.monotonic() + 240
        while len([k for k in keys(bucket, prefix) if "/shard-" in k]) < 2:
            assert victim.poll() is None, (tmp_path / "pod0.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no shard was stored within 240 s"
            time.sleep(0.1)
    finally:
        _kill_session(victim.pid)
    victim.wait(timeout=30)
    time.sleep(0.5)
    stored = {int(k.rsplit("-", 1)[1].split(".")[0]) for k in keys(bucket, prefix) if "/shard-" in k}
    assert 2 <= len(stored) < N_ITEMS // SHARD, stored
    assert [k for k in keys(bucket, prefix) if "/claim-" in k], "the killed pod left no claim to take over"

    recorder.phase = 2
    pods = [_start({**cfg, "ttl": 6.0}, tmp_path / f"pod{n}", tmp_path / f"pod{n}.log") for n in (1, 2)]
    out = [_finish(p, tmp_path / f"pod{n}.log") for n, p in zip((1, 2), pods, strict=True)]

    ids = [f"q{i:02d}" for i in range(N_ITEMS)]
    done_before = {f"question {i}" for k in stored for i in range(k * SHARD, (k + 1) * SHARD)}
    asked = Counter(recorder.of_phase(2))
    assert not done_before & set(asked), "a shard stored before the kill was evaluated again"
    assert asked == Counter({f"question {i}": 1 for i in range(N_ITEMS) if f"question {i}" not in done_before})
    assert out[0]["ids"] == out[1]["ids"] == ids
    assert out[0]["outputs"] == out[1]["outputs"] == [f"answer: question {i}" for i in range(N_ITEMS)]
    assert not set(out[0]["ran"]) & set(out[1]["ran"])
    assert stored <= set(out[0]["skipped"]) and stored <= set(out[1]["skipped"])
    s3 = boto3.client("s3")
    for k in range(N_ITEMS // SHARD):
        body = s3.get_object(Bucket=bucket, Key=f"{prefix}shard-{k}.jsonl")["Body"].read().decode()
        rows = [json.loads(line)["id"] for line in body.splitlines() if line.strip()]
        assert rows == ids[k * SHARD : (k + 1) * SHARD]
    left = {int(k.rsplit("-", 1)[1].split(".")[0]) for k in keys(bucket, prefix) if "/claim-" in k}
    assert left <= stored, left  # only the killed pod may leave one: killed between storing a shard and unclaiming
