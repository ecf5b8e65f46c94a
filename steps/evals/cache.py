"""Eval-result keys and the suite-result cache: a model is not re-evaluated on a suite it has already answered.

A `SuiteResult` is fully determined by three things, and is cached under them:

* the model's digest (`llmrelease.digest` of its registered version: the sha256 of its weights' manifest),
* the suite file's sha256 (`Suite.sha256`),
* the generation settings (`GenerationSettings`: max_new_tokens, temperature, backend and device class, and
  the digest of the prompt applied to every item, if any), hashed as canonical JSON. A run without a prompt
  leaves `prompt_digest` out of the JSON, so its key is the one it had before prompts existed.

The cache is one JSON `SuiteResult` per key, `<key>.json`, in an `EvalStore` (`steps.evals.store`):
`s3://$LLMRELEASE_S3_BUCKET/evals/results` when a bucket is configured (a hit in any pod on any node skips the
model), else `$LLMRELEASE_HOME/eval-cache` (default `.llmrelease/eval-cache`). Entries are whole objects (a
reader never sees half of one) and first-writer-wins: of two pods storing one key at once (batch-eval and safety
run in parallel) the first keeps its entry and the second's `put` succeeds without replacing it. An entry that
does not parse, or whose digest/suite hash/settings differ from the key's full values (a truncated-key
collision, a hand edit), is a miss and is replaced. The champion's results are read from here so it is not re-run
for every candidate; candidates' results are stored too, which also makes a retried batch-eval step cheap.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from steps.evals.results import SuiteResult
from steps.evals.store import EvalStore

__all__ = ["CACHE_LABEL", "GenerationSettings", "ResultCache", "cache_key", "short_hex"]

CACHE_LABEL = "eval result cache"


class GenerationSettings(BaseModel):
    """Everything besides the model and the suite that decides a model's outputs on a suite.

    Attributes:
        max_new_tokens: Generation length cap per answer.
        temperature: 0 means greedy decoding.
        backend: The engine kind (transformers, vllm, http): different kernels can flip a greedy token.
        device: "cpu" or "cuda" for weight models, "remote" for provider models.
        prompt_digest: The `PromptContent.digest` of the release prompt applied to every item (its messages
            before the item's, its generation settings); None: the items alone.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_new_tokens: int = Field(default=32, gt=0)
    temperature: float = Field(default=0.0, ge=0.0)
    backend: str = "transformers"
    device: str = "cpu"
    prompt_digest: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The settings as JSON, without `prompt_digest` when there is no prompt (the keys from before prompts)."""
        return self.model_dump(mode="json", exclude_none=True)

    def digest(self) -> str:
        """The sha256 hex digest of the settings as canonical JSON (sorted keys)."""
        text = json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def short_hex(value: str, n: int = 16) -> str:
    """The first `n` hex characters of a digest, without any `sha256:` prefix."""
    return value.split(":", 1)[-1][:n]


def cache_key(model_digest: str, suite_sha256: str, settings: GenerationSettings) -> str:
    """The file-name key `<digest[:16]>-<suite sha[:16]>-<settings hash[:16]>` (full values are checked on read)."""
    return f"{short_hex(model_digest)}-{short_hex(suite_sha256)}-{short_hex(settings.digest())}"


class ResultCache:
    """Suite results keyed by (model digest, suite sha256, generation settings), in an `EvalStore`.

    Args:
        root: The store (`steps.evals.store.eval_store("results", ...)`), or a local folder (created on the first
            `put`).
    """

    def __init__(self, root: str | Path | EvalStore) -> None:
        self.store = root if isinstance(root, EvalStore) else EvalStore(Path(root), CACHE_LABEL)
        self.root = self.store.root

    def location_for(self, model_digest: str, suite_sha256: str, settings: GenerationSettings) -> str:
        """Where the result for this key lives (whether or not it exists): a path or an s3:// URI."""
        return self.store.location(_name(model_digest, suite_sha256, settings))

    def path_for(self, model_digest: str, suite_sha256: str, settings: GenerationSettings) -> Path:
        """`location_for` as a path (meaningful for a local cache)."""
        return Path(self.location_for(model_digest, suite_sha256, settings))

    def get(
        self,
        model_digest: str,
        suite_sha256: str,
        settings: GenerationSettings,
        *,
        relabel: Mapping[str, str] | None = None,
    ) -> SuiteResult | None:
        """The cached result, or None on a miss (no entry, unreadable, or stored for other full key values).

        Args:
            model_digest: The model's `sha256:...` digest.
            suite_sha256: The suite file's sha256.
            settings: The generation settings.
            relabel: Names to stamp on the cached result: `suite`, `model_name`, `model_version` (the same
                weights may be registered under another version, the same file under another suite name).

        Raises:
            EvalError: The store cannot be read (S3 unreachable past its deadline, refused credentials).
        """
        text = self.store.read(_name(model_digest, suite_sha256, settings))
        result = _parse(text, model_digest, suite_sha256, settings)
        return None if result is None else _relabel(result, relabel or {})

    def put(self, result: SuiteResult) -> str:
        """Store `result` under the key its own fields give, unless a valid entry is there; returns its location.

        First writer wins: when another writer stored the key first (a parallel pod), its entry is kept and this
        call succeeds; an entry that does not parse or holds other full key values is replaced.

        Raises:
            EvalError: The entry cannot be written (no space left, no permission, S3 unreachable); nothing
                half-written is left, so a later run misses and evaluates again.
        """
        settings = GenerationSettings.model_validate(result.generation)
        name = _name(result.model_digest, result.suite_sha256, settings)
        text = result.model_dump_json() + "\n"
        if not self.store.create(name, text):
            stored = _parse(self.store.read(name), result.model_digest, result.suite_sha256, settings)
            if stored is None:
                self.store.write(name, text)
        return self.store.location(name)


def _name(model_digest: str, suite_sha256: str, settings: GenerationSettings) -> str:
    return f"{cache_key(model_digest, suite_sha256, settings)}.json"


def _parse(text: str | None, model_digest: str, suite_sha256: str, settings: GenerationSettings) -> SuiteResult | None:
    """The entry's result when it parses and holds exactly these full key values, else None."""
    if text is None:
        return None
    try:
        result = SuiteResult.model_validate_json(text)
        stored = GenerationSettings.model_validate(result.generation)  # no prompt_digest: none (entries before)
    except (ValidationError, ValueError):
        return None
    if result.model_digest != model_digest or result.suite_sha256 != suite_sha256 or stored != settings:
        return None
    return result


def _relabel(result: SuiteResult, names: Mapping[str, str]) -> SuiteResult:
    """A copy of `result` with its suite and model names replaced where `names` gives them."""
    top: dict[str, Any] = {k: v for k, v in names.items() if k in ("suite", "model_name", "model_version")}
    if not top:
        return result
    examples = result.examples
    if "suite" in top:
        examples = [e.model_copy(update={"suite": top["suite"]}) for e in examples]
    return result.model_copy(update={**top, "examples": examples})
