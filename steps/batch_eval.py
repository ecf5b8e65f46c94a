"""The batch-eval step: evaluate a registered candidate (and the champion) on the release's suites, sharded on Ray.

For a release spec, a registered model version and a kind (`quality`: the spec's `evals.suites`; `safety`: its
`evals.safety` suite):

1. resolve the candidate's weights from the registry: the version's source is downloaded once into
   `$LLMRELEASE_HOME/model-cache/<digest>` (`mlflow.artifacts.download_artifacts`; MLflow artifact URIs and
   s3://), or, for a provider model, an OpenAI-compatible HTTP engine is pointed at its source URI;
2. resolve the champion (alias `champion`); when it exists and is another version, evaluate it on the same suites;
3. for each model and suite: the result cache (`steps.evals.cache`) first, else a sharded run on Ray
   (`steps.evals.sharding`) whose shards persist under `<work_dir>/eval-shards/`, then cached;
4. write the `EvalReport` to `<work_dir>/eval-report-<kind>.json` and log one MLflow run (experiment
   `llmrelease-evals`): a per-example table per suite and model, the metrics, the report as an artifact.

Generation settings: greedy, `DEFAULT_MAX_NEW_TOKENS` new tokens (an `evals.max_new_tokens` field in the spec
overrides it, should the spec grow one). The engine: `http` for provider models; `vllm` when vllm is importable
and a GPU is visible; else `transformers` (on CUDA when torch sees a GPU).

No `from __future__ import annotations` here: Hera's runner inspects the entry's annotations as classes.
"""

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from hera.workflows import Artifact, Input, Output, Parameter, script
from pydantic import BaseModel, ConfigDict, Field

from registry.errors import ReleaseError
from registry.tags import (
    CHAMPION,
    DIGEST_TAG,
    EVAL_EXPERIMENT,
    EVAL_KIND_TAG,
    MODEL_NAME_TAG,
    MODEL_VERSION_TAG,
    SOURCE_URI_TAG,
)
from steps.core.artifacts import REPORT_OUT
from steps.core.images import STEPS_IMAGE
from steps.evals.cache import GenerationSettings, ResultCache, short_hex
from steps.evals.engines.base import EvalError
from steps.evals.results import EvalReport, SuiteResult
from steps.evals.sharding import EngineSpec, FaultInjection, ShardOptions, run_suite
from steps.evals.suites import Suite, load_suite
from steps.core.tracking import experiment_id, llmrelease_home, mlflow_client
from steps.evals.weights import VersionReader, download_weights, model_version, registered_digest
from steps.release.spec import ReleaseSpec, load_spec

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "BatchEvalParams",
    "BatchEvalResult",
    "Inputs",
    "ModelUnderTest",
    "Outputs",
    "RegistryReader",
    "batch_eval_step",
    "describe",
    "run",
]

DEFAULT_MAX_NEW_TOKENS = 32
_OPENAI_BASE_URL = "https://api.openai.com/v1"
_KEY_METRICS = ("accuracy", "attack_success_rate", "over_refusal_rate", "pii_leak_rate")


class Inputs(BaseModel):
    """What the batch-eval step needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    release: str
    """The release spec: a path, or a bare name meaning releases/<name>.yaml."""
    model_name: str
    version: str
    """The candidate version (from the register step)."""
    kind: Literal["quality", "safety"] = "quality"
    work_dir: str
    shards: int = Field(default=2, ge=1)
    """Ray workers (each holds one engine and an equal share of the cores)."""
    root: str = "."
    """Suite paths in the spec resolve under it."""
    home: str = ""
    """LLMRELEASE_HOME (model and result caches); empty: the environment's, else .llmrelease."""


class Outputs(BaseModel):
    """What the batch-eval step publishes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    report_path: str
    summary: str
    run_id: str | None = None


class RegistryReader(Protocol):
    """The registry operation the step needs (`registry.ModelRegistry` provides it)."""

    def get_alias(self, name: str, alias: str) -> str | None:  # noqa: D102
        ...


class ModelUnderTest(BaseModel):
    """A registered version resolved to something an engine can run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: str
    digest: str
    engine: EngineSpec
    settings: GenerationSettings


