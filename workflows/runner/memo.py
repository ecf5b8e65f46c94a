"""Argo's `memoize` (key, maxAge, cache.configMap.name): a template's outputs reused across workflows.

Argo's controller keeps a memoized node's outputs in a ConfigMap (workflow/controller/cache/): the entry under the
memoization key is JSON `{nodeID, outputs, creationTimestamp, lastHitTimestamp}`, the ConfigMap is labelled
`workflows.argoproj.io/configmap-type: Cache`, and a node whose key is found (and not older than `maxAge`) is
Succeeded at once with those outputs and `memoizationStatus {hit: true, key, cacheName}`, its pod never created.
Only a Succeeded node is saved. The local runner keeps each such ConfigMap, in Kubernetes' shape, as
`<LLMRELEASE_HOME>/memoize/<namespace>/<name>.json`, written under a file lock so runs in parallel share it.
"""

from __future__ import annotations

import calendar
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.errors import WorkflowError
from registry.settings import llmrelease_home
from workflows.argo.expressions import substitute
from workflows.runner.nodes import Node
from workflows.runner.pods import parse_duration

__all__ = ["Memo", "memo_of", "outputs_of", "restore_outputs"]

_KEY = re.compile(r"[a-zA-Z0-9][-a-zA-Z0-9]*")  # Argo's cacheKeyRegex
_CACHE_LABEL = {"workflows.argoproj.io/configmap-type": "Cache"}
_TIME = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Memo:
    """One node's memoization: its key, the ConfigMap that caches it, and how old an entry may be (s)."""

    key: str
    cache: str
    namespace: str
    max_age: float | None

    @property
    def path(self) -> Path:
        """The ConfigMap's file."""
        return llmrelease_home() / "memoize" / self.namespace / f"{self.cache}.json"

    def status(self, hit: bool) -> dict[str, Any]:
        """Argo's `memoizationStatus` of the node."""
        return {"hit": hit, "key": self.key, "cacheName": self.cache}

    def load(self) -> dict[str, Any] | None:
        """The cached outputs (Argo's `outputs` shape) when the key is there and young enough, else None.

        A hit stamps the entry's `lastHitTimestamp`, as Argo does.
        """
        with self._locked() as config_map:
            raw = config_map["data"].get(self.key)
            if not raw:
                return None
            entry = json.loads(raw)
            created = calendar.timegm(time.strptime(entry["creationTimestamp"], _TIME))
            if self.max_age is not None and time.time() - created > self.max_age:
                return None  # expired: the node runs, and its success replaces the entry
            entry["lastHitTimestamp"] = time.strftime(_TIME, time.gmtime())
            config_map["data"][self.key] = json.dumps(entry)
            return dict(entry.get("outputs") or {})

    def save(self, node_id: str, outputs: Mapping[str, Any]) -> None:
        """Record a Succeeded node's outputs under the key (a new entry, as Argo's Save writes it)."""
        now = time.strftime(_TIME, time.gmtime())
        entry = {"nodeID": node_id, "outputs": dict(outputs), "creationTimestamp": now, "lastHitTimestamp": now}
        with self._locked() as config_map:
            config_map["data"][self.key] = json.dumps(entry)

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The ConfigMap (created empty when absent), held under a file lock and written back afterwards."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            config_map = json.loads(self.path.read_text()) if self.path.is_file() else self._empty()
            config_map.setdefault("data", {})
            yield config_map
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(config_map, indent=2))
            os.replace(tmp, self.path)
        finally:
            os.close(fd)

    def _empty(self) -> dict[str, Any]:
        metadata = {"name": self.cache, "namespace": self.namespace, "labels": dict(_CACHE_LABEL)}
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {}}


def memo_of(tmpl: Mapping[str, Any], scope: Mapping[str, str], namespace: str) -> Memo | None:
    """The template's memoization with its key substituted, or None when it has no `memoize`.

    Raises:
        WorkflowError: The key is not a valid cache key (Argo: "invalid cache key"), the cache names no
            ConfigMap, or maxAge is not a duration.
    """
    spec = tmpl.get("memoize")
    if not spec:
        return None
    where = f"template {tmpl.get('name')}: memoize"
    key = substitute(str(spec.get("key", "")), scope, where=f"{where}.key")
    if not _KEY.fullmatch(key):
        raise WorkflowError(f"invalid cache key: {key} ({where}.key: letters, digits and '-', starting alphanumeric)")
    name = str(((spec.get("cache") or {}).get("configMap") or {}).get("name") or "")
    if not name:
        raise WorkflowError(f"{where}: cache.configMap.name is required; name the ConfigMap that caches the outputs")
    max_age = spec.get("maxAge")
    age = parse_duration(max_age, f"{where}.maxAge") if max_age not in (None, "") else None
    return Memo(key, name, namespace, age)


def outputs_of(node: Node) -> dict[str, Any]:
    """A finished node's outputs in Argo's shape (what the cache stores)."""
    return dict(node.to_status().get("outputs") or {})


def restore_outputs(node: Node, outputs: Mapping[str, Any]) -> None:
    """Give a cache-hit node the cached outputs."""
    node.parameters = {str(p["name"]): str(p.get("value", "")) for p in outputs.get("parameters") or []}
    node.artifacts = {str(a["name"]): str(a.get("path", "")) for a in outputs.get("artifacts") or []}
    node.result = outputs.get("result")
    node.exit_code = int(outputs["exitCode"]) if outputs.get("exitCode") not in (None, "") else None
