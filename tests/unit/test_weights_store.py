"""The digest-addressed weights store, on both backends: a folder on disk (file://) and S3 (moto's real HTTP server,
reached by boto3 through AWS_ENDPOINT_URL_S3 exactly as it would reach S3 or MinIO)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from registry.errors import IntegrityError, OnboardingError
from registry.integrity import Manifest, ManifestFile, manifest_digest
from registry.weights_store import WeightsStore, is_weights_uri, store_root

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

FILES = {"config.json": b'{"model_type": "gpt2"}', "model.safetensors": b"w" * 10_000, "sub/tokenizer.json": b"{}"}


def write_folder(folder: Path, files: dict[str, bytes]) -> Manifest:
    """Write `files` under `folder`; returns their manifest (as the onboard step computes it)."""
    entries = []
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
        entries.append(ManifestFile(path=rel, sha256=hashlib.sha256(data).hexdigest(), size=len(data)))
    return Manifest(digest=manifest_digest(entries), files=sorted(entries, key=lambda f: f.path))


@dataclass
class Backend:
    """A store and the raw access a test needs to inspect or tamper with what it holds."""

    store: WeightsStore
    read: Callable[[str], bytes]  # key under the root -> bytes
    write: Callable[[str, bytes], None]
    delete: Callable[[str], None]
    stamp: Callable[[str], Any]  # key -> something that changes when the object is written again


def s3_backend(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Backend:
    for key, value in {
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    client = boto3.client("s3")
    bucket = f"store-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})  # counts rewrites
    return Backend(
        store=WeightsStore.from_env({"LLMRELEASE_S3_BUCKET": bucket}),
        read=lambda key: client.get_object(Bucket=bucket, Key=key)["Body"].read(),
        write=lambda key, data: client.put_object(Bucket=bucket, Key=key, Body=data),
        delete=lambda key: client.delete_object(Bucket=bucket, Key=key),
        stamp=lambda key: [v["VersionId"] for v in client.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]],
    )


def file_backend(root: Path) -> Backend:
    def write(key: str, data: bytes) -> None:
        (root / key).write_bytes(data)

    return Backend(
        store=WeightsStore.from_env({"LLMRELEASE_HOME": str(root.parent)}),
        read=lambda key: (root / key).read_bytes(),
        write=write,
        delete=lambda key: (root / key).unlink(),
        stamp=lambda key: (root / key).stat().st_ino,  # a rewrite renames a new file into place
    )


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    monkeypatch.delenv("LLMRELEASE_S3_BUCKET", raising=False)
    if request.param == "s3":
        return s3_backend(request.getfixturevalue("moto_endpoint"), monkeypatch)
    return file_backend(tmp_path / "home" / "store")


def key_of(manifest: Manifest, rel: str) -> str:
    return f"weights/sha256/{manifest.digest.removeprefix('sha256:')}/{rel}"


def test_published_weights_are_read_back_verified_from_their_digest_address(backend: Backend, tmp_path: Path) -> None:
    """GIVEN a weights folder and its manifest
    WHEN published, then the manifest read from the URI and the files downloaded
    THEN the URI is <root>/weights/sha256/<hex>, every file was uploaded once, the manifest read back equals the
    one published, and the downloaded bytes are the folder's."""
    manifest = write_folder(tmp_path / "model", FILES)

    published = backend.store.publish(tmp_path / "model", manifest)

    assert published.uri == f"{backend.store.root}/weights/sha256/{manifest.digest.removeprefix('sha256:')}"
    assert is_weights_uri(published.uri) and not published.reused
    assert published.uploaded == sorted(FILES)
    assert backend.store.read_manifest(published.uri, expected=manifest.digest) == manifest
    backend.store.check(published.uri, manifest)
    got = WeightsStore.for_uri(published.uri).download(published.uri, manifest, tmp_path / "dl")
    assert {rel: (got / rel).read_bytes() for rel in FILES} == FILES


def test_publishing_the_same_weights_again_uploads_nothing(backend: Backend, tmp_path: Path) -> None:
    """GIVEN weights already published
    WHEN published again (a re-onboarding of the same weights)
    THEN nothing is written: the result says reused with no file uploaded, and no object was rewritten."""
    manifest = write_folder(tmp_path / "model", FILES)
    backend.store.publish(tmp_path / "model", manifest)
    keys = [key_of(manifest, f"files/{rel}") for rel in FILES] + [key_of(manifest, "manifest.json")]
    before = {key: backend.stamp(key) for key in keys}

    again = backend.store.publish(tmp_path / "model", manifest)

    assert (again.reused, again.uploaded) == (True, [])
    assert {key: backend.stamp(key) for key in keys} == before


