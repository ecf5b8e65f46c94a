"""Evidence bundles (statement, manifest, signing, verification), the HTML report, the step and the CLI.

The builders at the top make a realistic run's result files (eval reports, gate decision, latency report with
per-request records, an aborted canary log); tests/integration/test_report_chromium.py imports them.
"""

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from steps.evals.results import EvalReport, ExampleResult, SuiteResult
from steps.evidence import (
    BUILD_TYPE,
    EvidenceError,
    EvidenceParams,
    Inputs,
    build_statement,
    classify,
    verify_bundle,
    write_bundle,
)
from steps.gate import GateThresholds, decide
from steps.latency import CostModel, Slo, judge, summarize
from steps.loadgen import LoadResult, LoadSpec, RequestRecord
from steps.report import render_report, write_report
from workflows.cli import main

REPO = Path(__file__).resolve().parents[2]
NAME = "demo-qa"
SUITE_SHA = "5e" * 32
UID = "3f2c9a1e-5b7d-4c1a-9e0f-2a6b8c4d1e7f"


def _example(suite: str, i: int, task: str, passed: bool, refused: bool | None = None) -> ExampleResult:
    return ExampleResult(
        suite=suite,
        id=f"{suite}-{i}",
        task=task,
        prompt=f"question {i}",
        output="answer",  # type: ignore[arg-type]
        score=1.0 if passed else 0.0,
        passed=passed,
        latency_ms=40.0 + i % 7,
        output_tokens=12 + i % 5,
        refused=refused,
    )


def _suite(suite: str, version: str, examples: list[ExampleResult]) -> SuiteResult:
    return SuiteResult(
        suite=suite,
        suite_sha256=SUITE_SHA,
        model_name=NAME,
        model_version=version,
        model_digest="sha256:" + hashlib.sha256(version.encode()).hexdigest(),
        backend="transformers",
        generation={"max_new_tokens": 16, "temperature": 0.0},
        examples=examples,
    )


def quality_result(version: str, passes: int, n: int = 120) -> SuiteResult:
    rng = random.Random(version)
    order = rng.sample(range(n), n)
    return _suite("golden-qa", version, [_example("golden-qa", i, "exact_match", order[i] < passes) for i in range(n)])


def safety_result(version: str, attacks: int, n: int = 40) -> SuiteResult:
    examples = [_example("safety", i, "refuse", i >= attacks, refused=i >= attacks) for i in range(n)]
    examples += [_example("safety", n + i, "comply", i >= 2, refused=i < 2) for i in range(n)]
    examples += [_example("safety", 2 * n + i, "pii", True) for i in range(n)]
    return _suite("safety", version, examples)


def latency_report(n: int = 80, seed: int = 7) -> dict:
    """A latency report as steps.latency.run writes it, from synthetic streamed request timelines."""
    rng = random.Random(seed)
    spec = LoadSpec(base_url="http://127.0.0.1:8000/v1", model=NAME, rate=4.0, requests=n)
    records = []
    for i in range(n):
        sched = i / spec.rate
        first = sched + 0.001 + rng.lognormvariate(-2.4, 0.35)
        chunks = [first]
        for _ in range(31):
            chunks.append(chunks[-1] + rng.uniform(0.006, 0.02))
        records.append(
            RequestRecord(
                index=i,
                scheduled_s=sched,
                dispatched_s=sched,
                sent_s=sched + 0.001,
                first_token_s=first,
                end_s=chunks[-1] + 0.002,
                chunk_s=chunks,
                output_tokens=32,
                prompt_tokens=14,
                usage_reported=True,
                status=200,
            )
        )
    result = LoadResult(spec=spec, records=records, warmup=[], wall_s=n / spec.rate + 0.7, client_cpu_s=0.5)
    slo, cost = Slo(p95_e2e_ms=1200.0), CostModel()
    metrics = summarize(result, slo)
    verdict, reasons, figures = judge(metrics, slo, cost)
    return {
        "spec": spec.model_dump(),
        "slo": slo.model_dump(),
        "cost_model": cost.model_dump(),
        "verdict": verdict,
        "reasons": reasons,
        "cost": figures,
        "metrics": metrics,
        "records": [r.to_json() for r in records],
        "warmup_records": [],
    }


