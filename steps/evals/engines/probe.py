"""Probing a provider source (for onboarding): one real one-token completion with the configured key.

A provider model (openai:// or https://host/v1#<model>) has no files to check, so onboarding asks the endpoint
itself before anything is registered: the API key must be set (env OPENAI_API_KEY, from the provider's Secret
in a pod, as `steps.evals.engines.http_engine` reads it at eval) and one chat completion of one token must
succeed, through the same engine and retry policy (`registry.retry`) the eval uses, within the deadline.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from registry.errors import OnboardingError, ReleaseError
from steps.release.records import ProviderRef

__all__ = ["API_KEY_ENV", "ProviderProbe", "probe_provider"]

API_KEY_ENV = "OPENAI_API_KEY"
"""The environment variable holding a provider's API key (the eval engine's default)."""

ProviderProbe = Callable[[ProviderRef, float], None]
"""`probe(provider, deadline_s)`: raises `OnboardingError` when the provider cannot answer."""


def probe_provider(provider: ProviderRef, deadline_s: float) -> None:
    """Ask `provider` for a one-token completion with the key in env OPENAI_API_KEY.

    Args:
        provider: The base URL and model id.
        deadline_s: The total deadline of the probe, retries included.

    Raises:
        OnboardingError: The key is not set, or the endpoint is unreachable or refused the request.
    """
    from steps.evals.engines.http_engine import OpenAIHTTPEngine

    where = f"provider model {provider.model!r} at {provider.base_url}"
    if not os.environ.get(API_KEY_ENV, "").strip():
        raise OnboardingError(
            f"model.source: {where}: env {API_KEY_ENV} is not set: set it from the provider's Secret "
            "(nothing was registered)"
        )
    engine = OpenAIHTTPEngine(
        provider.base_url,
        provider.model,
        api_key_env=API_KEY_ENV,
        timeout_s=min(30.0, deadline_s),
        budget_requests=8,
        concurrency=1,
        deadline_s=deadline_s,
    )
    try:
        engine.generate(["Say OK."], max_new_tokens=1, temperature=0.0)
    except ReleaseError as e:
        raise OnboardingError(
            f"model.source: probing {where} with a one-token completion failed: {e} (nothing was registered)"
        ) from e
