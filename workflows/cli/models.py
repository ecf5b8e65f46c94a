"""Which models the registry holds: `llmrelease registry list`, and the check every per-model command makes first.

A model is known when it is a registered model in MLflow (MLFLOW_TRACKING_URI, else the local sqlite store). A
command given another name fails with exit 1, naming the model, the closest registered names and how to list
them, instead of reporting an empty state or blaming something else.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.errors import RegistryError, ReleaseError

if TYPE_CHECKING:
    from registry.facade import ModelRegistry

__all__ = ["registered_models", "require_model"]


def registered_models() -> list[dict[str, Any]]:
    """Every registered model: name, aliases (alias -> version) and latest version, sorted by name.

    Raises:
        RegistryError: The tracking server is unreachable.
    """
    from registry.client import call_with_retry, check_reachable, plain_mlflow_client
    from registry.settings import tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    check_reachable(uri)
    client = plain_mlflow_client(uri)
    found: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page = call_with_retry(client.search_registered_models, max_results=200, page_token=token, uri=uri)
        for model in page:
            versions = [int(v.version) for v in model.latest_versions or [] if str(v.version).isdigit()]
            found.append(
                {
                    "name": str(model.name),
                    "aliases": {str(k): str(v) for k, v in (model.aliases or {}).items()},
                    "latest_version": str(max(versions)) if versions else None,
                }
            )
        token = getattr(page, "token", None)
        if not token:
            return sorted(found, key=lambda m: m["name"])


def require_model(name: str) -> ModelRegistry:
    """The registry, once it is known to hold registered model `name`.

    Raises:
        RegistryError: `name` is not a registered model (names close ones and `llmrelease registry list`), or
            the registry is unreachable.
    """
    from registry.facade import ModelRegistry
    from registry.settings import tracking_uri

    registry = ModelRegistry.from_env()
    try:
        registry.history(name)  # the facade refuses a name it holds no registered model of
    except RegistryError as e:
        try:
            names = [m["name"] for m in registered_models()]
        except (ReleaseError, OSError):
            raise e from None  # unreachable or broken: the facade's own message says so
        if name in names:
            raise
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise RegistryError(
            f"unknown model {name!r}: no registered model of that name at {tracking_uri()}{hint}: list the registered "
            "models with `llmrelease registry list`, or check MLFLOW_TRACKING_URI"
        ) from e
    return registry