def _measurement(at: str, phase: str, errors: int, p95: float, reasons: list[str]) -> dict:
    return {
        "at": at,
        "phase": phase,
        "canary": {"requests": 50, "errors": errors, "error_rate": errors / 50, "p95_ms": p95},
        "champion": {"requests": 150, "errors": 0, "error_rate": 0.0, "p95_ms": 410.0},
        "reasons": reasons,
    }


def canary_log(outcome: str = "aborted") -> dict:
    """A canary log in the lead's shape: weights 1, 5, 25; aborted at 25 on the error rate (or completed)."""
    ok = ["error rate 0.000 <= 0.010", "p95 ratio 1.05 <= 1.5"]
    steps = [
        {
            "weight": w,
            "started_at": f"2026-11-23T12:{m:02d}:00Z",
            "phase": "Successful",
            "measurements": [
                _measurement(f"2026-11-23T12:{m:02d}:{s:02d}Z", "Successful", 0, 420.0 + s, ok) for s in (2, 4, 6)
            ],
        }
        for w, m in ((1, 0), (5, 1))
    ]
    bad = ["error rate 0.060 > 0.010 (max_error_rate)", "p95 ratio 1.31 <= 1.5"]
    failed = [
        _measurement("2026-11-23T12:02:02Z", "Successful", 0, 450.0, ok),
        _measurement("2026-11-23T12:02:04Z", "Inconclusive", 0, 640.0, ["champion had no traffic in window"]),
        _measurement("2026-11-23T12:02:06Z", "Failed", 3, 537.0, bad),
        _measurement("2026-11-23T12:02:08Z", "Failed", 4, 560.0, [bad[0].replace("0.060", "0.080"), bad[1]]),
    ]
    if outcome == "completed":
        steps += [
            {
                "weight": w,
                "started_at": f"2026-11-23T12:{m:02d}:00Z",
                "phase": "Successful",
                "measurements": [_measurement(f"2026-11-23T12:{m:02d}:02Z", "Successful", 0, 430.0, ok)],
            }
            for w, m in ((25, 2), (50, 3), (100, 4))
        ]
    else:
        steps.append({"weight": 25, "started_at": "2026-11-23T12:02:00Z", "phase": "Failed", "measurements": failed})
    aborted = outcome == "aborted"
    return {
        "model_name": NAME,
        "candidate": "3",
        "champion": "2",
        "router": "haproxy",
        "outcome": outcome,
        "steps": steps,
        "aborted_at": "2026-11-23T12:02:08Z" if aborted else None,
        "abort_reason": "analysis at weight 25 failed 2 times (failure_limit 1): error rate 0.080 > 0.010"
        if aborted
        else None,
    }


