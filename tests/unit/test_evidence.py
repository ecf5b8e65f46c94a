"""Evidence bundles (statement, manifest, missing reports, result kinds) and the HTML report.

The builders at the top make a realistic run's result files (eval reports, gate decision, latency report with
per-request records, an aborted canary log); test_evidence_verify.py, test_evidence_step.py, test_metrics.py and
tests/integration/test_report_chromium.py import them. Verification and signing are in test_evidence_verify.py,
the step and the CLI in test_evidence_step.py.
"""

import hashlib
import json
import random
from pathlib import Path

import pytest

from steps.evals.results import EvalReport, ExampleResult, SuiteResult
from steps.evidence import (
    BUILD_TYPE,
    Inputs,
    classify,
    verify_bundle,
    write_bundle,
)
from steps.evidence.report import render_report, write_report
from steps.gate import GateThresholds, decide
from steps.latency import CostModel, Slo, judge, summarize
from steps.rollout.loadgen import LoadResult, LoadSpec, RequestRecord

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


def write_full_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The bundle of a full run (every result file) under `tmp_path`, written from the repo as a step would."""
    monkeypatch.chdir(REPO)  # the release spec and suites are read relative to the repo, as in a step
    out = tmp_path / "bundle"
    write_bundle(run_inputs(write_run_files(tmp_path / "run")), out)
    return out


@pytest.fixture
def bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return write_full_bundle(tmp_path, monkeypatch)


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
