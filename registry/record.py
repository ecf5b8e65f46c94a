"""The registry's view of an onboarding record, and the checks on the weights it names.

The onboard step writes the record (steps/release/records.py: `OnboardingRecord`); registration reads it as plain JSON
and validates only the fields it uses, so the two modules can change at their own pace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from registry.errors import OnboardingError, SpecError
from registry.names import NAME_MAX_LENGTH, NAME_PATTERN

__all__ = [
    "OnboardingView",
    "S3ClientLike",
    "check_local_weights",
    "check_s3_weights",
    "parse_record",
    "version_source",
]


class S3ClientLike(Protocol):
    """The part of a boto3 S3 client the weights check uses."""

    def head_object(self, *, Bucket: str, Key: str) -> Any: ...  # noqa: D102


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
    local_path: str | None = None
    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    files: list[FileView] = Field(default_factory=list)
    card: CardView
    config: dict[str, Any] | None = None
    spec_path: str = ""
    spec_sha256: str = ""
    policy_version: str = ""

    @model_validator(mode="after")
    def _weights_reachable(self) -> OnboardingView:
        if self.kind == "weights" and not self.in_s3 and not self.local_path:
            raise ValueError("local_path is required for weights that are not in s3://")
        return self

    @property
    def in_s3(self) -> bool:
        """Whether the weights live in S3 (registered in place, never copied)."""
        return self.source_uri.startswith("s3://")

    @property
    def copies_weights(self) -> bool:
        """Whether registration copies local weights into the run's artifacts."""
        return self.kind == "weights" and not self.in_s3


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


def version_source(rec: OnboardingView, artifact_uri: str) -> str:
    """The source of the model version: the run's `model/` artifacts, or the s3/provider URI in place."""
    if not rec.copies_weights:
        return rec.source_uri
    return f"{artifact_uri.rstrip('/')}/model"


def check_local_weights(rec: OnboardingView) -> None:
    """Raise OnboardingError unless the record's local weights folder exists on this machine."""
    if rec.copies_weights and not Path(str(rec.local_path)).is_dir():
        raise OnboardingError(
            f"weights folder {rec.local_path} of model {rec.name!r} does not exist on this "
            "machine: re-run the onboard step here or register where it ran"
        )


def check_s3_weights(rec: OnboardingView, s3: S3ClientLike | None = None) -> S3ClientLike:
    """Check that every manifest file exists under the s3:// source with its recorded size.

    Args:
        rec: The record; its `source_uri` is `s3://bucket/prefix`.
        s3: A boto3 S3 client; built from the environment (AWS_ENDPOINT_URL, credentials) if None.

    Returns:
        The client used, so the caller can reuse it.

    Raises:
        OnboardingError: A file is missing, unreadable or of another size.
    """
    if s3 is None:
        import boto3

        s3 = boto3.client("s3")
    bucket, _, prefix = rec.source_uri.removeprefix("s3://").partition("/")
    for entry in rec.files:
        key = f"{prefix.strip('/')}/{entry.path}" if prefix.strip("/") else entry.path
        try:
            size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
        except Exception as e:
            raise OnboardingError(
                f"weights file s3://{bucket}/{key} of model {rec.name!r} is unreadable "
                f"({type(e).__name__}: {str(e)[:120]}): upload it or re-run the onboard step"
            ) from e
        if size != entry.size:
            raise OnboardingError(
                f"weights file s3://{bucket}/{key} of model {rec.name!r} has {size} bytes, "
                f"the manifest says {entry.size}: re-run the onboard step"
            )
    return s3