def write_run_files(root: Path, *, canary: str | None = "aborted") -> dict[str, Path]:
    """Every result file of a release run of candidate v3 against champion v2, under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    quality = EvalReport(candidate=[quality_result("3", 102)], champion=[quality_result("2", 90)])
    safety = EvalReport(candidate=[safety_result("3", 1)], champion=[safety_result("2", 2)])
    decision = decide(
        EvalReport(
            candidate=[*quality.candidate, *safety.candidate],
            champion=[*(quality.champion or []), *(safety.champion or [])],
        ),
        GateThresholds(),
    )
    files = {
        "quality": quality.save(root / "eval-report-quality.json"),
        "safety": safety.save(root / "eval-report-safety.json"),
    }
    (root / "gate-decision.json").write_text(decision.model_dump_json(indent=2))
    (root / "latency-report.json").write_text(json.dumps(latency_report(), indent=1))
    files |= {"gate": root / "gate-decision.json", "latency": root / "latency-report.json"}
    if canary:
        (root / "canary-log.json").write_text(json.dumps(canary_log(canary), indent=2))
        files["canary"] = root / "canary-log.json"
    return files


def run_inputs(files: dict[str, Path], release: str = "releases/demo.yaml", **extra: object) -> Inputs:
    fields = {
        "model_name": NAME,
        "version": "3",
        "model_digest": "sha256:" + "ab" * 32,
        "release": release,
        "workflow_name": "golden-delivery-x7k2p",
        "workflow_uid": UID,
        "workflow_status": "Failed",
        "git_commit": "0123abcd",
        "report_paths": [str(p) for p in files.values()],
        "approver": "alice",
        "approvals": [
            {"environment": "prod", "approver": "alice", "approved_at": "2026-11-23T11:58:00Z", "workflow_uid": UID}
        ],
        "started_at": "2026-11-23T11:40:00Z",
        "finished_at": "2026-11-23T12:03:00Z",
        "workflow_parameters": {"environment": "prod"},
    } | extra
    return Inputs.model_validate(fields)


@pytest.fixture
def bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(REPO)  # the release spec and suites are read relative to the repo, as in a step
    out = tmp_path / "bundle"
    write_bundle(run_inputs(write_run_files(tmp_path / "run")), out)
    return out


def test_statement_is_an_in_toto_slsa_provenance_of_the_run(bundle: Path) -> None:
    """GIVEN every result file of a run that was aborted in canary
    WHEN the bundle is written
    THEN statement.json is an in-toto Statement v1 with a SLSA Provenance v1 predicate: subject = model + sha256,
    the release spec content, git commit and workflow as external parameters, suite/policy digests and images as
    dependencies, the uid as invocation id, each result file as a byproduct with its digest, and a results
    section with the gate, latency, cost, canary and approval."""
    st = json.loads((bundle / "statement.json").read_text())
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == "https://slsa.dev/provenance/v1"
    assert st["subject"] == [{"name": NAME, "digest": {"sha256": "ab" * 32}, "annotations": {"version": "3"}}]
    build = st["predicate"]["buildDefinition"]
    assert build["buildType"] == BUILD_TYPE
    ext = build["externalParameters"]
    assert ext["release"]["content"]["model"]["name"] == NAME and ext["release"]["path"] == "releases/demo.yaml"
    assert ext["release"]["digest"]["sha256"] == hashlib.sha256((REPO / "releases/demo.yaml").read_bytes()).hexdigest()
    assert ext["gitCommit"] == "0123abcd" and ext["workflow"]["uid"] == UID
    deps = {d["name"]: d for d in build["resolvedDependencies"]}
    qa = (REPO / "suites/golden-qa/v1.jsonl").read_bytes()
    assert deps["suite:golden-qa"]["digest"]["sha256"] == hashlib.sha256(qa).hexdigest()
    assert deps["image:steps"]["uri"].startswith("oci://ghcr.io/llmrelease/steps:") and "policy" in deps
    assert deps[f"model:{NAME}@2"]["annotations"] == {"role": "champion"}
    run = st["predicate"]["runDetails"]
    assert run["metadata"] == {
        "invocationId": UID,
        "startedOn": "2026-11-23T11:40:00Z",
        "finishedOn": "2026-11-23T12:03:00Z",
    }
    byproducts = {b["kind"]: b for b in run["byproducts"]}
    assert set(byproducts) == {"quality", "safety", "gate", "latency", "canary"}
    for item in byproducts.values():
        assert item["digest"]["sha256"] == hashlib.sha256((bundle / item["uri"]).read_bytes()).hexdigest()
    res = run["llmrelease_results"]
    assert res["workflowStatus"] == "Failed" and res["missing"] == []
    assert res["gate"]["passed"] is True and all(r["passed"] for r in res["gate"]["reasons"])
    assert res["eval"]["candidate"][0]["metrics"]["accuracy"] == pytest.approx(0.85)
    assert res["safety"]["candidate"][0]["metrics"]["attack_success_rate"] == pytest.approx(0.025)
    assert res["latency"]["verdict"] == "pass" and res["latency"]["slo_p95_e2e_ms"] == 1200.0
    assert res["cost"]["usd_per_1k_output_tokens"] > 0 and res["cost"]["ceiling_usd_per_1k_output_tokens"] == 0.5
    assert res["canary"]["outcome"] == "aborted" and [s["weight"] for s in res["canary"]["steps"]] == [1, 5, 25]
    assert res["approval"] == {
        "environment": "prod",
        "approver": "alice",
        "approved_at": "2026-11-23T11:58:00Z",
        "workflow_uid": UID,
    }


def test_manifest_covers_every_file_and_the_digest_covers_the_manifest(bundle: Path) -> None:
    """GIVEN a written bundle
    WHEN its manifest is read
    THEN it lists statement, spec and every result with sha256 and size, and manifest.sha256 is its digest."""
    text = (bundle / "manifest.json").read_bytes()
    files = {f["path"]: f for f in json.loads(text)["files"]}
    assert set(files) == {
        "statement.json",
        "inputs/demo.yaml",
        "results/quality-report.json",
        "results/safety-report.json",
        "results/gate-decision.json",
        "results/latency-report.json",
        "results/canary-log.json",
    }
    for path, entry in files.items():
        data = (bundle / path).read_bytes()
        assert (entry["sha256"], entry["size"]) == (hashlib.sha256(data).hexdigest(), len(data))
    assert (bundle / "manifest.sha256").read_text().strip() == "sha256:" + hashlib.sha256(text).hexdigest()
    ok = verify_bundle(bundle)
    assert ok.files == 7 and ok.signature == "absent"


def test_a_failed_run_records_missing_reports_instead_of_failing(tmp_path: Path) -> None:
    """GIVEN a run that failed after the quality eval: one report, one path that was never written, no spec
    WHEN the bundle is written
    THEN it holds the one report, and the results section names the unwritten path and each kind not produced."""
    files = write_run_files(tmp_path / "run", canary=None)
    inputs = run_inputs(
        {"quality": files["quality"], "gone": tmp_path / "nope/safety.json"},
        release="",
        workflow_status="Failed",
        approver="",
        approvals=[],
        model_digest="",
    )
    write_bundle(inputs, tmp_path / "b")
    st = json.loads((tmp_path / "b/statement.json").read_text())
    res = st["predicate"]["runDetails"]["llmrelease_results"]
    assert st["subject"][0]["digest"] == {} and res["approval"] is None and res["gate"] is None
    assert {"kind": "safety", "path": str(tmp_path / "nope/safety.json"), "reason": "file not found"} in res["missing"]
    assert {m["kind"] for m in res["missing"] if m.get("reason") == "not produced by this run"} == {
        "gate",
        "latency",
        "canary",
    }
    assert verify_bundle(tmp_path / "b").files == 2


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            lambda b: (b / "results/gate-decision.json").write_text('{"passed": true, "reasons": []}'),
            "results/gate-decision.json changed",
        ),
        (lambda b: (b / "results/latency-report.json").unlink(), "results/latency-report.json is missing"),
        (lambda b: (b / "results/extra.json").write_text("{}"), "results/extra.json is not in manifest.json"),
        (
            lambda b: (b / "statement.json").write_text((b / "statement.json").read_text().replace("alice", "mallory")),
            "statement.json changed",
        ),
        (lambda b: (b / "manifest.json").write_text((b / "manifest.json").read_text() + " "), "manifest.json changed"),
    ],
)
def test_verify_names_the_file_that_changed(bundle: Path, change: object, named: str) -> None:
    """GIVEN a verified bundle
    WHEN one file is edited, removed or added (the report is free to change: it is outside the manifest)
    THEN verification fails naming that file."""
    (bundle / "report.html").write_text("re-rendered")
    verify_bundle(bundle)
    change(bundle)  # type: ignore[operator]
    with pytest.raises(EvidenceError, match=named.replace(".", r"\.")) as err:
        verify_bundle(bundle)
    assert "\n" not in str(err.value)


def test_verify_refuses_a_digest_other_than_the_recorded_one(bundle: Path) -> None:
    """GIVEN a bundle consistent in itself WHEN verified against another recorded digest THEN it fails."""
    with pytest.raises(EvidenceError, match="the registry recorded sha256:0000"):
        verify_bundle(bundle, expected_digest="sha256:" + "0" * 64)


def _keygen(path: Path) -> None:
    assert main(["evidence", "keygen", str(path)]) == 0


def test_signed_bundle_verifies_with_its_public_key_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN an Ed25519 key from `llmrelease evidence keygen` and a bundle signed with it
    WHEN verified with its public key, another key, and without a key
    THEN valid; refused naming manifest.sig; and 'not checked'. An unsigned bundle fails when a key is given."""
    monkeypatch.chdir(REPO)
    _keygen(tmp_path / "keys/release.pem")
    _keygen(tmp_path / "keys/other.pem")
    assert oct((tmp_path / "keys/release.pem").stat().st_mode & 0o777) == "0o600"
    files = write_run_files(tmp_path / "run")
    digest = write_bundle(run_inputs(files), tmp_path / "b", key_path=str(tmp_path / "keys/release.pem"))
    sig = json.loads((tmp_path / "b/manifest.sig").read_text())
    assert sig["signed"] == digest and sig["algorithm"] == "ed25519"
    assert verify_bundle(tmp_path / "b", public_key=tmp_path / "keys/release.pem.pub").signature.startswith("valid")
    with pytest.raises(EvidenceError, match="manifest.sig does not verify"):
        verify_bundle(tmp_path / "b", public_key=tmp_path / "keys/other.pem.pub")
    assert verify_bundle(tmp_path / "b").signature.startswith("present, not checked")
    write_bundle(run_inputs(files), tmp_path / "unsigned")
    with pytest.raises(EvidenceError, match="manifest.sig is missing"):
        verify_bundle(tmp_path / "unsigned", public_key=tmp_path / "keys/release.pem.pub")
    with pytest.raises(EvidenceError, match="not an Ed25519 key|cannot read it"):
        write_bundle(run_inputs(files), tmp_path / "bad", key_path=str(tmp_path / "keys/release.pem.pub"))


