"""The git commit a release was read at: recorded on the registered version and in the evidence."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["head_commit", "resolve_git_commit"]


def resolve_git_commit(given: str, cwd: Path | None = None) -> str:
    """`given`, or the HEAD commit of the git repository at `cwd`, or "unknown" outside one."""
    if given:
        return given
    return head_commit(cwd) or "unknown"


def head_commit(cwd: Path | None = None) -> str | None:
    """The full sha of HEAD in the git repository at `cwd` (the process's cwd when None), or None outside one."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None
