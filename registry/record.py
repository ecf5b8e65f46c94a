"""The registry's view of an onboarding record, and the source a model version gets from it.

The onboard step writes the record (steps/release/records.py: `OnboardingRecord`); registration reads it as plain JSON
and validates only the fields it uses, so the two modules can change at their own pace.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from registry.errors import SpecError
from registry.names import NAME_MAX_LENGTH, NAME_PATTERN
from registry.weights_store import is_weights_uri

__all__ = ["OnboardingView", "parse_record", "version_source"]


class CardView(BaseModel):
    """The model card fields registration tags and logs."""

    model_config = ConfigDict(frozen=True)

    license: str
    intended_use: str = ""
    constraints: list[str] = Field(default_factory=list)
    owner: str = ""


class FileView(BaseModel):
    """One file of the weights manifest."""

    model_config = ConfigDict(frozen=True)

    path: str
    sha256: str
    size: int


class OnboardingView(BaseModel):
    """The fields of an onboarding record that registration reads; other fields are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str = Field(pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH)  # registry/names.py: a DNS-1123 label
    environment: str = ""
    source_uri: str = Field(min_length=1)
    kind: Literal["weights", "provider"]
    weights_uri: str | None = None
    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    files: list[FileView] = Field(default_factory=list)
    card: CardView
    config: dict[str, Any] | None = None
    spec_path: str = ""
    spec_sha256: str = ""
    policy_version: str = ""

    @model_validator(mode="after")
    def _weights_in_the_store(self) -> OnboardingView:
        if self.kind == "weights" and not (self.weights_uri and is_weights_uri(self.weights_uri)):
            raise ValueError(
                "weights_uri (the weights store location <root>/weights/sha256/<hex>) is required for weights"
            )
        return self


def parse_record(raw: dict[str, Any]) -> OnboardingView:
    """Validate the fields of an onboarding record that registration needs.

    Raises:
        SpecError: A field is missing or malformed; names the first one.
    """
    try:
        return OnboardingView.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "record"
        raise SpecError(
            f"onboarding record of {raw.get('name', '?')!r} is invalid at {where}: {err['msg']}: "
            "re-run the onboard step to rewrite it"
        ) from e


def version_source(rec: OnboardingView) -> str:
    """The source of the model version: the weights' store location, or the provider URI."""
    return str(rec.weights_uri) if rec.kind == "weights" else rec.source_uri
