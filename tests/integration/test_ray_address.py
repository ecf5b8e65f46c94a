"""Evals reach Ray by address: a real two-node Ray cluster on loopback, joined only through RAY_ADDRESS.

Each node is `ray start --block` in its own process group (its own LLMRELEASE_HOME: the node's model cache), so
teardown kills exactly these two nodes and their workers. (`ray stop` is not used: it stops every Ray on the
machine, other test runs' included.) The batch eval is real: MLflow on sqlite, a tiny GPT-2 registered with its
weights in MLflow's artifacts; the driver never downloads them, each node's worker fetches and verifies them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from steps.evals.engines.base import EvalError
from steps.evals.results import EvalReport
from tests.integration.test_batch_eval import Env, build_model, record_for, write_spec, write_suite
from workflows.local.services import RAY_HEAD_CLIENT_ENV

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
_NODE_PORTS = (
    "node-manager-port",
    "object-manager-port",
    "metrics-export-port",
    "runtime-env-agent-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Node:
    name: str
    home: Path
    log: Path
    process: subprocess.Popen[bytes]


@dataclass
class Cluster:
    address: str
    nodes: list[Node]


def start_node(name: str, root: Path, temp_dir: Path, extra: list[str]) -> Node:
    """`ray start --block` for one node in a new session; its LLMRELEASE_HOME is <root>/<name>."""
    home = root / name
    home.mkdir()
    env = {**os.environ, "LLMRELEASE_HOME": str(home), "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    # Token authentication off: this process (the driver) read its Ray config when it first imported ray.
    env.update({"HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"})
    env.update(RAY_HEAD_CLIENT_ENV)  # as `llmrelease local up` sets it (ray#63202)
    for key in ("RAY_ADDRESS", "LLMRELEASE_WORKER_CACHE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    command = [RAY, "start", "--block", "--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    command += ["--object-store-memory=100000000", f"--temp-dir={temp_dir}", *extra]
    command += [f"--{p}={free_port()}" for p in _NODE_PORTS]
    log = root / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    node = Node(name, home, log, process)
    deadline = time.monotonic() + 120
    while "Ray runtime started." not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_node(node)
            pytest.fail(f"ray node {name} did not start:\n{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.5)
    return node


def stop_node(node: Node) -> None:
    """Kill the node's process group (the node and every worker it started): SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(node.process.pid, sig)
        except ProcessLookupError:
            return
        try:
            node.process.wait(timeout=15)
            if sig == signal.SIGTERM:
                time.sleep(1)  # let the group's other processes exit before the SIGKILL sweep
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A head (GCS on a free port) and a second node joining it by address, 1 CPU each, on 127.0.0.1."""
    import ray

    ray.shutdown()
    root = tmp_path_factory.mktemp("ray-nodes")
    temp_dir = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))  # Ray's socket paths must stay short
    port = free_port()
    nodes: list[Node] = []
    try:
        head = ["--head", f"--port={port}", "--include-dashboard=false", f"--dashboard-port={free_port()}"]
        nodes.append(start_node("head", root, temp_dir, head))
        nodes.append(start_node("worker", root, temp_dir, [f"--address=127.0.0.1:{port}"]))
        yield Cluster(f"127.0.0.1:{port}", nodes)
    finally:
        ray.shutdown()
        for node in reversed(nodes):
            stop_node(node)
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)


def test_an_unreachable_ray_address_is_one_line_within_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN RAY_ADDRESS naming a port nothing listens on
    WHEN the eval connects with a 2 s bound
    THEN one EvalError line names RAY_ADDRESS and the fix, within the bound (plus slack); no Ray was started.
    """
    import ray

    ray.shutdown()
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    from steps.evals.ray_connect import connect_ray

    began = time.monotonic()
    with pytest.raises(EvalError) as info:
        connect_ray(timeout_s=2)
    elapsed = time.monotonic() - began
    message = str(info.value)
    assert 2 <= elapsed < 6
    assert "\n" not in message
    assert message.startswith(f"RAY_ADDRESS={address}: the Ray head did not answer within 2s")
    assert "llmrelease local up" in message and "unset it" in message
    assert not ray.is_initialized()


FRESH_DRIVER = "LLMRELEASE_TEST_FRESH_DRIVER"
TWO_NODES = "test_a_batch_eval_runs_on_both_nodes_and_the_workers_fetch_the_weights"


def test_the_two_node_eval_in_a_fresh_driver_process() -> None:
    """Run the two-node test below in a fresh Python process, as a step pod's driver is one.

    A local `ray.init` (earlier tests: batch-eval, nightly) turns token authentication on for its process
    (it sets RAY_AUTH_MODE=token in the environment, and Ray reads it once per process), so that process cannot
    join this test's cluster, which runs without tokens: its actors die at start ("The actor died unexpectedly";
    seen in the full suite). A step's driver is a fresh process; so is this one, with token auth off like the nodes.
    """
    if os.environ.get(FRESH_DRIVER):
        pytest.skip("this process is the fresh driver")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{__file__}::{TWO_NODES}"],
        cwd=REPO,
        env={**os.environ, FRESH_DRIVER: "1", "RAY_AUTH_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-6000:] + done.stderr[-2000:]


@pytest.mark.skipif(not os.environ.get(FRESH_DRIVER), reason="run in a fresh driver process by the test above")
def test_a_batch_eval_runs_on_both_nodes_and_the_workers_fetch_the_weights(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN a two-node Ray cluster reached only through RAY_ADDRESS, and a tiny model registered in MLflow
    (weights in its artifacts) that the driver has not downloaded
    WHEN batch-eval runs with 2 workers (1 CPU each, 0 GPUs)
    THEN each node ran a shard; every example is scored once; each node's own cache holds the weights, marked
    verified for the version's digest; the driver's model cache has no copy; the result records the engine the
    workers chose (transformers on cpu).
    """
    import ray

    from steps.evals import batch

    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    monkeypatch.delenv("LLMRELEASE_EVAL_GPUS_PER_WORKER", raising=False)
    env = Env(tmp_path)
    write_suite(tmp_path / "quality.jsonl", n=24, multiple_choice=True)
    spec = write_spec(tmp_path, "quality.jsonl")
    record = record_for(build_model(tmp_path / "tiny", seed=0))
    version = env.register(record)
    seen: list[Any] = []

    def observed(*args: Any, **kw: Any) -> Any:  # the real run_suite; its stats kept for the assertions
        results, stats = real(*args, **kw)
        seen.append(stats)
        return results, stats

    real = batch.run_suite
    monkeypatch.setattr(batch, "run_suite", observed)
    outputs = batch.run(env.inputs(version, spec, "work"), env.registry, env.client, log_to_mlflow=False)

    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(alive) == 2
    [stats] = seen
    assert set(stats.nodes.values()) == alive and len(stats.nodes) == 2
    report = EvalReport.load(outputs.report_path)
    [result] = report.candidate
    ids = [e.id for e in result.examples]
    assert len(ids) == len(set(ids)) == 27
    assert (result.backend, result.generation["backend"], result.generation["device"]) == (
        "transformers",
        "transformers",
        "cpu",
    )
    digest = record["digest"]
    for node in cluster.nodes:
        entry = node.home / "model-cache" / digest.removeprefix("sha256:")
        assert (entry / ".verified").read_text() == digest, node.name
        assert list(entry.rglob("config.json")), node.name
    assert not (env.home / "model-cache").exists()
