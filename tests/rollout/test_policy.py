"""Rollout policy rules and sticky routing, without Redis or a network."""

from __future__ import annotations

import pytest

from gateway.core.errors import InvalidInput, NotFound
from gateway.rollout.policy import RolloutPolicy
from gateway.rollout.router import CANARY, STABLE, bucket, choose, shadow_of

LOADED = {"1", "2", "3"}


def test_a_change_names_what_is_wrong() -> None:
    policy = RolloutPolicy(stable="1")
    with pytest.raises(InvalidInput, match="no loaded version '9'"):
        policy.with_changes({"canary": "9", "canary_percent": 10}).validate("mnist", LOADED)
    for percent in (150, -1, 100.5):
        with pytest.raises(InvalidInput, match="0-100"):
            policy.with_changes({"canary": "2", "canary_percent": percent}).validate("mnist", LOADED)
    with pytest.raises(InvalidInput, match="number 0-100"):
        policy.with_changes({"canary": "2", "canary_percent": "ten"})
    with pytest.raises(InvalidInput, match="unknown rollout field"):
        policy.with_changes({"canary_pct": 10})
    with pytest.raises(InvalidInput, match="no canary version"):
        policy.with_changes({"canary_percent": 10}).validate("mnist", LOADED)
    with pytest.raises(InvalidInput, match="already the stable"):
        policy.with_changes({"canary": "1"}).validate("mnist", LOADED)
    assert policy.with_changes({"canary": 2, "canary_percent": 10, "shadow": "3"}).validate("mnist", LOADED) == (
        RolloutPolicy(stable="1", canary="2", canary_percent=10.0, shadow="3")
    )


def test_promote_then_rollback_returns_to_the_previous_stable() -> None:
    canary = RolloutPolicy(stable="1", canary="2", canary_percent=10, shadow="2")
    assert canary.rolled_back() == RolloutPolicy(stable="1", shadow="2")
    promoted = canary.promoted()
    assert promoted == RolloutPolicy(stable="2", previous_stable="1")
    assert promoted.rolled_back() == RolloutPolicy(stable="1")
    with pytest.raises(InvalidInput, match="nothing to roll back"):
        RolloutPolicy(stable="1").rolled_back()
    with pytest.raises(InvalidInput, match="no canary to promote"):
        RolloutPolicy(stable="1").promoted()


def test_explicit_unload_of_a_routed_version_is_refused() -> None:
    policy = RolloutPolicy(stable="1", canary="2", canary_percent=5)
    with pytest.raises(InvalidInput, match="canary version"):
        policy.unloading("2")
    assert policy.unloading("3").unload == ("3",)
    assert policy.unloading("3").loading("3").unload == ()
    with pytest.raises(NotFound, match="unknown version label"):
        policy.version_for_label("beta")


def test_routing_is_sticky_and_splits_keys_by_the_percentage() -> None:
    policy = RolloutPolicy(stable="1", canary="2", canary_percent=10)
    keys = [f"phone-{i}" for i in range(20_000)]
    routes = [choose("mnist", policy, key, LOADED) for key in keys]
    share = sum(route.arm == CANARY for route in routes) / len(keys)
    assert 0.09 <= share <= 0.11
    assert all(choose("mnist", policy, key, LOADED) == route for key, route in zip(keys[:500], routes, strict=False))
    wider = RolloutPolicy(stable="1", canary="2", canary_percent=30)
    assert all(
        choose("mnist", wider, k, LOADED).arm == CANARY for k, r in zip(keys, routes, strict=True) if r.arm == CANARY
    )
    assert bucket("mnist", "phone-1") != bucket("hotdog", "phone-1") or bucket("mnist", "x") != bucket("hotdog", "x")


def test_a_canary_this_replica_has_not_loaded_falls_back_to_stable_and_only_stable_is_shadowed() -> None:
    policy = RolloutPolicy(stable="1", canary="2", canary_percent=100, shadow="3")
    assert choose("mnist", policy, "k", {"1", "3"}).arm == STABLE
    canary = choose("mnist", policy, "k", LOADED)
    assert canary.arm == CANARY and shadow_of(policy, canary, LOADED) is None
    assert shadow_of(policy, choose("mnist", policy, "k", {"1", "3"}), LOADED) == "3"
