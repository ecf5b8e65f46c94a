"""Integrity end to end: the bytes registered, evaluated and served are the bytes onboarded, or nothing happens.

Real components: the onboard step on a real safetensors checkpoint, uploading to the digest-addressed weights store
(a file store under tmp_path; the S3 store is tested in tests/unit/test_weights_store.py and
tests/integration/test_register_server.py), the register step into a real MLflow sqlite store, and the model cache
downloading from the version's store URI.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from safetensors.numpy import save_file

from registry.errors import IntegrityError, OnboardingError
from registry.facade import ModelRegistry
from registry.tags import ONBOARDING_EXPERIMENT
from steps import register
from steps.evals.weights import weights_dir
from tests.unit.test_onboard import POLICY, QA, SAFETY, Workspace, save_model, write_jsonl

NAME = "tiny-qa"


class Env:
    """An onboarded model (its record on disk) and an empty MLflow store, all under tmp_path."""

    def __init__(self, tmp_path: Path) -> None:
        self.ws = Workspace(root=tmp_path / "root", work=tmp_path / "work")
        save_model(self.ws.model)
        write_jsonl(self.ws.root / "suites" / "qa.jsonl", QA)
        write_jsonl(self.ws.root / "suites" / "safety.jsonl", SAFETY)
        (self.ws.root / "policy").mkdir()
        (self.ws.root / "policy" / "platform-policy.yaml").write_text(yaml.safe_dump(POLICY), encoding="utf-8")
        (self.ws.root / "releases").mkdir()
        self.ws.spec()
        self.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.registry = ModelRegistry(self.client, tracking_uri=self.uri, artifact_root=tmp_path / "mlartifacts")
        self.home = tmp_path / "home"
        self.record: dict[str, Any] = json.loads(self.ws.onboard().record_path.read_text())

    def register(self) -> register.Outputs:
        return register.run(register.Inputs(record_path=self.ws.record, workflow_uid="uid-1"), self.registry)

    def registered_nothing(self) -> bool:
        experiment = self.client.get_experiment_by_name(ONBOARDING_EXPERIMENT)
        runs = [] if experiment is None else self.client.search_runs([experiment.experiment_id])
        return not runs and not self.client.search_registered_models() and not self.client.search_model_versions()

    def expected_sha(self, path: str) -> str:
        return next(f["sha256"] for f in self.record["files"] if f["path"] == path)

    def stored_location(self, version: str = "1") -> Path:
        """The version's location in the (file) weights store: manifest.json and files/."""
        return Path(urlparse(str(self.client.get_model_version(NAME, version).source)).path)

    def stored_model_dir(self, version: str = "1") -> Path:
        return self.stored_location(version) / "files"

    def cache_entries(self) -> list[str]:
        cache = self.home / "model-cache"
        return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    monkeypatch.chdir(tmp_path)  # a stray ./mlruns would land here
    return Env(tmp_path)


def other_weights(path: Path) -> str:
    """Overwrite a safetensors checkpoint with other (valid) weights of the same shapes; returns their sha256."""
    rng = np.random.default_rng(1)
    tensors = {
        "wte.weight": rng.standard_normal((16, 8)).astype(np.float32),
        "h.0.attn.c_attn.weight": rng.standard_normal((8, 24)).astype(np.float32),
        "ln_f.bias": np.ones(8, dtype=np.float32),
    }
    save_file(tensors, str(path), metadata={"format": "np"})
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line(info: pytest.ExceptionInfo[IntegrityError]) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def test_register_needs_nothing_of_the_onboard_pods_disk(env: Env) -> None:
    """GIVEN a model onboarded, then its source folder swapped for other weights and the onboard's work folder
    deleted (on a cluster, the onboard pod and its disk are gone)
    WHEN the register step runs on the onboarding record
    THEN the version is registered with the weights' store URI as its source, and what the store holds (and the
    model cache serves) is the onboarded bytes, not the swapped ones."""
    onboarded = {p.name: p.read_bytes() for p in env.ws.model.iterdir()}
    record_copy = env.ws.record.read_bytes()
    other_weights(env.ws.model / "model.safetensors")
    shutil.rmtree(env.ws.work)
    env.ws.work.mkdir()
    env.ws.record.write_bytes(record_copy)  # the record reaches register as an Argo artifact, nothing else

    out = env.register()

    assert out.created
    assert env.client.get_model_version(NAME, out.version).source == env.record["weights_uri"]
    folder = weights_dir(env.client, NAME, out.version, env.home)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == onboarded


def test_a_file_missing_from_the_store_is_refused_and_nothing_is_registered(env: Env) -> None:
    """GIVEN an onboarded model one of whose files was then deleted from the weights store
    WHEN registered THEN refused in one line naming the file; the registry holds nothing."""
    location = Path(urlparse(env.record["weights_uri"]).path)
    (location / "files" / "tokenizer.json").unlink()
    with pytest.raises(OnboardingError, match=r"weights file tokenizer.json at .* is missing"):
        env.register()
    assert env.registered_nothing()


