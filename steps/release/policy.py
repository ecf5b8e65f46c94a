"""The platform policy: which licences, model names and provider models each environment accepts.

The platform team owns `policy/platform-policy.yaml` (a `version:` string, then `environments: {dev, stage,
prod}`). `check_policy` raises a `PolicyError` naming the file, its version and the rule that refused, e.g.
`policy/platform-policy.yaml v2026.11.1: environments.prod.licenses does not allow 'cc-by-nc-4.0' (allowed: ...)`.
Licence ids compare case-insensitively (SPDX ids are); name and provider patterns are `fnmatch` patterns,
providers matched against `<host[:port]>/<model>`.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from registry.errors import PolicyError, SpecError
from steps.release.traffic import LatencyDefaults, merge

__all__ = [
    "DEFAULT_POLICY_PATH",
    "EnvironmentPolicy",
    "Floors",
    "PlatformPolicy",
    "PromptRules",
    "apply_environment",
    "check_policy",
    "load_policy",
]

DEFAULT_POLICY_PATH = "policy/platform-policy.yaml"


class Floors(BaseModel):
    """An environment's minimum bar: a release spec can be stricter, never looser (unset: the spec decides)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_quality_score: float | None = Field(default=None, ge=0, le=1, description="gates.quality.min_score at least")
    max_attack_success_rate: float | None = Field(default=None, ge=0, le=1, description="safety ceiling at most")
    max_p95_e2e_ms: float | None = Field(default=None, gt=0, description="gates.latency.p95_e2e_ms at most")
    min_availability: float | None = Field(default=None, ge=0, le=1, description="gates.latency.availability")
    max_usd_per_1k_output_tokens: float | None = Field(default=None, gt=0, description="cost ceiling at most")


class PromptRules(BaseModel):
    """What a release's prompt may say in an environment (checked by steps/onboarding/prompts.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    forbidden_phrases: list[str] = Field(
        default_factory=list, description="phrases no prompt may contain (case and spacing ignored)"
    )
    max_chars: int | None = Field(default=None, gt=0, description="the longest template, in characters (unset: any)")


class EnvironmentPolicy(BaseModel):
    """What one environment (dev, stage, prod) accepts, its minimum gates, its router and its serving plane."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    licenses: list[str] = Field(min_length=1, description="allowed SPDX licence ids")
    models: list[str] = Field(min_length=1, description="fnmatch patterns of allowed registered model names")
    providers: list[str] = Field(default_factory=list, description="fnmatch patterns of '<host>/<model>'")
    allow_pickle: bool = Field(default=False, description="whether pickle weights (.bin, .pt, ...) are accepted")
    floors: Floors = Field(default_factory=Floors, description="minimum gates every release in it must meet")
    router: Literal["haproxy", "gateway"] | None = Field(default=None, description="overrides rollout.router")
    service_deadline_s: float | None = Field(
        default=None,
        gt=0,
        description="total deadline in seconds of one call to MLflow, S3 or a provider, retries included "
        "(registry.retry); LLMRELEASE_SERVICE_DEADLINE_S overrides it; default 60",
    )
    latency: LatencyDefaults = Field(
        default_factory=LatencyDefaults,
        description="the default load and capacity search of a release's latency step (a spec's gates.latency wins)",
    )
    model_roots: list[str] = Field(
        default_factory=list,
        description="absolute directories a local model.source may be read from, besides the checkout "
        "(LLMRELEASE_MODEL_ROOTS adds more)",
    )
    prompt_rules: PromptRules = Field(
        default_factory=PromptRules, description="{forbidden_phrases, max_chars}: what a release's prompt may say"
    )
    plane: Literal["local", "kubernetes"] = Field(
        default="local",
        description="where versions are served: local (transformers serve + HAProxy on this machine); "
        "kubernetes (an Argo Rollouts Rollout per model serving vLLM: steps.rollout.cluster_release)",
    )

    @field_validator("model_roots")
    @classmethod
    def _absolute(cls, roots: list[str]) -> list[str]:
        relative = [r for r in roots if not Path(r).is_absolute()]
        if relative:
            raise ValueError(f"model roots must be absolute directories, got {', '.join(map(repr, relative))}")
        return roots