def run(inputs: Inputs, registry: RegistryReader, client: VersionReader, *, log_to_mlflow: bool = True) -> Outputs:
    """Evaluate the candidate (and the champion, when there is another one) and write the report.

    Raises:
        SpecError: The release spec is invalid.
        EvalError: A suite is invalid, a version or its weights cannot be resolved, the champion alias is stale,
            the engine cannot run a task, or a shard failed.
    """
    spec = load_spec(inputs.release)
    home = Path(inputs.home).resolve() if inputs.home else llmrelease_home()
    suites = _suites(spec, inputs)
    max_new = int(getattr(spec.evals, "max_new_tokens", None) or DEFAULT_MAX_NEW_TOKENS)
    candidate = _resolve(client, inputs.model_name, inputs.version, home, max_new)
    champion_version = registry.get_alias(inputs.model_name, CHAMPION)
    champion = None
    if champion_version is not None and champion_version != inputs.version:
        champion = _resolve(client, inputs.model_name, champion_version, home, max_new, alias=CHAMPION)
    cache = ResultCache(home / "eval-cache")
    options = ShardOptions(
        workers=inputs.shards, fault=FaultInjection.from_env(os.environ.get("LLMRELEASE_EVAL_KILL_SHARD"))
    )
    report = EvalReport(
        candidate=[_evaluate(candidate, s, cache, inputs.work_dir, options) for s in suites],
        champion=[_evaluate(champion, s, cache, inputs.work_dir, options) for s in suites] if champion else None,
    )
    path = report.save(Path(inputs.work_dir) / f"eval-report-{inputs.kind}.json")
    run_id = None
    if log_to_mlflow:
        try:
            run_id = _log_run(client, report, path, candidate, inputs.kind, home)
        except Exception as e:
            raise EvalError(
                f"logging the eval run to MLflow at {client.tracking_uri} failed ({type(e).__name__}: "
                f"{str(e)[:200]}); the report is at {path}: check the tracking server and re-run"
            ) from e
    return Outputs(report_path=str(path), summary=describe(report), run_id=run_id)


def _suites(spec: ReleaseSpec, inputs: Inputs) -> list[Suite]:
    chosen = spec.evals.suites if inputs.kind == "quality" else [spec.evals.safety]
    return [load_suite(Path(inputs.root) / s.path, name=s.name) for s in chosen]


def _resolve(
    client: VersionReader, name: str, version: str, home: Path, max_new: int, alias: str | None = None
) -> ModelUnderTest:
    """The version's digest and an engine spec for its weights (downloaded once) or its provider endpoint."""
    mv = model_version(client, name, version, alias)
    digest = registered_digest(mv)
    source = str(dict(mv.tags or {}).get(SOURCE_URI_TAG) or mv.source)
    provider = _provider(source) if source.startswith(("openai://", "http://", "https://")) else None
    if provider is not None:
        engine = EngineSpec.of("http", base_url=provider[0], model=provider[1])
        settings = GenerationSettings(max_new_tokens=max_new, backend="http", device="remote")
    else:
        model_dir = download_weights(str(mv.source), digest, home, client.tracking_uri)
        kind, device = _local_engine_kind()
        options: dict[str, Any] = {"model_dir": str(model_dir)}
        if kind == "transformers":
            options["device"] = device
        engine = EngineSpec.of(kind, **options)
        settings = GenerationSettings(max_new_tokens=max_new, backend=kind, device=device)
    return ModelUnderTest(name=name, version=version, digest=digest, engine=engine, settings=settings)


def _provider(source: str) -> tuple[str, str]:
    """(base_url, model) of openai://<model> or http(s)://host/v1#<model>."""
    if source.startswith("openai://"):
        return _OPENAI_BASE_URL, source.removeprefix("openai://")
    base, _, model = source.partition("#")
    if not model:
        raise EvalError(f"provider source {source!r}: expected https://host/v1#<model>: re-register the model")
    return base.rstrip("/"), model


def _local_engine_kind() -> tuple[str, str]:
    """(engine kind, device): vllm on a GPU when vllm is importable, else transformers on cuda or cpu."""
    import importlib.util

    import torch

    if torch.cuda.is_available():
        return ("vllm" if importlib.util.find_spec("vllm") else "transformers"), "cuda"
    return "transformers", "cpu"


def _evaluate(
    model: ModelUnderTest, suite: Suite, cache: ResultCache, work_dir: str, options: ShardOptions
) -> SuiteResult:
    """The model's result on the suite: from the cache, else sharded on Ray (and then cached)."""
    labels = {"suite": suite.name, "model_name": model.name, "model_version": model.version}
    hit = cache.get(model.digest, suite.sha256, model.settings, relabel=labels)
    if hit is not None:
        print(f"{suite.name}: {model.name} v{model.version}: cached result reused")
        return hit
    key = f"{short_hex(model.digest)}-{short_hex(suite.sha256)}-{short_hex(model.settings.digest())}"
    examples, stats = run_suite(suite, model.engine, model.settings, Path(work_dir) / "eval-shards" / key, options)
    result = SuiteResult(
        suite=suite.name,
        suite_sha256=suite.sha256,
        model_name=model.name,
        model_version=model.version,
        model_digest=model.digest,
        backend=model.engine.kind,
        generation=model.settings.model_dump(mode="json"),
        examples=examples,
    )
    cache.put(result)
    print(
        f"{suite.name}: {model.name} v{model.version}: {len(examples)} items, shards ran {len(stats.ran)} "
        f"skipped {len(stats.skipped)} retried {len(stats.retried)} in {stats.seconds:.1f}s; "
        + _metrics_text(result.metrics())
    )
    return result


