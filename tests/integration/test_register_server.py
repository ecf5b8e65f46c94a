"""Registration through real servers: an `mlflow server` over HTTP, and the S3 weights store served by moto.

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

import boto3
import httpx
import pytest
from mlflow.tracking import MlflowClient

from registry import ModelRegistry
from registry.errors import IntegrityError, OnboardingError, RegistryError
from registry.integrity import Manifest
from registry.weights_store import WeightsStore
from steps.evals.weights import weights_dir

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


def _publish(store: WeightsStore, folder: Path, files: dict[str, bytes]) -> dict[str, Any]:
    """Write `files` under `folder`, publish them to `store` as the onboard step does; returns their record."""
    folder.mkdir(parents=True, exist_ok=True)
    for path, data in files.items():
        (folder / path).write_bytes(data)
    record = _record(files, source_uri="models/demo-qa")
    manifest = Manifest.model_validate({"digest": record["digest"], "files": record["files"]})
    return record | {"weights_uri": store.publish(folder, manifest).uri}


@pytest.mark.slow  # ~15 s: the server takes ~10 s to start
def test_register_through_a_real_mlflow_server(mlflow_server: str, s3_endpoint: str, tmp_path: Path) -> None:
    """GIVEN a real `mlflow server`, and weights onboarded into the S3 weights store (moto)
    WHEN the record is registered over HTTP, registered again, and the version promoted
    THEN version 1's source is the weights' s3:// store location (nothing uploaded to the server's artifacts
    but the onboarding record), the retry reuses it, and a fresh client over HTTP sees the alias history; a
    record whose weights are in a local (file://) store is refused in one line before anything is registered."""
    boto3.client("s3").create_bucket(Bucket="llmrelease")
    record = _publish(WeightsStore("s3://llmrelease"), tmp_path / "weights", FILES)
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    registry = ModelRegistry(client, tracking_uri=mlflow_server, retry_seconds=5)

    local = _publish(WeightsStore((tmp_path / "store").as_uri()), tmp_path / "local", FILES)
    with pytest.raises(RegistryError, match="cannot serve: set LLMRELEASE_S3_BUCKET"):
        registry.register(local, workflow_name="wf", workflow_uid="u0", git_commit="abc")
    assert client.search_model_versions(f"name='{NAME}'") == []

    first = registry.register(record, workflow_name="wf", workflow_uid="u1", git_commit="abc")
    again = registry.register(record, workflow_name="wf", workflow_uid="u2", git_commit="abc")
    registry.promote(NAME, first.version, actor="alice", reason="first release")

    assert (first.version, first.created, again.version, again.created) == ("1", True, "1", False)
    assert first.source == record["weights_uri"] == f"s3://llmrelease/weights/sha256/{record['digest'][7:]}"
    assert not list((tmp_path / "served-artifacts").rglob("model.safetensors"))
    assert client.get_model_version(NAME, "1").tags["llmrelease.digest"] == record["digest"]
    fresh = ModelRegistry.from_env({"MLFLOW_TRACKING_URI": mlflow_server}, retry_seconds=5)
    assert [(m.alias, m.to_version, m.actor) for m in fresh.history(NAME)] == [
        ("candidate", "1", "wf/u1"),
        ("champion", "1", "alice"),
    ]
    assert fresh.get_alias(NAME, "champion") == "1"


def test_s3_store_weights_are_registered_by_uri_and_verified_on_download(s3_endpoint: str, tmp_path: Path) -> None:
    """GIVEN weights onboarded into the S3 weights store (moto), one file then deleted from the bucket
    WHEN registered THEN refused naming the file, nothing registered; once re-uploaded (a re-onboarding repairs
    exactly that file) it registers with the store URI as source and nothing copied into the run's artifacts.
    WHEN an object is then tampered with in the bucket THEN the eval-side download fails in one line naming the
    file, the registered and the found sha256, and the model cache holds no entry."""
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="llmrelease")
    store = WeightsStore("s3://llmrelease")
    record = _publish(store, tmp_path / "weights", FILES)
    prefix = f"weights/sha256/{record['digest'][7:]}/files"
    s3.delete_object(Bucket="llmrelease", Key=f"{prefix}/config.json")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = ModelRegistry.from_uri(uri, artifact_root=tmp_path / "mlartifacts")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    with pytest.raises(OnboardingError, match=r"weights file config.json at s3://llmrelease/weights/.* is missing"):
        registry.register(record, workflow_name="wf", workflow_uid="u0", git_commit="abc")
    assert client.search_model_versions(f"name='{NAME}'") == []
    manifest = Manifest.model_validate({"digest": record["digest"], "files": record["files"]})
    assert store.publish(tmp_path / "weights", manifest).uploaded == ["config.json"]

    result = registry.register(record, workflow_name="wf", workflow_uid="u1", git_commit="abc")
    assert (result.version, result.created, result.source) == ("1", True, record["weights_uri"])
    run_dir = tmp_path / "mlartifacts" / str(result.run_id) / "artifacts"
    assert sorted(p.name for p in run_dir.iterdir()) == ["onboarding"]
    folder = weights_dir(client, NAME, "1", tmp_path / "home-a")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == FILES

    tampered = b"t" * len(FILES["model.safetensors"])
    s3.put_object(Bucket="llmrelease", Key=f"{prefix}/model.safetensors", Body=tampered)
    with pytest.raises(IntegrityError) as info:
        weights_dir(client, NAME, "1", tmp_path / "home-b")
    message = str(info.value)
    expected = hashlib.sha256(FILES["model.safetensors"]).hexdigest()
    assert "\n" not in message and "weights file model.safetensors" in message
    assert f"expected sha256:{expected}, found sha256:{hashlib.sha256(tampered).hexdigest()}" in message
    assert [p.name for p in (tmp_path / "home-b" / "model-cache").iterdir()] == [f".{record['digest'][7:]}.lock"]
