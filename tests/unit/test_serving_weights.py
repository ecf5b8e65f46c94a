"""What a serving plane is given for a version's weights (its weights-store URI) and how it fetches them itself.

Real components: the weights store on its file:// backend (the same code path as S3 behind `WeightsStore`), the
model cache of `steps.evals.weights`, `LocalServing`'s resolution of a location into the folder it serves.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from registry.errors import IntegrityError
from registry.integrity import Manifest, ManifestFile, manifest_digest
from registry.tags import DIGEST_TAG
from registry.weights_store import WeightsStore
from steps.rollout.serving.base import ServingError
from steps.rollout.serving.local import LocalServing
from steps.rollout.serving.weights import uri_digest, weights_folder, weights_location

FILES = {"config.json": b'{"model_type": "gpt2"}', "model.safetensors": b"w" * 4096}


def _publish(store_home: Path, source: Path) -> tuple[str, Manifest]:
    """Onboard `FILES` the way the onboard step does: hash, then publish to the store of `store_home`."""
    entries = []
    for rel, data in FILES.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(data)
        entries.append(ManifestFile(path=rel, sha256=hashlib.sha256(data).hexdigest(), size=len(data)))
    manifest = Manifest(digest=manifest_digest(entries), files=sorted(entries, key=lambda f: f.path))
    store = WeightsStore.from_env({"LLMRELEASE_HOME": str(store_home)})
    return store.publish(source, manifest).uri, manifest


class _Versions:
    """The two MLflow client members `weights_location` reads, over one registered version."""

    tracking_uri = "unused://"

    def __init__(self, source: str, digest: str) -> None:
        self._mv = SimpleNamespace(name="m", version="1", source=source, run_id="", tags={DIGEST_TAG: digest})

    def get_model_version(self, name: str, version: str) -> Any:
        return self._mv


def test_a_plane_fetches_and_verifies_a_store_uri_into_its_own_home(tmp_path: Path) -> None:
    """GIVEN weights published to the store and the onboarded folder deleted WHEN a plane with another home
    resolves the version's store URI THEN it gets a folder under its own model cache with the published bytes."""
    uri, manifest = _publish(tmp_path / "store-home", tmp_path / "onboarded")
    for rel in FILES:
        (tmp_path / "onboarded" / rel).unlink()
    assert uri_digest(uri) == manifest.digest
    folder = weights_folder(uri, tmp_path / "plane-home")
    assert folder.resolve().is_relative_to((tmp_path / "plane-home" / "model-cache").resolve())
    assert {rel: (folder / rel).read_bytes() for rel in FILES} == FILES


def test_a_tampered_store_object_is_refused_and_nothing_is_served(tmp_path: Path) -> None:
    """GIVEN a published weights file changed in the store WHEN the plane resolves the URI THEN IntegrityError,
    and its model cache keeps no entry for the digest."""
    uri, manifest = _publish(tmp_path / "store-home", tmp_path / "onboarded")
    stored = tmp_path / "store-home" / "store" / "weights" / "sha256" / manifest.digest.removeprefix("sha256:")
    (stored / "files" / "model.safetensors").write_bytes(b"x" * 4096)
    with pytest.raises(IntegrityError):
        LocalServing(tmp_path / "plane-home")._folder(uri)
    cache = tmp_path / "plane-home" / "model-cache"
    assert not any(p.name.startswith(manifest.digest.removeprefix("sha256:")[:16]) for p in cache.iterdir())


def test_a_step_hands_the_plane_the_versions_store_uri_not_a_folder(tmp_path: Path) -> None:
    """GIVEN a version whose source is its store URI WHEN the step asks what to give the plane THEN the URI, and
    nothing is downloaded into the step's home; a source addressed by another digest than the tag is refused."""
    uri, manifest = _publish(tmp_path / "store-home", tmp_path / "onboarded")
    step_home = tmp_path / "step-home"
    assert weights_location(_Versions(uri, manifest.digest), "m", "1", step_home) == uri
    assert not step_home.exists()
    with pytest.raises(IntegrityError, match="digest tag"):
        weights_location(_Versions(uri, "sha256:" + "0" * 64), "m", "1", step_home)


@pytest.mark.parametrize("bad", ["s3://bucket/weights", "s3://bucket/models/demo-qa", "https://host/w"])
def test_a_uri_that_is_not_a_store_location_is_refused_in_one_line(bad: str, tmp_path: Path) -> None:
    """GIVEN a URI outside the weights store WHEN a plane is given it THEN one ServingError naming it."""
    with pytest.raises(ServingError) as error:
        weights_folder(bad, tmp_path)
    assert bad in str(error.value) and "\n" not in str(error.value)


def test_folders_are_served_as_given(tmp_path: Path) -> None:
    """GIVEN a folder (a Path, a path string, a file:// URI of a folder) WHEN resolved THEN that folder."""
    assert weights_folder(tmp_path, tmp_path / "h") == tmp_path
    assert weights_folder(str(tmp_path), tmp_path / "h") == tmp_path
    assert weights_folder(f"file://{tmp_path}", tmp_path / "h") == tmp_path
