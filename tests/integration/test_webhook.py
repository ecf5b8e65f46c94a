"""`llmrelease webhook simulate`: GitHub deliveries through the rendered EventSource and Sensor in argo/.

Most cases use --dry-run (verified, filtered and mapped, nothing run); one signed merge payload runs
golden-delivery end to end on the local runner with the demo models (built once into examples/models, as `make
demo-models` does, when missing) and is then redelivered.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from workflows.cli.main import main

REPO = Path(__file__).resolve().parents[2]
ARGO = REPO / "argo"
SECRET = "merge-s3cret"
DELIVERY = "0b9c4a6e-1f2d-11f1-8e6b-2a3f4c5d6e7f"
AFTER = "4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f70"


def payload(
    ref: str = "refs/heads/main",
    modified: tuple[str, ...] = ("README.md", "releases/demo.yaml"),
    after: str = AFTER,
    clone_url: str = "https://github.com/llmrelease/llmrelease.git",
) -> bytes:
    return json.dumps(
        {
            "ref": ref,
            "before": "1" * 40,
            "after": after,
            "created": False,
            "deleted": False,
            "forced": False,
            "repository": {"full_name": "llmrelease/llmrelease", "clone_url": clone_url},
            "head_commit": {
                "id": after,
                "message": "Merge pull request #42 from ml/demo-release",
                "added": [],
                "removed": [],
                "modified": list(modified),
            },
        },
        indent=2,
    ).encode()


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Its own LLMRELEASE_HOME (registry, delivery ledger), the secret in the environment, cwd at the repo."""
    home = tmp_path / "home"
    monkeypatch.setenv("LLMRELEASE_HOME", str(home))
    monkeypatch.setenv("GITHUB_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("GX_ANALYTICS_ENABLED", "false")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(REPO)
    return home


def simulate(tmp_path: Path, capsys: pytest.CaptureFixture[str], body: bytes, *args: str) -> tuple[int, str, str]:
    path = tmp_path / "payload.json"
    path.write_bytes(body)
    code = main(
        ["webhook", "simulate", str(path), "--argo-dir", str(ARGO), "--runs-dir", str(tmp_path / "runs"), *args]
    )
    out, err = capsys.readouterr()
    return code, out, err


def nothing_ran(home: Path, tmp_path: Path) -> bool:
    ledger = home / "webhook-deliveries"
    return not (tmp_path / "runs").exists() and not (ledger.exists() and any(ledger.iterdir()))


def test_a_signed_merge_is_accepted_and_mapped_from_the_rendered_sensor(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN a signed push to main changing releases/demo.yaml WHEN simulated with --dry-run THEN it is accepted,
    the Workflow refs golden-delivery with release and git-commit from the payload, and nothing runs or is
    remembered."""
    body = payload()
    code, out, err = simulate(tmp_path, capsys, body, "--signature", sign(body), "--delivery-id", DELIVERY, "--dry-run")
    assert (code, err) == (0, "")
    assert (
        f"delivery {DELIVERY} accepted: golden-delivery-{DELIVERY} with release=releases/demo.yaml, "
        f"git-commit={AFTER}" in out
    )
    assert "workflowTemplateRef:\n    name: golden-delivery" in out
    assert "dry run: nothing run, delivery not recorded" in out
    assert nothing_ran(env, tmp_path)


@pytest.mark.parametrize(
    ("signature", "tamper", "words"),
    [
        (None, False, "no X-Hub-Signature-256 signature: refused, nothing run"),
        ("sign-other-secret", False, "signature does not match the payload and the webhook secret"),
        ("sign", True, "signature does not match the payload and the webhook secret"),
        ("sha1", False, "is not sha256=<64 hex digits>: refused"),
    ],
)
def test_an_unsigned_or_wrongly_signed_delivery_is_refused(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], signature: str | None, tamper: bool, words: str
) -> None:
    """GIVEN no signature, one made with another secret, a body changed after signing, or a SHA-1 signature WHEN
    simulated (even without --dry-run) THEN exit 1 with one stderr line and nothing runs."""
    body = payload()
    sig: dict[str | None, Any] = {
        None: None,
        "sign": sign(body),
        "sign-other-secret": sign(body, "guess"),
        "sha1": "sha1=" + hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest(),
    }
    sent = body.replace(b"releases/demo.yaml", b"releases/demo-unsafe.yaml") if tamper else body
    args = ["--signature", sig[signature]] if sig[signature] else []
    code, out, err = simulate(tmp_path, capsys, sent, *args, "--delivery-id", DELIVERY)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("llmrelease webhook: ") and words in err
    assert nothing_ran(env, tmp_path)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (
            payload(ref="refs/heads/release-candidate"),
            "body.ref is 'refs/heads/release-candidate', which does not match ^refs/heads/main$",
        ),
        (payload(modified=("README.md", "docs/triggers.md")), "does not exist in the event"),
    ],
)
def test_a_push_to_another_branch_or_without_a_release_change_is_ignored(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], body: bytes, words: str
) -> None:
    """GIVEN a signed push to another branch, or to main without a change under releases/ WHEN simulated THEN it is
    ignored with the failing filter named, exit 0, and nothing runs."""
    code, out, err = simulate(tmp_path, capsys, body, "--signature", sign(body))
    assert (code, err) == (0, "")
    assert out.startswith("ignored delivery ") and words in out and out.rstrip().endswith("nothing run")
    assert nothing_ran(env, tmp_path)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"ref": "refs/heads/main", ', "payload is not valid JSON"),
        (b'["refs/heads/main"]', "payload is a JSON list, not an object"),
    ],
)
def test_a_malformed_body_is_an_error(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], body: bytes, words: str
) -> None:
    """GIVEN a correctly signed body that is not a JSON object WHEN simulated THEN exit 2 with one stderr line."""
    code, out, err = simulate(tmp_path, capsys, body, "--signature", sign(body))
    assert code == 2 and out == "" and err.count("\n") == 1 and words in err
    assert nothing_ran(env, tmp_path)


def test_a_missing_secret_is_an_error(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN the secret's variable unset WHEN simulated THEN exit 2 naming the variable."""
    monkeypatch.delenv("GITHUB_WEBHOOK_SECRET")
    body = payload()
    code, _, err = simulate(tmp_path, capsys, body, "--signature", sign(body))
    assert code == 2 and "--secret-env GITHUB_WEBHOOK_SECRET: the variable is unset or empty" in err


@pytest.mark.slow
def test_a_signed_merge_runs_golden_delivery_once_even_when_redelivered(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], demo_models: Path
) -> None:
    """GIVEN a releases repository where releases/demo.yaml is broken at commit A and fixed at commit B, and a
    signed merge of B WHEN simulated THEN golden-delivery runs end to end locally on B's spec (A's would fail
    onboarding) and registers the model tagged with B; WHEN the same delivery comes again THEN no second run."""
    from registry import ModelRegistry

    releases = tmp_path / "releases-repo"
    (releases / "releases").mkdir(parents=True)
    git = ["git", "-C", str(releases), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    demo = (REPO / "releases" / "demo.yaml").read_text()
    for text in (demo.replace("apiVersion: llmrelease/v1", "apiVersion: llmrelease/v0"), demo):  # A, then B
        (releases / "releases" / "demo.yaml").write_text(text)
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "spec"], check=True)
    merged = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    body = payload(after=merged, clone_url=str(releases))
    try:
        code, out, err = simulate(tmp_path, capsys, body, "--signature", sign(body), "--delivery-id", DELIVERY)
    finally:
        main(["serving", "stop", "demo-qa"])  # the promoted model stays served (kept hot), as on a cluster
    assert code == 0, out[-3000:] + err[-2000:]
    assert f"workflow golden-delivery-{DELIVERY}-" in out and " Succeeded in " in out
    registry = ModelRegistry.from_env()
    version = registry.get_alias("demo-qa", "candidate")
    assert version is not None
    tags = registry._client.get_model_version("demo-qa", version).tags  # reading back in a test
    assert tags["llmrelease.git_commit"] == merged
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].startswith(f"golden-delivery-{DELIVERY}-")

    code, out, _ = simulate(tmp_path, capsys, body, "--signature", sign(body), "--delivery-id", DELIVERY)
    assert code == 0 and f"delivery {DELIVERY} was already handled (workflow golden-delivery-{DELIVERY})" in out
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == runs
