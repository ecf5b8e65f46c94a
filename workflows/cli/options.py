"""Command-line values shared by the command groups."""

from __future__ import annotations

from collections.abc import Sequence

from registry.errors import SpecError

__all__ = ["parse_pairs"]


def parse_pairs(values: Sequence[str], flag: str) -> dict[str, str]:
    """`NAME=VALUE` items of a repeated option (`-p`, `--supply`) as a dict; a later NAME wins.

    Raises:
        SpecError: An item has no `=` or an empty NAME (the message names `flag` and the item).
    """
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"{flag} {item!r}: write it as NAME=VALUE")
        out[key] = value
    return out
