"""The one error hierarchy of llmrelease.

Every error a user can cause is a `ReleaseError` whose message names the object at fault and the fix, on one
line. The CLI prints `str(error)` on stderr and exits non-zero; it never shows a traceback for these.
"""

from __future__ import annotations

__all__ = [
    "TRANSIENT_EXIT_CODE",
    "ReleaseError",
    "SpecError",
    "PolicyError",
    "OnboardingError",
    "RegistryError",
    "IntegrityError",
    "WorkflowError",
]


TRANSIENT_EXIT_CODE = 75
"""The exit code of a step whose service (MLflow, S3, a provider) stayed unreachable past its deadline: sysexits'
EX_TEMPFAIL, "try again later". The pipelines' retryStrategy retries this code, and no other failure."""


class ReleaseError(Exception):
    """Base of every error llmrelease raises on purpose (bad input, refused policy, failed dependency)."""

    exit_code: int = 1


class SpecError(ReleaseError):
    """A release spec, policy file or parameter is malformed: names the field and the fix."""

    exit_code = 2


class PolicyError(ReleaseError):
    """The platform policy refuses the model: names the rule that refused it."""


class OnboardingError(ReleaseError):
    """A model source, its weights, config or eval datasets failed a check."""


class RegistryError(ReleaseError):
    """The model registry (MLflow) refused, was unreachable, or holds an inconsistent state."""


class IntegrityError(ReleaseError):
    """Weights differ from the manifest they were onboarded or registered under: names the file and both digests."""


class WorkflowError(ReleaseError):
    """An Argo manifest is invalid or cannot run on the local runner."""

    exit_code = 2