def test_a_file_lost_from_the_store_is_named_by_check_and_repaired_by_the_next_publish(
    backend: Backend, tmp_path: Path
) -> None:
    """GIVEN published weights, one file then deleted from the store
    WHEN checked THEN one line names the file; WHEN published again THEN exactly that file is uploaded."""
    manifest = write_folder(tmp_path / "model", FILES)
    uri = backend.store.publish(tmp_path / "model", manifest).uri
    backend.delete(key_of(manifest, "files/sub/tokenizer.json"))

    with pytest.raises(OnboardingError, match=r"weights file sub/tokenizer.json at .* is missing: re-run the onboard"):
        backend.store.check(uri, manifest)
    again = backend.store.publish(tmp_path / "model", manifest)
    assert (again.reused, again.uploaded) == (True, ["sub/tokenizer.json"])
    backend.store.check(uri, manifest)


def test_weights_changed_after_hashing_are_refused_and_nothing_is_published(backend: Backend, tmp_path: Path) -> None:
    """GIVEN a manifest computed, then a file of the folder swapped for other bytes of the same size
    WHEN published
    THEN one line names the file, the hashed and the found sha256; the object is removed and no manifest is
    written, so the location is not complete (reading it says to re-run the onboard step)."""
    manifest = write_folder(tmp_path / "model", FILES)
    swapped = b"x" * len(FILES["model.safetensors"])
    (tmp_path / "model" / "model.safetensors").write_bytes(swapped)
    found = hashlib.sha256(swapped).hexdigest()
    expected = next(f.sha256 for f in manifest.files if f.path == "model.safetensors")

    with pytest.raises(IntegrityError) as info:
        backend.store.publish(tmp_path / "model", manifest)

    message = str(info.value)
    assert "\n" not in message and "model.safetensors changed since onboarding" in message
    assert f"expected sha256:{expected}" in message and f"found sha256:{found}" in message
    uri = backend.store.location(manifest.digest)
    with pytest.raises(OnboardingError, match="have no manifest.json in the store: re-run the onboard step"):
        backend.store.read_manifest(uri, expected=manifest.digest)
    with pytest.raises(Exception):  # noqa: B017 (whichever error the backend gives for a missing object)
        backend.read(key_of(manifest, "files/model.safetensors"))


def test_another_manifest_at_the_address_is_refused_naming_both_digests(backend: Backend, tmp_path: Path) -> None:
    """GIVEN published weights whose stored manifest was then rewritten (a file's sha256 changed)
    WHEN read, or published again
    THEN refused in one line naming the expected digest and the digest the stored manifest hashes to."""
    manifest = write_folder(tmp_path / "model", FILES)
    uri = backend.store.publish(tmp_path / "model", manifest).uri
    raw = json.loads(backend.read(key_of(manifest, "manifest.json")))
    raw["files"][0]["sha256"] = "0" * 64
    backend.write(key_of(manifest, "manifest.json"), json.dumps(raw).encode())

    for attempt in (
        lambda: backend.store.read_manifest(uri, expected=manifest.digest),
        lambda: backend.store.publish(tmp_path / "model", manifest),
    ):
        with pytest.raises(IntegrityError) as info:
            attempt()
        assert f"expected digest {manifest.digest}, found sha256:" in str(info.value)
        assert "\n" not in str(info.value)


def test_two_writers_at_once_both_succeed_with_one_complete_location(backend: Backend, tmp_path: Path) -> None:
    """GIVEN two onboardings of the same weights at the same time (two folders, same bytes)
    WHEN both publish concurrently
    THEN both succeed with the same URI and the location holds the manifest and every file once."""
    manifests = [write_folder(tmp_path / name, FILES) for name in ("a", "b")]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(backend.store.publish, [tmp_path / "a", tmp_path / "b"], manifests))
    assert results[0].uri == results[1].uri
    assert backend.store.read_manifest(results[0].uri, expected=manifests[0].digest) == manifests[0]
    backend.store.check(results[0].uri, manifests[0])
    assert backend.read(key_of(manifests[0], "files/model.safetensors")) == FILES["model.safetensors"]


def test_the_root_is_the_bucket_when_one_is_configured_else_a_folder_under_the_home(tmp_path: Path) -> None:
    """GIVEN LLMRELEASE_S3_BUCKET set, or not WHEN the root is resolved THEN s3://bucket, else file://<home>/store;
    a URI that is not a store location is refused in one line."""
    assert store_root({"LLMRELEASE_S3_BUCKET": "llmrelease-local", "LLMRELEASE_HOME": str(tmp_path)}) == (
        "s3://llmrelease-local"
    )
    assert store_root({"LLMRELEASE_HOME": str(tmp_path)}) == (tmp_path / "store").as_uri()
    assert not is_weights_uri("mlflow-artifacts:/1/abc/artifacts/model")
    with pytest.raises(OnboardingError, match="is not a weights store location"):
        WeightsStore.for_uri("s3://bucket/models/demo-qa")