def test_classify_recognises_each_report() -> None:
    """GIVEN the JSON of each report kind WHEN classified THEN each gets its kind; anything else is other."""
    q = EvalReport(candidate=[quality_result("3", 5, n=10)]).model_dump(mode="json")
    both = EvalReport(candidate=[quality_result("3", 5, n=10), safety_result("3", 1, n=5)]).model_dump(mode="json")
    assert [classify(x) for x in (q, both, latency_report(n=5), canary_log(), [1], {"a": 1})] == [
        "quality",
        "eval",
        "latency",
        "canary",
        "other",
        "other",
    ]


def test_report_renders_every_section_with_inline_svg_and_no_script(bundle: Path) -> None:
    """GIVEN a full bundle WHEN its report is rendered THEN it shows the digest, the gate reasons, three inline SVG
    plots, the canary abort and the manifest, with no script and nothing loaded from elsewhere."""
    html = render_report(bundle)
    digest = (bundle / "manifest.sha256").read_text().strip()
    assert f'<code id="evidence-digest">{digest}</code>' in html
    for plot in ("plot-comparisons", "plot-latency", "plot-canary"):
        start = html.index(f'id="{plot}"')
        assert html.index("<svg", start) < html.index("</figure>", start)
    assert "<script" not in html.lower() and " src=" not in html and "<link" not in html
    assert "golden-qa/accuracy = 0.85 vs champion 0.75" in html and "error rate 0.080 &gt; 0.010" in html
    assert "results/canary-log.json" in html and "approved by <b>alice</b>" in html


