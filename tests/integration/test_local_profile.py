"""`llmrelease local up|down|status`: real services on 127.0.0.1 and the cluster config the runner reads.

The shared profile runs without Ray (it starts in ~20 s); the two-node Ray cluster has a test of its own (slow).
Every command runs as the console user runs it: `python -m workflows.cli.main local ...` in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from workflows.local import Layout
from workflows.local.state import group_members
from workflows.runner.artifacts import resolve_repository
from workflows.runner.cluster import ClusterConfig

for _binary in ("prometheus", "prometheus-pushgateway"):
    if shutil.which(_binary) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{_binary} missing in CI: run .ci/install-system-packages.sh", pytrace=False)
        pytest.skip(f"{_binary} not installed: run .ci/install-system-packages.sh as root", allow_module_level=True)

LLMRELEASE = [sys.executable, "-m", "workflows.cli.main"]
_REPO = Path(__file__).resolve().parents[2]
_CLEAN = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "LLMRELEASE_PUSHGATEWAY", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def local(home: Path, *args: str, path: str | None = None, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    """`llmrelease local ARGS` with LLMRELEASE_HOME=home (and PATH=path when given)."""
    env = {k: v for k, v in os.environ.items() if k not in _CLEAN} | {"LLMRELEASE_HOME": str(home)}
    env |= {"PATH": path} if path is not None else {}
    return subprocess.run(
        [*LLMRELEASE, "local", *args], capture_output=True, text=True, env=env, cwd=_REPO, timeout=timeout, check=False
    )


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def leftovers(home: Path, pids: list[int]) -> list[str]:
    """Processes still alive from the recorded groups, or whose command line names the home."""
    found = [f"group {pid}: {group_members(pid)}" for pid in pids if group_members(pid)]
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if entry.name.isdigit() and str(home) in cmdline and "workflows.cli.main" not in cmdline:
            found.append(f"{entry.name}: {cmdline[:120]}")
    return found


def config_env(home: Path, *secrets: str) -> dict[str, str]:
    """What a pod `envFrom`s: the llmrelease-config ConfigMap and the named Secrets, read as the runner reads them."""
    cluster = ClusterConfig.load(home / "local" / "cluster-config")
    env = dict(cluster.config_map("llmrelease-config"))
    for name in secrets:
        env.update(cluster.secret(name))
    return env


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(home, `local up --no-ray --json`) of one profile shared by the tests below; `down` at the end."""
    home = tmp_path_factory.mktemp("profile")
    started = time.monotonic()
    proc = local(home, "up", "--no-ray", "--json")
    assert proc.returncode == 0, proc.stderr
    print(f"\nlocal up --no-ray: {time.monotonic() - started:.1f}s")
    yield home, json.loads(proc.stdout)
    local(home, "down")


def test_up_brings_services_that_answer(profile: tuple[Path, dict[str, Any]]) -> None:
    """GIVEN `local up`  WHEN the services are used with the config a pod gets
    THEN S3 stores and returns an object, MLflow answers its REST API and stores an artifact in the bucket,
    Prometheus is ready, and a pushed metric comes back from Prometheus' query API."""
    home, _ = profile
    env = config_env(home, "llmrelease-s3")
    s3 = boto3.client(
        "s3",
        endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"],
        region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    s3.put_object(Bucket=env["LLMRELEASE_S3_BUCKET"], Key="probe/hello.txt", Body=b"hello")
    assert s3.get_object(Bucket=env["LLMRELEASE_S3_BUCKET"], Key="probe/hello.txt")["Body"].read() == b"hello"

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    run = client.create_run(client.create_experiment("local-profile"))
    client.log_text(run.info.run_id, "proxied", "note.txt")  # through the server, into the bucket
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=env["LLMRELEASE_S3_BUCKET"], Prefix="mlartifacts/")["Contents"]]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/note.txt") for k in keys), keys
    rest = f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/get-by-name?experiment_name=local-profile"
    with urllib.request.urlopen(rest) as r:
        assert json.load(r)["experiment"]["name"] == "local-profile"

    with urllib.request.urlopen(f"{env['LLMRELEASE_PROMETHEUS']}/-/ready") as r:
        assert r.status == 200
    registry = CollectorRegistry()
    Gauge("local_profile_probe", "a probe", registry=registry).set(42)
    push_to_gateway(env["LLMRELEASE_PUSHGATEWAY"], job="probe", registry=registry)
    assert _prometheus_value(env["LLMRELEASE_PROMETHEUS"], "local_profile_probe") == 42


