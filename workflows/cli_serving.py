"""`llmrelease` commands for serving (added to the parser by `workflows.cli`)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    """Add this module's subcommands to the `llmrelease` parser's subparsers."""
    del sub


def _unused(args: argparse.Namespace) -> int:  # pragma: no cover - placeholder until the commands land
    del args
    return 0
