"""Argo's `http` template, as Argo's agent executes it (workflow/executor/agent.go), with httpx.

The request: `method` (default GET), `url`, `headers` (`value`, or `valueFrom.secretKeyRef` from the Secrets of
`--cluster-config`; a `Host` header sets the request's host), `body` or `bodyFrom.bytes` (base64, as Kubernetes
writes `[]byte`), `timeoutSeconds` (the API's documented default, 30 s, when unset), `insecureSkipVerify`;
redirects are followed, as Go's default client does. The node's `outputs.result` is the response body.

The outcome, as the agent reports it: without `successCondition` a 2xx status is Succeeded and any other status
Failed "received non-2xx response code: N"; with one, the expr-lang expression over `request.{method, url, body,
bodyBytes, headers}` and `response.{statusCode, body, headers}` (headers as Go's `map[string][]string`, canonical
names) decides: false is Failed "successCondition 'EXPR' evaluated false". A request that cannot be made or
answered (connection refused, no such host, timeout, a missing Secret or key) is Failed with the error, in Go's
words where they differ (`Get "URL": dial tcp HOST:PORT: connect: connection refused`).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from registry.errors import WorkflowError
from workflows.argo.expressions import substitute
from workflows.argo.exprlang import evaluate_expr
from workflows.runner.cluster import ClusterConfig
from workflows.runner.nodes import Node, NodeBook

__all__ = ["HttpOutcome", "call_http", "run_http_node"]

DEFAULT_TIMEOUT = 30.0  # seconds; HTTP.TimeoutSeconds' documented default


class Runner(Protocol):
    """What an http node needs from the engine: its node book and the cluster's Secrets."""

    book: NodeBook
    cluster: ClusterConfig


@dataclass(frozen=True)
class HttpOutcome:
    """The agent's NodeResult: phase, message and the response body (`outputs.result`; None without one)."""

    phase: str
    message: str
    body: str | None = None


class _RequestFailed(Exception):
    """The request could not be made or answered: the node is Failed with this message."""


def run_http_node(runner: Runner, tmpl: Mapping[str, Any], scope: Mapping[str, str], node: Node) -> Node:
    """Run the `http` template of `tmpl` for `node` (its `{{...}}` substituted from `scope`) and finish the node."""
    scope = {**scope, "node.name": node.name}
    try:
        spec = _substituted(tmpl["http"] or {}, scope, f"template {tmpl['name']}: http")
        outcome = call_http(spec, runner.cluster)
    except WorkflowError as e:
        return runner.book.finish(node, "Error", str(e))
    node.result = outcome.body
    return runner.book.finish(node, outcome.phase, outcome.message)


def call_http(spec: Mapping[str, Any], cluster: ClusterConfig) -> HttpOutcome:
    """Make the request `spec` (an `http` template, substituted) describes and judge the response as Argo's agent.

    Raises:
        WorkflowError: `bodyFrom.bytes` is not base64 (Argo would not have accepted the workflow).
    """
    method = str(spec.get("method") or "GET").upper()
    url = str(spec.get("url") or "")
    body = _body(spec)
    try:
        headers = _headers(spec.get("headers") or [], cluster)
        timeout = float(spec["timeoutSeconds"]) if spec.get("timeoutSeconds") is not None else DEFAULT_TIMEOUT
        verify = not spec.get("insecureSkipVerify")
        with httpx.Client(timeout=timeout, verify=verify, follow_redirects=True) as client:
            response = client.request(method, url, headers=headers, content=body)
    except _RequestFailed as e:
        return HttpOutcome("Failed", str(e))
    except (httpx.HTTPError, httpx.InvalidURL) as e:
        return HttpOutcome("Failed", _go_error(method, url, e))
    text = response.content.decode("utf-8", errors="replace")
    condition = str(spec.get("successCondition") or "")
    if not condition:
        if 200 <= response.status_code < 300:
            return HttpOutcome("Succeeded", "", text)
        return HttpOutcome("Failed", f"received non-2xx response code: {response.status_code}", text)
    env = {"request": _request_env(spec, method, url, body), "response": _response_env(response, text)}
    try:
        success = evaluate_expr(condition, env)
    except WorkflowError as e:
        return HttpOutcome("Failed", str(e))
    if success is not True:
        return HttpOutcome("Failed", f"successCondition '{condition}' evaluated false", text)
    return HttpOutcome("Succeeded", "", text)


def _substituted(value: Any, scope: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):
        return substitute(value, scope, where=where)
    if isinstance(value, Mapping):
        return {k: _substituted(v, scope, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_substituted(v, scope, where) for v in value]
    return value


def _body(spec: Mapping[str, Any]) -> bytes:
    """`bodyFrom.bytes` (base64 in YAML/JSON, as Kubernetes encodes []byte), else `body`."""
    source = spec.get("bodyFrom")
    if source is not None:
        raw = (source or {}).get("bytes")
        try:
            return base64.b64decode(str(raw or ""), validate=True)
        except ValueError as e:
            raise WorkflowError(f"http.bodyFrom.bytes is not base64 ({e}); encode the body with base64") from e
    return str(spec.get("body") or "").encode()


def _headers(declared: list[Mapping[str, Any]], cluster: ClusterConfig) -> list[tuple[str, str]]:
    """Each header's value, a `valueFrom.secretKeyRef` read from the cluster's Secrets (GetSecrets' errors)."""
    out = []
    for header in declared:
        value = str(header.get("value") or "")
        ref = (header.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            name, key = str(ref.get("name", "")), str(ref.get("key", ""))
            if name not in cluster.secrets:
                raise _RequestFailed(f'secrets "{name}" not found: add a Secret named {name} to {cluster.source}')
            if key not in cluster.secrets[name]:
                raise _RequestFailed(f"secret '{name}' does not have the key '{key}': add it to {cluster.source}")
            value = cluster.secrets[name][key]
        out.append((str(header["name"]), value))
    return out


def _request_env(spec: Mapping[str, Any], method: str, url: str, body: bytes) -> dict[str, Any]:
    plain = {str(h["name"]): [str(h.get("value") or "")] for h in spec.get("headers") or [] if not h.get("valueFrom")}
    return {
        "method": str(spec.get("method") or ""),
        "url": url,
        "body": str(spec.get("body") or ""),
        "bodyBytes": body.decode("utf-8", errors="replace") if spec.get("bodyFrom") is not None else None,
        "headers": plain,
    }


def _response_env(response: httpx.Response, text: str) -> dict[str, Any]:
    headers: dict[str, list[str]] = {}
    for name, value in response.headers.multi_items():
        headers.setdefault(_canonical(name), []).append(value)
    return {"statusCode": response.status_code, "body": text, "headers": headers}


def _canonical(name: str) -> str:
    """Go's textproto.CanonicalMIMEHeaderKey: `content-type` -> `Content-Type`."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def _go_error(method: str, url: str, error: Exception) -> str:
    """The error as Go's http.Client words it: `Get "URL": REASON` (url.Error)."""
    op = method[:1] + method[1:].lower()
    reason = re.sub(r"^\[Errno -?\d+\] ", "", str(error)) or type(error).__name__
    if isinstance(error, httpx.TimeoutException):
        reason = "context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
    elif isinstance(error, httpx.ConnectError):
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        reason = f"dial tcp {parts.hostname}:{port}: connect: {reason[:1].lower()}{reason[1:]}"
    return f'{op} "{url}": {reason}'
