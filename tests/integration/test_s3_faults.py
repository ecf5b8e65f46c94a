"""S3 unreachable or refusing: onboarding an s3:// model, and a step's artifact upload through the local runner.

S3 is a real moto server (`ThreadedMotoServer`, in a thread) that each test stops, or turns its authentication
on so the credentials in use are unknown. Every failure is one line naming the endpoint and the bucket, comes
within the service deadline (LLMRELEASE_SERVICE_DEADLINE_S) plus slack, writes no onboarding record (so nothing
can be registered) and leaves no half-downloaded model in the cache.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from registry.errors import OnboardingError
from steps.onboard import Inputs, run
from steps.release.records import RECORD_FILE
from tests.integration.test_onboard_s3 import _model, _release

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")
requests = pytest.importorskip("requests")

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 3
SLACK_S = 20  # 2 busy cores: process start and a last try in flight; never tighter than deadline + slack


class S3World:
    """A moto server holding s3://models/team/m/v1 (a tiny model), AWS_ENDPOINT_URL on it; `stop` closes its port."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        self.running = True
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        monkeypatch.setenv("AWS_ENDPOINT_URL", self.endpoint)
        self.root = root
        client = boto3.client("s3")
        client.create_bucket(Bucket="models")
        _model(root / "models" / "m")
        for file in sorted((root / "models" / "m").rglob("*")):
            if file.is_file():
                client.upload_file(str(file), "models", f"team/m/v1/{file.relative_to(root / 'models' / 'm')}")

    def stop(self) -> None:
        """Stop the server: its port closes."""
        if self.running:
            self.server.stop()
            self.running = False

    def require_auth(self) -> None:
        """From now on moto checks credentials: the test's access key is unknown to it (InvalidAccessKeyId)."""
        requests.post(f"{self.endpoint}/moto-api/reset-auth", data=b"0", timeout=5).raise_for_status()

    def onboard(self, work: Path, s3: Any = None) -> tuple[str, float]:
        """Onboard s3://models/team/m/v1 expecting one OnboardingError line; returns it and the seconds taken."""
        policy = str(REPO / "policy" / "platform-policy.yaml")
        release = _release(self.root, "s3://models/team/m/v1")
        started = time.monotonic()
        with pytest.raises(OnboardingError) as info:
            run(Inputs(release=str(release), work_dir=str(work), root=str(self.root), policy_path=policy), s3=s3)
        elapsed = time.monotonic() - started
        message = str(info.value)
        assert "\n" not in message and "Traceback" not in message, message
        assert "s3://models" in message, message
        assert not (work / RECORD_FILE).exists()
        cached = work / "cache" / "s3" / "models"
        assert not cached.exists() or not [p for p in cached.rglob("*") if p.is_file()], list(cached.rglob("*"))
        return message, elapsed


class StopsS3AtFirstDownload:
    """A real boto3 client whose first `get_object` stops the server first: S3 goes away mid-download."""

    def __init__(self, world: S3World) -> None:
        self.world, self.client = world, boto3.client("s3")

    def get_paginator(self, name: str) -> Any:
        return self.client.get_paginator(name)

    def get_object(self, **kwargs: Any) -> Any:
        self.world.stop()
        return self.client.get_object(**kwargs)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3World]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "LLMRELEASE_SERVICE_DEADLINE_S": str(DEADLINE_S),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    from moto import settings  # `require_auth` turns moto's process-wide auth on: put it back afterwards

    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", float("inf"))
    s3_world = S3World(tmp_path / "root", monkeypatch)
    yield s3_world
    s3_world.stop()


def test_onboarding_from_a_stopped_s3_fails_within_the_deadline_naming_endpoint_and_bucket(
    world: S3World, tmp_path: Path
) -> None:
    """GIVEN the model in a bucket and S3 stopped (its port closed)
    WHEN the s3:// model is onboarded
    THEN it is retried, then one line names S3's endpoint, the bucket and what to check, within the deadline plus
    slack; no record, nothing in the download cache."""
    world.stop()
    message, elapsed = world.onboard(tmp_path / "work")
    assert message.startswith(f"S3 ({world.endpoint}) at s3://models unreachable after "), message
    assert f"deadline {DEADLINE_S} s, LLMRELEASE_SERVICE_DEADLINE_S" in message, message
    assert message.endswith("check AWS_ENDPOINT_URL and the credentials"), message
    assert " 1 tries" not in message and elapsed < DEADLINE_S + SLACK_S, (elapsed, message)


