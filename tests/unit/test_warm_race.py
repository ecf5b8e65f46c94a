"""A warm eval worker whose creation lost a race to another step is taken by its name.

Two steps that create the same named, detached actor at the same moment through Ray Client can get
ActorAlreadyExistsError at the loser's first call (seen once in CI; a real cluster cannot be made to lose the race
on demand), so the handles here are stand-ins and `ray.get_actor` is patched: this tests the pool's recovery only.
"""

from __future__ import annotations

from typing import Any

import pytest
import ray
from ray.exceptions import ActorAlreadyExistsError

from steps.evals.engine_spec import EngineSpec
from steps.evals.worker_pool import WARM_NAMESPACE, ShardOptions, WorkerPool, warm_name


class _Method:
    def __init__(self, result: Any) -> None:
        self.result = result

    def remote(self, *args: Any) -> Any:
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


class _Handle:
    def __init__(self, load: Any) -> None:
        self.load = _Method(load)


def test_a_worker_that_lost_the_creation_race_is_taken_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = WorkerPool(ShardOptions(warm=True))
    pool.shape, pool._code = (1, 1.0, 0.0), "c0de"
    pool.actors = [_Handle(ActorAlreadyExistsError("name taken"))]
    asked: list[tuple[str, str]] = []

    def get_actor(name: str, namespace: str) -> Any:
        asked.append((name, namespace))
        return _Handle("ref-of-the-winner")

    monkeypatch.setattr(ray, "get_actor", get_actor)
    assert pool._call_load(0, EngineSpec.of("transformers", model_dir="/m")) == "ref-of-the-winner"
    assert asked == [(warm_name(0, 1, 1.0, 0.0, "c0de"), WARM_NAMESPACE)]


def test_a_step_pool_does_not_hide_the_error() -> None:
    pool = WorkerPool(ShardOptions(warm=False))
    pool.actors = [_Handle(ActorAlreadyExistsError("name taken"))]
    with pytest.raises(ActorAlreadyExistsError):
        pool._call_load(0, EngineSpec.of("transformers", model_dir="/m"))