def test_a_record_pointing_at_other_weights_is_refused_naming_both_digests(env: Env, tmp_path: Path) -> None:
    """GIVEN a record whose weights_uri was edited to the store location of other onboarded weights
    WHEN registered THEN refused: the manifest there hashes to another digest (both named); nothing registered."""
    other = Workspace(root=tmp_path / "other-root", work=tmp_path / "other-work")
    shutil.copytree(env.ws.root, other.root)
    other_weights(other.model / "model.safetensors")
    other_uri = Workspace.onboard(other).record.weights_uri  # same store: beside the model root's parent
    env.record["weights_uri"] = other_uri
    env.ws.record.write_text(json.dumps(env.record))
    with pytest.raises(IntegrityError) as info:
        env.register()
    assert f"expected digest {env.record['digest']}, found sha256:" in one_line(info)
    assert env.registered_nothing()


def test_a_record_whose_file_list_was_edited_is_refused_naming_both_digests(env: Env) -> None:
    """GIVEN weights swapped and the record's file entry edited to match, its digest kept
    WHEN registered THEN refused: the file list no longer hashes to the digest (both named); nothing registered."""
    env.record["files"][0]["sha256"] = "0" * 64
    env.ws.record.write_text(json.dumps(env.record))
    with pytest.raises(IntegrityError) as info:
        env.register()
    assert f"expected digest {env.record['digest']}, found sha256:" in one_line(info)
    assert env.registered_nothing()


def test_the_registered_weights_are_downloaded_verified_and_then_reused(env: Env) -> None:
    """GIVEN a registered version
    WHEN its weights are fetched twice into an empty cache
    THEN the first fetch downloads and verifies them (the entry is marked with the digest), the second reuses the
    entry without re-hashing (a file changed in the store afterwards is not even read); an entry without the
    marker (written before) is verified once and marked again."""
    out = env.register()
    folder = weights_dir(env.client, NAME, out.version, env.home)
    onboarded = {p.name: p.read_bytes() for p in env.ws.model.iterdir()}
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == onboarded
    marker = env.home / "model-cache" / out.digest.removeprefix("sha256:") / ".verified"
    assert marker.read_text() == out.digest

    other_weights(env.stored_model_dir() / "model.safetensors")  # the store changes: the cache is not re-read
    assert weights_dir(env.client, NAME, out.version, env.home) == folder

    marker.unlink()  # an entry from before the marker existed
    assert weights_dir(env.client, NAME, out.version, env.home) == folder
    assert marker.read_text() == out.digest


def test_weights_tampered_in_the_store_are_refused_on_download_and_the_cache_stays_clean(env: Env) -> None:
    """GIVEN a registered version whose stored model.safetensors was then replaced
    WHEN the model cache fetches it (as the eval workers and the serving plane do)
    THEN it fails in one line naming the file, the registered and the found sha256, and the cache holds no entry
    (nothing half-written, nothing to serve)."""
    out = env.register()
    found = other_weights(env.stored_model_dir() / "model.safetensors")

    with pytest.raises(IntegrityError) as info:
        weights_dir(env.client, NAME, out.version, env.home)

    message = one_line(info)
    assert f"expected sha256:{env.expected_sha('model.safetensors')}, found sha256:{found}" in message
    assert "model.safetensors" in message
    assert env.cache_entries() == [f".{out.digest.removeprefix('sha256:')}.lock"]


def test_a_cached_entry_tampered_before_it_was_verified_is_removed(env: Env) -> None:
    """GIVEN a complete cache entry without the verified marker whose weights were changed on disk
    WHEN fetched THEN refused with both digests and the entry removed; the next fetch downloads good weights."""
    out = env.register()
    folder = weights_dir(env.client, NAME, out.version, env.home)
    entry = env.home / "model-cache" / out.digest.removeprefix("sha256:")
    (entry / ".verified").unlink()
    found = other_weights(folder / "model.safetensors")

    with pytest.raises(IntegrityError, match=f"found sha256:{found}"):
        weights_dir(env.client, NAME, out.version, env.home)
    assert not entry.exists()
    again = weights_dir(env.client, NAME, out.version, env.home)
    assert hashlib.sha256((again / "model.safetensors").read_bytes()).hexdigest() == env.expected_sha(
        "model.safetensors"
    )


def test_a_manifest_rewritten_with_the_weights_is_refused_naming_both_digests(env: Env) -> None:
    """GIVEN a registered version whose stored weights AND manifest artifact were both rewritten to agree
    WHEN fetched THEN refused: the manifest no longer hashes to the version's digest tag (both named)."""
    out = env.register()
    stored = env.stored_model_dir()
    found = other_weights(stored / "model.safetensors")
    manifest_path = env.stored_location() / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["files"]:
        if entry["path"] == "model.safetensors":
            entry["sha256"] = found
    manifest_path.write_text(json.dumps(manifest))

    with pytest.raises(IntegrityError) as info:
        weights_dir(env.client, NAME, out.version, env.home)
    assert f"expected digest {out.digest}, found sha256:" in one_line(info)
    assert env.cache_entries() == []