def test_s3_stopping_mid_download_leaves_no_half_downloaded_model(world: S3World, tmp_path: Path) -> None:
    """GIVEN S3 that stops as the first object's download starts (after the listing)
    WHEN the s3:// model is onboarded
    THEN one line names the endpoint and the bucket, no partial folder or file is left, no record; with S3 back
    a second onboarding succeeds and downloads every file whole."""
    work = tmp_path / "work"
    message, elapsed = world.onboard(work, s3=StopsS3AtFirstDownload(world))
    assert message.startswith(f"S3 ({world.endpoint}) at s3://models unreachable after "), message
    assert elapsed < DEADLINE_S + SLACK_S
    assert not [p for p in (work / "cache" / "s3").rglob("*") if p.name.startswith(".")]


def test_onboarding_with_credentials_s3_does_not_know_is_one_line_naming_the_bucket(
    world: S3World, tmp_path: Path
) -> None:
    """GIVEN S3 that checks credentials and does not know the access key in use
    WHEN the s3:// model is onboarded
    THEN it fails at once (a refusal, not an outage) with one line naming the bucket, the error code and the
    credentials to check; no record."""
    world.require_auth()
    message, elapsed = world.onboard(tmp_path / "work")
    assert "model.source 's3://models/team/m/v1': cannot list the bucket" in message, message
    assert "InvalidAccessKeyId" in message and "the credentials" in message, message
    assert elapsed < SLACK_S


def test_a_refusal_by_s3_names_the_endpoint_too(world: S3World, tmp_path: Path) -> None:
    """GIVEN S3 refusing the credentials WHEN onboarded THEN the line names the endpoint as well as the bucket."""
    world.require_auth()
    message, _ = world.onboard(tmp_path / "work")
    assert world.endpoint in message, message


UPLOAD = """
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata: {generateName: upload-}
spec:
  entrypoint: produce
  templates:
  - name: produce
    script:
      image: python:3.11
      command: [python]
      source: |
        open("/work/report.md", "w").write("# report")
    outputs:
      artifacts:
      - {name: report, path: /work/report.md}
"""


@pytest.mark.parametrize("fault", ["stopped", "unknown-credentials"])
def test_an_artifact_upload_to_an_unreachable_or_refusing_s3_fails_the_step_in_one_line(
    world: S3World, tmp_path: Path, fault: str
) -> None:
    """GIVEN the runner's artifact repository on S3, S3 stopped or refusing the credentials
    WHEN a step with an output artifact runs through `llmrelease run`
    THEN the run fails, the step's message is one line naming the artifact, the bucket and the endpoint, in
    bounded time, and no traceback reaches stderr; a refusal says access was refused and names the credentials
    Secret, an outage says the bucket cannot be reached."""
    from tests.integration.test_runner_artifacts import cluster_config, repository
    from tests.integration.test_runner_artifacts import run as run_workflow

    boto3.client("s3").create_bucket(Bucket="artifacts")
    world.stop() if fault == "stopped" else world.require_auth()
    endpoint = world.endpoint.removeprefix("http://")
    started = time.monotonic()
    result = run_workflow(tmp_path, UPLOAD, cluster_config(tmp_path, {"main": repository(endpoint)}))
    elapsed = time.monotonic() - started
    message = str(result.node(result.name).get("message", ""))
    print(f"{fault}: {elapsed:.1f} s: {message}")
    assert result.phase in ("Failed", "Error") and result.rc != 0, result.status["status"]
    assert "artifact report" in message and "bucket artifacts" in message and endpoint in message, message
    assert "\n" not in message and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert elapsed < 60, elapsed
    if fault == "unknown-credentials":  # a refusal, not an outage: it says so and names where the keys come from
        assert "access to bucket artifacts" in message and "refused" in message, message
        assert "cannot reach" not in message and "Secret s3-credentials" in message, message
    else:
        assert "cannot reach bucket artifacts" in message and "refused" not in message, message
