"""The digest-keyed model cache under concurrency: parallel steps (batch-eval and safety) fetch the same weights.

Real MLflow: a local sqlite tracking store and artifact folder under tmp_path, weights logged as run artifacts and
downloaded through `mlflow.artifacts.download_artifacts`, by separate processes started together.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from registry.integrity import MANIFEST_ARTIFACT, ManifestFile, manifest_digest
from steps.evals.weights import download_weights

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 3
# A step, once per round: wait at that round's start line, fetch the weights into that round's (empty) cache, then
# read every file as an engine loading them would, and write down what it read.
WORKER = """
import hashlib, json, os, sys, time
from pathlib import Path
from steps.evals.weights import download_weights
source, digest, uri, run_id, base = sys.argv[1:]
for n in range(int(os.environ["ROUNDS"])):
    Path(f"{base}/ready-{n}-{os.getpid()}").touch()
    while not Path(f"{base}/go-{n}").exists():
        time.sleep(0.001)
    folder = download_weights(source, digest, Path(f"{base}/home-{n}"), uri, run_id)
    time.sleep(0.05)
    files = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in folder.rglob("*") if p.is_file()}
    Path(f"{base}/seen-{n}-{os.getpid()}.json").write_text(json.dumps({"folder": str(folder), "files": files}))
"""


Logged = tuple[str, str, dict[str, str], str, str]


@pytest.fixture(scope="module")
def logged_weights(tmp_path_factory: pytest.TempPathFactory) -> Logged:
    """(artifact URI of a `model/` folder logged to a local MLflow run with its manifest, as register logs them,
    tracking URI, relative path -> sha256, run id, manifest digest)."""
    import mlflow

    tmp_path = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    weights = tmp_path / "weights" / "model"
    (weights / "sub").mkdir(parents=True)
    for name, size in [("model.safetensors", 8 << 20), ("config.json", 100), ("sub/tokenizer.json", 1 << 20)]:
        (weights / name).write_bytes(os.urandom(size))
    for i in range(400):  # many files: publishing takes long enough for parallel writers to meet
        (weights / "sub" / f"shard-{i}.bin").write_bytes(os.urandom(2048))
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("cache", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(weights), artifact_path="model")
    hashes = _hashes(weights)
    files = [ManifestFile(path=p, sha256=h, size=(weights / p).stat().st_size) for p, h in hashes.items()]
    digest = manifest_digest(files)
    manifest = {"digest": digest, "files": [f.model_dump() for f in files]}
    client.log_dict(run.info.run_id, manifest, MANIFEST_ARTIFACT)
    client.set_terminated(run.info.run_id)
    source = f"{client.get_run(run.info.run_id).info.artifact_uri}/model"
    assert source.startswith("file://")  # not a plain folder: the cache must download it
    return source, uri, hashes, run.info.run_id, digest


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_four_parallel_downloads_of_one_version_all_succeed_and_share_one_folder(
    tmp_path: Path, logged_weights: Logged
) -> None:
    """GIVEN 4 processes released at the same instant to fetch the same weights into one empty cache (3 rounds)
    WHEN each calls download_weights and reads the folder it got
    THEN all succeed and read the logged bytes from the same folder; the cache holds one entry and its lock, no
    staging folder (before: a later writer's rename failed with "Directory not empty", or its rmtree removed the
    folder an earlier one was reading: the code before the lock failed this test in 4 runs of 4)."""
    source, uri, expected, run_id, digest = logged_weights
    hex_ = digest.removeprefix("sha256:")
    logs = [(tmp_path / f"worker-{i}.log").open("w") for i in range(4)]  # files, not pipes: nothing blocks
    env = {**os.environ, "ROUNDS": str(ROUNDS), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, source, digest, uri, run_id, str(tmp_path)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        for log in logs
    ]
    deadline = time.monotonic() + 120
    for n in range(ROUNDS):
        while len(list(tmp_path.glob(f"ready-{n}-*"))) < 4 and time.monotonic() < deadline:  # all at the start line
            if any(w.poll() is not None for w in workers):
                break  # one died: its stderr is reported below
            time.sleep(0.005)
        (tmp_path / f"go-{n}").touch()
    codes = [w.wait(timeout=180) for w in workers]
    for log in logs:
        log.close()
    assert codes == [0] * 4, [(tmp_path / f"worker-{i}.log").read_text()[-600:] for i in range(4)]
    for n in range(ROUNDS):
        seen = [json.loads(p.read_text()) for p in tmp_path.glob(f"seen-{n}-*.json")]
        assert len(seen) == 4
        assert len({s["folder"] for s in seen}) == 1 and all(s["files"] == expected for s in seen), f"round {n}"
        entries = sorted(p.name for p in (tmp_path / f"home-{n}" / "model-cache").iterdir())
        assert entries == [f".{hex_}.lock", hex_]  # one entry, its lock, no staging folder left behind


def test_a_half_written_entry_is_replaced_and_a_complete_one_is_reused(tmp_path: Path, logged_weights: Logged) -> None:
    """GIVEN a cache entry left without its .complete marker (a writer killed mid-publish) WHEN downloaded THEN it
    is replaced by the full weights; GIVEN then a complete entry THEN it is reused even with the store gone."""
    source, uri, expected, run_id, digest = logged_weights
    home = tmp_path / "home"
    partial = home / "model-cache" / digest.removeprefix("sha256:")
    partial.mkdir(parents=True)
    (partial / "junk.bin").write_bytes(b"half")
    folder = download_weights(source, digest, home, uri, run_id)
    assert _hashes(folder) == expected and not (partial / "junk.bin").exists()
    gone = "file:///nonexistent/artifacts/model"
    assert download_weights(gone, digest, home, uri, "no-such-run") == folder  # verified: no MLflow call
