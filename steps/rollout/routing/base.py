"""The traffic-split interface the canary step drives, and the weight rules every router shares.

A router splits the traffic of one model endpoint between named backends (model versions) by integer
percentages that sum to 100. Two implementations follow this interface: `HAProxyRouter` (this machine, CI, the
demo) and `GatewayRouter` (a Gateway API HTTPRoute on a cluster). Both validate with `validate_weights` before
they change anything, so a refused call leaves the live split exactly as it was.

A serving plane also adds and removes backends as versions start and stop, and stops the router with the last
one: `BackendRouter` (today `HAProxyRouter`; `GatewayRouter` cannot add or remove a backend yet).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol, runtime_checkable

from registry.errors import ReleaseError

__all__ = ["BackendRouter", "Router", "RoutingError", "canary_split", "validate_weights"]


class RoutingError(ReleaseError):
    """A traffic split was refused (bad weights) or the router could not apply or read it."""


@runtime_checkable
class Router(Protocol):
    """Splits traffic between named backends by percent; what the canary step is given."""

    def set_weights(self, weights: Mapping[str, int]) -> None:
        """Apply a split: backend name -> percent (0..100, summing to 100; backends left out get 0).

        Raises:
            RoutingError: on an unknown backend, a weight outside 0..100, or a sum other than 100 (nothing is
                changed), or when the router cannot apply the split.
        """
        ...

    def weights(self) -> dict[str, int]:
        """Return the live split: every backend name -> percent."""
        ...


@runtime_checkable
class BackendRouter(Router, Protocol):
    """A `Router` whose backends a serving plane adds and removes live; what `ServingPlane.router` returns."""

    @property
    def backends(self) -> dict[str, str]:
        """Backend name -> "host:port", in configuration order."""
        ...

    def add_backend(self, name: str, address: str) -> None:
        """Add a backend with weight 0 (it gets traffic only through `set_weights`); move it when it moved."""
        ...

    def remove_backend(self, name: str) -> bool:
        """Drain and remove a backend that has weight 0; False when requests were still attached after draining."""
        ...

    def stop(self) -> None:
        """Stop the router: the model's endpoint answers no more."""
        ...


def validate_weights(current_backends: Collection[str], weights: Mapping[str, int]) -> dict[str, int]:
    """Check a requested split against the router's backends and complete it.

    Args:
        current_backends: the backend names the router knows, in their order.
        weights: backend name -> percent; every name must be known, each value an integer in 0..100, the
            values must sum to 100. Backends left out get 0 (drained).

    Returns:
        Every known backend -> percent, in the order of `current_backends`.

    Raises:
        RoutingError: naming the bad weight and the fix.
    """
    known = list(current_backends)
    if not weights:
        raise RoutingError(f"weights are empty: give a percent for at least one of {_names(known)}")
    for name, weight in weights.items():
        if name not in known:
            raise RoutingError(f"weights name unknown backend {name!r}: use one of {_names(known)}")
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise RoutingError(f"weight for {name!r} is {weight!r}: use an integer percent from 0 to 100")
        if not 0 <= weight <= 100:
            raise RoutingError(f"weight for {name!r} is {weight}: use an integer percent from 0 to 100")
    total = sum(weights.values())
    if total != 100:
        listed = ", ".join(f"{name}={weight}" for name, weight in weights.items())
        raise RoutingError(f"weights sum to {total} ({listed}): make them sum to 100")
    return {name: int(weights.get(name, 0)) for name in known}


def canary_split(canary_percent: int, *, stable: str = "stable", canary: str = "canary") -> dict[str, int]:
    """Return the split that sends `canary_percent` to the canary and the rest to the stable version.

    A canary that should get traffic never gets 0: draining it is a rollback (`set_weights({stable: 100})`),
    not a canary step.

    Args:
        canary_percent: percent of requests for the canary, 1..100.
        stable: backend name of the current champion.
        canary: backend name of the candidate.

    Raises:
        RoutingError: when `canary_percent` is not an integer in 1..100 or the two names are equal.
    """
    if isinstance(canary_percent, bool) or not isinstance(canary_percent, int) or not 0 < canary_percent <= 100:
        raise RoutingError(
            f"canary_percent {canary_percent!r} is out of range: use an integer from 1 to 100 "
            "(drain a canary with a rollback, not a 0% step)"
        )
    if stable == canary:
        raise RoutingError(f"canary split names {stable!r} as both stable and canary: give two different backends")
    return {stable: 100 - canary_percent, canary: canary_percent}


def _names(names: Collection[str]) -> str:
    return ", ".join(sorted(names)) or "(no backends)"
