"""Disk full in a pod's /tmp: a real, tiny tmpfs mounted for the test holds the eval cache or the S3 download.

Mounting needs root (CAP_SYS_ADMIN), as in the CI container; elsewhere the tests skip with the reason. A full
disk fails the step with one line naming the path and that no space is left, leaves nothing half-written behind,
and a later run with space succeeds and reuses nothing broken.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest
from safetensors.numpy import save_file

from registry.errors import OnboardingError
from steps.evals.cache import GenerationSettings, ResultCache
from steps.evals.engines.base import EvalError
from steps.evals.results import ExampleResult, SuiteResult
from steps.onboard import Inputs, run
from steps.release.records import RECORD_FILE
from tests.integration.test_onboard_s3 import _release
from tests.integration.test_s3_faults import REPO, S3World

SMALL = "64k"


class SmallDisk:
    """A tmpfs of `SMALL` bytes mounted at `path`; `grow` remounts it larger (the same files stay)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={SMALL}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")

    def grow(self, size: str = "16m") -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def files(self) -> list[Path]:
        return sorted(p for p in self.path.rglob("*") if p.is_file())

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "tmp")
    yield disk
    disk.unmount()


def _result(items: int) -> SuiteResult:
    """A suite result of `items` examples with long outputs (~1 KiB each)."""
    settings = GenerationSettings()
    examples = [
        ExampleResult(
            suite="qa",
            id=f"q{i}",
            task="contains",
            prompt=f"question {i}",
            output="x" * 1000,
            score=1.0,
            passed=True,
            latency_ms=1.0,
            output_tokens=1,
        )
        for i in range(items)
    ]
    return SuiteResult(
        suite="qa",
        suite_sha256="ab" * 32,
        model_name="tiny-qa",
        model_version="1",
        model_digest="sha256:" + "cd" * 32,
        backend=settings.backend,
        generation=settings.model_dump(mode="json"),
        examples=examples,
    )


def test_a_full_disk_fails_the_cache_write_in_one_line_and_a_later_run_reuses_nothing_broken(
    small_disk: SmallDisk,
) -> None:
    """GIVEN the eval result cache on a 64 KiB tmpfs and a result of ~200 KiB
    WHEN it is stored
    THEN one EvalError line names the cache file and "no space left", and no file (not even a temporary one) is
    left; the cache misses; once there is space the same put succeeds and reads back equal."""
    cache = ResultCache(small_disk.path / "eval-cache")
    result = _result(200)
    settings = GenerationSettings()
    with pytest.raises(EvalError) as info:
        cache.put(result)
    message = str(info.value)
    path = cache.path_for(result.model_digest, result.suite_sha256, settings)
    assert f"eval result cache {path}: cannot write it (no space left on the device)" in message, message
    assert "\n" not in message
    assert small_disk.files() == []
    assert cache.get(result.model_digest, result.suite_sha256, settings) is None

    small_disk.grow()
    assert cache.put(result) == str(path)
    assert cache.get(result.model_digest, result.suite_sha256, settings) == result
    assert small_disk.files() == [path]


def _onboard_s3_onto(disk: SmallDisk, root: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[S3World, Inputs, str]:
    """A ~200 KiB model in moto's s3://models/team/m/v1, onboarded into `disk`: expect one OnboardingError line."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    world = S3World(root, monkeypatch)
    big = root / "big.safetensors"
    save_file({"w": np.ones((256, 200), dtype=np.float32)}, str(big))
    boto3.client("s3").upload_file(str(big), "models", "team/m/v1/model.safetensors")
    release = _release(world.root, "s3://models/team/m/v1")
    policy = str(REPO / "policy" / "platform-policy.yaml")
    inputs = Inputs(release=str(release), work_dir=str(disk.path), root=str(world.root), policy_path=policy)
    with pytest.raises(OnboardingError) as info:
        run(inputs)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    return world, inputs, message


def test_a_full_disk_during_an_s3_download_leaves_no_partial_model(
    small_disk: SmallDisk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN an s3:// model of ~200 KiB (moto) and the step's work dir on a 64 KiB tmpfs
    WHEN it is onboarded
    THEN one OnboardingError line names the object and says no space is left, no record and no partial download
    remain; with space, onboarding succeeds and the record lists the file."""
    world, inputs, message = _onboard_s3_onto(small_disk, tmp_path / "root", monkeypatch)
    try:
        assert "No space left on device" in message and "s3://models/team/m/v1/model.safetensors" in message
        assert small_disk.files() == [] and not (small_disk.path / RECORD_FILE).exists()
        small_disk.grow()
        record = run(inputs).record
        assert (small_disk.path / RECORD_FILE).is_file()
        assert "model.safetensors" in [f.path for f in record.files]
    finally:
        world.stop()


def test_a_full_disk_during_an_s3_download_names_the_local_path_not_the_credentials(
    small_disk: SmallDisk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN the work dir on a full tmpfs WHEN an s3:// model is onboarded THEN the line names the path, not S3."""
    world, _, message = _onboard_s3_onto(small_disk, tmp_path / "root", monkeypatch)
    world.stop()
    assert str(small_disk.path) in message and "credentials" not in message, message
