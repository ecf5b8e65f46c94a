"""How the `llmrelease` CLI reports an error: one line on stderr naming the problem and the fix, never a traceback.

A `ReleaseError` already says both and carries its exit code. A few foreign errors are common enough to be said
precisely (a path the OS refused, MLflow refusing its tracking URI); anything else is "unexpected" and points at
`--debug`, which (like LLMRELEASE_DEBUG=1) prints the traceback as well.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import traceback
from pathlib import Path

from registry.errors import ReleaseError

__all__ = ["DEBUG_ENV", "debug_requested", "describe", "quiet_libraries", "report"]

DEBUG_ENV = "LLMRELEASE_DEBUG"
_LONGEST = 400  # characters of a foreign message kept on the line

_PATH_FIXES = {
    errno.ENOTDIR: "a part of the path is a file, not a folder: pick a path below a folder",
    errno.ENOENT: "no such file or folder: check the path",
    errno.EACCES: "permission denied: pick a path you may use, or fix its permissions",
    errno.EPERM: "operation not permitted: pick a path you may use, or fix its permissions",
    errno.EISDIR: "it is a folder: name a file",
    errno.EEXIST: "it exists already: remove it or pick another path",
    errno.ENOSPC: "no space left on the device: free some space",
    errno.EROFS: "the file system is read-only: pick a writable path",
}


def debug_requested(argv: list[str]) -> bool:
    """Whether `--debug` is among the arguments or LLMRELEASE_DEBUG is set (to anything but 0/false/no)."""
    flag = os.environ.get(DEBUG_ENV, "").strip().lower()
    return "--debug" in argv or flag not in ("", "0", "false", "no")


def quiet_libraries() -> None:
    """Keep MLflow's and alembic's INFO logging (database creation and migrations) off stdout and stderr.

    MLflow configures its loggers when first imported, from MLFLOW_LOGGING_LEVEL: set it (unless the user did)
    before any command imports MLflow. Warnings and errors still show.
    """
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("mlflow", "alembic", "great_expectations"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _LONGEST else line[: _LONGEST - 3] + "..."


def _describe_path_error(error: OSError) -> str:
    """`<path>: <what the OS said>: <fix>`; a regular file where a folder must be is named as such."""
    path = Path(os.fsdecode(error.filename))
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        blocking = next((p for p in (path, *path.parents) if p.is_file()), None)
        if blocking is not None and blocking != path:
            return f"{path}: {blocking} is a file, not a folder: pick a path below a folder, or move the file"
    fix = _PATH_FIXES.get(error.errno or 0, "check the path and its permissions")
    return f"{path}: {error.strerror or type(error).__name__}: {fix}"


def describe(error: BaseException) -> tuple[str, int]:
    """(one line naming the problem and the fix, exit code) for any error a command raised."""
    if isinstance(error, ReleaseError):
        return _one_line(str(error)), error.exit_code
    if isinstance(error, OSError) and error.filename is not None:
        return _describe_path_error(error), 1
    if type(error).__module__.split(".")[0] == "mlflow":
        message = str(getattr(error, "message", "") or error).split(" See https://")[0]
        return (
            f"MLflow refused: {_one_line(message)}: check MLFLOW_TRACKING_URI (a sqlite:///, http(s):// or "
            "database URI) and that its server or database is up",
            1,
        )
    return f"unexpected {type(error).__name__}: {_one_line(str(error))}; rerun with --debug for the traceback", 1


def report(error: BaseException, prefix: str, *, debug: bool) -> int:
    """Print the error as one line on stderr (after its traceback when `debug`); return the exit code."""
    if debug:
        traceback.print_exception(error, file=sys.stderr)
    line, code = describe(error)
    print(f"{prefix}: {line}", file=sys.stderr)
    return code