def _prometheus_value(url: str, query: str, timeout: float = 40) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}/api/v1/query?query={query}") as r:
            result = json.load(r)["data"]["result"]
        if result:
            return float(result[0]["value"][1])
        time.sleep(1)
    raise AssertionError(f"Prometheus never returned {query} (it scrapes the Pushgateway every 5 s)")


def test_the_cluster_config_is_what_the_runner_reads(profile: tuple[Path, dict[str, Any]]) -> None:
    """GIVEN `local up --no-ray`  WHEN the runner loads its cluster config
    THEN llmrelease-config holds every key, the Secret the S3 credentials, and the default artifact repository is
    the local bucket, its credentials resolving to that Secret; no RAY_ADDRESS without Ray."""
    home, _ = profile
    cluster = ClusterConfig.load(home / "local" / "cluster-config")
    data = cluster.config_map("llmrelease-config")
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "LLMRELEASE_S3_BUCKET", "LLMRELEASE_PUSHGATEWAY"):
        assert data[key], key
    assert data["LLMRELEASE_SERVING_PLANE"] == "local" and "LLMRELEASE_HOME" not in data  # a pod keeps its own
    assert "RAY_ADDRESS" not in data
    repository = resolve_repository(cluster, None)
    assert repository is not None and repository.s3["bucket"] == data["LLMRELEASE_S3_BUCKET"]
    assert f"http://{repository.s3['endpoint']}" == data["MLFLOW_S3_ENDPOINT_URL"]
    secret = repository.s3["secretKeySecret"]
    s3_secret = cluster.secret("llmrelease-s3")["AWS_SECRET_ACCESS_KEY"]
    assert cluster.key("secret", secret["name"], secret["key"]) == s3_secret
    assert cluster.secret("provider-api-keys") == {}


def test_status_shows_every_service(profile: tuple[Path, dict[str, Any]]) -> None:
    """GIVEN `local up --no-ray`  WHEN `local status` (text and --json)
    THEN one line per service: the four running with URL and pid, Ray's two nodes stopped."""
    home, _ = profile
    text = local(home, "status")
    rows = {s["name"]: s for s in json.loads(local(home, "status", "--json").stdout)}
    assert text.returncode == 0
    for name in ("s3", "mlflow", "pushgateway", "prometheus"):
        assert rows[name]["running"] and rows[name]["pid"], rows[name]
        assert f"{name}: running {rows[name]['url']} (pid {rows[name]['pid']}" in text.stdout
    assert "ray-head: stopped" in text.stdout and not rows["ray-worker"]["running"]


def test_a_second_up_is_a_no_op(profile: tuple[Path, dict[str, Any]]) -> None:
    """GIVEN the profile running  WHEN `local up` again  THEN nothing starts and the same processes run."""
    home, first = profile
    proc = local(home, "up", "--no-ray", "--json")
    second = json.loads(proc.stdout)
    assert proc.returncode == 0 and second["started"] == []
    assert [s["pid"] for s in second["services"]] == [s["pid"] for s in first["services"]]
    assert "already running" in local(home, "up", "--no-ray").stdout


def test_down_stops_everything_and_keeps_the_bucket(profile: tuple[Path, dict[str, Any]]) -> None:
    """GIVEN the profile running (an object put in the bucket by the first test)
    WHEN `local down`, twice  THEN no process and no port is left, the bucket is saved, the second is a no-op."""
    home, first = profile
    pids = [s["pid"] for s in first["services"] if s["running"]]
    ports = [int(s["url"].rsplit(":", 1)[1]) for s in first["services"] if s["running"]]
    started = time.monotonic()
    proc = local(home, "down")
    print(f"\nlocal down (no Ray): {time.monotonic() - started:.1f}s")
    assert proc.returncode == 0 and "stopped ray" not in proc.stdout and "s3" in proc.stdout
    assert leftovers(home, pids) == [] and not any(listening(p) for p in ports)
    assert (home / "local" / "s3" / "llmrelease-local" / "probe" / "hello.txt").read_bytes() == b"hello"
    assert "nothing was running" in local(home, "down").stdout
    assert not any(s["running"] for s in json.loads(local(home, "status", "--json").stdout))


