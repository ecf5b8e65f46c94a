"""The batch-eval step: evaluate a registered candidate (and the champion) on the release's suites, sharded on Ray.

For a release spec, a registered model version and a kind (`quality`: the spec's `evals.suites`; `safety`: its
`evals.safety` suite):

1. resolve the candidate from the registry: its digest and where its weights are (the version's source URI and
   onboarding manifest), which each Ray worker downloads once into its own node's cache and verifies
   (`steps.evals.engine_spec`; the driver never passes a path); or, for a provider model, an OpenAI-compatible
   HTTP engine pointed at its source URI;
2. resolve the champion (alias `champion`); when it exists and is another version, evaluate it on the same suites;
3. for each model and suite: the result cache (`steps.evals.cache`) first, else a sharded run on Ray
   (`steps.evals.sharding`) whose shards persist in the eval store (`s3://<bucket>/evals/shards/`, else
   `<work_dir>/eval-shards/`), then cached;
4. write the `EvalReport` to `<work_dir>/eval-report-<kind>.json` and log one MLflow run (experiment
   `llmrelease-evals`): a per-example table per suite and model, the metrics, the report as an artifact.

Generation settings: greedy, `DEFAULT_MAX_NEW_TOKENS` new tokens (an `evals.max_new_tokens` field in the spec
overrides it, should the spec grow one). The engine: `http` for provider models; else chosen on each worker: `vllm`
when vllm is importable and the worker holds a GPU, else `transformers` (on CUDA when torch sees a GPU).

No `from __future__ import annotations` here: Hera's runner inspects the entry's annotations as classes.
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from hera.workflows import Artifact, Output, Parameter, script
from pydantic import Field

from steps.core.artifacts import REPORT_OUT
from steps.core.entry import StepParams, run_step
from steps.core.images import STEPS_IMAGE
from steps.core.tracking import mlflow_client
from steps.evals.batch import DEFAULT_MAX_NEW_TOKENS, Inputs, Outputs, RegistryReader, run, summarize
from steps.evals.ray_connect import join_early
from steps.evals.weights import VersionReader
from steps.release.source import SPEC_IN

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "BatchEvalParams",
    "BatchEvalResult",
    "Inputs",
    "Outputs",
    "RegistryReader",
    "batch_eval_step",
    "describe",
    "summarize",
    "run",
]


def describe(outputs: Outputs) -> str:
    """The one human line the step prints: its summary (see `summarize`)."""
    return outputs.summary


class BatchEvalParams(StepParams):
    """Argo input parameters of the batch-eval template."""

    step: ClassVar[str] = "batch-eval"

    release: str
    model_name: str
    version: str
    kind: Literal["quality", "safety"] = "quality"
    work_dir: Path
    shards: int = Field(default=2, ge=1)


class BatchEvalResult(Output):
    """Argo output parameters of the batch-eval template."""

    report_path: Annotated[str, Parameter(name="report-path")]
    summary: Annotated[str, Parameter(name="summary")]


@script(
    constructor="runner",
    image=STEPS_IMAGE,
    name="batch-eval",
    inputs=[Artifact(name="spec", path=SPEC_IN)],  # the validated spec from onboard; `release` names it
    outputs=[Artifact(name="report", path=REPORT_OUT)],
)
def batch_eval_step(params: BatchEvalParams) -> BatchEvalResult:
    """Evaluate a registered version (and the champion) on the release's suites; write the EvalReport."""
    inputs = Inputs(
        release=params.release,
        model_name=params.model_name,
        version=params.version,
        kind=params.kind,
        work_dir=str(params.work_dir),
        shards=params.shards,
    )
    outputs = run_step("batch-eval", lambda: _run_here(inputs))
    print(describe(outputs))
    return BatchEvalResult(report_path=outputs.report_path, summary=outputs.summary)


def _run_here(inputs: Inputs) -> Outputs:
    """`run` with this environment's clients; the Ray join starts first, while MLflow is imported and read."""
    join_early()
    return run(inputs, *_clients(os.environ))


def _clients(environ: Mapping[str, str]) -> tuple[RegistryReader, VersionReader]:
    """The registry facade and an MLflow client on the same store (MLFLOW_TRACKING_URI or the local sqlite)."""
    from registry.facade import ModelRegistry

    return ModelRegistry.from_env(environ), mlflow_client(environ)
