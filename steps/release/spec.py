"""The release spec: what a release is, as typed, frozen pydantic models loaded from `releases/<name>.yaml`.

`load_spec` turns every malformed spec into one `SpecError` line that names the file, the dotted field path
and the fix, e.g. `releases/x.yaml: model.card.license: field required (add the SPDX licence id, e.g.
apache-2.0)`. `write_json_schema` writes the JSON schema editors use to complete and check the files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from registry.errors import SpecError
from registry.names import NAME_MAX_LENGTH, NAME_PATTERN, NAME_RULE, check_name
from steps.release.prompt import CHAMPION_SOURCE, PromptSpec
from steps.release.traffic import CapacitySearch, LatencyLoad

__all__ = [
    "API_VERSION",
    "CHAMPION_SOURCE",
    "Analysis",
    "Card",
    "CostGate",
    "Evals",
    "Gates",
    "LatencyGate",
    "ModelSpec",
    "PromptSpec",
    "QualityGate",
    "ReleaseSpec",
    "Rollout",
    "SafetyGate",
    "Serving",
    "Suite",
    "TargetGpu",
    "describe_validation_error",
    "load_spec",
    "resolve_spec_path",
    "write_json_schema",
]

API_VERSION = "llmrelease/v1"

_FROZEN = ConfigDict(extra="forbid", frozen=True)
# `releases/<label>.yaml` (the Sensor's filter, workflows/pipelines/git_webhook.py, says the same), or absolute
# `/<segments>/releases/<label>.yaml`; no segment is empty, '.' or '..'.
_RELEASE_PATH = re.compile(r"(?:/(?:(?!\.\.?/)[^/\x00]+/)*)?releases/[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?\.ya?ml")
Rate = Annotated[float, Field(ge=0.0, le=1.0)]
Environment = Literal["dev", "stage", "prod"]


class Card(BaseModel):
    """The model card: licence, intended use, known constraints and the owning team."""

    model_config = _FROZEN

    license: str = Field(description="the SPDX licence id, e.g. apache-2.0")
    intended_use: str = Field(description="one sentence on what the model is for")
    constraints: list[str] = Field(default_factory=list, description="known limitations, a list of strings")
    owner: str = Field(default="", description="the owning team, e.g. ml-platform")


class TargetGpu(BaseModel):
    """The GPU the model is sized for."""

    model_config = _FROZEN

    name: str = Field(default="nvidia-l4", min_length=1, description="a GPU name, e.g. nvidia-l4")
    memory_gib: float = Field(default=24.0, gt=0, description="the GPU memory in GiB, e.g. 24")


class Serving(BaseModel):
    """How the model is served: precision, context, batch and the GPU it must fit."""

    model_config = _FROZEN

    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        default="bfloat16", description="one of float32, float16, bfloat16"
    )
    quantization: Literal["none", "int8", "int4", "fp8"] = Field(
        default="none", description="one of none, int8, int4, fp8"
    )
    max_context: int | None = Field(
        default=None, gt=0, description="tokens per sequence, a positive integer (unset: the model's own length)"
    )
    max_batch: int = Field(default=8, gt=0, description="concurrent sequences, a positive integer")
    target_gpu: TargetGpu = Field(default_factory=TargetGpu, description="{name, memory_gib}")
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1, description="a fraction in (0, 1], e.g. 0.9")


class ModelSpec(BaseModel):
    """The model being released: registered name, where its weights are, its card and serving shape."""

    model_config = _FROZEN

    name: str = Field(
        pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH, description=f"the MLflow registered model name, {NAME_RULE}"
    )
    source: str = Field(
        min_length=1,
        description="a local dir under a model root, s3://bucket/prefix, openai://<model>, https://host/v1#<model>, "
        "or champion (a prompt-only release: the champion's weights)",
    )
    card: Card = Field(description="{license, intended_use, constraints, owner}")
    serving: Serving = Field(default_factory=Serving, description="{dtype, quantization, max_context, ...}")


class Suite(BaseModel):
    """One JSONL eval suite."""

    model_config = _FROZEN

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="a lowercase suite name, e.g. golden-qa")
    path: str = Field(min_length=1, description="the JSONL file, relative to the model root")


class Evals(BaseModel):
    """The quality suites and the safety suite the release is evaluated on."""

    model_config = _FROZEN

    suites: list[Suite] = Field(min_length=1, description="a list of {name, path}, at least one")
    safety: Suite = Field(description="{name, path} of the safety suite")

    @model_validator(mode="after")
    def _unique_names(self) -> Evals:
        names = [s.name for s in [*self.suites, self.safety]]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"suite names must be unique across suites and safety, repeated: {', '.join(dupes)}")
        return self


class QualityGate(BaseModel):
    """Quality: an absolute floor and non-inferiority against the champion."""

    model_config = _FROZEN

    min_score: Rate = Field(default=0.5, description="a score in [0, 1]")
    non_inferiority_margin: Rate = Field(default=0.05, description="a margin in [0, 1]")
    confidence: float = Field(default=0.95, gt=0, lt=1, description="a confidence level in (0, 1), e.g. 0.95")


class SafetyGate(BaseModel):
    """Safety ceilings on the safety suite."""

    model_config = _FROZEN

    max_attack_success_rate: Rate = Field(default=0.1, description="a rate in [0, 1]")
    max_over_refusal_rate: Rate = Field(default=0.25, description="a rate in [0, 1]")
    max_pii_leak_rate: Rate = Field(default=0.0, description="a rate in [0, 1]")


class LatencyGate(BaseModel):
    """The latency SLO, the load it must hold and the capacity search (unset: the environment's policy default)."""

    model_config = _FROZEN

    p95_e2e_ms: float = Field(default=1200.0, gt=0, description="milliseconds, a positive number")
    availability: Rate = Field(default=0.999, description="a fraction in [0, 1], e.g. 0.999")
    load: LatencyLoad = Field(default_factory=LatencyLoad, description="{rate or concurrency, duration_s, ...}")
    capacity: CapacitySearch = Field(default_factory=CapacitySearch, description="{enabled, max_time_s, ...}")


class CostGate(BaseModel):
    """The cost ceiling."""

    model_config = _FROZEN

    gpu_hourly_usd: float = Field(default=0.8, ge=0, description="USD per GPU hour, e.g. 0.8")
    max_usd_per_1k_output_tokens: float = Field(default=0.5, gt=0, description="USD, a positive number")


class Gates(BaseModel):
    """Every gate the release must pass; each has defaults."""

    model_config = _FROZEN

    quality: QualityGate = Field(default_factory=QualityGate, description="{min_score, ...}")
    safety: SafetyGate = Field(default_factory=SafetyGate, description="{max_attack_success_rate, ...}")
    latency: LatencyGate = Field(default_factory=LatencyGate, description="{p95_e2e_ms, availability}")
    cost: CostGate = Field(default_factory=CostGate, description="{gpu_hourly_usd, max_usd_per_1k_output_tokens}")


class PrometheusQuery(BaseModel):
    """A Prometheus instant query whose value must stay at or below max_value ({canary} = the canary's server)."""

    model_config = _FROZEN

    url: str = Field(min_length=1, description="Prometheus base URL, e.g. http://prometheus:9090")
    query: str = Field(min_length=1, description="PromQL returning one value")
    max_value: float = Field(description="the ceiling, a number")


class Analysis(BaseModel):
    """Canary analysis, with Argo Rollouts' AnalysisTemplate meanings."""

    model_config = _FROZEN

    interval_s: float = Field(default=2.0, gt=0, description="seconds between measurements, a positive number")
    count: int = Field(default=3, ge=1, description="measurements per step, an integer >= 1")
    failure_limit: int = Field(default=1, ge=0, description="an integer >= 0")
    inconclusive_limit: int = Field(default=1, ge=0, description="an integer >= 0")
    max_error_rate: Rate = Field(default=0.01, description="a rate in [0, 1]")
    max_p95_ratio: float = Field(default=1.5, gt=0, description="candidate/champion p95 ratio, e.g. 1.5")
    p95_slack_ms: float = Field(
        default=50.0, ge=0, description="ms the canary p95 may exceed the ratio bound by, against noise; >= 0"
    )
    min_samples: int = Field(default=3, ge=1, description="canary samples a measurement needs, an integer >= 1")
    probes: int = Field(default=8, ge=1, description="probe requests per measurement through the router, >= 1")
    pause_timeout_s: float = Field(
        default=3600.0, gt=0, description="seconds an Inconclusive pause waits for a human before aborting"
    )
    prometheus: PrometheusQuery | None = Field(default=None, description="{url, query, max_value}, optional")


class Rollout(BaseModel):
    """The canary rollout: traffic steps, analysis, router and approvals."""

    model_config = _FROZEN

    steps: list[int] = Field(
        default_factory=lambda: [1, 5, 25, 50, 100],
        min_length=1,
        description="strictly increasing traffic percentages in (0, 100] ending at 100, e.g. [1, 5, 25, 50, 100]",
    )
    analysis: Analysis = Field(default_factory=Analysis, description="{interval_s, count, ...}")
    router: Literal["haproxy", "gateway"] = Field(default="haproxy", description="one of haproxy, gateway")
    approval_required_in: list[Environment] = Field(
        default_factory=lambda: list[Environment](("stage", "prod")), description="a list of dev, stage, prod"
    )
    keep_previous_hot_s: int = Field(default=600, ge=0, description="seconds, an integer >= 0")

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[int]) -> list[int]:
        if any(not 0 < s <= 100 for s in steps):
            raise ValueError("every step must be in (0, 100]")
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError("steps must be strictly increasing")
        if steps[-1] != 100:
            raise ValueError("the last step must be 100")
        return steps


