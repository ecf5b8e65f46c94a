"""The canary step in a process of its own, as its pod runs it, so that a chaos test can kill -9 it.

Usage: python -m tests.chaos.canary_child HOME WORK_DIR STEPS WORKFLOW_UID (STEPS: e.g. "5,50,100"); the registry
comes from MLFLOW_TRACKING_URI, the heartbeat deadline from LLMRELEASE_CANARY_HEARTBEAT_S.
"""

from __future__ import annotations

import sys
from pathlib import Path

from registry.facade import ModelRegistry
from steps import canary
from steps.core.entry import run_step
from steps.rollout.serving.local import LocalServing
from tests.chaos.world import fast_spec


def main(argv: list[str]) -> None:
    """Run the canary of `fast_spec(STEPS)` on the plane under HOME; print its one line."""
    home, work_dir, steps, uid = Path(argv[0]), Path(argv[1]), [int(s) for s in argv[2].split(",")], argv[3]
    inputs = canary.Inputs(spec=fast_spec(steps), workflow_uid=uid, work_dir=work_dir)
    outputs = run_step("canary", lambda: canary.run(inputs, ModelRegistry.from_env(), LocalServing(home)))
    print(canary.describe(outputs), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
