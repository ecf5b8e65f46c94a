"""Outputs of a step or task that never ran (Skipped by its `when`, Omitted by its `depends`), as Argo v3.7.16+.

Argo #16223 (cherry-picked into v3.7.16 as #16315): a reference to such a node's declared output parameter is the
output's `valueFrom.default`; without one the output (and `outputs.result`) is *absent*. An argument that is only
a reference to an absent output is left out, so the consuming input's own `default` applies (or the call fails
for want of a value); any other use of it (inside other text, in a `when`) fails the node with one line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Set
from typing import Any

from registry.errors import WorkflowError
from workflows.argo.expressions import TAG

__all__ = ["NOT_RUN", "declared_outputs", "refuse_absent", "unsupplied"]

NOT_RUN = frozenset({"Skipped", "Omitted"})


def declared_outputs(tmpl: Mapping[str, Any], base: str) -> tuple[dict[str, str], set[str]]:
    """(`<base>.parameters.P` -> its `valueFrom.default`, the keys with none) of a template that never ran."""
    defaults: dict[str, str] = {}
    absent = {f"{base}.result"}
    for param in tmpl.get("outputs", {}).get("parameters", []):
        key, default = f"{base}.parameters.{param['name']}", (param.get("valueFrom") or {}).get("default")
        if default is None:
            absent.add(key)
        else:
            defaults[key] = default if isinstance(default, str) else json.dumps(default)
    return defaults, absent


def unsupplied(value: str, absent: Set[str], local: Mapping[str, str]) -> bool:
    """Whether an argument's `value` is a single reference to an absent output (the argument is left out)."""
    pure = TAG.fullmatch(value.strip())
    return pure is not None and pure.group(1) in absent and pure.group(1) not in local


def refuse_absent(text: str, absent: Set[str], local: Mapping[str, str], where: str) -> None:
    """Raise one line naming a reference to an absent output in `text` (Argo fails the node with a terminal error).

    Raises:
        WorkflowError: `text` refers to an absent output.
    """
    for match in TAG.finditer(text):
        if match.group(1) in absent and match.group(1) not in local:
            raise WorkflowError(
                f"{where}: '{{{{{match.group(1)}}}}}' is the output of a skipped or omitted node with no default; "
                "declare valueFrom.default on that output, or a default on the consuming input"
            )
