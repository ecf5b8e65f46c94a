"""Batch evals of a registered version (and the champion) on a release's suites: the library behind batch-eval.

The batch-eval step (`steps/batch_eval.py`) and the nightly regression (`steps/nightly_eval.py`) both call `run`;
see the batch-eval step's module docs for the flow (the result cache, shards on Ray).

The driver resolves a version to an `EngineSpec` and never touches its weights: a weights model becomes an `auto`
spec holding a `WeightsRef` (source, digest, tracking URI, onboarding run); each Ray worker fetches and verifies
the weights into its own node's cache and picks its engine there (`steps.evals.engine_spec`). The result records
the engine the workers chose; a cached result is looked up under each engine the requested device allows (on
cuda: vllm, then transformers; on cpu: transformers). GPUs per worker: `Inputs.gpus_per_worker`, else
LLMRELEASE_EVAL_GPUS_PER_WORKER, else 0 (CPU); a positive value is an explicit Ray demand (`num_gpus`), so an
autoscaler scales a GPU worker group up from zero.

Eval state is durable where a bucket is configured (`steps.evals.store`): the result cache in
`s3://$LLMRELEASE_S3_BUCKET/evals/results` and the shards in `.../evals/shards/<run key>` (run key: model digest +
suite hash + generation settings), so a retried pod on any node skips finished shards and a result computed in
any pod is reused; without a bucket, `$LLMRELEASE_HOME/eval-cache` and `<work_dir>/eval-shards`. Shard claims
(`steps.evals.shard_ledger`) make the parallel batch-eval and safety pods split, not repeat, a (digest, suite,
settings) they both evaluate; LLMRELEASE_EVAL_CLAIM_TTL_S (default 30) is how long a dead pod's claim holds.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, cast

from pydantic import BaseModel, ConfigDict, Field

from registry.prompts import PromptRegistry
from registry.retry import describe_error
from registry.tags import (
    CANDIDATE,
    CHAMPION,
    DIGEST_TAG,
    EVAL_EXPERIMENT,
    EVAL_KIND_TAG,
    MODEL_NAME_TAG,
    MODEL_VERSION_TAG,
    SOURCE_URI_TAG,
)
from steps.core.tracking import experiment_id, llmrelease_home, log_metrics
from steps.evals.cache import CACHE_LABEL, GenerationSettings, ResultCache, short_hex
from steps.evals.engine_spec import WeightsRef
from steps.evals.engines.base import EvalError, env_seconds
from steps.evals.prompt_pairs import AppliedPrompt, PromptReader, release_prompts
from steps.evals.ray_connect import ray_address
from steps.evals.results import EvalReport, SuiteResult
from steps.evals.shard_ledger import SHARDS_LABEL
from steps.evals.sharding import EngineSpec, FaultInjection, ShardOptions, WorkerPool, run_suite
from steps.evals.store import EvalStore, eval_store
from steps.evals.suites import Suite, load_suite
from steps.evals.weights import VersionReader, model_version, registered_digest
from steps.release.spec import ReleaseSpec, load_spec

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "Inputs",
    "ModelUnderTest",
    "Outputs",
    "RegistryReader",
    "run",
    "summarize",
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
    prompt_alias: str = CANDIDATE
    """A release with a prompt: the prompt alias evaluated with `version` (the nightly evaluates champion)."""
    gpus_per_worker: float | None = Field(default=None, ge=0)
    """GPUs each Ray worker asks for; None: LLMRELEASE_EVAL_GPUS_PER_WORKER, else 0 (CPU)."""


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
    prompt: str = ""
    """The prompt applied to every item, `<name> v<version> (sha256:...)`; empty: none."""

    @property
    def who(self) -> str:
        """`<name> v<version>`, and `with prompt <prompt>` when one is applied (for the step's lines)."""
        return f"{self.name} v{self.version}" + (f" with prompt {self.prompt}" if self.prompt else "")


def run(
    inputs: Inputs,
    registry: RegistryReader,
    client: VersionReader,
    *,
    log_to_mlflow: bool = True,
    prompts: PromptReader | None = None,
) -> Outputs:
    """Evaluate the candidate (and the champion, when there is another one) and write the report.

    A release with a prompt evaluates (model, prompt) pairs (`steps.evals.prompt_pairs`): the champion is
    evaluated too when only the prompt differs (a prompt-only release). `prompts` is the prompt registry; None:
    one on `client`'s store.

    Raises:
        SpecError: The release spec is invalid.
        EvalError: A suite is invalid, a version or its weights cannot be resolved, the champion alias is stale,
            the engine cannot run a task, or a shard failed.
    """
    spec = load_spec(inputs.release)
    home = Path(inputs.home).resolve() if inputs.home else llmrelease_home()
    suites = _suites(spec, inputs)
    max_new = int(getattr(spec.evals, "max_new_tokens", None) or DEFAULT_MAX_NEW_TOKENS)
    gpus = _gpus_per_worker(inputs)
    options = ShardOptions(
        workers=inputs.shards,
        gpus_per_worker=gpus,
        claim_ttl_s=_claim_ttl(),
        fault=FaultInjection.from_env(os.environ.get("LLMRELEASE_EVAL_KILL_SHARD")),
    )
    wanted = GenerationSettings(max_new_tokens=max_new, backend="auto", device="cuda" if gpus else "cpu")
    candidate, champion = _pairs(inputs, spec, registry, client, home, wanted, prompts)
    cache = ResultCache(eval_store("results", home / "eval-cache", CACHE_LABEL))
    shards = eval_store("shards", Path(inputs.work_dir) / "eval-shards", SHARDS_LABEL)
    with WorkerPool(options) as pool:  # one pool for the step: each model loaded once for all its suites
        report = EvalReport(
            candidate=[_evaluate(candidate, s, cache, shards, options, pool) for s in suites],
            champion=[_evaluate(champion, s, cache, shards, options, pool) for s in suites] if champion else None,
        )
    path = report.save(Path(inputs.work_dir) / f"eval-report-{inputs.kind}.json")
    run_id = None
    if log_to_mlflow:
        try:
            run_id = _log_run(client, report, path, candidate, inputs.kind, home)
        except Exception as e:
            raise EvalError(
                f"logging the eval run to MLflow at {client.tracking_uri} failed ({describe_error(e)}); "
                f"the report is at {path}: check the tracking server and re-run"
            ) from e
    return Outputs(report_path=str(path), summary=summarize(report), run_id=run_id)


def _suites(spec: ReleaseSpec, inputs: Inputs) -> list[Suite]:
    chosen = spec.evals.suites if inputs.kind == "quality" else [spec.evals.safety]
    return [load_suite(Path(inputs.root) / s.path, name=s.name) for s in chosen]


def _gpus_per_worker(inputs: Inputs) -> float:
    """GPUs per Ray worker: the input, else LLMRELEASE_EVAL_GPUS_PER_WORKER, else 0."""
    if inputs.gpus_per_worker is not None:
        return inputs.gpus_per_worker
    raw = os.environ.get("LLMRELEASE_EVAL_GPUS_PER_WORKER") or "0"
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise EvalError(f"LLMRELEASE_EVAL_GPUS_PER_WORKER={raw!r}: expected a number of GPUs >= 0, e.g. 1")
    return value


def _claim_ttl() -> float:
    """LLMRELEASE_EVAL_CLAIM_TTL_S, else 30 s: how long a shard claim holds without being renewed."""
    return env_seconds("LLMRELEASE_EVAL_CLAIM_TTL_S", 30.0)


def _pairs(
    inputs: Inputs,
    spec: ReleaseSpec,
    registry: RegistryReader,
    client: VersionReader,
    home: Path,
    wanted: GenerationSettings,
    prompts: PromptReader | None,
) -> tuple[ModelUnderTest, ModelUnderTest | None]:
    """The candidate pair, and the champion pair when it differs (other weights, or another prompt)."""
    mine, theirs = None, None
    if spec.prompt is not None:
        reader = prompts if prompts is not None else PromptRegistry(cast(Any, client), tracking_uri=client.tracking_uri)
        mine, theirs = release_prompts(spec, reader, alias=inputs.prompt_alias)
    candidate = _resolve(client, inputs.model_name, inputs.version, home, wanted, prompt=mine)
    champion_version = registry.get_alias(inputs.model_name, CHAMPION)
    other_prompt = (mine and mine.digest) != (theirs and theirs.digest)
    if champion_version is None or (champion_version == inputs.version and not other_prompt):
        return candidate, None
    return candidate, _resolve(client, inputs.model_name, champion_version, home, wanted, CHAMPION, theirs)


def _resolve(
    client: VersionReader,
    name: str,
    version: str,
    home: Path,
    wanted: GenerationSettings,
    alias: str | None = None,
    prompt: AppliedPrompt | None = None,
) -> ModelUnderTest:
    """The version's digest and an engine spec: its weights, fetched by the workers, or its provider endpoint."""
    mv = model_version(client, name, version, alias)
    digest = registered_digest(mv)
    source = str(dict(mv.tags or {}).get(SOURCE_URI_TAG) or mv.source)
    provider = _provider(source) if source.startswith(("openai://", "http://", "https://")) else None
    if provider is not None:
        engine = EngineSpec.of("http", base_url=provider[0], model=provider[1])
        settings = wanted.model_copy(update={"backend": "http", "device": "remote"})
    else:
        # A local Ray's workers are this machine's processes: they share this step's cache. A cluster's
        # workers use their own node's cache: the driver passes no path.
        cache = "" if ray_address() else str(home)
        weights = WeightsRef(str(mv.source), digest, client.tracking_uri, mv.run_id or "", cache=cache)
        engine, settings = EngineSpec.of("auto", weights=weights), wanted
    if prompt is not None:  # the prompt's messages before every item, its settings (and digest) in the key
        engine = EngineSpec(engine.kind, tuple(sorted([*engine.options, ("messages", prompt.messages)])))
        settings = prompt.settings(settings)
    label = prompt.label if prompt is not None else ""
    return ModelUnderTest(name=name, version=version, digest=digest, engine=engine, settings=settings, prompt=label)


def _provider(source: str) -> tuple[str, str]:
    """(base_url, model) of openai://<model> or http(s)://host/v1#<model>."""
    if source.startswith("openai://"):
        return _OPENAI_BASE_URL, source.removeprefix("openai://")
    base, _, model = source.partition("#")
    if not model:
        raise EvalError(f"provider source {source!r}: expected https://host/v1#<model>: re-register the model")
    return base.rstrip("/"), model


def _evaluate(
    model: ModelUnderTest,
    suite: Suite,
    cache: ResultCache,
    shards: EvalStore,
    options: ShardOptions,
    pool: WorkerPool | None = None,
) -> SuiteResult:
    """The model's result on the suite: from the cache, else sharded on Ray (and then cached)."""
    labels = {"suite": suite.name, "model_name": model.name, "model_version": model.version}
    backends = _backends(model.settings)
    for backend in backends:
        settings = model.settings.model_copy(update={"backend": backend})
        hit = cache.get(model.digest, suite.sha256, settings, relabel=labels)
        if hit is not None:
            print(f"{suite.name}: {model.who}: cached result reused")
            return hit
    key = f"{short_hex(model.digest)}-{short_hex(suite.sha256)}-{short_hex(model.settings.digest())}"
    examples, stats = run_suite(suite, model.engine, model.settings, shards.child(key), options, pool)
    used = model.settings.model_copy(
        update={"backend": stats.backend or backends[-1], "device": stats.device or model.settings.device}
    )
    result = SuiteResult(
        suite=suite.name,
        suite_sha256=suite.sha256,
        model_name=model.name,
        model_version=model.version,
        model_digest=model.digest,
        backend=used.backend,
        generation=used.as_json(),
        examples=examples,
    )
    cache.put(result)
    print(
        f"{suite.name}: {model.who}: {len(examples)} items, shards ran {len(stats.ran)} "
        f"skipped {len(stats.skipped)} shared {len(stats.shared)} retried {len(stats.retried)} "
        f"in {stats.seconds:.1f}s; " + _metrics_text(result.metrics())
    )
    return result


def _backends(settings: GenerationSettings) -> tuple[str, ...]:
    """The engines a worker may choose for `settings` (backend auto: by device), in the workers' preference."""
    if settings.backend != "auto":
        return (settings.backend,)
    return ("vllm", "transformers") if settings.device == "cuda" else ("transformers",)


def _metrics_text(metrics: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in metrics.items() if not k.endswith("_n") and k != "n")


def summarize(report: EvalReport) -> str:
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
    sides = (("candidate", report.candidate), ("champion", report.champion or []))
    metrics = {
        f"{side}.{result.suite}.{metric}": value
        for side, results in sides
        for result in results
        for metric, value in result.metrics().items()
    }
    log_metrics(client, run_id, metrics)
    for side, results in sides:
        for result in results:
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