def test_a_taken_port_is_one_line_and_nothing_starts(tmp_path: Path) -> None:
    """GIVEN something listening on a port  WHEN `local up --port mlflow=<it>`
    THEN exit non-zero, one line naming mlflow, the port and the fix; nothing runs."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = local(tmp_path, "up", "--no-ray", "--port", f"mlflow={port}")
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"mlflow: port 127.0.0.1:{port} is taken" in proc.stderr and "--port mlflow=" in proc.stderr
    assert not any(s["running"] for s in json.loads(local(tmp_path, "status", "--json").stdout))


def test_a_missing_program_is_one_line_and_nothing_starts(tmp_path: Path) -> None:
    """GIVEN a PATH without prometheus  WHEN `local up`  THEN one line naming it and how to install it; nothing runs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "prometheus-pushgateway").symlink_to(shutil.which("prometheus-pushgateway") or "")
    proc = local(tmp_path / "home", "up", "--no-ray", path=str(bin_dir))
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "prometheus: prometheus not found: apt-get install prometheus" in proc.stderr
    assert leftovers(tmp_path / "home", []) == []


def test_a_service_that_fails_is_named_with_its_log_and_the_others_are_stopped(tmp_path: Path) -> None:
    """GIVEN a `prometheus` that exits at once (a bad configuration)  WHEN `local up`
    THEN one line naming prometheus and its log, which holds its message; S3, MLflow, the gateway are stopped."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "prometheus"
    fake.write_text("#!/bin/sh\necho 'err: bad configuration' >&2\nexit 3\n")
    fake.chmod(0o755)
    home = tmp_path / "home"
    proc = local(home, "up", "--no-ray", path=f"{bin_dir}:{os.environ['PATH']}")
    log = home / "local" / "logs" / "prometheus.log"
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"prometheus exited before it was ready: see its log {log}" in proc.stderr
    assert "bad configuration" in log.read_text()
    ports = json.loads((home / "local" / "state.json").read_text())["ports"]
    assert leftovers(home, []) == [] and not any(listening(ports[n]) for n in ("s3", "mlflow", "pushgateway"))


@pytest.mark.slow
def test_ray_two_nodes_reached_through_the_address(tmp_path: Path) -> None:
    """GIVEN `local up` with Ray  WHEN a driver joins RAY_ADDRESS with the llmrelease-ray Secret's token
    THEN it sees two live nodes and runs tasks, the eval warm-up started the workers of a 2-shard step (one per
    node's CPU); `local down` leaves no Ray process."""
    started = time.monotonic()
    proc = local(tmp_path, "up", "--json")
    up_s = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    rows = {s["name"]: s for s in json.loads(proc.stdout)["services"]}
    try:
        env = {k: v for k, v in os.environ.items() if k not in _CLEAN} | config_env(tmp_path, "llmrelease-ray")
        # the eval warm-up's workers hold both nodes' CPUs (idle warm workers keep theirs): tasks of no CPU
        driver = (
            "import os, ray; ray.init(address=os.environ['RAY_ADDRESS'], log_to_driver=False)\n"
            "f = ray.remote(num_cpus=0)(lambda: 1)\n"
            "print(sum(n['Alive'] for n in ray.nodes()), sum(ray.get([f.remote() for _ in range(4)])))\n"
        )
        out = subprocess.run([sys.executable, "-c", driver], env=env, capture_output=True, text=True, timeout=180)
        assert out.stdout.split() == ["2", "4"], out.stderr[-2000:]
        warm_up = json.loads(proc.stdout)["warm_up"]
        assert warm_up.startswith("eval warm-up: 2 workers ready (1 thread(s) and 1 CPU(s) each"), warm_up
    finally:
        started = time.monotonic()
        down = local(tmp_path, "down")
        print(f"\nlocal up (with Ray): {up_s:.1f}s; local down: {time.monotonic() - started:.1f}s")
    assert down.returncode == 0 and "ray-worker, ray-head" in down.stdout
    pids = [rows[n]["pid"] for n in ("ray-head", "ray-worker")]
    assert leftovers(tmp_path, pids) == [] and not listening(int(rows["ray-head"]["url"].rsplit(":", 1)[1]))
    assert not Layout(tmp_path).ray_temp.exists()