def _metrics_text(metrics: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in metrics.items() if not k.endswith("_n") and k != "n")


def describe(report: EvalReport) -> str:
    """One line: per suite, the candidate's key metrics and the champion's in brackets."""
    parts = []
    for result in report.candidate:
        champ = report.champion_for(result.suite)
        theirs = champ.metrics() if champ else {}
        shown = [
            f"{m} {v:.3f}" + (f" (champion {theirs[m]:.3f})" if m in theirs else "")
            for m, v in result.metrics().items()
            if m in _KEY_METRICS
        ]
        parts.append(f"{result.suite}: " + ", ".join(shown))
    return "; ".join(parts)


def _log_run(client: Any, report: EvalReport, path: Path, model: ModelUnderTest, kind: str, home: Path) -> str:
    """One MLflow run: tags, metrics `<side>.<suite>.<metric>`, a per-example table per suite, the report."""
    tags = {
        MODEL_NAME_TAG: model.name,
        MODEL_VERSION_TAG: model.version,
        DIGEST_TAG: model.digest,
        EVAL_KIND_TAG: kind,
    }
    name = f"eval-{kind}-{model.name}-v{model.version}"
    run = client.create_run(experiment_id(client, EVAL_EXPERIMENT, home), tags=tags, run_name=name)
    run_id = run.info.run_id
    for side, results in (("candidate", report.candidate), ("champion", report.champion or [])):
        for result in results:
            for metric, value in result.metrics().items():
                client.log_metric(run_id, f"{side}.{result.suite}.{metric}", value)
            table = {
                "id": [e.id for e in result.examples],
                "output": [e.output for e in result.examples],
                "score": [e.score for e in result.examples],
                "passed": [e.passed for e in result.examples],
                "latency_ms": [e.latency_ms for e in result.examples],
            }
            client.log_table(run_id, table, f"tables/{side}-{result.suite}.json")
    client.log_artifact(run_id, str(path), "report")
    client.set_terminated(run_id, "FINISHED")
    return str(run_id)


class BatchEvalParams(Input):
    """Argo input parameters of the batch-eval template."""

    release: str
    model_name: str
    version: str
    kind: str = "quality"
    work_dir: str
    shards: str = "2"


class BatchEvalResult(Output):
    """Argo output parameters of the batch-eval template."""

    report_path: Annotated[str, Parameter(name="report-path")]
    summary: Annotated[str, Parameter(name="summary")]


@script(constructor="runner", image=STEPS_IMAGE, name="batch-eval", outputs=[Artifact(name="report", path=REPORT_OUT)])
def batch_eval_step(params: BatchEvalParams) -> BatchEvalResult:
    """Evaluate a registered version (and the champion) on the release's suites; write the EvalReport."""
    try:
        inputs = _inputs(params)
        registry, client = _clients(os.environ)
        outputs = run(inputs, registry, client)
    except ReleaseError as e:
        print(str(e), file=sys.stderr)
        raise SystemExit(1) from None
    print(outputs.summary)
    return BatchEvalResult(report_path=outputs.report_path, summary=outputs.summary)


def _inputs(params: BatchEvalParams) -> Inputs:
    if params.kind not in ("quality", "safety"):
        raise EvalError(f"kind {params.kind!r}: use quality or safety")
    if not params.shards.strip().isdigit() or int(params.shards) < 1:
        raise EvalError(f"shards {params.shards!r}: use a positive integer, e.g. 2")
    return Inputs(
        release=params.release,
        model_name=params.model_name,
        version=params.version,
        kind=params.kind,
        work_dir=params.work_dir,
        shards=int(params.shards),
    )  # type: ignore[arg-type]


def _clients(environ: Mapping[str, str]) -> tuple[RegistryReader, VersionReader]:
    """The registry facade and an MLflow client on the same store (MLFLOW_TRACKING_URI or the local sqlite)."""
    from registry.facade import ModelRegistry

    return ModelRegistry.from_env(environ), mlflow_client(environ)
