"""Simulate a GitHub delivery through the rendered Argo Events EventSource and Sensor, on this machine.

What the EventSource does: verify `X-Hub-Signature-256` (HMAC SHA-256 of the raw body with the webhook secret;
`hmac.compare_digest`), parse the body, add `X-GitHub-Event` and `X-GitHub-Delivery` to it, and wrap it as the
event data `{"headers": ..., "body": ...}`. What the Sensor does (its data filters, its trigger's parameters, the
gjson subset they use) is simulated in `workflows.events.sensor`; its names are re-exported here.

Deliveries that started a run are remembered under `$LLMRELEASE_HOME/webhook-deliveries/<id>.json`, so a
redelivery (same `X-GitHub-Delivery`) never starts a second run, as the Workflow name derived from it guarantees
on a cluster.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from registry.errors import ReleaseError, SpecError
from workflows.argo.hardening import lint_events
from workflows.events.sensor import Ignored, evaluate, gjson_get, load_trigger, resolve_workflow

__all__ = [
    "Delivery",
    "Ignored",
    "WebhookRefused",
    "claim_delivery",
    "evaluate",
    "event_data",
    "gjson_get",
    "load_trigger",
    "past_delivery",
    "resolve_workflow",
    "verify_signature",
]

_DELIVERY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")


class WebhookRefused(ReleaseError):
    """The delivery is not authentic (no, malformed or wrong signature): nothing runs."""


@dataclass(frozen=True)
class Delivery:
    """One webhook delivery: the raw body and the headers GitHub sends with it."""

    body: bytes
    signature: str | None
    delivery_id: str
    event: str = "push"


def verify_signature(body: bytes, signature: str | None, secret: str) -> None:
    """Check `X-Hub-Signature-256` (`sha256=<hex>`) against the HMAC SHA-256 of `body` under `secret`.

    Raises:
        WebhookRefused: No signature, not in the sha256= form, or not matching.
    """
    if not signature:
        raise WebhookRefused("no X-Hub-Signature-256 signature: refused, nothing run (pass --signature sha256=<hex>)")
    scheme, _, digest = signature.partition("=")
    if scheme != "sha256" or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
        raise WebhookRefused(
            f"signature {signature[:20]!r} is not sha256=<64 hex digits>: refused, nothing run "
            "(GitHub sends X-Hub-Signature-256; SHA-1 signatures are not accepted)"
        )
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, digest.lower()):
        raise WebhookRefused(
            "signature does not match the payload and the webhook secret: refused, nothing run "
            "(check the secret; the body must be the exact bytes GitHub signed)"
        )


def event_data(delivery: Delivery) -> dict[str, Any]:
    """The Argo Events event data for a verified delivery.

    Raises:
        SpecError: The body is not a JSON object, or the delivery id is not a GitHub delivery GUID.
    """
    if not _DELIVERY_ID.match(delivery.delivery_id):
        raise SpecError(
            f"delivery id {delivery.delivery_id!r} is not a GitHub delivery GUID: pass --delivery-id "
            "like 72d3162e-cc78-11e3-81ab-4c9367dc0958"
        )
    try:
        body = json.loads(delivery.body)
    except ValueError as e:
        raise SpecError(f"payload is not valid JSON ({e}): pass the exact body GitHub delivered") from e
    if not isinstance(body, dict):
        raise SpecError(f"payload is a JSON {type(body).__name__}, not an object: pass a GitHub push event body")
    body.update({"X-GitHub-Event": delivery.event, "X-GitHub-Delivery": delivery.delivery_id})
    headers = {
        "Content-Type": ["application/json"],
        "X-Github-Event": [delivery.event],
        "X-Github-Delivery": [delivery.delivery_id],
        "X-Hub-Signature-256": [delivery.signature or ""],
    }
    return {"headers": headers, "body": body}


# ---- deliveries already handled ---------------------------------------------------------------------------------


def past_delivery(home: Path, delivery_id: str) -> dict[str, Any] | None:
    """What a previous delivery with this id started, or None if it never started a run."""
    path = home / "webhook-deliveries" / f"{delivery_id}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None if not path.exists() else {"workflow": "?"}
    return data


def claim_delivery(home: Path, delivery_id: str, workflow: str) -> bool:
    """Record that this delivery starts `workflow`; False when another process recorded it first."""
    folder = home / "webhook-deliveries"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(folder / f"{delivery_id}.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"workflow": workflow, "at": datetime.now(UTC).isoformat()}, f)
    return True