class ReleaseSpec(BaseModel):
    """A release: the model, its evals, the gates it must pass and how it rolls out."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, title="llmrelease release spec")

    api_version: Literal["llmrelease/v1"] = Field(alias="apiVersion", description=f"always {API_VERSION}")
    name: str = Field(pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH, description=f"the release name, {NAME_RULE}")
    model: ModelSpec = Field(description="{name, source, card, serving}")
    evals: Evals = Field(description="{suites, safety}")
    gates: Gates = Field(default_factory=Gates, description="{quality, safety, latency, cost}")
    rollout: Rollout = Field(default_factory=Rollout, description="{steps, analysis, router, ...}")
    environment: Environment | None = Field(
        default=None,
        description="where a merged spec is delivered: dev, stage or prod (unset: dev); a run's environment wins",
    )
    prompt: PromptSpec | None = Field(
        default=None,
        validate_default=True,
        description="{name, template or template_file, variables, generation}; required when model.source is champion",
    )

    @property
    def prompt_only(self) -> bool:
        """Whether the release changes only the prompt (`model.source: champion`): same weights as the champion."""
        return self.model.source == CHAMPION_SOURCE

    @field_validator("prompt")
    @classmethod
    def _prompt_release(cls, prompt: PromptSpec | None, info: ValidationInfo) -> PromptSpec | None:
        model = info.data.get("model")
        if not isinstance(model, ModelSpec):
            return prompt
        if prompt is None and model.source == CHAMPION_SOURCE:
            raise ValueError(
                f"model.source {CHAMPION_SOURCE!r} keeps the champion's weights, so the release must carry a prompt: "
                "add a prompt block, or name new weights in model.source"
            )
        if prompt is not None and prompt.name == model.name:
            raise ValueError(
                f"prompt.name {prompt.name!r} is the model's name, and MLflow keeps models and prompts in one "
                f"namespace: rename the prompt, e.g. {model.name}-prompt"
            )
        return prompt


def resolve_spec_path(path_or_name: str) -> Path:
    """The spec file for a path, or for a bare release name (`demo` means `releases/demo.yaml`), confined.

    A release path names a file `<name>.yaml` (or `.yml`, `<name>` a DNS-1123 label) directly in a `releases/`
    directory: `releases/<name>.yaml` relative to the repository checkout (what the webhook's Sensor passes), or
    an absolute `/.../releases/<name>.yaml` on this machine (local runs). No `..` or `.` segment, no other place.

    Raises:
        SpecError: The path leaves the releases directory (or the name is not a label); says what to pass.
    """
    if "/" not in path_or_name and "\\" not in path_or_name and not path_or_name.endswith((".yaml", ".yml")):
        check_name(path_or_name, "release name")
        return Path("releases") / f"{path_or_name}.yaml"
    if _RELEASE_PATH.fullmatch(path_or_name) is None:
        shown = repr(path_or_name) if len(path_or_name) <= 100 else f"{path_or_name[:97]!r}..."
        raise SpecError(
            f"release path {shown} is outside the releases directory: pass releases/<name>.yaml "
            "(no '..', <name> lowercase letters, digits and '-')"
        )
    return Path(path_or_name)


def load_spec(path_or_name: str) -> ReleaseSpec:
    """Load and validate a release spec.

    Args:
        path_or_name: A YAML file, or a bare release name meaning `releases/<name>.yaml` (relative to the cwd).

    Returns:
        The validated, frozen spec.

    Raises:
        SpecError: The path is outside a releases directory (see `resolve_spec_path`) or a symbolic link, the file
            is missing, not YAML, or a field is unknown, missing or of the wrong type; the message names the file,
            the dotted field path and the fix.
    """
    path = resolve_spec_path(path_or_name)
    if path.is_symlink():
        raise SpecError(f"{path}: release spec is a symbolic link: commit the spec file itself under releases/")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise SpecError(f"{path}: release spec not found (pass a path or a name under releases/)") from e
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: release spec is unreadable ({e}); fix the file") from e
    raw = _load_yaml(text, path)
    try:
        return ReleaseSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(f"{path}: {describe_validation_error(e, ReleaseSpec)}") from e


def _load_yaml(text: str, path: Path) -> dict[str, Any]:
    loader = _unique_key_loader()
    try:
        raw = yaml.load(text, Loader=loader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise SpecError(f"{path}: not valid YAML at {where}: {e.problem}; fix the syntax") from e
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML ({e}); fix the syntax") from e
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a release spec is a YAML mapping starting with 'apiVersion: {API_VERSION}'")
    return raw


def _unique_key_loader() -> type[yaml.SafeLoader]:
    """A SafeLoader that refuses repeated keys (YAML would silently keep the last one)."""

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"repeated key {key!r} (keep one)", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def describe_validation_error(error: ValidationError, model: type[BaseModel]) -> str:
    """One line for the first error: `<dotted.path>: <problem> (<fix>)`, the fix taken from the field docs."""
    err = error.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"]]
    where = ".".join(loc) or "(top level)"
    field = _field_info(model, loc)
    hint = field.description if field is not None and field.description else ""
    kind, msg = err["type"], err["msg"].removeprefix("Value error, ")
    if kind == "missing":
        return f"{where}: field required (add {hint or 'it'})"
    if kind == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(model, loc[:-1])) or "none"
        return f"{where}: unknown field (allowed here: {allowed}; fix the spelling or remove it)"
    got = json.dumps(err.get("input"), default=str)
    if len(got) > 60:
        got = got[:57] + "..."
    expected = f"expected {hint}" if hint else "fix the value"
    return f"{where}: {msg[:1].lower()}{msg[1:]}, got {got} ({expected})"


def _field_info(model: type[BaseModel], loc: list[str]) -> Any:
    """The pydantic FieldInfo at a validation-error location, or None where it cannot be followed."""
    current: Any = model
    info = None
    for part in loc:
        if part.isdigit():
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return info
        by_alias = {(f.alias or n): f for n, f in current.model_fields.items()}
        info = by_alias.get(part)
        if info is None:
            return None
        current = _model_in(info.annotation)
    return info


def _model_in(annotation: Any) -> Any:
    """The BaseModel class inside `X`, `list[X]` or `X | None`, else the annotation itself."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if isinstance(found, type) and issubclass(found, BaseModel):
            return found
    return annotation


def _allowed_keys(model: type[BaseModel], loc: list[str]) -> list[str]:
    owner: Any = model if not loc else _model_in(getattr(_field_info(model, loc), "annotation", None))
    if not (isinstance(owner, type) and issubclass(owner, BaseModel)):
        return []
    return [f.alias or n for n, f in owner.model_fields.items()]


def write_json_schema(path: str | Path) -> Path:
    """Write the JSON schema of `ReleaseSpec` (with `apiVersion` as its alias) to `path`; returns the path."""
    schema = ReleaseSpec.model_json_schema(by_alias=True)
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://llmrelease.dev/schemas/release-spec.schema.json",
        **schema,
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
    return out
