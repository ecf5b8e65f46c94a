"""The prompt of a release in its evidence: version, digest, text, and the diff against the champion's prompt.

A release with a prompt records, in the statement's `externalParameters.prompt` and as a second subject
(`prompt:<name>`), the prompt version it released and its digest, and the champion prompt it was compared with
(the `champion` alias before this release: `previous` once the release was promoted), with a unified diff of the
two texts (`difflib`). The HTML report shows the same.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Protocol

from registry.prompt_content import PromptContent
from registry.tags import CANDIDATE, CHAMPION, PREVIOUS

__all__ = ["PromptFacts", "collect_prompt", "prompt_diff", "prompt_evidence"]


class PromptFacts(Protocol):
    """The prompt registry reads the evidence needs (`registry.prompts.PromptRegistry` provides them)."""

    def load(self, name: str, *, alias: str | None = None, version: str | int | None = None) -> PromptContent: ...  # noqa: D102
    def version_of(self, name: str, alias: str) -> Any: ...  # noqa: D102


def prompt_diff(before: PromptContent | None, after: PromptContent, *, before_label: str, after_label: str) -> str:
    """A unified diff of the prompts' texts (every message, then the generation settings); "" when equal."""

    def lines(content: PromptContent | None) -> list[str]:
        if content is None:
            return []
        settings = content.generation.model_dump(mode="json")
        body = [f"[{m.role}]\n{m.content}" for m in content.messages]
        return "\n\n".join([*body, f"[generation] {settings}"]).splitlines(keepends=True)

    diff = difflib.unified_diff(lines(before), lines(after), fromfile=before_label, tofile=after_label)
    return "".join(line if line.endswith("\n") else line + "\n" for line in diff)


def prompt_evidence(
    version: str, content: PromptContent, champion_version: str | None, champion: PromptContent | None
) -> dict[str, Any]:
    """The prompt record of a statement: what was released, what it was compared with, and the diff."""
    name = content.name
    before = f"{name} v{champion_version} (champion)" if champion_version else f"{name} (no champion prompt)"
    return {
        "name": name,
        "version": version,
        "digest": content.digest,
        "uri": f"prompts:/{name}/{version}",
        "text": content.text,
        "generation": content.generation.model_dump(mode="json"),
        "champion": (
            {"version": champion_version, "digest": champion.digest, "text": champion.text}
            if champion is not None and champion_version
            else None
        ),
        "diff": prompt_diff(champion, content, before_label=before, after_label=f"{name} v{version}"),
    }


def collect_prompt(release: str, reader: PromptFacts | None = None) -> dict[str, Any] | None:
    """The prompt evidence of the release spec at `release`; None when it has no prompt or nothing is registered.

    Evidence of a failed run must not need a registered prompt: any read failure gives None.
    """
    import yaml

    try:
        spec = yaml.safe_load(Path(release).read_text(encoding="utf-8")) if release else None
        name = str(((spec or {}).get("prompt") or {}).get("name") or "")
        if not name:
            return None
        if reader is None:
            from registry.prompts import PromptRegistry

            reader = PromptRegistry.from_env(retry_seconds=10)
        mine = reader.version_of(name, CANDIDATE)
        if mine is None:
            return None
        champion = reader.version_of(name, CHAMPION)
        if champion is not None and str(champion.version) == str(mine.version):  # promoted: compare with previous
            champion = reader.version_of(name, PREVIOUS)
        theirs = reader.load(name, version=champion.version) if champion is not None else None
        content = reader.load(name, version=mine.version)
        base = str(champion.version) if champion is not None else None
        return prompt_evidence(str(mine.version), content, base, theirs)
    except Exception:  # evidence of a failed run records what it can
        return None
