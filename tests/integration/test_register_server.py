"""Registration through real servers: an `mlflow server` over HTTP, and S3 weights served by moto.

moto (in server mode, a real HTTP process) stands in for S3: boto3 reaches it through AWS_ENDPOINT_URL with
fake credentials, exactly as it would reach S3.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow.tracking import MlflowClient

from registry import ModelRegistry
from registry.errors import OnboardingError

BIN = Path(sys.executable).parent
NAME = "demo-qa"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(command: list[str], url: str, log: Path, timeout: float = 90) -> subprocess.Popen[bytes]:
    """Start a server in its own process group and wait until `url` answers 200."""
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{command[0]} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    _stop(proc)
    raise RuntimeError(f"{command[0]} did not answer {url} within {timeout}s: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server we started, and its workers (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real `mlflow server` (sqlite backend, artifacts served from a folder under tmp_path)."""
    port = _free_port()
    command = [
        str(BIN / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination", str(tmp_path / "served-artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    proc = _start(command, f"http://127.0.0.1:{port}/health", tmp_path / "mlflow-server.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


@pytest.fixture
def s3_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto S3 server (standing in for S3) and the environment boto3 needs to reach it."""
    port = _free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = _start(command, f"http://127.0.0.1:{port}/moto-api/", tmp_path / "moto.log")
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    try:
        yield endpoint
    finally:
        _stop(proc)


def _record(files: dict[str, bytes], **fields: Any) -> dict[str, Any]:
    manifest = [
        {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        for path, data in sorted(files.items())
    ]
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    digest = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    base = {
        "name": NAME,
        "environment": "staging",
        "kind": "weights",
        "provider": None,
        "digest": digest,
        "files": manifest,
        "card": {"license": "apache-2.0", "intended_use": "qa demo", "constraints": [], "owner": "ml"},
        "config": None,
        "memory": None,
        "datasets": [],
        "spec_path": "releases/demo.yaml",
        "spec_sha256": "0" * 64,
        "policy_version": "1",
    }
    return base | fields


FILES = {"config.json": b'{"architecture": "GPT2LMHeadModel"}', "model.safetensors": b"w" * 4096}


@pytest.mark.slow  # ~15 s: the server takes ~10 s to start
def test_register_through_a_real_mlflow_server(mlflow_server: str, tmp_path: Path) -> None:
    """GIVEN a real `mlflow server` serving artifacts, and local weights
    WHEN the record is registered over HTTP, registered again, and the version promoted
    THEN version 1's source is the served `model/` artifacts (uploaded to the server's folder), the retry
    reuses it, and a fresh client over HTTP sees the alias history."""
    weights = tmp_path / "weights"
    weights.mkdir()
    for path, data in FILES.items():
        (weights / path).write_bytes(data)
    record = _record(FILES, source_uri=weights.as_uri(), local_path=str(weights))
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    registry = ModelRegistry(client, tracking_uri=mlflow_server, retry_seconds=5)

    first = registry.register(record, workflow_name="wf", workflow_uid="u1", git_commit="abc")
    again = registry.register(record, workflow_name="wf", workflow_uid="u2", git_commit="abc")
    registry.promote(NAME, first.version, actor="alice", reason="first release")

    assert (first.version, first.created, again.version, again.created) == ("1", True, "1", False)
    assert first.source.startswith("mlflow-artifacts:/") and first.source.endswith(f"{first.run_id}/artifacts/model")
    [uploaded] = (tmp_path / "served-artifacts").rglob(f"{first.run_id}/artifacts/model/model.safetensors")
    assert uploaded.read_bytes() == FILES["model.safetensors"]
    assert client.get_model_version(NAME, "1").tags["llmrelease.digest"] == record["digest"]
    fresh = ModelRegistry.from_env({"MLFLOW_TRACKING_URI": mlflow_server}, retry_seconds=5)
    assert [(m.alias, m.to_version, m.actor) for m in fresh.history(NAME)] == [
        ("candidate", "1", "wf/u1"),
        ("champion", "1", "alice"),
    ]
    assert fresh.get_alias(NAME, "champion") == "1"


def test_s3_weights_are_referenced_in_place(s3_endpoint: str, tmp_path: Path) -> None:
    """GIVEN weights in an S3 bucket (moto standing in for S3) and a record whose source is s3://
    WHEN it is registered into a local store
    THEN the version's source is the s3 URI itself, nothing is copied into the run's artifacts,
    and a record naming an object missing from the bucket is refused before anything is registered."""
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="models")
    for path, data in FILES.items():
        s3.put_object(Bucket="models", Key=f"demo-qa/v1/{path}", Body=data)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = ModelRegistry.from_uri(uri, artifact_root=tmp_path / "mlartifacts")

    missing = _record({**FILES, "extra.bin": b"x"}, source_uri="s3://models/demo-qa/v1", local_path=None)
    with pytest.raises(OnboardingError, match=r"s3://models/demo-qa/v1/extra.bin of model 'demo-qa'"):
        registry.register(missing, workflow_name="wf", workflow_uid="u0", git_commit="abc")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.search_model_versions(f"name='{NAME}'") == []

    record = _record(FILES, source_uri="s3://models/demo-qa/v1", local_path=None)
    result = registry.register(record, workflow_name="wf", workflow_uid="u1", git_commit="abc")

    assert (result.version, result.created, result.source) == ("1", True, "s3://models/demo-qa/v1")
    assert client.get_model_version(NAME, "1").source == "s3://models/demo-qa/v1"
    run_dir = tmp_path / "mlartifacts" / str(result.run_id) / "artifacts"
    assert sorted(p.name for p in run_dir.iterdir()) == ["onboarding"]
