"""Pick the version (and the arm) that answers one request under a model's rollout policy.

Sticky: a routing key (the client's certificate identity, or an explicit ``x-routing-key``) hashes
to one of 10,000 buckets per model; buckets below ``canary_percent * 100`` go to the canary, so
one phone sees one version for as long as the policy stands, and raising the share only moves
keys from stable to canary (never back and forth).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection

from gateway.core.types import Route
from gateway.rollout.policy import RolloutPolicy

BUCKETS = 10_000

STABLE, CANARY, SHADOW, PINNED = "stable", "canary", "shadow", "pinned"
"""Arms a prediction is logged under. PINNED: the request named a version number.

__all__ re-exports Route (defined in core: requests carry it)."""
__all__ = ["Route", "bucket", "choose", "shadow_of", "STABLE", "CANARY", "SHADOW", "PINNED"]


def bucket(model: str, routing_key: str) -> int:
    """A stable bucket 0..9999 for this key and model (SHA-256: the same on every replica and restart)."""
    digest = hashlib.sha256(f"{model}\0{routing_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def choose(model: str, policy: RolloutPolicy, routing_key: str, loaded: Collection[str]) -> Route:
    """The arm for an unpinned request; a canary this replica has not loaded falls back to stable."""
    if (
        policy.canary is not None
        and policy.canary in loaded
        and bucket(model, routing_key) < round(policy.canary_percent * BUCKETS / 100)
    ):
        return Route(policy.canary, CANARY)
    return Route(policy.stable, STABLE)


def shadow_of(policy: RolloutPolicy, route: Route, loaded: Collection[str]) -> str | None:
    """The version that gets a copy of this request, if any: only stable traffic is shadowed."""
    if route.arm == STABLE and policy.shadow is not None and policy.shadow in loaded:
        return policy.shadow
    return None
