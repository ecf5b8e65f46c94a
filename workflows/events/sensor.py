"""The rendered Argo Events Sensor, simulated: its hardening, its data filters and its trigger's parameters.

What the Sensor does: apply its dependency's data filters to the event data and fill the trigger's Workflow from
its `parameters` mapping (`src.dataKey` -> `dest`). Both are read from the rendered YAML in argo/, never re-stated
here; paths are evaluated with a subset of gjson (keys, indexes, `#`, `#.key`, `#(query)`/`#(query)#` with
`== != < <= > >= % !%`, multipaths `[a,b]`, `@flatten`, `@reverse`, `@this`, `|`), enough for the Sensor this
project renders; anything else is refused by name. The hardening of the rendered EventSource
and Sensor is checked by `workflows.argo.hardening.lint_events` (also run by `llmrelease lint`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from registry.errors import SpecError, WorkflowError
from workflows.argo.hardening import lint_events
from workflows.argo.manifests import load_documents

__all__ = ["Ignored", "evaluate", "gjson_get", "load_trigger", "resolve_workflow"]

_QUERY = re.compile(r"^(?P<path>.*?)\s*(?P<op>==|!=|<=|>=|!%|<|>|=|%)\s*(?P<value>.+)$", re.DOTALL)
_MISSING = object()


class Ignored(Exception):  # an outcome, not an error
    """The Sensor's filters do not pass the event: Argo Events would not trigger (the message says why)."""


# ---- the Sensor, as rendered ------------------------------------------------------------------------------------


