"""The one rule for model, release and environment names: a DNS-1123 label.

1 to 63 characters, lowercase letters, digits and '-', starting and ending with a letter or a digit (what a
Kubernetes object name, an MLflow model name and a file name under `releases/` can all safely be). So no leading
'-' (a name like `-rf` would reach `transformers serve` as an option), no '.', '..', '_' or capitals.

The release spec checks it with pydantic (`NAME_PATTERN`, `NAME_MAX_LENGTH`); other layers call `check_name`.
"""

from __future__ import annotations

import re

from registry.errors import SpecError

__all__ = ["NAME_MAX_LENGTH", "NAME_PATTERN", "NAME_RULE", "check_name", "is_name"]

NAME_MAX_LENGTH = 63
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
NAME_RULE = (
    "a DNS-1123 label: 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit, e.g. demo-qa"
)
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def is_name(value: str) -> bool:
    """Whether `value` is a DNS-1123 label (`re.fullmatch`, so a trailing newline does not pass)."""
    return len(value) <= NAME_MAX_LENGTH and _LABEL.fullmatch(value) is not None


def check_name(value: str, what: str) -> str:
    """Return `value` when it is a DNS-1123 label.

    Args:
        value: The name to check.
        what: What the name is, for the message (e.g. `model name`, `--environment`).

    Raises:
        SpecError: It is not; the message names `what`, shows the value and states the rule.
    """
    if not is_name(value):
        shown = repr(value) if len(value) <= 70 else f"{value[:67]!r}..."
        raise SpecError(f"{what} {shown} is not {NAME_RULE}: rename it")
    return value
