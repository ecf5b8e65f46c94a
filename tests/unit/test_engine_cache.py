"""A warm eval worker's engine cache: least recently used out first, hits reported, its settings, the names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from steps.evals.engine_cache import EngineCache, Loaded, engine_key, idle_seconds, warm_engines
from steps.evals.engine_spec import EngineSpec, WeightsRef
from steps.evals.engines.base import EvalError
from steps.evals.worker_pool import ShardOptions, warm_name

REPO = Path(__file__).resolve().parents[2]


class Built:
    """Records each build and how many engines the cache held while it ran."""

    def __init__(self, cache: EngineCache) -> None:
        self.cache = cache
        self.log: list[tuple[str, int]] = []

    def __call__(self, key: str) -> Any:
        def build() -> Loaded:
            self.log.append((key, len(self.cache)))
            return Loaded(engine=object(), backend="transformers", device="cpu")  # type: ignore[arg-type]

        return build


def test_a_held_key_is_a_hit_and_the_least_recently_used_goes_first() -> None:
    """GIVEN a cache of 2 engines
    WHEN a, b, a, c, b are asked for
    THEN a is a hit the second time (the same engine, no build); c drops b (a was used more recently), so b is
    built again; no build ever runs with 2 engines held (the one to drop is dropped before the next loads).
    """
    cache = EngineCache(2)
    built = Built(cache)
    first, hit_a = cache.get("a", built("a"))
    _, hit_b = cache.get("b", built("b"))
    again, hit_a2 = cache.get("a", built("a"))
    _, hit_c = cache.get("c", built("c"))
    _, hit_b2 = cache.get("b", built("b"))
    assert (hit_a, hit_b, hit_a2, hit_c, hit_b2) == (False, False, True, False, False)
    assert again is first
    assert built.log == [("a", 0), ("b", 1), ("c", 1), ("b", 1)]
    assert cache.keys() == ["c", "b"] and cache.builds == 4


def test_a_cache_of_one_frees_the_held_engine_before_building_the_next() -> None:
    """GIVEN a cache of 1 (a step's own worker)
    WHEN two engines alternate
    THEN each build runs with nothing held, and every switch is a build.
    """
    cache = EngineCache(1)
    built = Built(cache)
    hits = [cache.get(k, built(k))[1] for k in ("a", "b", "a", "a")]
    assert hits == [False, False, False, True]
    assert built.log == [("a", 0), ("b", 0), ("a", 0)]


def test_a_failed_build_keeps_nothing_under_its_key() -> None:
    """GIVEN a build that raises
    WHEN it is asked for twice
    THEN both calls raise (it is built again, not remembered as loaded) and the cache holds nothing for it.
    """
    cache = EngineCache(2)

    def broken() -> Loaded:
        raise EvalError("weights missing")

    for _ in range(2):
        with pytest.raises(EvalError, match="weights missing"):
            cache.get("x", broken)
    assert cache.keys() == [] and cache.builds == 0


def test_the_key_names_the_whole_spec_and_is_the_same_in_another_process() -> None:
    """GIVEN engine specs that differ in one setting, and one spec keyed here and in a fresh Python process
    WHEN their keys are taken
    THEN equal specs give equal keys (across processes: the driver and the worker agree), different ones differ.
    """
    weights = WeightsRef("s3://b/weights/sha256/ab", "sha256:ab", "sqlite:///m.db", "run1")
    spec = EngineSpec.of("auto", weights=weights)
    other = EngineSpec.of("auto", weights=WeightsRef("s3://b/weights/sha256/cd", "sha256:cd", "sqlite:///m.db", "run1"))
    prompted = EngineSpec(spec.kind, tuple(sorted([*spec.options, ("messages", (("system", "be brief"),))])))
    keys = {engine_key(s) for s in (spec, other, prompted)}
    assert len(keys) == 3 and engine_key(spec) == engine_key(EngineSpec.of("auto", weights=weights))
    code = (
        "from steps.evals.engine_cache import engine_key; from steps.evals.engine_spec import EngineSpec, WeightsRef;"
        "w = WeightsRef('s3://b/weights/sha256/ab', 'sha256:ab', 'sqlite:///m.db', 'run1');"
        "print(engine_key(EngineSpec.of('auto', weights=w)))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == engine_key(spec)


def test_the_settings_read_from_the_environment_and_refuse_nonsense() -> None:
    """GIVEN LLMRELEASE_EVAL_WARM_ENGINES and LLMRELEASE_EVAL_IDLE_S unset, set, and set to nonsense
    WHEN read
    THEN the defaults are 2 engines and 600 s; set values are used; nonsense is one EvalError line naming the
    variable and an example.
    """
    assert (warm_engines({}), idle_seconds({})) == (2, 600.0)
    env = {"LLMRELEASE_EVAL_WARM_ENGINES": "3", "LLMRELEASE_EVAL_IDLE_S": "2.5"}
    assert (warm_engines(env), idle_seconds(env)) == (3, 2.5)
    for bad in ("0", "-1", "two"):
        with pytest.raises(EvalError, match=r"LLMRELEASE_EVAL_WARM_ENGINES=.*e\.g\. 2$"):
            warm_engines({"LLMRELEASE_EVAL_WARM_ENGINES": bad})
    for bad in ("0", "-5", "inf", "soon"):
        with pytest.raises(EvalError, match=r"LLMRELEASE_EVAL_IDLE_S=.*e\.g\. 600$"):
            idle_seconds({"LLMRELEASE_EVAL_IDLE_S": bad})
    with pytest.raises(EvalError, match="at least 1"):
        EngineCache(0)


def test_workers_are_warm_only_on_a_cluster_reached_by_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN RAY_ADDRESS unset, then set, then set with LLMRELEASE_EVAL_WARM=0
    WHEN the options decide (no explicit `warm`)
    THEN warm only with RAY_ADDRESS and not switched off; an explicit choice wins; warm names differ by slot,
    shape and code.
    """
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ShardOptions().is_warm and ShardOptions(warm=True).is_warm
    monkeypatch.setenv("RAY_ADDRESS", "ray://127.0.0.1:10001")
    assert ShardOptions().is_warm and not ShardOptions(warm=False).is_warm
    monkeypatch.setenv("LLMRELEASE_EVAL_WARM", "0")
    assert not ShardOptions().is_warm and ShardOptions(warm=True).is_warm
    names = {warm_name(s, t, c, g, code) for s in (0, 1) for t, c, g in ((1, 1.0, 0.0), (2, 2.0, 0.0)) for code in "ab"}
    assert len(names) == 8
    assert warm_name(0, 1, 1.0, 0.0, "ab12cd34") == "shard-worker-0-t1-c1-g0-ab12cd34"