def load_trigger(argo_dir: Path, sensor_name: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The rendered Sensor (by name, or the only one fed by a GitHub EventSource) and its EventSource.

    Raises:
        WorkflowError: No such Sensor, several and no name, or its GitHub EventSource is missing or has no
            webhookSecret (Argo Events would then accept unsigned deliveries).
    """
    docs = [d for _, d in load_documents([argo_dir])] if argo_dir.is_dir() else []
    sources = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "EventSource"}
    sensors = [d for d in docs if d.get("kind") == "Sensor" and (sensor_name in (None, d["metadata"]["name"]))]
    sensors = [s for s in sensors if any(dep.get("eventSourceName") in sources for dep in s["spec"]["dependencies"])]
    if len(sensors) != 1:
        names = ", ".join(s["metadata"]["name"] for s in sensors) or "none"
        raise WorkflowError(
            f"{argo_dir}: expected one Sensor fed by a GitHub EventSource"
            f"{f' named {sensor_name}' if sensor_name else ''}, found {names}: run `llmrelease "
            "render` or pass --sensor NAME"
        )
    sensor = sensors[0]
    source = sources[sensor["spec"]["dependencies"][0]["eventSourceName"]]
    problems = lint_events(source) + lint_events(sensor)
    if problems:
        raise WorkflowError(f"{problems[0]}: fix the pipeline module and re-render")
    return sensor, source


def evaluate(sensor: Mapping[str, Any], data: Mapping[str, Any]) -> None:
    """Apply the Sensor's first dependency's data filters to the event data, as Argo Events does.

    Raises:
        Ignored: A filter does not pass (or its path does not exist); the message names it.
        WorkflowError: The filters use something this simulation does not implement.
    """
    dep = sensor["spec"]["dependencies"][0]
    filters = dep.get("filters") or {}
    unsupported = sorted(set(filters) - {"data", "dataLogicalOperator"})
    if unsupported:
        raise WorkflowError(
            f"Sensor {sensor['metadata']['name']}: filters.{unsupported[0]} cannot be simulated; use data filters"
        )
    outcomes = [_data_filter(f, data) for f in filters.get("data") or []]
    failed = [reason for reason in outcomes if reason]
    any_of = filters.get("dataLogicalOperator") == "or"
    if (any_of and outcomes and len(failed) == len(outcomes)) or (not any_of and failed):
        raise Ignored(f"{failed[0]} (Sensor {sensor['metadata']['name']}, dependency {dep['name']})")


def _data_filter(spec: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    """Why the filter does not pass, or "" when it passes."""
    path, kind, values = str(spec["path"]), spec.get("type", "string"), [str(v) for v in spec.get("value") or []]
    if spec.get("template") or spec.get("comparator") not in (None, "", "=", "!="):
        raise WorkflowError(f"data filter on {path}: templates and ordering comparators cannot be simulated")
    found, value = gjson_get(data, path)
    if not found:
        return f"{path} does not exist in the event"
    text = _as_string(value)
    negate = spec.get("comparator") == "!="
    if kind == "string":
        hit = any(bool(re.search(v, text)) != negate for v in values)
    elif kind == "bool":
        hit = any((v.lower() == "true") == (text == "true") for v in values)
    elif kind == "number":
        hit = any(float(v) == float(text or 0) for v in values)
    else:
        raise WorkflowError(f"data filter on {path}: type {kind!r} cannot be simulated (string, bool, number)")
    return "" if hit else f"{path} is {text[:120]!r}, which does not match {' or '.join(values)}"


def resolve_workflow(sensor: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """The Workflow the Sensor's argoWorkflow trigger would submit for this event (its parameters applied).

    Raises:
        SpecError: A parameter's dataKey does not resolve and has no default value (Argo Events would fail).
        WorkflowError: The trigger is not an argoWorkflow submit of an inline resource.
    """
    trigger = sensor["spec"]["triggers"][0]["template"]
    wf = trigger.get("argoWorkflow") or {}
    resource = (wf.get("source") or {}).get("resource")
    if wf.get("operation", "submit") != "submit" or not isinstance(resource, dict):
        raise WorkflowError(f"trigger {trigger.get('name')}: only argoWorkflow submit of source.resource is simulated")
    workflow = json.loads(json.dumps(resource))
    for param in wf.get("parameters") or []:
        src = param["src"]
        found, value = gjson_get(data, str(src.get("dataKey", "")))
        if not found and "value" not in src:
            raise SpecError(
                f"trigger {trigger.get('name')}: {src.get('dataKey')} is missing from the event, so "
                f"{param['dest']} cannot be set: the payload is not a complete push event"
            )
        text = _as_string(value) if found else str(src["value"])
        _set(workflow, str(param["dest"]), text, str(param.get("operation") or "overwrite"))
    return workflow


def _set(doc: Any, dest: str, value: str, operation: str) -> None:
    """sjson-style set of a dotted path (numeric parts index lists); append/prepend concatenate strings."""
    parts = dest.split(".")
    for part in parts[:-1]:
        doc = doc[int(part)] if isinstance(doc, list) else doc.setdefault(part, {})
    last = parts[-1]
    key: Any = int(last) if isinstance(doc, list) else last
    old = str(doc[key]) if (isinstance(doc, list) or key in doc) and doc[key] is not None else ""
    doc[key] = old + value if operation == "append" else value + old if operation == "prepend" else value


# ---- gjson, the subset the Sensor uses --------------------------------------------------------------------------


def gjson_get(data: Any, path: str) -> tuple[bool, Any]:
    """(exists, value) of a gjson path in decoded JSON `data`.

    Raises:
        WorkflowError: The path uses gjson syntax outside the supported subset.
    """
    return _eval(data, _split(path))


def _as_string(value: Any) -> str:
    """Like gjson's Result.String(): strings as they are, other values as compact JSON, null as ""."""
    if isinstance(value, str):
        return value
    return "" if value is None else json.dumps(value, separators=(",", ":"))


def _split(path: str) -> list[tuple[str, str]]:
    """Components of a path with the separator before each ('.' or '|'), honouring escapes, quotes and brackets."""
    parts: list[tuple[str, str]] = []
    sep, buf, depth, quoted, i = ".", "", 0, False, 0
    while i < len(path):
        ch = path[i]
        if ch == "\\" and i + 1 < len(path):
            buf, i = buf + path[i : i + 2], i + 2
            continue
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in "([{":
            depth += 1
        elif not quoted and ch in ")]}":
            depth -= 1
        elif not quoted and depth == 0 and ch in ".|":
            parts.append((sep, buf))
            sep, buf = ch, ""
            i += 1
            continue
        buf += ch
        i += 1
    parts.append((sep, buf))
    return parts


def _eval(value: Any, comps: list[tuple[str, str]]) -> tuple[bool, Any]:
    if not comps:
        return True, value
    (_, comp), rest = comps[0], comps[1:]
    if comp.startswith("@"):
        return _eval(_modifier(value, comp), rest)
    if comp.startswith("["):
        found = [v for p in _split_top(comp[1:-1]) for ok, v in [gjson_get(value, p)] if ok]
        return _eval(found, rest)
    if isinstance(value, list):
        return _eval_array(value, comp, rest)
    if isinstance(value, dict):
        key = re.sub(r"\\(.)", r"\1", comp)
        return _eval(value[key], rest) if key in value else (False, None)
    return False, None


def _eval_array(items: list[Any], comp: str, rest: list[tuple[str, str]]) -> tuple[bool, Any]:
    if comp.isdigit():
        return _eval(items[int(comp)], rest) if int(comp) < len(items) else (False, None)
    if comp == "#" and not (rest and rest[0][0] == "."):
        return _eval(len(items), rest)
    if comp == "#" or comp.endswith(")#"):
        chosen = items if comp == "#" else [x for x in items if _matches(x, comp[2:-2])]
        inner = rest[: next((i for i, (s, _) in enumerate(rest) if s == "|"), len(rest))]
        projected = [v for x in chosen for ok, v in [_eval(x, inner)] if ok]
        return _eval(projected, rest[len(inner) :])
    if comp.startswith("#(") and comp.endswith(")"):
        match = next((x for x in items if _matches(x, comp[2:-1])), _MISSING)
        return (False, None) if match is _MISSING else _eval(match, rest)
    return False, None


def _split_top(text: str) -> list[str]:
    """Split a multipath body on top-level commas."""
    out, buf, depth, quoted = [], "", 0, False
    for ch in text:
        quoted = not quoted if ch == '"' else quoted
        depth += (ch in "([{") - (ch in ")]}") if not quoted else 0
        if ch == "," and depth == 0 and not quoted:
            out.append(buf)
            buf = ""
        else:
            buf += ch
    return [*out, buf] if buf else out


def _modifier(value: Any, comp: str) -> Any:
    name, _, arg = comp[1:].partition(":")
    if name == "this":
        return value
    if name == "reverse":
        return list(reversed(value)) if isinstance(value, list) else value
    if name == "flatten":
        deep = bool(arg and json.loads(arg).get("deep"))
        return _flatten(value, deep) if isinstance(value, list) else value
    raise WorkflowError(f"gjson modifier @{name} cannot be simulated (supported: @flatten, @reverse, @this)")


def _flatten(items: list[Any], deep: bool) -> list[Any]:
    out: list[Any] = []
    for item in items:
        out += (_flatten(item, deep) if deep else item) if isinstance(item, list) else [item]
    return out


def _matches(item: Any, query: str) -> bool:
    """A gjson query condition (`key op value`, `op value` for the element itself, or `key` for existence)."""
    m = _QUERY.match(query)
    if m is None:
        return gjson_get(item, query)[0]
    found, left = gjson_get(item, m["path"]) if m["path"] else (True, item)
    try:
        right = json.loads(m["value"])
    except ValueError as e:
        raise WorkflowError(f'gjson query ({query}): the value must be a JSON literal such as "x" or 3') from e
    if not found:
        return False
    op = m["op"]
    if op in ("%", "!%"):
        like = isinstance(left, str) and bool(_like(str(right)).fullmatch(left))
        return like if op == "%" else not like
    if op in ("==", "="):
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    try:
        return bool({"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op])
    except TypeError:
        return False


def _like(pattern: str) -> re.Pattern[str]:
    """Like gjson's match: `*` any run of characters, `?` one character, everything else literal."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.DOTALL)
