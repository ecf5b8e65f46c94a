"""The champion's weights, for a prompt-only release (`model.source: champion`).

A prompt-only release keeps the weights the model's `champion` alias points at: onboarding resolves that version,
fetches its weights (digest-addressed, verified: the `fetch` given, `steps.evals.weights.download_weights` in the
onboard step) for the prompt's token
budget and the weights checks, and records the version; register then moves no model alias and registers only the
prompt. The champion is read once, at onboarding: a champion that moves afterwards is caught by the register step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from registry.errors import OnboardingError, ReleaseError
from registry.tags import CHAMPION, DIGEST_TAG, SOURCE_URI_TAG
from registry.weights_store import WeightsStore, is_weights_uri
from steps.onboarding.sources import Source
from steps.release.records import FileEntry

__all__ = ["ChampionReader", "ChampionWeights", "Fetch", "champion_weights"]

Fetch = Callable[[str, str, Path, str, str], Path]
"""(source, digest, home, tracking URI, run id) -> the verified local weights folder."""


class ChampionReader(Protocol):
    """What resolving the champion needs: the model's aliases and its versions (an `MlflowClient` has both)."""

    @property
    def tracking_uri(self) -> str:  # noqa: D102
        ...

    def get_model_version_by_alias(self, name: str, alias: str) -> Any: ...  # noqa: D102


@dataclass(frozen=True)
class ChampionWeights:
    """The champion version a prompt-only release keeps, and its weights as an onboarding `Source`."""

    version: str
    source: Source


def champion_weights(client: ChampionReader, name: str, home: Path, fetch: Fetch) -> ChampionWeights:
    """The version `champion` of model `name` and its verified weights, fetched into `home`'s model cache.

    Raises:
        OnboardingError: The model has no champion, the champion is a provider model, or its weights cannot be
            fetched; one line naming the model and the fix.
    """
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except Exception as e:
        raise OnboardingError(
            f"model.source 'champion': {name} has no champion at {client.tracking_uri} ({str(e)[:120]}): release "
            "weights first (a model.source with the weights), or check the model name"
        ) from e
    source = str(dict(mv.tags or {}).get(SOURCE_URI_TAG) or mv.source)
    if not is_weights_uri(str(mv.source)):
        raise OnboardingError(
            f"model.source 'champion': champion version {mv.version} of {name} is {source}, not weights in the "
            "weights store: a prompt-only release needs weights the platform serves; release the prompt with weights"
        )
    digest = str(dict(mv.tags or {}).get(DIGEST_TAG) or "")
    if not digest:
        raise OnboardingError(
            f"model.source 'champion': version {mv.version} of {name} has no {DIGEST_TAG} tag: register it with the "
            "register step"
        )
    try:
        folder = fetch(str(mv.source), digest, home, client.tracking_uri, mv.run_id or "")
        manifest = WeightsStore.for_uri(str(mv.source)).read_manifest(str(mv.source), expected=digest)
    except ReleaseError as e:
        raise OnboardingError(f"model.source 'champion': weights of {name} version {mv.version}: {e}") from e
    files = [FileEntry(path=f.path, sha256=f.sha256, size=f.size) for f in manifest.files]
    weights = Source(kind="weights", uri=str(mv.source), digest=digest, local_dir=folder, files=files)
    return ChampionWeights(version=str(mv.version), source=weights)
