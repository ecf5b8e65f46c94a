"""Eval-result keys and the suite-result cache: a model is not re-evaluated on a suite it has already answered.

A `SuiteResult` is fully determined by three things, and is cached under them:

* the model's digest (`llmrelease.digest` of its registered version: the sha256 of its weights' manifest),
* the suite file's sha256 (`Suite.sha256`),
* the generation settings (`GenerationSettings`: max_new_tokens, temperature, backend and device class),
  hashed as canonical JSON.

The cache is one JSON `SuiteResult` per key at `<cache_root>/<key>.json`, with `cache_root` =
`$LLMRELEASE_HOME/eval-cache` (default `.llmrelease/eval-cache`). Files are written atomically (temporary sibling
and rename), so a reader never sees half a file; a file that does not parse, or whose digest/suite hash/settings
differ from the key's full values (a truncated-key collision, a hand edit), is a miss and is overwritten.
The champion's results are read from here so it is not re-run for every candidate; candidates' results are
stored too, which also makes a retried batch-eval step cheap.
"""

from __future__ import annotations

import errno
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from steps.evals.engines.base import EvalError
from steps.evals.results import SuiteResult, write_json_atomic

__all__ = ["GenerationSettings", "ResultCache", "cache_key", "short_hex"]


class GenerationSettings(BaseModel):
    """Everything besides the model and the suite that decides a model's outputs on a suite.

    Attributes:
        max_new_tokens: Generation length cap per answer.
        temperature: 0 means greedy decoding.
        backend: The engine kind (transformers, vllm, http): different kernels can flip a greedy token.
        device: "cpu" or "cuda" for weight models, "remote" for provider models.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_new_tokens: int = Field(default=32, gt=0)
    temperature: float = Field(default=0.0, ge=0.0)
    backend: str = "transformers"
    device: str = "cpu"

    def digest(self) -> str:
        """The sha256 hex digest of the settings as canonical JSON (sorted keys)."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def short_hex(value: str, n: int = 16) -> str:
    """The first `n` hex characters of a digest, without any `sha256:` prefix."""
    return value.split(":", 1)[-1][:n]


def cache_key(model_digest: str, suite_sha256: str, settings: GenerationSettings) -> str:
    """The file-name key `<digest[:16]>-<suite sha[:16]>-<settings hash[:16]>` (full values are checked on read)."""
    return f"{short_hex(model_digest)}-{short_hex(suite_sha256)}-{short_hex(settings.digest())}"


class ResultCache:
    """Suite results on disk, keyed by (model digest, suite sha256, generation settings).

    Args:
        root: The cache folder; created on the first `put`.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path_for(self, model_digest: str, suite_sha256: str, settings: GenerationSettings) -> Path:
        """Where the result for this key lives (whether or not it exists)."""
        return self.root / f"{cache_key(model_digest, suite_sha256, settings)}.json"

    def get(
        self,
        model_digest: str,
        suite_sha256: str,
        settings: GenerationSettings,
        *,
        relabel: Mapping[str, str] | None = None,
    ) -> SuiteResult | None:
        """The cached result, or None on a miss (no file, unreadable, or stored for other full key values).

        Args:
            model_digest: The model's `sha256:...` digest.
            suite_sha256: The suite file's sha256.
            settings: The generation settings.
            relabel: Names to stamp on the cached result: `suite`, `model_name`, `model_version` (the same
                weights may be registered under another version, the same file under another suite name).
        """
        path = self.path_for(model_digest, suite_sha256, settings)
        try:
            result = SuiteResult.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValidationError, ValueError):
            return None
        if (
            result.model_digest != model_digest
            or result.suite_sha256 != suite_sha256
            or result.generation != settings.model_dump(mode="json")
        ):
            return None
        return _relabel(result, relabel or {})

    def put(self, result: SuiteResult) -> Path:
        """Store `result` under the key its own fields give; returns the file written.

        Raises:
            EvalError: The file cannot be written (no space left, no permission); nothing half-written is left
                (`write_json_atomic` removes its temporary file), so a later run misses and evaluates again.
        """
        settings = GenerationSettings.model_validate(result.generation)
        path = self.path_for(result.model_digest, result.suite_sha256, settings)
        try:
            return write_json_atomic(path, result.model_dump_json())
        except OSError as e:
            why = "no space left on the device" if e.errno == errno.ENOSPC else (e.strerror or type(e).__name__)
            raise EvalError(
                f"eval result cache {path}: cannot write it ({why}): free space under {self.root} or point "
                "LLMRELEASE_HOME at a larger volume, then re-run (nothing half-written was kept)"
            ) from e


def _relabel(result: SuiteResult, names: Mapping[str, str]) -> SuiteResult:
    """A copy of `result` with its suite and model names replaced where `names` gives them."""
    top: dict[str, Any] = {k: v for k, v in names.items() if k in ("suite", "model_name", "model_version")}
    if not top:
        return result
    examples = result.examples
    if "suite" in top:
        examples = [e.model_copy(update={"suite": top["suite"]}) for e in examples]
    return result.model_copy(update={**top, "examples": examples})
