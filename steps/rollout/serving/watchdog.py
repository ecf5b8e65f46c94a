"""The canary guard's detached watchdog process: `python -m steps.rollout.serving.watchdog HOME MODEL WORKFLOW_UID`.

Started by `FileCanaryGuard` (steps.rollout.serving.guard) with the canary; it watches the local plane's heartbeat and
puts all traffic back on the champion when it lapses. A module of its own: it needs the local plane, which needs
the guard.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from steps.rollout.serving.guard import watch
from steps.rollout.serving.local import LocalServing

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """`python -m steps.rollout.serving.watchdog HOME MODEL WORKFLOW_UID`: the detached watchdog."""
    parser = argparse.ArgumentParser(prog="python -m steps.rollout.serving.watchdog", description=__doc__)
    parser.add_argument("home", type=Path)
    parser.add_argument("model")
    parser.add_argument("workflow_uid")
    args = parser.parse_args(argv)
    print(f"guard: watching {args.model} for workflow {args.workflow_uid}", flush=True)
    print(f"guard: {watch(LocalServing(args.home), args.model, args.workflow_uid)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
