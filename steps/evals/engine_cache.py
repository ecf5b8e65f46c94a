"""The engines an eval worker keeps loaded: a small least-recently-used cache keyed by the engine spec.

A warm worker (a named, detached actor on a long-lived Ray cluster, `steps.evals.worker_pool`) serves every step
that reaches the cluster, and two steps may use it at once (batch-eval and safety run in parallel): each call
names the engine it runs (`engine_key` of its `EngineSpec`), so a worker never runs "the last one loaded". The
cache holds `capacity` engines (default 2: the candidate and the champion); loading one more first drops the
least recently used (its memory freed before the next model loads), and a dropped key asked for again is built
again, not an error.

Settings (read by the driver that creates the warm workers; a worker keeps its creator's values):
LLMRELEASE_EVAL_WARM_ENGINES (default 2) engines per warm worker; LLMRELEASE_EVAL_IDLE_S (default 600) seconds
without a call after which a warm worker ends itself.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from steps.evals.engines.base import Engine, EvalError, env_seconds

__all__ = [
    "DEFAULT_IDLE_S",
    "DEFAULT_WARM_ENGINES",
    "EngineCache",
    "Loaded",
    "engine_key",
    "idle_seconds",
    "warm_engines",
]

DEFAULT_WARM_ENGINES = 2
DEFAULT_IDLE_S = 600.0


def engine_key(spec: object) -> str:
    """A stable key for an engine spec (equal specs, equal keys, in any process): sha256 of its repr, 16 hex."""
    return hashlib.sha256(repr(spec).encode("utf-8")).hexdigest()[:16]


@dataclass
class Loaded:
    """One built engine and what the worker chose for it (engine kind, device)."""

    engine: Engine
    backend: str
    device: str


class EngineCache:
    """Up to `capacity` loaded engines by key, the least recently used dropped first."""

    def __init__(self, capacity: int = DEFAULT_WARM_ENGINES) -> None:
        if capacity < 1:
            raise EvalError(f"engine cache capacity {capacity}: must hold at least 1 engine")
        self.capacity = capacity
        self._entries: OrderedDict[str, Loaded] = OrderedDict()
        self.builds = 0
        """Engines built over the cache's life (a hit builds none)."""

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        """The keys held, least recently used first."""
        return list(self._entries)

    def get(self, key: str, build: Callable[[], Loaded]) -> tuple[Loaded, bool]:
        """The engine under `key` and whether it was held (a hit); else built by `build` and kept.

        Before building, the least recently used engines are dropped until one more fits, so a worker never holds
        more than `capacity` models, not even while loading the next.
        """
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            return found, True
        while len(self._entries) >= self.capacity:
            self._entries.popitem(last=False)
        loaded = build()
        self.builds += 1
        self._entries[key] = loaded
        return loaded, False


def warm_engines(environ: Mapping[str, str] | None = None) -> int:
    """LLMRELEASE_EVAL_WARM_ENGINES, else 2: engines a warm worker keeps loaded."""
    raw = (os.environ if environ is None else environ).get("LLMRELEASE_EVAL_WARM_ENGINES") or ""
    if not raw:
        return DEFAULT_WARM_ENGINES
    if not raw.isdigit() or int(raw) < 1:
        raise EvalError(f"LLMRELEASE_EVAL_WARM_ENGINES={raw!r}: expected a whole number of engines >= 1, e.g. 2")
    return int(raw)


def idle_seconds(environ: Mapping[str, str] | None = None) -> float:
    """LLMRELEASE_EVAL_IDLE_S, else 600: seconds without a call after which a warm worker ends itself."""
    return env_seconds("LLMRELEASE_EVAL_IDLE_S", DEFAULT_IDLE_S, environ)
