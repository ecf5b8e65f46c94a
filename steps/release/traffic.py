"""The traffic a release must hold in the latency step, and the capacity search after it (`gates.latency`).

Three sources, the first that sets a field wins: the release spec (`gates.latency.load` / `.capacity`), the
environment's default in the platform policy (`environments.<env>.latency.load` / `.capacity`, applied by
`steps.release.policy.apply_environment`), then `DEFAULT_LOAD` / `DEFAULT_CAPACITY` here. `rate` and
`concurrency` choose the load's mode together: a source that sets either sets both (the other unset).
"""

from __future__ import annotations

import random
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_LOAD",
    "CapacitySearch",
    "LatencyDefaults",
    "LatencyLoad",
    "load_fields",
    "merge",
    "synthetic_prompt",
]

_FROZEN = ConfigDict(extra="forbid", frozen=True)
_M = TypeVar("_M", bound=BaseModel)
_WORDS = (
    "model release latency token server request answer question system user metric budget window policy cluster "
    "weights gate canary traffic routing sample prompt batch cache memory engine vector stream report digest"
).split()


class LatencyLoad(BaseModel):
    """The load the latency step offers: open-loop `rate` or closed-loop `concurrency`, for `duration_s`."""

    model_config = _FROZEN

    rate: float | None = Field(
        default=None, gt=0, le=100_000, description="requests/s offered open-loop, e.g. 2 (or set concurrency)"
    )
    concurrency: int | None = Field(
        default=None, ge=1, le=4096, description="closed-loop clients, an integer >= 1 (or set rate)"
    )
    arrival: Literal["constant", "poisson"] | None = Field(
        default=None, description="constant or poisson arrivals at the rate"
    )
    duration_s: float | None = Field(default=None, gt=0, le=3600, description="seconds of measured load, e.g. 20")
    warmup: int | None = Field(
        default=None, ge=0, le=100, description="requests sent one at a time before measuring, e.g. 2"
    )
    prompts: Literal["suite", "synthetic"] | None = Field(
        default=None,
        description="suite (the first eval suite's prompts, in turn) or synthetic (prompts of prompt_tokens words)",
    )
    prompt_tokens: int | None = Field(
        default=None, ge=1, le=131_072, description="synthetic prompt length in tokens (about one a word), e.g. 128"
    )
    output_tokens: int | None = Field(
        default=None, ge=1, le=131_072, description="max_tokens of each request, a positive integer, e.g. 64"
    )

    @model_validator(mode="after")
    def _one_mode(self) -> LatencyLoad:
        if self.rate is not None and self.concurrency is not None:
            raise ValueError("set rate or concurrency, not both")
        return self


class CapacitySearch(BaseModel):
    """After the required load, the search for the highest rate at which the latency SLO holds."""

    model_config = _FROZEN

    enabled: bool | None = Field(default=None, description="true or false: whether to search")
    max_time_s: float | None = Field(
        default=None, gt=0, le=3600, description="seconds the whole search may take, e.g. 60"
    )
    probe_s: float | None = Field(default=None, gt=0, le=600, description="seconds of load per rate tried, e.g. 5")
    max_rate: float | None = Field(default=None, gt=0, description="the highest rate tried in requests/s, e.g. 1000")
    precision: float | None = Field(
        default=None, gt=0, lt=1, description="stop when the bracket is this narrow, relatively, e.g. 0.1"
    )


class LatencyDefaults(BaseModel):
    """An environment's default traffic and capacity search (platform policy `environments.<env>.latency`)."""

    model_config = _FROZEN

    load: LatencyLoad = Field(default_factory=LatencyLoad, description="{rate or concurrency, duration_s, ...}")
    capacity: CapacitySearch = Field(default_factory=CapacitySearch, description="{enabled, max_time_s, ...}")


DEFAULT_LOAD = LatencyLoad(
    rate=4.0, arrival="constant", duration_s=10.0, warmup=2, prompts="suite", prompt_tokens=128, output_tokens=64
)
DEFAULT_CAPACITY = CapacitySearch(enabled=True, max_time_s=60.0, probe_s=5.0, max_rate=1000.0, precision=0.1)


def merge(first: _M, then: _M) -> _M:
    """`first` with its unset (None) fields taken from `then`; for a load, rate and concurrency go together."""
    own = first.model_dump(exclude_none=True)
    if isinstance(first, LatencyLoad) and own.keys() & {"rate", "concurrency"}:
        fallback = then.model_dump(exclude_none=True, exclude={"rate", "concurrency"})
    else:
        fallback = then.model_dump(exclude_none=True)
    return type(first).model_validate({**fallback, **own})


def synthetic_prompt(tokens: int, seed: int) -> str:
    """About `tokens` tokens of common English words (one token each in BPE vocabularies), distinct per seed.

    Distinct prompts keep a server's prefix cache from answering the load out of one cached prefix.
    """
    rng = random.Random(seed)
    return " ".join(rng.choice(_WORDS) for _ in range(tokens))


def load_fields(load: LatencyLoad, suite_prompts: list[str], max_prompts: int = 256) -> dict[str, Any]:
    """The `steps.rollout.loadgen.LoadSpec` fields of a resolved load (each field set, as after `merge`).

    Args:
        load: The load, with every field set.
        suite_prompts: The first eval suite's prompts (used when `load.prompts` is suite).
        max_prompts: At most this many distinct prompts (the report lists them).
    """
    full = merge(load, DEFAULT_LOAD)
    if full.prompts == "synthetic" or not suite_prompts:
        prompts = [synthetic_prompt(full.prompt_tokens or 1, seed) for seed in range(min(max_prompts, 64))]
    else:
        prompts = suite_prompts[:max_prompts]
    mode = "concurrency" if full.concurrency is not None else full.arrival
    shape = {"concurrency": full.concurrency} if full.concurrency is not None else {"rate": full.rate}
    return {
        "mode": mode,
        **shape,
        "requests": None,
        "duration_s": full.duration_s,
        "warmup": full.warmup,
        "max_tokens": full.output_tokens,
        "prompts": prompts,
    }
