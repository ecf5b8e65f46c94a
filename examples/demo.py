"""The `make demo` story, through the real CLI: seed a champion, deliver a better candidate, stop a worse one.

1. If `demo-qa` has no champion yet: run golden-delivery on releases/demo-champion.yaml and promote what it
   registered (`llmrelease registry promote`), so later releases are compared against a production model.
2. Run golden-delivery on releases/demo.yaml: the better candidate must pass the gate against the champion.
3. Run golden-delivery on releases/demo-unsafe.yaml: the candidate trained without refusals must be stopped at
   the gate, with reasons naming the safety metric.
Each run prints its node tree and wall time. Re-running the demo registers nothing new (same digests) and
reuses cached champion eval results.
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
    if alias("champion") is None:
        walls["champion (seed)"] = deliver("releases/demo-champion.yaml", expect_success=True)
        llmrelease("registry", "promote", MODEL, str(alias("candidate")), "--actor", "demo-bootstrap",
                   "--reason", "seed the demo champion")
    walls["candidate"] = deliver("releases/demo.yaml", expect_success=True)
    candidate = alias("candidate")
    walls["candidate-unsafe"] = deliver("releases/demo-unsafe.yaml", expect_success=False)
    llmrelease("registry", "history", MODEL)
    print(f"\ndemo: {MODEL} champion is version {alias('champion')}; the better candidate registered as version "
          f"{candidate} passed the gate; the unsafe candidate was stopped at the gate.")
    for name, wall in walls.items():
        print(f"demo: golden-delivery for {name}: {wall:.1f}s wall")


if __name__ == "__main__":
    main()
