"""What a serving plane is given for a version's weights, and how the plane turns it into a folder it serves.

A step never hands a serving plane a folder of its own pod (under pod isolation the plane, a service outside every
pod, cannot see it): `weights_location` gives the registered version's source, its digest-addressed weights-store
URI (`<root>/weights/sha256/<hex>`, `registry.weights_store`), checked against the version's digest tag. The plane
fetches and verifies it itself (`weights_folder`: `steps.evals.weights.download_weights` into the plane's own model
cache, every file checked against the manifest that must hash to the digest the URI names). A folder is still
accepted where the plane runs in the caller's process (`LocalServing` in a plain run) or for a version registered
before the weights store (its MLflow artifacts are downloaded on the caller's side).
"""

from __future__ import annotations

import re
from pathlib import Path

from registry.errors import IntegrityError
from registry.weights_store import is_weights_uri
from steps.evals.weights import VersionReader, download_weights, model_version, registered_digest
from steps.rollout.serving.base import ServingError

__all__ = ["uri_digest", "weights_folder", "weights_location"]

_HEX = re.compile(r"/weights/sha256/(?P<hex>[0-9a-f]{64})/?$")


def uri_digest(uri: str) -> str:
    """The digest (`sha256:<hex>`) a weights-store URI is addressed by.

    Raises:
        ServingError: `uri` is not a weights-store location.
    """
    match = _HEX.search(uri)
    if match is None or not is_weights_uri(uri):
        raise ServingError(
            f"weights {uri!r} is not a weights store location (<root>/weights/sha256/<hex>) nor a folder: "
            "pass the registered version's source (the onboard step uploads the weights there)"
        )
    return f"sha256:{match['hex']}"


def weights_location(versions: VersionReader, model: str, version: str, home: Path) -> Path | str:
    """What to give a serving plane for version `version` of `model`: its weights-store URI, else a local folder.

    Raises:
        IntegrityError: The version's source names another digest than its digest tag.
        EvalError: The version cannot be read, or (before the weights store) its weights cannot be downloaded.
    """
    mv = model_version(versions, model, version, None)
    source, digest = str(mv.source), registered_digest(mv)
    if is_weights_uri(source):
        if uri_digest(source) != digest:
            raise IntegrityError(
                f"version {version} of {model}: its source {source} is addressed by {uri_digest(source)} but its "
                f"digest tag is {digest}: re-register the model from the onboarded weights"
            )
        return source
    return download_weights(source, digest, home, versions.tracking_uri, mv.run_id or "")


def weights_folder(location: Path | str, home: Path) -> Path:
    """The folder a plane serves `location` from: a folder as given, a weights-store URI fetched and verified.

    Args:
        location: a folder (Path, a path string or a file:// URI of a folder) or a weights-store URI.
        home: the plane's LLMRELEASE_HOME: its model cache (`model-cache/<digest>`) keeps fetched weights.

    Raises:
        ServingError: `location` is a URI but not a weights-store location.
        IntegrityError: A fetched file differs from the manifest, or the manifest from the URI's digest.
        EvalError: The store cannot be read.
    """
    if isinstance(location, Path):
        return location
    if is_weights_uri(location):
        return download_weights(location, uri_digest(location), home, "", "")
    if location.startswith("file://"):
        return Path(location.removeprefix("file://"))
    if "://" in location:
        uri_digest(location)  # raises, naming what a plane accepts
    return Path(location)
