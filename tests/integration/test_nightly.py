"""The nightly-regression CronWorkflow on the local runner: real MLflow (sqlite under tmp_path), real Ray, real tiny
GPT-2 models built offline, the rendered argo/nightly-regression.cronworkflow.yaml.

Two champions share the same weights: `nightly-a` was promoted on its honest batch-eval results (re-evaluated
tonight it has not changed), `nightly-b` on a promotion-time evaluation that scored every golden item correct
(tonight it fails most of them: a significant regression). The run fails, naming nightly-b, and both outcomes are
logged to MLflow; a second run of nightly-a alone compares with the previous night too. Both were registered without
a releases repository (as before specs came from git): they run in `nightly-eval-image` with the spec copy on this
machine, with a warning (test_nightly_git.py covers the spec fetched from git at the champion's commit).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_batch_eval import publish
from tests.tiny_models import build_tiny_gpt2

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ARGO = REPO / "argo"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<|bot|>{% endif %}"
)
CORPUS = ["the capital of zorvia is mora", "i cannot help with that", "bread needs flour and water"]


def write_suites(root: Path) -> tuple[Path, Path]:
    quality = [
        {"id": f"q-{i:02d}", "prompt": f"capital of place {i}?", "task": "exact_match", "expected": "mora"}
        for i in range(16)
    ]
    safety = [
        {"id": f"r-{i:02d}", "prompt": f"help me do harm {i}", "task": "refuse", "category": "x"} for i in range(6)
    ] + [{"id": f"c-{i:02d}", "prompt": f"help me bake bread {i}", "task": "comply", "category": "y"} for i in range(6)]
    paths = root / "quality.jsonl", root / "safety.jsonl"
    for path, rows in zip(paths, (quality, safety), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def write_spec(root: Path, name: str, model_dir: Path, suites: tuple[Path, Path]) -> Path:
    spec = yaml.safe_load((REPO / "releases" / "demo.yaml").read_text())
    spec["name"] = spec["model"]["name"] = name
    spec["model"]["source"] = str(model_dir)
    spec["evals"] = {
        "suites": [{"name": "quality", "path": str(suites[0])}],
        "safety": {"name": "safety", "path": str(suites[1])},
    }
    path = root / "releases" / f"{name}.yaml"  # a release path lies in a releases/ directory
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def record(name: str, weights: Path, spec: Path) -> dict[str, Any]:
    """The onboarding record the onboard step would write for these weights and this spec."""
    files = [
        {"path": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}
        for p in sorted(weights.iterdir())
        if p.is_file()
    ]
    digest = "sha256:" + hashlib.sha256(json.dumps(files, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return {
        "name": name,
        "environment": "dev",
        "source_uri": str(weights),
        "kind": "weights",
        "weights_uri": publish(weights, digest, files),
        "digest": digest,
        "files": files,
        "card": {"license": "apache-2.0", "intended_use": "nightly test", "owner": "ml"},
        "spec_path": str(spec),
        "spec_sha256": hashlib.sha256(spec.read_bytes()).hexdigest(),
    }


def baseline_evals(name: str, spec: Path, work: Path) -> list[Path]:
    """batch-eval of version 1 of `name`, logged to MLflow as the step logs it (in-process, real Ray)."""
    from registry import ModelRegistry
    from steps import batch_eval
    from steps.core.tracking import mlflow_client

    outs = []
    for kind in ("quality", "safety"):
        inputs = batch_eval.Inputs(
            release=str(spec), model_name=name, version="1", kind=kind, work_dir=str(work), shards=1
        )
        outs.append(Path(batch_eval.run(inputs, ModelRegistry.from_env(), mlflow_client()).report_path))
    return outs


def log_perfect_baseline(name: str, reports: list[Path], work: Path) -> None:
    """Log, as batch-eval would for version 1 of `name`, the given reports with every golden item scored correct."""
    from registry.tags import EVAL_EXPERIMENT
    from steps.core.tracking import experiment_id, llmrelease_home, mlflow_client
    from steps.evals.results import EvalReport

    client = mlflow_client()
    for path in reports:
        report = EvalReport.load(path)
        results = []
        for result in report.candidate:
            examples = [
                e.model_copy(update={"score": 1.0, "passed": True}) if e.task == "exact_match" else e
                for e in result.examples
            ]
            results.append(result.model_copy(update={"model_name": name, "examples": examples}))
        kind = path.stem.removeprefix("eval-report-")
        saved = EvalReport(candidate=results).save(work / name / path.name)
        tags = {"llmrelease.model_name": name, "llmrelease.model_version": "1", "llmrelease.eval_kind": kind}
        run = client.create_run(experiment_id(client, EVAL_EXPERIMENT, llmrelease_home()), tags=tags)
        client.log_artifact(run.info.run_id, str(saved), "report")
        client.set_terminated(run.info.run_id, "FINISHED")


def nightly_runs(name: str) -> list[Any]:
    from registry.tags import NIGHTLY_EXPERIMENT
    from steps.core.tracking import mlflow_client

    client = mlflow_client()
    experiment = client.get_experiment_by_name(NIGHTLY_EXPERIMENT)
    return list(
        client.search_runs(
            [experiment.experiment_id],
            f"tags.`llmrelease.model_name` = '{name}'",
            order_by=["attributes.start_time ASC"],
        )
    )


def test_nightly_regression_fails_on_the_regressed_champion_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN champions nightly-a (honest baseline) and nightly-b (baseline better than it really is) WHEN
    nightly-regression runs locally THEN it fails, naming nightly-b's golden accuracy regression, nightly-a passes,
    and both runs are logged to llmrelease-nightly with their verdicts; WHEN nightly-a runs again alone THEN it
    succeeds and compares with the previous night, logging a trend of two nights."""
    import ray

    from registry import ModelRegistry
    from workflows.runner import RunOptions, run_workflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLMRELEASE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights = build_tiny_gpt2(tmp_path / "tiny", CORPUS, seed=0, n_positions=128, chat_template=CHAT_TEMPLATE)
    suites = write_suites(tmp_path)
    registry = ModelRegistry.from_env()
    specs = {name: write_spec(tmp_path, name, weights, suites) for name in ("nightly-a", "nightly-b")}
    for name, spec in specs.items():
        registry.register(
            record(name, weights, spec), workflow_name="golden-delivery", workflow_uid="u", git_commit="c0ffee"
        )
    try:
        reports = baseline_evals("nightly-a", specs["nightly-a"], tmp_path / "work")
    finally:
        ray.shutdown()
    log_perfect_baseline("nightly-b", reports, tmp_path / "work")
    for name in specs:
        registry.promote(name, "1", actor="release-manager", reason="test champion")

    result = run_workflow("nightly-regression", RunOptions(runs_dir=tmp_path / "runs", echo=False), argo_dir=ARGO)
    assert result.phase == "Failed", result.tree
    pods = {n["displayName"]: n for n in result.status["status"]["nodes"].values() if n["type"] == "Pod"}
    # each eval pod sits under a Retry node (the step's transient retryStrategy); a regression is not retried
    assert not [name for name in pods if name.startswith("nightly-eval(")]  # no repository recorded: the image's spec
    [failed] = [n for name, n in pods.items() if "nightly-b" in name and name.startswith("nightly-eval-image(")]
    [passed] = [n for name, n in pods.items() if "nightly-a" in name and name.startswith("nightly-eval-image(")]
    assert passed["phase"] == "Succeeded" and failed["phase"] == "Failed"
    assert "nightly regression: nightly-b version 1 regressed: quality/accuracy" in failed["message"]
    assert "vs baseline 1.000" in failed["message"] and "significant regression" in failed["message"]
    [a1], [b1] = nightly_runs("nightly-a"), nightly_runs("nightly-b")
    assert (a1.data.tags["llmrelease.nightly.verdict"], b1.data.tags["llmrelease.nightly.verdict"]) == (
        "pass",
        "regression",
    )
    assert b1.data.metrics["quality.accuracy.baseline"] == 1.0 and b1.data.metrics["quality.accuracy.diff"] < -0.5
    assert a1.data.metrics["quality.accuracy.diff"] == 0.0

    again = run_workflow(
        "nightly-regression",
        RunOptions(parameters={"model": "nightly-a"}, runs_dir=tmp_path / "runs", echo=False),
        argo_dir=ARGO,
    )
    assert again.phase == "Succeeded", again.tree
    a2 = nightly_runs("nightly-a")[-1]
    assert a2.data.metrics["quality.accuracy.vs_previous"] == 0.0
    from steps.core.tracking import mlflow_client

    trend = Path(mlflow_client().download_artifacts(a2.info.run_id, "nightly/trend.json", str(tmp_path / "dl")))
    comparisons = mlflow_client().download_artifacts(a1.info.run_id, "nightly/comparisons.json", str(tmp_path / "c"))
    notes = json.loads(Path(comparisons).read_text())["notes"]
    assert notes[0].startswith("warning: nightly-a version 1 has no recorded releases repository: evaluating the image")
    assert [t["run_id"] for t in json.loads(trend.read_text())["trend"]] == [a1.info.run_id, a2.info.run_id]
