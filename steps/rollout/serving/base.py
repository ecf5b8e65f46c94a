"""What the rollout code needs from a serving plane, and the state every plane records.

A serving plane serves the versions of a registered model and puts one router in front of them. The rollout
operations (`steps.rollout.operations`: deploy, promote, abort, rollback) and the canary step are written against
the `ServingPlane` interface below, never against an implementation; `steps.rollout.serving.factory.serving_plane`
picks the implementation an environment's platform policy names. Today there is one: `LocalServing`
(`transformers serve` processes behind HAProxy on this machine), run in the caller's process or, in the local
profile, by the plane service that `RemoteServing` drives over HTTP (so the servers outlive the step pods).

Every change happens inside `ServingPlane.locked(model)`, which yields the model's `PlaneState` (its router, the
server of each version and which version is champion, previous and canary) and records it when the block ends,
whatever happened in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from registry.errors import ReleaseError
from registry.prompt_content import GenerationSettings, PromptContent
from steps.rollout.routing.base import BackendRouter

__all__ = [
    "PlaneLocked",
    "PlaneState",
    "Served",
    "ServedPrompt",
    "ServerState",
    "ServingError",
    "ServingPlane",
    "model_version_of",
    "server_name",
    "served_version",
]

_PROMPT_SEPARATOR = ".p"  # "3.p2": valid in HAProxy server names, URLs and file names ("+" is not in HAProxy's)


class ServingError(ReleaseError):
    """A model server or router could not be started, reached or changed."""


class PlaneLocked(ServingError):
    """Another holder kept a model's plane lock for as long as the caller would wait."""


def server_name(version: str) -> str:
    """The router's name for a served version (also the `X-Served-By` value): `v3`, or `v3.p2` with a prompt."""
    return f"v{version}"


def served_version(model_version: str, prompt_version: str | None = None) -> str:
    """What the plane serves: model version `3` as is, or with version 2 of its prompt as `3.p2`."""
    return f"{model_version}{_PROMPT_SEPARATOR}{prompt_version}" if prompt_version else str(model_version)


def model_version_of(served: str) -> str:
    """The model version a served version runs (`3.p2` -> `3`): what the registry's model aliases name."""
    return served.split(_PROMPT_SEPARATOR, 1)[0]


class ServedPrompt(BaseModel):
    """A prompt version as a server applies it: its rendered messages go before every request's, its settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: str
    digest: str
    messages: list[tuple[str, str]] = Field(description="(role, content), variables rendered with their defaults")
    generation: GenerationSettings = Field(default_factory=GenerationSettings)

    @classmethod
    def of(cls, name: str, version: str | int, content: PromptContent) -> ServedPrompt:
        """Version `version` of prompt `name`, rendered as the evals render it (defaults; none given: empty)."""
        messages = [(m.role, m.content) for m in content.render(strict=False)]
        return cls(
            name=name, version=str(version), digest=content.digest, messages=messages, generation=content.generation
        )


class Served(BaseModel):
    """What to serve for one served version: the weights (URI or folder) and the prompt applied to them, if any."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weights: str = Field(description="the weights-store URI, or a folder the plane can read")
    prompt: ServedPrompt | None = None


class ServerState(BaseModel):
    """One model version's server: where it listens, which process serves it, how long it stays hot."""

    model_config = ConfigDict(extra="forbid")

    version: str
    port: int
    pid: int
    pid_created: float | None = Field(
        default=None, description="the process's creation time (psutil): a reused pid is never signalled"
    )
    model_dir: str
    started_at: float
    hot_until: float | None = Field(default=None, description="epoch seconds after which a non-serving copy may stop")
    prompt: str | None = Field(default=None, description="the prompt applied, `<name> v<version> (<digest>)`")

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL (…/v1)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def address(self) -> str:
        """host:port for the router."""
        return f"127.0.0.1:{self.port}"


class PlaneState(BaseModel):
    """A model's router and servers, and which version is champion, previous and canary."""

    model_config = ConfigDict(extra="forbid")

    model: str
    router_port: int | None = Field(default=None, description="where the model's router listens; None: no router")
    servers: dict[str, ServerState] = Field(default_factory=dict)
    champion: str | None = None
    previous: str | None = None
    canary: str | None = None


@runtime_checkable
class ServingPlane(Protocol):
    """Serves a model's versions behind one router; what deploy, canary, promote, abort and rollback are given.

    Methods that take a `PlaneState` are called inside `locked(model)` with the state it yielded; they change that
    state (and the processes or objects it describes) and `locked` records it when the block ends.
    """

    def locked(self, model: str) -> AbstractContextManager[PlaneState]:
        """Hold the model's lock; yield its state and record it when the block ends (even by an error)."""
        ...

    def state(self, model: str) -> PlaneState:
        """Read the model's recorded state without the lock (empty when nothing was ever served)."""
        ...

    def ensure_server(self, state: PlaneState, version: str, model_dir: Path | str | Served) -> ServerState:
        """Serve one version from its weights; return its server once it answers a real completion."""
        ...

    def ensure_servers(self, state: PlaneState, wanted: Mapping[str, Path | str | Served]) -> dict[str, ServerState]:
        """Serve several served versions; those not serving yet start together.

        `wanted` maps a served version (`served_version`: `3`, or `3.p2` with a prompt) to its weights: the
        version's weights-store URI (`<root>/weights/sha256/<hex>`, which the plane fetches and verifies itself:
        `steps.rollout.serving.weights`), or a folder the plane can read (a plane in the caller's process; versions
        registered before the weights store); or to a `Served`: those weights with a prompt applied.
        """
        ...

    def is_ready(self, state: PlaneState, server: ServerState) -> bool:
        """Whether the version's server runs and answers a real completion now."""
        ...

    def stop_server(self, state: PlaneState, version: str) -> None:
        """Stop serving a version (take it out of the router first)."""
        ...

    def reap(self, state: PlaneState) -> list[str]:
        """Stop the servers whose hot window ended and that play no role; return their versions."""
        ...

    def router(self, state: PlaneState) -> BackendRouter:
        """The model's running router: its live split, its backends (one per served version)."""
        ...

    def ensure_router(self, state: PlaneState, first: ServerState) -> BackendRouter:
        """The model's router, started with `first` taking all traffic when there is none."""
        ...

    def router_url(self, state: PlaneState) -> str:
        """The OpenAI-compatible base URL (…/v1) clients call: the router's."""
        ...

    def shutdown(self, model: str) -> None:
        """Stop the model's router and every server, and clear its roles."""
        ...
