"""The plane service ends a lock lease its canary step left behind once the step's heartbeat guard tripped.

Real `PlaneService` on a real `LocalServing` home (real flocks, real guard.json); only the service's clock is
stepped by hand. The chaos suite (tests/chaos/test_service_lock_kill.py) runs the same with real processes.
"""

from __future__ import annotations

import fcntl
import json
import time
from pathlib import Path

import pytest

from steps.rollout.serving.guard import Heartbeat
from steps.rollout.serving.local import LocalServing
from steps.rollout.serving.service import PlaneService

MODEL, STEP = "tiny-qa", "pod-canary pid 7 (python)"


class Clock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        """Start at 1000 s."""
        self.now = 1000.0

    def __call__(self) -> float:
        """The current time."""
        return self.now


def _service(tmp_path: Path) -> tuple[PlaneService, Clock]:
    clock = Clock()
    return PlaneService(LocalServing(tmp_path / "home"), clock=clock), clock


def _guarded_by(service: PlaneService, holder: str) -> None:
    """The canary step `holder` keeps the model's guard (a lapse of a guard that has no heartbeat starts nothing)."""
    body = {"op": "lapse", "workflow_uid": "uid-2", "candidate": "2", "deadline": 3.0, "holder": holder, "why": "x"}
    service.guard(MODEL, body)


def _beat(service: PlaneService, *, tripped: bool) -> None:
    now = time.time()
    beat = Heartbeat(model=MODEL, workflow_uid="uid-2", candidate="2", deadline_s=3.0, expires_at=now, renewed_at=now)
    beat.tripped_at = now if tripped else None
    (service.plane.model_dir(MODEL) / "guard.json").write_text(beat.model_dump_json())


def _lock_is_free(service: PlaneService) -> bool:
    with service.plane.lock_file(MODEL).open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


@pytest.mark.parametrize(
    ("holder", "tripped", "idle_s", "ended"),
    [
        (STEP, True, 3.0, True),  # the guarded step died holding the lock: ended after one deadline idle
        (STEP, True, 2.0, False),  # idle less than the deadline: a live step that just took the lock keeps it
        (STEP, False, 60.0, False),  # the guard did not trip: the step is alive (a long wait inside the lock)
        ("another holder", True, 60.0, False),  # not the guarded step: its lease runs its course
    ],
)
def test_a_tripped_canary_steps_lease_ends_after_one_idle_deadline(
    tmp_path: Path, holder: str, tripped: bool, idle_s: float, ended: bool
) -> None:
    """GIVEN a lease of 600 s held by `holder` and the model's guard kept by STEP, tripped or not
    WHEN the service expires leases `idle_s` seconds after the holder's last call
    THEN only the guarded step's lease, tripped and idle for the deadline, ends (the lock is free, the state kept)."""
    service, clock = _service(tmp_path)
    _guarded_by(service, STEP)
    _, state = service.acquire(MODEL, holder, wait_s=0, lease_s=600)
    state.champion = "1"
    _beat(service, tripped=tripped)
    clock.now += idle_s

    assert service.expire() == ([MODEL] if ended else [])
    assert _lock_is_free(service) is ended
    if ended:
        assert json.loads((service.plane.model_dir(MODEL) / "plane.json").read_text())["champion"] == "1"
