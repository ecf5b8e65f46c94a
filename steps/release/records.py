"""The onboarding record: everything the onboard step established about a model, as typed, frozen models.

Written as JSON to `<work_dir>/onboarding-record.json` by `write_record`, atomically (a temp file renamed into
place), so a reader sees either the previous record or the complete new one. The record holds no timestamps:
the same inputs give the same bytes. Downstream steps read it as plain JSON (registry/record.py).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from registry.prompt_content import PromptContent
from steps.release.spec import Card

__all__ = [
    "RECORD_FILE",
    "ConfigSummary",
    "DatasetRecord",
    "FileEntry",
    "MemoryEstimate",
    "OnboardingRecord",
    "PromptRecord",
    "ProviderRef",
    "write_record",
]

RECORD_FILE = "onboarding-record.json"
_FROZEN = ConfigDict(extra="forbid", frozen=True)


class FileEntry(BaseModel):
    """One file of the model: its path relative to the model directory (POSIX), sha256 and size in bytes."""

    model_config = _FROZEN

    path: str
    sha256: str
    size: int


class ProviderRef(BaseModel):
    """An OpenAI-compatible provider model: the API base URL and the model id."""

    model_config = _FROZEN

    base_url: str
    model: str


class ConfigSummary(BaseModel):
    """What config.json and the safetensors headers say about the architecture."""

    model_config = _FROZEN

    architecture: str | None
    model_type: str | None
    params: int = Field(description="parameter count")
    params_source: Literal["safetensors", "config"] = Field(description="where `params` was read")
    context_length: int | None
    dtype: str | None = Field(description="the checkpoint dtype from config.json (torch_dtype/dtype)")
    layers: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    hidden_size: int


class MemoryEstimate(BaseModel):
    """The GPU memory the served model needs, against what the target GPU offers.

    weights = params x bytes per param (serving dtype, or the quantization); KV cache = 2 (K and V) x layers x
    kv_heads x head_dim x KV bytes (serving dtype) x max_context x max_batch; overhead = 1 GiB (CUDA context,
    allocator) + 10 % of weights + KV (activations, fragmentation); usable = memory_gib x gpu_memory_utilization.
    """

    model_config = _FROZEN

    params: int
    weight_format: str
    bytes_per_param: float
    weights_bytes: int
    kv_dtype: str
    kv_bytes_per_value: int
    layers: int
    kv_heads: int
    head_dim: int
    max_context: int
    max_batch: int
    kv_cache_bytes: int
    overhead_bytes: int
    total_bytes: int
    gpu_name: str
    gpu_memory_gib: float
    gpu_memory_utilization: float
    usable_bytes: int
    fits: bool
    arithmetic: str


class DatasetRecord(BaseModel):
    """One validated eval suite."""

    model_config = _FROZEN

    name: str
    path: str
    sha256: str
    rows: int
    task_types: list[str]


class PromptRecord(BaseModel):
    """The release's validated prompt (`steps/onboarding/prompts.py`): what register versions, evals apply."""

    model_config = _FROZEN

    name: str = Field(description="the Prompt Registry name (prompt.name)")
    digest: str = Field(description="sha256:<hex> of the content's canonical JSON (`PromptContent.digest`)")
    content: PromptContent
    tokens: int = Field(description="the rendered prompt plus generation.max_tokens, in the model's tokens")
    context_length: int = Field(description="the context it was checked against")


class OnboardingRecord(BaseModel):
    """The onboard step's result: identity, provenance and the checks the model passed."""

    model_config = _FROZEN

    name: str = Field(description="the MLflow registered model name (model.name)")
    release: str = Field(description="the release name (spec name)")
    environment: str
    source_uri: str = Field(description="model.source as written in the spec")
    kind: Literal["weights", "provider"]
    weights_uri: str | None = Field(
        default=None, description="the weights' digest-addressed location in the weights store, None for providers"
    )
    provider: ProviderRef | None
    digest: str = Field(description="sha256:<hex> of the canonical manifest JSON, or of {base_url, model}")
    files: list[FileEntry]
    card: Card
    config: ConfigSummary | None
    memory: MemoryEstimate | None
    datasets: list[DatasetRecord]
    spec_path: str
    spec_sha256: str
    policy_version: str
    prompt: PromptRecord | None = Field(default=None, description="the release's prompt, when it carries one")
    champion_version: str | None = Field(
        default=None,
        description="a prompt-only release (model.source: champion): the champion version whose weights it keeps",
    )


def write_record(record: OnboardingRecord, work_dir: str | Path) -> Path:
    """Write `record` to `<work_dir>/onboarding-record.json` atomically; returns the absolute path."""
    folder = Path(work_dir).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / RECORD_FILE
    text = json.dumps(record.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{RECORD_FILE}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
