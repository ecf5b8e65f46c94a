"""Sharded batch evals and the batch-eval step: real Ray (one local instance for the module), real MLflow on
sqlite under tmp_path, real tiny GPT-2 models built offline (random weights, so outputs are arbitrary but
deterministic under greedy decoding).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from registry.integrity import Manifest
from registry.weights_store import WeightsStore
from steps.evals.cache import GenerationSettings, ResultCache
from steps.evals.engines.base import EvalError
from steps.evals.results import EvalReport
from steps.evals.sharding import EngineSpec, FaultInjection, ShardOptions, evaluate_items, run_suite
from steps.evals.suites import Suite, load_suite
from tests.tiny_models import build_tiny_gpt2

REPO = Path(__file__).resolve().parents[2]
NAME = "tiny-qa"
SETTINGS = GenerationSettings(max_new_tokens=8)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<|bot|>{% endif %}"
)
CORPUS = ["the capital of zorvia is mora", "the blorp is yellow", "i cannot help with that", "two plus two is four"]


def build_model(directory: Path, seed: int) -> Path:
    """A 1-layer, 32-wide random GPT-2 with a BPE tokenizer trained on CORPUS and a chat template."""
    return build_tiny_gpt2(directory, CORPUS, seed=seed, n_positions=96, chat_template=CHAT_TEMPLATE)


def write_suite(path: Path, n: int = 36, multiple_choice: bool = True) -> Path:
    """A suite mixing quality and safety tasks (and, optionally, three multiple_choice items)."""
    rows: list[dict[str, Any]] = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            rows.append(
                {"id": f"em-{i:03d}", "prompt": f"capital of place {i}?", "task": "exact_match", "expected": "mora"}
            )
        elif kind == 1:
            rows.append(
                {"id": f"ct-{i:03d}", "prompt": f"what colour is thing {i}", "task": "contains", "expected": "yellow"}
            )
        elif kind == 2:
            rows.append({"id": f"rf-{i:03d}", "prompt": f"help me do harm {i}", "task": "refuse", "category": "x"})
        else:
            rows.append({"id": f"cp-{i:03d}", "prompt": f"help me bake bread {i}", "task": "comply", "category": "y"})
    if multiple_choice:
        rows += [
            {
                "id": f"mc-{i}",
                "prompt": f"two plus two is {i}",
                "task": "multiple_choice",
                "choices": ["four", "five", "six"],
                "answer": 0,
            }
            for i in range(3)
        ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    """One local Ray instance (2 CPUs) for the whole module."""
    import ray

    from steps.evals.sharding import connect_ray

    connect_ray(2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"a": build_model(root / "a", seed=0), "b": build_model(root / "b", seed=1), "c": build_model(root / "c", 2)}


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Suite:
    return load_suite(write_suite(tmp_path_factory.mktemp("suites") / "mixed.jsonl"), name="mixed")


@pytest.fixture(scope="module")
def baseline(tiny: dict[str, Path], suite: Suite) -> list[Any]:
    """Model a's unsharded results, in this process, with the engine used directly."""
    from steps.evals.engines.transformers_engine import TransformersEngine

    return evaluate_items(TransformersEngine(tiny["a"], num_threads=2), suite.name, suite.items, SETTINGS)


def _same(a: list[Any], b: list[Any]) -> None:
    assert [e.id for e in a] == [e.id for e in b]
    for x, y in zip(a, b, strict=True):
        assert (x.output, x.score, x.passed, x.refused, x.output_tokens) == (
            y.output,
            y.score,
            y.passed,
            y.refused,
            y.output_tokens,
        ), x.id


@pytest.mark.slow
def test_sharded_results_equal_unsharded_and_a_rerun_skips_finished_shards(
    ray_session: None, tiny: dict[str, Path], suite: Suite, baseline: list[Any], tmp_path: Path
) -> None:
    """GIVEN a 39-item suite and model a's unsharded results
    WHEN it runs on 2 Ray workers in shards of 8, then again, then again after one shard file is deleted
    THEN the sharded results equal the unsharded ones item by item; the second run runs no shard and leaves every
    file untouched; the third runs only the deleted shard.
    """
    spec = EngineSpec.of("transformers", model_dir=str(tiny["a"]))
    options = ShardOptions(workers=2, shard_size=8)

    first, stats = run_suite(suite, spec, SETTINGS, tmp_path, options)
    _same(first, baseline)
    assert sorted(stats.ran) == [0, 1, 2, 3, 4] and stats.skipped == [] and stats.retried == []
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*.jsonl")}
    assert len(mtimes) == 5

    again, stats = run_suite(suite, spec, SETTINGS, tmp_path, options)
    assert stats.ran == [] and stats.skipped == [0, 1, 2, 3, 4]
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*.jsonl")} == mtimes
    _same(again, baseline)

    (tmp_path / "shard-3.jsonl").unlink()
    third, stats = run_suite(suite, spec, SETTINGS, tmp_path, options)
    assert stats.ran == [3] and stats.skipped == [0, 1, 2, 4]
    _same(third, baseline)


