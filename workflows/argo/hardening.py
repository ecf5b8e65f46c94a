"""Argo Events hardening rules, checked by `llmrelease lint` and before `webhook simulate` trusts a Sensor."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["lint_events"]


def lint_events(doc: Mapping[str, Any]) -> list[str]:
    """The hardening an Argo Events object must have: GitHub sources verify HMAC; Sensor filters are anchored.

    Returns:
        One message per fault (empty for other kinds): a GitHub event without webhookSecret (Argo Events then skips
        the HMAC check), a string data filter not anchored with ^...$ (they match anywhere), a trigger parameter
        naming no dependency.
    """
    spec, kind, name = doc.get("spec") or {}, doc.get("kind"), (doc.get("metadata") or {}).get("name")
    out: list[str] = []
    if kind == "EventSource":
        for event, github in (spec.get("github") or {}).items():
            secret = github.get("webhookSecret") or {}
            if not (secret.get("name") and secret.get("key")):
                out.append(
                    f"EventSource {name}: github.{event} has no webhookSecret {{name, key}}, so Argo Events "
                    "would skip the HMAC check"
                )
    elif kind == "Sensor":
        deps = {d.get("name"): d for d in spec.get("dependencies") or []}
        for dep_name, dep in deps.items():
            for f in (dep.get("filters") or {}).get("data") or []:
                loose = [v for v in f.get("value") or [] if f.get("type") == "string" and not re.match(r"^\^.*\$$", v)]
                out += [
                    f"Sensor {name}: dependency {dep_name}: data filter on {f.get('path')} value {v!r} is not "
                    "anchored (^...$); it would match anywhere in the value"
                    for v in loose
                ]
        for trigger in spec.get("triggers") or []:
            for kind_name, body in (trigger.get("template") or {}).items():
                params = body.get("parameters") or [] if isinstance(body, dict) else []
                out += [
                    f"Sensor {name}: trigger {kind_name}: parameter for {p.get('dest')} names dependency "
                    f"{p['src'].get('dependencyName')!r}, which the Sensor does not declare"
                    for p in params
                    if (p.get("src") or {}).get("dependencyName") not in deps
                ]
    return out