class PlatformPolicy(BaseModel):
    """The versioned platform policy file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=1, description="the policy version, a quoted string")
    environments: dict[str, EnvironmentPolicy] = Field(min_length=1, description="{dev: ..., stage: ..., prod: ...}")
    _source: str = PrivateAttr(default=DEFAULT_POLICY_PATH)

    @property
    def label(self) -> str:
        """`<file> v<version>`, the prefix of every policy message."""
        return f"{self._source} v{self.version}"

    def environment(self, name: str) -> EnvironmentPolicy:
        """The rules of environment `name`.

        Raises:
            SpecError: The policy defines no such environment.
        """
        try:
            return self.environments[name]
        except KeyError:
            known = ", ".join(self.environments)
            raise SpecError(
                f"{self.label}: environment {name!r} is not defined (defined: {known}); pick one of them"
            ) from None

    def rule(self, environment: str, key: str) -> str:
        """The name of a rule as messages show it: `<file> v<version>: environments.<env>.<key>`."""
        return f"{self.label}: environments.{environment}.{key}"


def load_policy(path: str | Path = DEFAULT_POLICY_PATH) -> PlatformPolicy:
    """Load and validate the platform policy file.

    Raises:
        SpecError: The file is missing, not YAML or malformed; names the field.
    """
    file = Path(path)
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise SpecError(f"{file}: platform policy not found; pass the policy file's path (policy_path)") from e
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise SpecError(f"{file}: platform policy is unreadable ({str(e).splitlines()[0]}); fix the file") from e
    try:
        policy = PlatformPolicy.model_validate(raw)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise SpecError(f"{file}: {where}: {err['msg']}; fix the platform policy") from e
    policy._source = str(path)
    return policy


def check_policy(
    policy: PlatformPolicy, environment: str, *, license: str, model_name: str, provider: str | None = None
) -> None:
    """Check a model against the rules of `environment`.

    Args:
        policy: The platform policy.
        environment: dev, stage or prod (any environment the policy defines).
        license: The model card's SPDX licence id.
        model_name: The registered model name.
        provider: `<host[:port]>/<model>` for a provider model, None for weights.

    Raises:
        PolicyError: A rule refuses the model; the message names the rule and what it allows.
        SpecError: The environment is not in the policy.
    """
    rules = policy.environment(environment)
    if license.strip().lower() not in {lic.lower() for lic in rules.licenses}:
        raise PolicyError(
            f"{policy.rule(environment, 'licenses')} does not allow {license!r} "
            f"(allowed: {', '.join(rules.licenses)}); fix model.card.license or ask the platform team"
        )
    if not any(fnmatchcase(model_name, pattern) for pattern in rules.models):
        raise PolicyError(
            f"{policy.rule(environment, 'models')} does not allow model {model_name!r} "
            f"(allowed patterns: {', '.join(rules.models)}); rename model.name or ask the platform team"
        )
    if provider is not None and not any(fnmatchcase(provider, pattern) for pattern in rules.providers):
        allowed = ", ".join(rules.providers) or "none"
        raise PolicyError(
            f"{policy.rule(environment, 'providers')} does not allow provider model {provider!r} "
            f"(allowed patterns: {allowed}); change model.source or ask the platform team"
        )


def _stricter(spec_value: float, floor: float | None, *, lower_is_stricter: bool) -> float:
    if floor is None:
        return spec_value
    return min(spec_value, floor) if lower_is_stricter else max(spec_value, floor)


def apply_environment(spec: Any, environment: str, policy: PlatformPolicy | None = None) -> Any:
    """The release spec as it applies in `environment`.

    Each gate is the stricter of the spec's and the environment's floor; the environment's router replaces the
    spec's when it sets one; the environment's latency load and capacity search fill what the spec leaves unset.
    An empty `environment` returns the spec unchanged.
    """
    if not environment:
        return spec
    env = (policy or load_policy()).environment(environment)
    f, g = env.floors, spec.gates
    gates = g.model_copy(
        update={
            "quality": g.quality.model_copy(
                update={"min_score": _stricter(g.quality.min_score, f.min_quality_score, lower_is_stricter=False)}
            ),
            "safety": g.safety.model_copy(
                update={
                    "max_attack_success_rate": _stricter(
                        g.safety.max_attack_success_rate, f.max_attack_success_rate, lower_is_stricter=True
                    )
                }
            ),
            "latency": g.latency.model_copy(
                update={
                    "p95_e2e_ms": _stricter(g.latency.p95_e2e_ms, f.max_p95_e2e_ms, lower_is_stricter=True),
                    "availability": _stricter(g.latency.availability, f.min_availability, lower_is_stricter=False),
                    "load": merge(g.latency.load, env.latency.load),
                    "capacity": merge(g.latency.capacity, env.latency.capacity),
                }
            ),
            "cost": g.cost.model_copy(
                update={
                    "max_usd_per_1k_output_tokens": _stricter(
                        g.cost.max_usd_per_1k_output_tokens, f.max_usd_per_1k_output_tokens, lower_is_stricter=True
                    )
                }
            ),
        }
    )
    rollout = spec.rollout.model_copy(update={"router": env.router}) if env.router else spec.rollout
    return spec.model_copy(update={"gates": gates, "rollout": rollout})
