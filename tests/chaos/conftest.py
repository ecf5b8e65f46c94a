"""Fixtures of the chaos suite: the tiny model (built once), a world with v1 champion and v2 deployed (by this
process, or through the local profile's serving plane service)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from steps.core.proc import terminate
from steps.rollout.serving.guard import DEADLINE_ENV, read_heartbeat
from steps.rollout.serving.remote import RemoteServing
from tests.chaos.world import NAME, PlaneProcess, World
from tests.tiny_models import build_tiny_gpt2

DEADLINE_S = 3.0
"""The heartbeat deadline in these tests (30 s by default): a lapse is seen within a few seconds."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the chaos tests unless they were asked for (`-m chaos`, what `make chaos` runs): they take ~8 min."""
    if "chaos" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="the chaos suite takes ~8 min on 2 cores: run it with `make chaos`")
    for item in items:
        if "chaos" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 with a chat template (built offline once)."""
    if shutil.which("haproxy") is None:
        if os.environ.get("CI"):
            pytest.fail("haproxy is not on PATH in CI: run .ci/install-system-packages.sh first", pytrace=False)
        pytest.skip("haproxy not on PATH: run .ci/install-system-packages.sh as root")
    corpus = ["User: what is the capital of Zorvia?\nAssistant: Mora", "User: hello\nAssistant: hi there"] * 20
    return build_tiny_gpt2(
        tmp_path_factory.mktemp("tiny") / "model",
        corpus,
        chat_template="{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}Assistant:",
    )


def _seed(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment of a world's steps, and v1 promoted champion."""
    monkeypatch.setenv(DEADLINE_ENV, str(DEADLINE_S))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", world.uri)
    monkeypatch.setenv("LLMRELEASE_HOME", str(world.home))
    world.registry.promote(NAME, "1", actor="seed", reason="seed")


def _stop_watchdog(world: World) -> None:
    beat = read_heartbeat(world.plane.model_dir(NAME))
    if beat is not None:
        terminate(beat.watchdog_pid, created=beat.watchdog_created)


@pytest.fixture
def world(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """v1 champion (serving 100%), v2 deployed at weight 0 by workflow uid-2; everything stopped afterwards."""
    monkeypatch.chdir(tmp_path)
    w = World(tmp_path, tiny_model)
    _seed(w, monkeypatch)
    w.deploy("2", "uid-2")
    yield w
    _stop_watchdog(w)
    w.plane.shutdown(NAME)


@pytest.fixture
def served_world(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[World, PlaneProcess]]:
    """The world of `world`, deployed through the serving plane service over its home (as `llmrelease local up`
    runs it): the servers, the router and the canary's watchdog are the service's children, not this process's.
    Yields the world (its `plane` reads the same home) and the service (its `url` is LLMRELEASE_SERVING_URL)."""
    monkeypatch.chdir(tmp_path)
    w = World(tmp_path, tiny_model)
    _seed(w, monkeypatch)
    service = PlaneProcess(w.home, tmp_path / "serving.log")
    try:
        w.deploy("2", "uid-2", RemoteServing(service.url))
        yield w, service
    finally:
        _stop_watchdog(w)
        service.stop()
        w.plane.shutdown(NAME)
