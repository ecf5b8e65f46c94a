"""Simulate a GitHub delivery through the rendered Argo Events EventSource and Sensor, on this machine.

What the EventSource does: verify `X-Hub-Signature-256` (HMAC SHA-256 of the raw body with the webhook secret;
`hmac.compare_digest`), parse the body, add `X-GitHub-Event` and `X-GitHub-Delivery` to it, and wrap it as the
event data `{"headers": ..., "body": ...}`. What the Sensor does (its data filters, its trigger's parameters, the
gjson subset they use) is simulated in `workflows.events.sensor`; its names are re-exported here.

Hostile bodies are refused in one line, never read whole into memory or parsed recursively: a body over the
EventSource's `maxPayloadSize` (`read_body`, reading at most one byte more than the limit) and JSON nested deeper
than `MAX_DEPTH` levels (`parse_body`, checked without recursion before `json.loads`).

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
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import accumulate
from pathlib import Path
from typing import IO, Any

from registry.errors import ReleaseError, SpecError, WorkflowError
from workflows.events.sensor import Ignored, evaluate, gjson_get, load_trigger, resolve_workflow

__all__ = [
    "ARGO_EVENTS_MAX_PAYLOAD",
    "MAX_DEPTH",
    "Delivery",
    "Ignored",
    "WebhookRefused",
    "claim_delivery",
    "evaluate",
    "event_data",
    "gjson_get",
    "load_trigger",
    "parse_body",
    "past_delivery",
    "payload_limit",
    "read_body",
    "resolve_workflow",
    "verify_signature",
]

_DELIVERY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
ARGO_EVENTS_MAX_PAYLOAD = 1024 * 1024  # Argo Events' webhook maxPayloadSize when the EventSource sets none
MAX_DEPTH = 64  # JSON nesting accepted in a body; a GitHub push event nests about 5 levels
_CHUNK = 1024 * 1024
_STRING = re.compile(rb'"[^"]*"')  # once escapes are gone: linear, nothing to backtrack into
_BRACKETS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 and -1 as signed bytes
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


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
    body = parse_body(delivery.body)
    body.update({"X-GitHub-Event": delivery.event, "X-GitHub-Delivery": delivery.delivery_id})
    headers = {
        "Content-Type": ["application/json"],
        "X-Github-Event": [delivery.event],
        "X-Github-Delivery": [delivery.delivery_id],
        "X-Hub-Signature-256": [delivery.signature or ""],
    }
    return {"headers": headers, "body": body}


# ---- hostile bodies ---------------------------------------------------------------------------------------------


def payload_limit(event_source: Mapping[str, Any]) -> int:
    """The largest body the EventSource accepts: its GitHub webhook's `maxPayloadSize`, else Argo Events' 1 MiB.

    Raises:
        WorkflowError: `maxPayloadSize` is not a positive integer.
    """
    for github in ((event_source.get("spec") or {}).get("github") or {}).values():
        size = (github.get("webhook") or {}).get("maxPayloadSize")
        if size is None:
            continue
        if isinstance(size, bool) or not str(size).isdigit() or int(size) <= 0:
            raise WorkflowError(
                f"EventSource {event_source.get('metadata', {}).get('name')}: webhook.maxPayloadSize {size!r} is "
                "not a positive number of bytes: fix workflows/pipelines/git_webhook.py and re-render"
            )
        return int(size)
    return ARGO_EVENTS_MAX_PAYLOAD


def read_body(source: Path | IO[bytes], limit: int) -> bytes:
    """The delivery body in `source`, read in chunks and never more than `limit` + 1 bytes of it.

    Raises:
        SpecError: `source` is a file that cannot be read.
        WebhookRefused: The body is larger than `limit` bytes (the EventSource answers "request too large").
    """
    if not isinstance(source, Path):
        return _read_at_most(source, limit, "payload")
    try:
        with source.open("rb") as f:
            known = os.fstat(f.fileno()).st_size  # a regular file says its size: refuse without reading any
            return _read_at_most(f, limit, f"payload {source}", skip=known > limit)
    except OSError as e:
        raise SpecError(f"payload {source}: cannot read it ({e.strerror or e}): pass the delivery's JSON body") from e


def _read_at_most(stream: IO[bytes], limit: int, what: str, skip: bool = False) -> bytes:
    chunks: list[bytes] = []
    size = limit + 1 if skip else 0
    while size <= limit:
        chunk = stream.read(min(_CHUNK, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    raise WebhookRefused(
        f"{what} is larger than {limit} bytes (the EventSource's maxPayloadSize): refused, nothing run "
        "(GitHub caps payloads at 25 MB; raise MAX_PAYLOAD_BYTES in workflows/pipelines/git_webhook.py for more)"
    )


def parse_body(body: bytes, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The JSON object in a delivery body, refusing nesting deeper than `max_depth` before any recursive parse.

    Raises:
        SpecError: The body is not UTF-8 JSON, not an object, or nests arrays/objects deeper than `max_depth`.
    """
    if _nests_deeper(body, max_depth):
        raise SpecError(
            f"payload nests arrays/objects deeper than {max_depth} levels: refused, nothing run (a GitHub push "
            "event nests about 5; pass the exact body GitHub delivered)"
        )
    try:
        data = json.loads(body.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise SpecError(f"payload is not valid JSON ({e}): pass the exact body GitHub delivered") from e
    if not isinstance(data, dict):
        raise SpecError(f"payload is a JSON {type(data).__name__}, not an object: pass a GitHub push event body")
    return data


def _nests_deeper(body: bytes, limit: int) -> bool:
    """Whether JSON text nests arrays/objects deeper than `limit`, found without recursion, in linear time.

    Escapes go first (backslash pairs, then escaped quotes: JSON pairs backslashes from the left), then strings;
    the brackets left become +1/-1 and the depth is their largest running sum (C loops: about 1.5 s for 25 MiB of
    brackets, instant for a real push event). UTF-8 never has these bytes inside a multibyte character; invalid
    JSON is left for `json.loads` to name.
    """
    text = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    steps = _STRING.sub(b"", text).translate(_BRACKETS, _NOT_BRACKETS)
    if b"\x01" * (limit + 1) in steps:  # a run of opening brackets: the usual attack, found at once
        return True
    signed = array("b")
    signed.frombytes(steps)
    return max(accumulate(signed), default=0) > limit


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