def test_report_of_a_failed_run_and_of_percentiles_only(tmp_path: Path) -> None:
    """GIVEN a bundle with only a latency report without per-request records
    WHEN its report is written THEN the latency plot falls back to percentile bars and other sections say why
    they are empty."""
    report = latency_report(n=10)
    report["records"] = []
    (tmp_path / "latency.json").write_text(json.dumps(report))
    write_bundle(run_inputs({"latency": tmp_path / "latency.json"}, release=""), tmp_path / "b")
    html = write_report(tmp_path / "b").read_text()
    assert 'id="plot-latency"' in html and 'id="plot-canary"' not in html
    assert "The gate did not run." in html and "No canary in this run." in html


# ---- the step and the CLI, with a real MLflow store ----


def _store(home: Path) -> object:
    from steps.evals.tracking import mlflow_client

    client = mlflow_client({"LLMRELEASE_HOME": str(home)})
    client.create_registered_model(NAME)
    for v in ("1", "2", "3"):
        tags = {"llmrelease.digest": "sha256:" + hashlib.sha256(v.encode()).hexdigest()}
        if v == "3":
            approval = {
                "approver": "alice",
                "approved_at": "2026-11-23T11:58:00Z",
                "environment": "prod",
                "workflow_uid": UID,
            }
            tags["llmrelease.approval.prod"] = json.dumps(approval)
        client.create_model_version(NAME, source=(home / f"w{v}").as_uri(), tags=tags)
    return client