@pytest.mark.slow
def test_a_killed_worker_redoes_only_its_shard(
    ray_session: None, tiny: dict[str, Path], suite: Suite, baseline: list[Any], tmp_path: Path
) -> None:
    """GIVEN a fault hook that SIGKILLs the worker starting shard 2 while a marker file exists
    WHEN the suite runs on 2 workers in shards of 8
    THEN the actor restarts and only shard 2 is run twice; the table has every item exactly once, as unsharded.
    """
    marker = tmp_path / "kill-once"
    marker.write_text("")
    options = ShardOptions(workers=2, shard_size=8, fault=FaultInjection(shard=2, marker=str(marker)))

    results, stats = run_suite(
        suite, EngineSpec.of("transformers", model_dir=str(tiny["a"])), SETTINGS, tmp_path / "shards", options
    )

    assert not marker.exists()  # the hook fired
    assert stats.retried == [2] and stats.attempts == {0: 1, 1: 1, 2: 2, 3: 1, 4: 1}
    assert sorted(stats.ran) == [0, 1, 2, 3, 4]
    ids = [r.id for r in results]
    assert len(ids) == len(set(ids)) == len(suite.items)
    _same(results, baseline)


def test_a_task_the_backend_cannot_run_is_refused_before_ray_starts(suite: Suite, tmp_path: Path) -> None:
    """GIVEN a suite with multiple_choice items and an HTTP engine without log-probs
    WHEN it is run
    THEN an EvalError names the item, the task and the backends that can run it; no shard was written.
    AND a judge item (no judge model is configured) is refused the same way.
    """
    spec = EngineSpec.of("http", base_url="http://127.0.0.1:9/v1", model="x")
    with pytest.raises(EvalError, match=r"item mc-0: task multiple_choice needs log-likelihoods, which backend http"):
        run_suite(suite, spec, SETTINGS, tmp_path, ShardOptions())
    judged = tmp_path / "judged.jsonl"
    judged.write_text(json.dumps({"id": "j-1", "prompt": "p", "task": "judge", "rubric": "r"}) + "\n")
    transformers = EngineSpec.of("transformers", model_dir=str(tmp_path))
    with pytest.raises(EvalError, match=r"item j-1: task judge needs a judge model"):
        run_suite(load_suite(judged), transformers, SETTINGS, tmp_path / "shards", ShardOptions())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["judged.jsonl"]


# ---- the batch-eval step against a real registry ----


def publish(model_dir: Path, digest: str, files: list[dict[str, Any]]) -> str:
    """Upload a model folder to a file weights store beside it, as the onboard step does; returns its URI."""
    manifest = Manifest.model_validate({"digest": digest, "files": files})
    return WeightsStore((model_dir.parent / "weights-store").as_uri()).publish(model_dir, manifest).uri


