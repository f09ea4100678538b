"""One replica's side of the rollout: follows the shared state, routes requests, runs the guard.

The state every replica routes by is a copy of the Redis state kept in memory: a request never
waits for Redis. Changes arrive by pub/sub (applied in well under a second) and a periodic
re-read catches anything missed while the connection was down. Until ``start`` (or while Redis
is unreachable at start) a model routes by its initial policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.config import RolloutSettings
from gateway.core.errors import GatewayError, InvalidInput, NotFound, PermissionDenied, Unavailable
from gateway.core.types import Identity
from gateway.monitoring.metrics import GatewayMetrics
from gateway.rollout.guard import CanaryJudge, GuardBounds, Verdict, removal
from gateway.rollout.policy import RolloutPolicy
from gateway.rollout.router import CANARY, PINNED, Route, choose
from gateway.rollout.shadow import ShadowTracker
from gateway.rollout.store import ChangeResult, Confirm, RolloutState, RolloutStore

log = logging.getLogger(__name__)

REPLICA = f"{socket.gethostname()}:{os.getpid()}"
GUARD = f"guard@{REPLICA}"

LoadedVersions = Callable[[str], Collection[str]]
Accuracy = Callable[[str], Awaitable[dict[str, dict[str, Any]]]]


def _validating(
    transform: Callable[[RolloutPolicy], RolloutPolicy], model: str, loaded: Collection[str]
) -> Callable[[RolloutPolicy], RolloutPolicy]:
    """``transform``, then the result validated against the versions loaded here."""
    return lambda policy: transform(policy).validate(model, loaded)


def _selection(policy: RolloutPolicy) -> tuple:
    """What a policy says about which versions are loaded (a change makes the registry sync)."""
    return (policy.load, policy.unload, policy.versions)


def bounds_from(settings: RolloutSettings) -> GuardBounds:
    return GuardBounds(
        window=settings.guard_window,
        min_requests=settings.guard_min_requests,
        max_error_rate=settings.guard_max_error_rate,
        max_p99_ms=settings.guard_max_p99_ms,
        min_accuracy=settings.guard_min_accuracy,
        min_feedback=settings.guard_min_feedback,
        min_agreement=settings.guard_min_agreement,
        min_compared=settings.guard_min_compared,
    )


class RolloutManager:
    """Routes requests by the followed rollout state, records arm outcomes, runs the guard. ``loaded``: a model's
    loaded versions; ``authorize``: the ``rollout`` policy check (None: operators only); ``on_change``: called
    with a model's name when an adopted state changes which versions are loaded."""

    def __init__(
        self,
        settings: RolloutSettings,
        metrics: GatewayMetrics,
        loaded: LoadedVersions,
        *,
        authorize: Callable[[Identity, str], None] | None = None,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._loaded = loaded
        self._judge = CanaryJudge(bounds_from(settings))
        self._states: dict[str, RolloutState] = {}
        self._store: RolloutStore | None = None
        self.shadow: ShadowTracker | None = None
        self._accuracy: Accuracy | None = None
        self._tasks: list[asyncio.Task] = []
        self._on_change = on_change
        self._authorize = authorize

    # -- state -----------------------------------------------------------------------------------------

    def init_model(self, model: str, initial: RolloutPolicy) -> None:
        """Route ``model`` by ``initial`` until the shared state is read (revision 0: not yet shared)."""
        self._apply(RolloutState(model, initial, 0, time.time(), "gateway (initial)"))

    def state(self, model: str) -> RolloutState:
        try:
            return self._states[model]
        except KeyError:
            raise NotFound(f"unknown model {model!r}") from None

    def policy(self, model: str) -> RolloutPolicy:
        return self.state(model).policy

    def _apply(self, state: RolloutState) -> bool:
        """Adopt ``state`` if it is newer than the one followed; returns whether it was."""
        current = self._states.get(state.model)
        if current is not None and state.revision <= current.revision:
            return False
        if current is not None and current.policy.canary != state.policy.canary:
            self._judge.forget(state.model, current.policy.canary or "")
        self._states[state.model] = state
        policy = state.policy
        self._metrics.observe_rollout(state.model, policy, state.revision)
        if current is not None and state.revision > 0:
            log.info("rollout of %s now revision %d: %s", state.model, state.revision, policy.to_dict())
            if self._on_change is not None and _selection(current.policy) != _selection(policy):
                self._on_change(state.model)
        return True

    # -- routing ---------------------------------------------------------------------------------------

    def route(self, model: str, version: str | None, label: str | None, routing_key: str) -> Route:
        """The version and arm for one request: pinned version, pinned label, or the policy's choice."""
        policy = self.policy(model)
        loaded = self._loaded(model)
        if version is not None:
            return Route(version, PINNED)
        if label is not None:
            chosen = policy.version_for_label(label)
            if chosen is None:
                raise NotFound(f"model {model!r} has no version labelled {label!r} now (no {label} in its rollout)")
            return Route(chosen, label)
        return choose(model, policy, routing_key, loaded)

    def record_outcome(self, model: str, route: Route, failed: bool, latency_s: float) -> None:
        """Count a finished request by arm; canary outcomes feed the guard's window."""
        self._metrics.routed.labels(model, route.version, route.arm).inc()
        if route.arm == CANARY:
            self._judge.add(model, route.version, failed, latency_s)

    def needed_versions(self, model: str) -> set[str]:
        """Versions the policy routes to: never unloaded by a repository scan."""
        state = self._states.get(model)
        return state.policy.versions if state else set()

    # -- shared state ----------------------------------------------------------------------------------

    async def start(self, connect: Callable[[], aioredis.Redis], accuracy: Accuracy, confirm: Confirm = None) -> None:
        """Read (or create) every model's shared state, then follow changes and run the guard."""
        self._store = RolloutStore(connect, confirm)
        self.shadow = ShadowTracker(connect)
        self._accuracy = accuracy
        for model in list(self._states):
            try:
                self._apply(await self._store.ensure(model, self._states[model].policy))
            except RedisError as exc:
                log.error("rollout state of %s cannot be read (%s); routing by the initial policy", model, exc)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._follow(), name="rollout-follow"),
            loop.create_task(self._poll(), name="rollout-poll"),
        ]
        if self._settings.guard_enabled:
            self._tasks.append(loop.create_task(self._guard_loop(), name="rollout-guard"))

    def _store_or_fail(self) -> RolloutStore:
        if self._store is None:
            raise Unavailable("the rollout store is not running")
        return self._store

    async def _follow(self) -> None:
        while True:
            try:
                async for state in self._store_or_fail().changes():
                    if state.model in self._states and self._apply(state):
                        self._metrics.follow_delay.observe(max(0.0, time.time() - state.updated_at))
            except (RedisError, OSError) as exc:
                log.warning("rollout changes: lost the subscription (%s); resubscribing", exc)
                await asyncio.sleep(1)
                await self.refresh()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._settings.follow_poll_s)
            await self.refresh()

    async def refresh(self) -> None:
        """Re-read every model's state from Redis (a missed message is caught here)."""
        for model in list(self._states):
            with contextlib.suppress(RedisError, OSError):
                state = await self._store_or_fail().get(model)
                if state is not None:
                    self._apply(state)

    # -- operator actions ------------------------------------------------------------------------------

    async def _change(
        self,
        model: str,
        identity: Identity,
        action: str,
        compute: Callable[[RolloutPolicy], RolloutPolicy | None],
        *,
        reason: str = "",
        expected_revision: int | None = None,
    ) -> ChangeResult:
        self.state(model)
        result = await self._store_or_fail().change(
            model,
            lambda state: compute(state.policy),
            who=identity.name,
            action=action,
            reason=reason,
            expected_revision=expected_revision,
        )
        self._apply(result.after)
        if result.changed:
            self._metrics.rollout_changes.labels(model, action).inc()
        return result

    def require_operator(self, identity: Identity, model: str) -> None:
        """Changing a rollout needs the policy's ``rollout`` action on the model (by default: operators)."""
        if self._authorize is not None:
            self._authorize(identity, model)
        elif not identity.is_operator:
            raise PermissionDenied(
                f"changing a rollout needs the operator role; {identity.name!r} has {identity.role!r}"
            )

    async def set(
        self, model: str, changes: Mapping[str, Any], identity: Identity, expected_revision: int | None = None
    ) -> ChangeResult:
        self.require_operator(identity, model)
        if not isinstance(changes, Mapping):
            raise InvalidInput("the rollout body must be a JSON object")
        return await self._validated(model, identity, "set", lambda p: p.with_changes(changes), expected_revision)

    async def promote(self, model: str, identity: Identity) -> ChangeResult:
        return await self._validated(model, identity, "promote", RolloutPolicy.promoted)

    async def rollback(self, model: str, identity: Identity) -> ChangeResult:
        return await self._validated(model, identity, "rollback", RolloutPolicy.rolled_back)

    async def _validated(
        self, model: str, identity: Identity, action: str, transform: Callable, expected_revision: int | None = None
    ) -> ChangeResult:
        """An operator's change: ``transform`` of the current policy, validated against the loaded versions."""
        self.require_operator(identity, model)
        validated = _validating(transform, model, self._loaded(model))
        return await self._change(model, identity, action, validated, expected_revision=expected_revision)

    async def explicit(self, model: str, version: str, identity: Identity, *, load: bool) -> ChangeResult:
        """Record an explicit load (or unload) of ``version``; every replica's repository sync follows it."""
        self.require_operator(identity, model)
        action = "load" if load else "unload"
        return await self._change(
            model, identity, action, lambda p: p.loading(version) if load else p.unloading(version)
        )

    async def audit(self, model: str, count: int) -> list[dict[str, Any]]:
        self.state(model)
        return await self._store_or_fail().audit(model, count)

    # -- the guard -------------------------------------------------------------------------------------

    async def _guard_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.guard_interval_s)
            for model in list(self._states):
                try:
                    await self.check(model)
                except (GatewayError, RedisError, OSError) as exc:
                    log.warning("rollout guard of %s could not judge: %s", model, exc)

    async def check(self, model: str) -> Verdict | None:
        """Judge the canary (and the shadow) of ``model`` once; roll back / drop whichever fails its bounds."""
        policy = self.policy(model)
        if policy.canary is None and policy.shadow is None:
            return None
        agreement = await self.shadow.agreement(model) if self.shadow else {}
        for version, counts in agreement.items():
            if counts["agreement"] is not None:
                self._metrics.shadow_agreement.labels(model, version).set(counts["agreement"])
        accuracy = None
        if policy.canary is not None and self._accuracy is not None:
            accuracy = (await self._accuracy(model)).get(policy.canary)
        found = self._judge.verdict(model, policy, accuracy, agreement)
        if found is None:
            return None
        arm, version, verdict = found
        await self._guard_change(model, version, verdict, arm)
        return verdict

    async def _guard_change(self, model: str, version: str, verdict: Verdict, arm: str) -> None:
        guard = Identity(name=GUARD, role="operator")
        action = "guard-rollback" if arm == CANARY else "guard-drop-shadow"
        reason = f"{arm} {version}: {verdict.message}"
        result = await self._change(model, guard, action, removal(arm, version), reason=reason)
        self._judge.forget(model, version)
        if result.changed:
            self._metrics.guard_rollbacks.labels(model, version, verdict.reason).inc()
            log.warning("rollout guard: %s of %s version %s removed: %s", arm, model, version, verdict.message)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._store is not None:
            await self._store.aclose()
        if self.shadow is not None:
            await self.shadow.aclose()
