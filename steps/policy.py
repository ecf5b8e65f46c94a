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

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from steps.errors import PolicyError, SpecError

__all__ = ["DEFAULT_POLICY_PATH", "EnvironmentPolicy", "PlatformPolicy", "check_policy", "load_policy"]

DEFAULT_POLICY_PATH = "policy/platform-policy.yaml"


class EnvironmentPolicy(BaseModel):
    """What one environment (dev, stage, prod) accepts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    licenses: list[str] = Field(min_length=1, description="allowed SPDX licence ids")
    models: list[str] = Field(min_length=1, description="fnmatch patterns of allowed registered model names")
    providers: list[str] = Field(default_factory=list, description="fnmatch patterns of '<host>/<model>'")
    allow_pickle: bool = Field(default=False, description="whether pickle weights (.bin, .pt, ...) are accepted")


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