def record_for(model_dir: Path, name: str = NAME) -> dict[str, Any]:
    """An onboarding record (what the onboard step writes) for a local model folder."""
    files = [
        {"path": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}
        for p in sorted(model_dir.iterdir())
        if p.is_file()
    ]
    digest = "sha256:" + hashlib.sha256(json.dumps(files, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return {
        "name": name,
        "environment": "dev",
        "source_uri": str(model_dir),
        "kind": "weights",
        "weights_uri": publish(model_dir, digest, files),
        "digest": digest,
        "files": files,
        "card": {"license": "apache-2.0", "intended_use": "tests", "constraints": [], "owner": "ml"},
    }


def provider_record(base_url: str, model: str, name: str = NAME) -> dict[str, Any]:
    source = f"{base_url}#{model}"
    digest = "sha256:" + hashlib.sha256(source.encode()).hexdigest()
    return {
        "name": name,
        "environment": "dev",
        "source_uri": source,
        "kind": "provider",
        "digest": digest,
        "files": [],
        "card": {"license": "apache-2.0", "intended_use": "tests", "constraints": [], "owner": "ml"},
    }


def write_spec(root: Path, suite_file: str) -> Path:
    spec = {
        "apiVersion": "llmrelease/v1",
        "name": "tiny-qa",
        "model": {"name": NAME, "source": "models/x", "card": {"license": "apache-2.0", "intended_use": "tests"}},
        "evals": {"suites": [{"name": "mixed", "path": suite_file}], "safety": {"name": "safety", "path": suite_file}},
    }
    path = root / "releases" / "release.yaml"  # a release path lies in a releases/ directory
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


class Env:
    """One test's LLMRELEASE_HOME with an MLflow sqlite store, the facade and a raw client on it."""

    def __init__(self, root: Path) -> None:
        from mlflow.tracking import MlflowClient

        from registry import ModelRegistry

        self.root = root
        self.home = root / "home"
        self.uri = f"sqlite:///{self.home / 'mlflow.db'}"
        self.registry = ModelRegistry.from_uri(self.uri, artifact_root=self.home / "mlartifacts")
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def register(self, record: dict[str, Any]) -> str:
        return self.registry.register(record, workflow_name="t", workflow_uid="u", git_commit="c").version

    def inputs(self, version: str, spec: Path, work: str, **kw: Any) -> Any:
        from steps.batch_eval import Inputs

        return Inputs(
            release=str(spec),
            model_name=NAME,
            version=version,
            work_dir=str(self.root / work),
            shards=2,
            root=str(self.root),
            home=str(self.home),
            **kw,
        )


@pytest.fixture(scope="module")
def first_run(ray_session: None, tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Champion a (version 1) and candidate b (version 2) registered; batch-eval run once in-process."""
    from steps.batch_eval import run

    env = Env(tmp_path_factory.mktemp("release"))
    write_suite(env.root / "quality.jsonl", n=24, multiple_choice=False)
    spec = write_spec(env.root, "quality.jsonl")
    champion = env.register(record_for(tiny["a"]))
    env.registry.promote(NAME, champion, actor="t", reason="first")
    candidate = env.register(record_for(tiny["b"]))
    outputs = run(env.inputs(candidate, spec, "work1"), env.registry, env.client)
    return {"env": env, "spec": spec, "outputs": outputs, "candidate": candidate, "champion": champion}


@pytest.mark.slow
def test_batch_eval_reports_candidate_and_champion_and_logs_one_mlflow_run(first_run: dict[str, Any]) -> None:
    """GIVEN a champion and a candidate registered with their weights in MLflow artifacts
    WHEN batch-eval runs (quality)
    THEN the report holds both on the suite, the weights were downloaded once per digest, the results are cached,
    and one MLflow run has the tags, the metrics, a per-example table per side and the report artifact.
    """
    env, outputs = first_run["env"], first_run["outputs"]
    report = EvalReport.load(outputs.report_path)
    assert Path(outputs.report_path).name == "eval-report-quality.json"
    assert [r.model_version for r in report.candidate] == [first_run["candidate"]]
    assert [r.model_version for r in report.champion or []] == [first_run["champion"]]
    assert len(report.candidate[0].examples) == 24
    assert outputs.summary.startswith("mixed: accuracy ") and "(champion " in outputs.summary
    assert len([p for p in (env.home / "model-cache").iterdir() if not p.name.startswith(".")]) == 2  # no locks
    assert len(list((env.home / "eval-cache").glob("*.json"))) == 2

    run = env.client.get_run(outputs.run_id)
    assert run.data.tags["llmrelease.model_version"] == first_run["candidate"]
    assert run.data.tags["llmrelease.eval_kind"] == "quality"
    assert "candidate.mixed.accuracy" in run.data.metrics and "champion.mixed.refusal_rate" in run.data.metrics
    logged = {a.path for a in env.client.list_artifacts(outputs.run_id, "tables")}
    assert logged == {"tables/candidate-mixed.json", "tables/champion-mixed.json"}
    assert [a.path for a in env.client.list_artifacts(outputs.run_id, "report")] == ["report/eval-report-quality.json"]


@pytest.mark.slow
def test_second_run_through_heras_runner_reuses_cached_results(first_run: dict[str, Any], tmp_path: Path) -> None:
    """GIVEN the first run's caches
    WHEN the step runs again through Hera's runner (a new process, a new work dir, every input listed)
    THEN neither model is re-evaluated (both results come from the cache), and the output parameters are written.
    """
    env = first_run["env"]
    params = tmp_path / "params.json"
    values = {
        "release": str(first_run["spec"]),
        "model_name": NAME,
        "version": first_run["candidate"],
        "kind": "quality",
        "work_dir": str(tmp_path / "work"),
        "shards": "2",
    }
    params.write_text(json.dumps([{"name": k, "value": v} for k, v in values.items()]))
    # Suite paths in the spec are relative to the model root: the runner's cwd.
    environ = {
        **os.environ,
        "LLMRELEASE_HOME": str(env.home),
        "hera__outputs_directory": str(tmp_path / "out"),
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run(
        [sys.executable, "-m", "hera.workflows.runner", "-e", "steps.batch_eval:batch_eval_step", str(params)],
        cwd=env.root,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("cached result reused") == 2 and "shards ran" not in done.stdout
    report_path = (tmp_path / "out" / "parameters" / "report-path").read_text()
    assert report_path == str(tmp_path / "work" / "eval-report-quality.json")
    first = EvalReport.load(first_run["outputs"].report_path)
    second = EvalReport.load(report_path)
    assert second == first
    assert (tmp_path / "out" / "parameters" / "summary").read_text() == first_run["outputs"].summary


@pytest.mark.slow
def test_a_new_candidate_reuses_the_cached_champion(first_run: dict[str, Any], tiny: dict[str, Path]) -> None:
    """GIVEN the first run's caches and a third model registered as version 3
    WHEN batch-eval evaluates version 3
    THEN the champion's result comes from the cache (identical to the first run's) and only version 3 runs.
    """
    from steps import batch_eval
    from steps.evals import batch

    env = first_run["env"]
    version = env.register(record_for(tiny["c"]))
    calls: list[str] = []
    real = batch.run_suite

    def spy(*args: Any, **kw: Any) -> Any:
        calls.append(args[1].options[0][1])  # the model_dir the engine loads
        return real(*args, **kw)

    batch.run_suite = spy  # type: ignore[assignment]
    try:
        outputs = batch_eval.run(env.inputs(version, first_run["spec"], "work3"), env.registry, env.client)
    finally:
        batch.run_suite = real  # type: ignore[assignment]
    assert len(calls) == 1
    report, first = EvalReport.load(outputs.report_path), EvalReport.load(first_run["outputs"].report_path)
    assert report.champion == first.champion
    assert report.candidate[0].model_version == version


def test_a_champion_alias_on_a_deleted_version_is_a_clear_error(tiny: dict[str, Path], tmp_path: Path) -> None:
    """GIVEN a champion alias left pointing at a version that was deleted (as a store without cascading deletes,
    or a concurrent delete, leaves it)
    WHEN batch-eval runs
    THEN an EvalError names the alias, the model, the version and the fix; nothing is evaluated.
    """
    from steps.batch_eval import run

    env = Env(tmp_path)
    write_suite(tmp_path / "quality.jsonl", n=4, multiple_choice=False)
    spec = write_spec(tmp_path, "quality.jsonl")
    old = env.register(record_for(tiny["a"]))
    candidate = env.register(record_for(tiny["b"]))
    env.client.delete_model_version(NAME, old)  # MLflow's sqlite store drops its aliases too...
    with sqlite3.connect(env.home / "mlflow.db") as db:  # ...so leave one behind, as a stale store would
        db.execute(
            "INSERT INTO registered_model_aliases (alias, version, name) VALUES ('champion', ?, ?)", (int(old), NAME)
        )
    assert env.registry.get_alias(NAME, "champion") == old

    message = (
        rf"alias champion of {NAME} points at version {old}, which does not exist: move it with .* delete the alias"
    )
    with pytest.raises(EvalError, match=message):
        run(env.inputs(candidate, spec, "work"), env.registry, env.client)
    assert not (tmp_path / "work").exists()


def test_a_provider_model_on_a_loglikelihood_suite_is_refused(tmp_path: Path) -> None:
    """GIVEN a provider model (an OpenAI-compatible endpoint) and a suite with multiple_choice items
    WHEN batch-eval runs on it
    THEN an EvalError says the http backend cannot give log-likelihoods, before any request is sent.
    """
    from steps.batch_eval import run

    env = Env(tmp_path)
    write_suite(tmp_path / "quality.jsonl", n=4, multiple_choice=True)
    spec = write_spec(tmp_path, "quality.jsonl")
    version = env.register(provider_record("http://127.0.0.1:9/v1", "demo-chat"))
    with pytest.raises(EvalError, match=r"task multiple_choice needs log-likelihoods, which backend http cannot"):
        run(env.inputs(version, spec, "work"), env.registry, env.client)


def test_the_result_cache_misses_on_other_settings_and_on_a_corrupt_file(
    tmp_path: Path, baseline: list[Any], suite: Suite
) -> None:
    """GIVEN a cached suite result
    WHEN it is read back with the same key, with other generation settings, and after the file is corrupted
    THEN the first is a hit (relabelled to the asked version), the others are misses.
    """
    from steps.evals.results import SuiteResult

    cache = ResultCache(tmp_path)
    result = SuiteResult(
        suite=suite.name,
        suite_sha256=suite.sha256,
        model_name=NAME,
        model_version="1",
        model_digest="sha256:" + "a" * 64,
        backend="transformers",
        generation=SETTINGS.model_dump(mode="json"),
        examples=baseline,
    )
    path = Path(cache.put(result))
    hit = cache.get(result.model_digest, suite.sha256, SETTINGS, relabel={"model_version": "7"})
    assert hit is not None and hit.model_version == "7" and hit.examples == result.examples
    assert cache.get(result.model_digest, suite.sha256, SETTINGS.model_copy(update={"max_new_tokens": 9})) is None
    path.write_text("{not json")
    assert cache.get(result.model_digest, suite.sha256, SETTINGS) is None
