"""Onboarding an s3:// model. moto, started as a real server subprocess, stands in for S3; boto3 reaches it
through AWS_ENDPOINT_URL exactly as it would reach S3 or MinIO.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file

from registry.errors import OnboardingError
from steps.onboard import Inputs, run
from steps.release.records import RECORD_FILE

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("moto server did not start within 30 s")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    import boto3

    for name, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    client = boto3.client("s3")
    bucket = f"weights-store-{uuid.uuid4().hex[:12]}"  # the weights store: the profile's bucket
    client.create_bucket(Bucket=bucket)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})  # counts rewrites
    monkeypatch.setenv("LLMRELEASE_S3_BUCKET", bucket)
    return client


def _model(folder: Path) -> None:
    folder.mkdir(parents=True)
    save_file({"wte.weight": np.ones((16, 8), dtype=np.float32)}, str(folder / "model.safetensors"))
    config = {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 8, "n_positions": 64, "vocab_size": 16}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "sub").mkdir()
    (folder / "sub" / "tokenizer.json").write_text("{}")


def _release(root: Path, source: str) -> Path:
    suites = root / "suites"
    suites.mkdir(exist_ok=True)
    (suites / "qa.jsonl").write_text(json.dumps({"id": "1", "prompt": "p", "task": "contains", "expected": "x"}) + "\n")
    (suites / "safety.jsonl").write_text(json.dumps({"id": "1", "prompt": "p", "task": "refuse", "category": "c"}))
    spec = {
        "apiVersion": "llmrelease/v1",
        "name": "s3-demo",
        "model": {"name": "s3-demo", "source": source, "card": {"license": "mit", "intended_use": "tests"}},
        "evals": {
            "suites": [{"name": "qa", "path": "suites/qa.jsonl"}],
            "safety": {"name": "s", "path": "suites/safety.jsonl"},
        },
    }
    path = root / "releases" / "release.yaml"  # a release path lies in a releases/ directory
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return path


def _inputs(root: Path, work: Path, release: Path) -> Inputs:
    policy = str(REPO / "policy" / "platform-policy.yaml")
    return Inputs(release=str(release), work_dir=str(work), root=str(root), policy_path=policy)


def test_s3_model_is_downloaded_hashed_and_digested_like_the_local_copy(s3: Any, tmp_path: Path) -> None:
    """GIVEN a model uploaded to a bucket (moto standing in for S3)
    WHEN it is onboarded from s3://bucket/prefix, and the same files from a local directory
    THEN both records have the same digest and manifest, and the same weights URI in the S3 weights store
    (the bucket of LLMRELEASE_S3_BUCKET), which holds the manifest and the files; the second onboarding of the
    same weights uploads nothing (no object rewritten).
    """
    root = tmp_path / "root"
    _model(root / "models" / "m")
    s3.create_bucket(Bucket="models")
    for file in sorted((root / "models" / "m").rglob("*")):
        if file.is_file():
            key = f"team/m/v1/{file.relative_to(root / 'models' / 'm').as_posix()}"
            s3.upload_file(str(file), "models", key)

    first = run(_inputs(root, tmp_path / "work-s3", _release(root, "s3://models/team/m/v1")))
    from_s3 = first.record
    bucket = os.environ["LLMRELEASE_S3_BUCKET"]
    prefix = f"weights/sha256/{from_s3.digest.removeprefix('sha256:')}"
    stamps = {o["Key"]: o["VersionId"] for o in s3.list_object_versions(Bucket=bucket, Prefix=prefix)["Versions"]}
    second = run(_inputs(root, tmp_path / "work-local", _release(root, "models/m")))
    local = second.record

    assert from_s3.kind == "weights" and from_s3.source_uri == "s3://models/team/m/v1"
    assert from_s3.weights_uri == local.weights_uri == f"s3://{bucket}/{prefix}"
    assert first.published is not None and first.published.uploaded == [f.path for f in from_s3.files]
    assert second.published is not None and (second.published.uploaded, second.published.reused) == ([], True)
    assert sorted(stamps) == [f"{prefix}/files/{f.path}" for f in from_s3.files] + [f"{prefix}/manifest.json"]
    versions = s3.list_object_versions(Bucket=bucket, Prefix=prefix)["Versions"]
    assert {o["Key"]: o["VersionId"] for o in versions} == stamps and len(versions) == len(stamps)
    tokenizer = s3.get_object(Bucket=bucket, Key=f"{prefix}/files/sub/tokenizer.json")["Body"].read()
    assert tokenizer == b"{}"
    assert from_s3.digest == local.digest and from_s3.files == local.files
    assert [f.path for f in from_s3.files] == ["config.json", "model.safetensors", "sub/tokenizer.json"]
    assert from_s3.config is not None and from_s3.config.params == 128
    assert (tmp_path / "work-s3" / RECORD_FILE).is_file()


def test_missing_bucket_is_refused_with_one_line(s3: Any, tmp_path: Path) -> None:
    """GIVEN a bucket that does not exist WHEN onboarded THEN model.source is named and no record is written."""
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(OnboardingError) as info:
        run(_inputs(root, tmp_path / "work", _release(root, "s3://no-such-bucket/m")))
    message = str(info.value)
    assert "\n" not in message and "model.source 's3://no-such-bucket/m': cannot list the bucket at http" in message
    assert "(NoSuchBucket" in message
    assert not (tmp_path / "work" / RECORD_FILE).exists()
