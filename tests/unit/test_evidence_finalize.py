"""The exit handler signs the evidence: required in stage and prod (key from a Secret), optional in dev.

Real components: an MLflow sqlite store under tmp_path, the local serving plane, `steps.finalize.run` as the
Hera entry calls it, and the rendered golden-delivery template for where the key comes from.
"""

import json
from pathlib import Path

import pytest
import yaml

from registry import ModelRegistry
from steps.evidence import ENVELOPE, EvidenceError, verify_bundle
from steps.finalize import Inputs, run
from steps.rollout.serving.local import LocalServing
from tests.unit.test_evidence import NAME, REPO
from workflows.cli.main import main

UID = "uid-sign-1"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A store with demo-qa v1 as `candidate` (a run about to end), and the repo as the working directory."""
    from steps.core.tracking import mlflow_client

    home = tmp_path / "home"
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("LLMRELEASE_HOME", str(home))
    for var in ("MLFLOW_TRACKING_URI", "LLMRELEASE_PUSHGATEWAY", "LLMRELEASE_EVIDENCE_KEY"):
        monkeypatch.delenv(var, raising=False)
    client = mlflow_client()
    client.create_registered_model(NAME)
    digest = {"llmrelease.digest": "sha256:" + "1" * 64}
    client.create_model_version(NAME, source=(tmp_path / "w1").as_uri(), tags=digest)
    client.set_registered_model_alias(NAME, "candidate", "1")
    return home


def _finalize(home: Path, environment: str, tmp_path: Path) -> object:
    inputs = Inputs(
        release="releases/demo.yaml",
        workflow_name="golden-delivery-s",
        workflow_uid=UID,
        workflow_status="Succeeded",
        reports_dir=tmp_path / "reports",
        environment=environment,
    )
    return run(inputs, ModelRegistry.from_env(), LocalServing(home))


def _keygen(path: Path) -> Path:
    assert main(["evidence", "keygen", str(path)]) == 0
    return path


def test_prod_without_a_key_writes_the_evidence_unsigned_then_fails_naming_the_secret(
    home: Path, tmp_path: Path
) -> None:
    """GIVEN environment prod and no LLMRELEASE_EVIDENCE_KEY (the Secret is absent)
    WHEN the exit handler runs
    THEN it fails with one line naming the Secret, its key and where the unsigned bundle is; the bundle is complete
    and stored (the version's evidence tag names it)."""
    with pytest.raises(EvidenceError) as err:
        _finalize(home, "prod", tmp_path)
    line = str(err.value)
    bundle = home / "evidence" / NAME / "1" / UID
    assert "\n" not in line and "environment prod requires signed evidence" in line
    assert "Secret llmrelease-evidence-key, key ed25519.pem" in line and line.endswith(f"is at {bundle}")
    assert verify_bundle(bundle).signature == "absent" and not (bundle / ENVELOPE).exists()
    from steps.core.tracking import mlflow_client

    tag = json.loads(mlflow_client().get_model_version(NAME, "1").tags["llmrelease.evidence"])
    assert tag["workflow_uid"] == UID and tag["workflow_status"] == "Succeeded"


def test_prod_signs_with_the_pem_the_secret_gives(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN environment prod and LLMRELEASE_EVIDENCE_KEY holding the PEM text (what secretKeyRef puts there)
    WHEN the exit handler runs
    THEN it succeeds and the bundle's statement verifies with the public key, anchored by the signature."""
    key = _keygen(tmp_path / "keys/evidence.pem")
    monkeypatch.setenv("LLMRELEASE_EVIDENCE_KEY", key.read_text())
    out = _finalize(home, "prod", tmp_path)
    bundle = home / "evidence" / NAME / "1" / UID
    assert out.evidence_digest == verify_bundle(bundle).digest  # type: ignore[attr-defined]
    ok = verify_bundle(bundle, public_key=Path(f"{key}.pub"))
    assert ok.anchored == "signature" and ok.signature.startswith("valid")


def test_dev_stays_unsigned_without_a_key_and_an_unusable_key_fails_after_writing(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN environment dev without a key, then stage with a public key where the private key belongs
    WHEN the exit handler runs
    THEN dev succeeds unsigned; stage writes the bundle unsigned and fails in one line saying the key is unusable."""
    _finalize(home, "dev", tmp_path)
    bundle = home / "evidence" / NAME / "1" / UID
    assert verify_bundle(bundle).signature == "absent"
    key = _keygen(tmp_path / "keys/evidence.pem")
    monkeypatch.setenv("LLMRELEASE_EVIDENCE_KEY", f"{key}.pub")
    with pytest.raises(EvidenceError, match="is unsigned: signing key .*(not an Ed25519 key|cannot read it)") as err:
        _finalize(home, "stage", tmp_path)
    assert "\n" not in str(err.value) and "llmrelease-evidence-key" in str(err.value)
    assert verify_bundle(bundle).signature == "absent"


def test_the_finalize_template_takes_the_key_from_the_optional_secret() -> None:
    """GIVEN the rendered golden-delivery template WHEN its finalize template is read
    THEN LLMRELEASE_EVIDENCE_KEY comes from Secret llmrelease-evidence-key (optional: dev runs without it)."""
    doc = yaml.safe_load((REPO / "argo/golden-delivery.workflowtemplate.yaml").read_text())
    finalize = next(t for t in doc["spec"]["templates"] if t["name"] == "finalize")
    env = {e["name"]: e for e in finalize["script"]["env"]}
    assert env["LLMRELEASE_EVIDENCE_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "llmrelease-evidence-key", "key": "ed25519.pem", "optional": True}
    }
