"""The `make demo` story, through the real CLI: seed a champion, deliver a better candidate, stop a worse one,
roll back.

1. If `demo-qa` has no champion yet: run golden-delivery on releases/demo-champion.yaml: the first release has
   nothing to compare with, goes 1 -> 100% and becomes champion.
2. Run golden-delivery on releases/demo.yaml: the better candidate passes the gate and the latency SLO, goes
   1 -> 5 -> 25 -> 50 -> 100% behind HAProxy with a canary analysis at each step, and becomes champion.
3. Run golden-delivery on releases/demo-unsafe.yaml: the candidate trained without refusals is stopped at the
   gate (reasons name the safety metric); the exit handler takes its server out again.
4. `llmrelease rollback demo-qa`: all traffic and the champion alias back on the previous champion.
Each run prints its node tree and wall time. Re-running the demo registers nothing new (same digests) and
reuses cached eval results. The model servers and the router are stopped at the end (`llmrelease serving stop`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

MODEL = "demo-qa"
BIN = Path(sys.executable).parent


def llmrelease(*args: str, check: bool = True) -> int:
    print(f"\n$ llmrelease {' '.join(args)}", flush=True)
    code = subprocess.run([str(BIN / "llmrelease"), *args], check=False).returncode
    if check and code != 0:
        sys.exit(f"demo: `llmrelease {' '.join(args)}` exited {code}")
    return code


def alias(name: str) -> str | None:
    from registry import ModelRegistry

    return ModelRegistry.from_env().get_alias(MODEL, name)


def deliver(release: str, expect_success: bool) -> float:
    start = time.monotonic()
    code = llmrelease("run", "golden-delivery", "-p", f"release={release}", check=False)
    wall = time.monotonic() - start
    if (code == 0) != expect_success:
        outcome = "succeeded" if code == 0 else "failed"
        sys.exit(f"demo: golden-delivery on {release} {outcome}, which the demo did not expect")
    return wall


def main() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    walls: dict[str, float] = {}
    from registry.tags import CHAMPION

    if alias(CHAMPION) is None:
        walls["champion (seed)"] = deliver("releases/demo-champion.yaml", expect_success=True)
    seed = alias(CHAMPION)
    walls["candidate"] = deliver("releases/demo.yaml", expect_success=True)
    candidate = alias(CHAMPION)
    walls["candidate-unsafe"] = deliver("releases/demo-unsafe.yaml", expect_success=False)
    llmrelease("serving", "status", MODEL)
    llmrelease("rollback", MODEL, "--actor", "demo", "--reason", "show the one-command rollback")
    llmrelease("serving", "status", MODEL)
    llmrelease("registry", "history", MODEL)
    llmrelease("serving", "stop", MODEL)
    print(
        f"\ndemo: the better candidate (version {candidate}) went 1 -> 100% and became champion; the unsafe "
        f"candidate was stopped at the gate; `llmrelease rollback` put version {alias('champion')} back "
        f"(the champion before, {seed})."
    )
    for name, wall in walls.items():
        print(f"demo: golden-delivery for {name}: {wall:.1f}s wall")


if __name__ == "__main__":
    main()