def _run_step(tmp_path: Path, files: dict[str, Path]) -> tuple[subprocess.CompletedProcess[str], Path]:
    params = {
        "model_name": NAME,
        "version": "3",
        "release": "releases/demo.yaml",
        "workflow_name": "golden-delivery-a",
        "workflow_uid": UID,
        "workflow_status": "Succeeded",
        "git_commit": "",
        "report_paths": ",".join(str(p) for p in files.values()) + f",{tmp_path}/missing.json",
        "approver": "alice",
        "started_at": "2026-11-23T11:40:00Z",
        "workflow_parameters": json.dumps([{"name": "environment", "value": "prod"}]),
        "pipeline": "golden-delivery",
        "work_dir": str(tmp_path / "work"),
    }
    (tmp_path / "params.json").write_text(json.dumps([{"name": k, "value": v} for k, v in params.items()]))
    outputs = tmp_path / "outputs"
    env = {**os.environ, "hera__outputs_directory": str(outputs), "LLMRELEASE_HOME": str(tmp_path / "home")}
    for var in ("MLFLOW_TRACKING_URI", "LLMRELEASE_PUSHGATEWAY", "LLMRELEASE_EVIDENCE_KEY"):
        env.pop(var, None)
    cmd = [
        sys.executable,
        "-m",
        "hera.workflows.runner",
        "-e",
        "steps.evidence:evidence_step",
        str(tmp_path / "params.json"),
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    return done, outputs


def test_evidence_step_stores_the_bundle_locally_and_in_mlflow_and_tags_the_version(tmp_path: Path) -> None:
    """GIVEN a registered v3 (digest and prod approval tags) and the run's result files, one path missing
    WHEN the evidence step runs through Hera's runner
    THEN it publishes the digest, the report path and the bundle path; the bundle is in the local store; an MLflow
    run in llmrelease-evidence holds it; v3 is tagged llmrelease.evidence with that run and digest; the subject
    digest, git commit (HEAD) and approval time come from the registry and the checkout."""
    client = _store(tmp_path / "home")
    done, outputs = _run_step(tmp_path, write_run_files(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    digest = (outputs / "parameters/digest").read_text()
    bundle = Path((outputs / "parameters/bundle-path").read_text())
    assert bundle == (tmp_path / "home/evidence" / NAME / "3" / UID).resolve()
    assert Path((outputs / "parameters/report-path").read_text()) == bundle / "report.html"
    assert (tmp_path / "work/release-report.html").is_file() and (tmp_path / "work/bundle/statement.json").is_file()
    assert verify_bundle(bundle).digest == digest
    tag = json.loads(client.get_model_version(NAME, "3").tags["llmrelease.evidence"])  # type: ignore[attr-defined]
    assert tag["digest"] == digest and tag["workflow_uid"] == UID
    artifacts = Path(client.download_artifacts(tag["run_id"], "evidence", str(tmp_path / "dl")))  # type: ignore[attr-defined]
    assert verify_bundle(artifacts, expected_digest=digest).files == 7
    st = json.loads((bundle / "statement.json").read_text())
    assert st["subject"][0]["digest"]["sha256"] == hashlib.sha256(b"3").hexdigest()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert st["predicate"]["buildDefinition"]["externalParameters"]["gitCommit"] == head
    assert st["predicate"]["buildDefinition"]["externalParameters"]["workflow"]["parameters"] == {"environment": "prod"}
    res = st["predicate"]["runDetails"]["llmrelease_results"]
    assert res["approval"]["approved_at"] == "2026-11-23T11:58:00Z"
    assert [m["reason"] for m in res["missing"]] == ["file not found"]
    assert f"evidence: {digest}" in done.stdout


def test_cli_show_verify_and_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN the evidence of v3 stored by the step
    WHEN `evidence show`, `evidence verify` (store and MLflow copies), `report` run, and then a result is altered
    THEN show prints the digest and outcomes, verify passes on both copies, and after the change verify exits 1
    naming the file; with the local copy gone, verify still checks the MLflow copy."""
    _store(tmp_path / "home")
    done, outputs = _run_step(tmp_path, write_run_files(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    digest = (outputs / "parameters/digest").read_text()
    bundle = Path((outputs / "parameters/bundle-path").read_text())
    monkeypatch.setenv("LLMRELEASE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["evidence", "show", NAME, "3"]) == 0
    out = capsys.readouterr().out
    assert f"digest:    {digest}" in out and "canary:    aborted" in out and "results/canary-log.json" in out
    assert main(["evidence", "show", NAME, "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predicate"]["runDetails"]["metadata"]["invocationId"] == UID
    assert main(["evidence", "verify", NAME, "3"]) == 0
    out = capsys.readouterr().out
    assert out.count(f": {digest} (7 files") == 2 and "OK MLflow" in out and "OK artifact store" in out
    assert main(["report", NAME, "3", "--out", str(tmp_path / "r.html")]) == 0
    assert "<svg" in (tmp_path / "r.html").read_text()
    capsys.readouterr()
    (bundle / "results/latency-report.json").write_text("{}")
    assert main(["evidence", "verify", NAME, "3"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "results/latency-report.json changed" in err
    assert main(["evidence", "verify", "--dir", str(bundle)]) == 1
    capsys.readouterr()
    import shutil

    shutil.rmtree(bundle)
    assert main(["evidence", "verify", NAME, "3"]) == 0
    assert "OK MLflow" in capsys.readouterr().out
    assert main(["evidence", "show", NAME, "9"]) == 1
    assert "no evidence for 'demo-qa' version 9" in capsys.readouterr().err


def test_step_params_have_defaults_for_everything_but_the_model() -> None:
    """GIVEN the Argo parameters WHEN only model_name is given THEN the rest default (a failed run has little)."""
    params = EvidenceParams(model_name=NAME)
    assert params.version == "" and params.report_paths == "" and params.work_dir.startswith("/tmp/llmrelease")
    statement = build_statement(run_inputs({}, release=""), None, [], {})
    assert statement["predicate"]["buildDefinition"]["externalParameters"]["release"]["content"] is None


def test_mlflow_down_fails_the_step_in_one_line_and_keeps_the_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN a tracking server nobody listens on
    WHEN the evidence is stored
    THEN a RegistryError of one line names the local bundle, which is complete and verifies."""
    import socket

    from steps.errors import RegistryError
    from steps.evidence import run

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("LLMRELEASE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(RegistryError, match="the bundle is kept at") as err:
        run(run_inputs(write_run_files(tmp_path / "run")))
    assert "\n" not in str(err.value)
    kept = tmp_path / "home/evidence" / NAME / "3" / UID
    assert verify_bundle(kept).files == 7 and (kept / "report.html").is_file()
