"""The rollout state of every model, shared by all replicas through Redis.

- ``rollout:{model}``: JSON ``{"policy": {...}, "revision": n, "updated_at": t, "updated_by": who}``.
- Every change is one optimistic transaction (WATCH the key, read, compute, MULTI: SET + XADD to the
  audit stream + PUBLISH): two operators acting at once both succeed, one after the other, and
  neither change is lost (the loser's transaction aborts and is recomputed on the new state).
- ``rollout:audit``: a stream of every change (model, action, who, time, before, after, reason).
- ``rollout:changed``: pub/sub channel carrying the new state; replicas apply it at once (a
  periodic re-read is the safety net for a message missed while disconnected).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from gateway.core.errors import Conflict, Unavailable
from gateway.redis_client import LazyRedis
from gateway.redis_link import NotReplicated
from gateway.rollout.policy import RolloutPolicy

CHANNEL = "rollout:changed"
AUDIT_STREAM = "rollout:audit"
AUDIT_MAXLEN = 100_000
MAX_ATTEMPTS = 50


def state_key(model: str) -> str:
    return f"rollout:{model}"


@dataclass(frozen=True)
class RolloutState:
    model: str
    policy: RolloutPolicy
    revision: int
    updated_at: float
    updated_by: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "policy": self.policy.to_dict(),
            "revision": self.revision,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutState:
        return cls(
            data["model"],
            RolloutPolicy.from_dict(data["policy"]),
            int(data["revision"]),
            float(data["updated_at"]),
            str(data["updated_by"]),
        )


Confirm = Callable[[aioredis.Redis], Awaitable[None]] | None
"""Returns once enough replicas hold the writes made so far, else raises NotReplicated (see ``redis_link``)."""
Change = Callable[[RolloutState], RolloutPolicy | None]
"""Computes the new policy from the current state (None: nothing to change); may raise a GatewayError."""


@dataclass(frozen=True)
class ChangeResult:
    before: RolloutState
    after: RolloutState

    @property
    def changed(self) -> bool:
        return self.after.revision != self.before.revision


class RolloutStore(LazyRedis):
    def __init__(self, connect: Callable[[], aioredis.Redis], confirm: Confirm = None) -> None:
        super().__init__(connect)
        self._confirm = confirm
        """Raises unless enough replicas hold the writes made so far: a change they do not hold could be
        undone by a failover, so it is not reported as done."""

    async def _durable(self) -> None:
        if self._confirm is None:
            return
        try:
            await self._confirm(self._client())
        except NotReplicated as exc:
            raise Unavailable(
                f"the change is on the Redis master but not yet on its replicas ({exc}); a failover now could "
                "undo it: read the rollout back before acting on it"
            ) from None

    async def get(self, model: str) -> RolloutState | None:
        raw = await self._client().get(state_key(model))
        return None if raw is None else RolloutState.from_dict(json.loads(raw))

    async def ensure(self, model: str, initial: RolloutPolicy) -> RolloutState:
        """The stored state, creating revision 1 from ``initial`` if no replica has yet (SET NX)."""
        state = RolloutState(model, initial, 1, time.time(), "gateway (initial)")
        await self._client().set(state_key(model), json.dumps(state.to_dict()), nx=True)
        stored = await self.get(model)
        assert stored is not None
        return stored

    async def change(
        self,
        model: str,
        compute: Change,
        *,
        who: str,
        action: str,
        reason: str = "",
        expected_revision: int | None = None,
    ) -> ChangeResult:
        """Apply ``compute`` atomically to the current state; audited and published when it changes anything."""
        key = state_key(model)
        try:
            for _ in range(MAX_ATTEMPTS):
                async with self._client().pipeline(transaction=True) as pipe:
                    try:
                        await pipe.watch(key)
                        raw = await pipe.get(key)
                        if raw is None:
                            raise Unavailable(f"model {model!r} has no rollout state yet; retry")
                        before = RolloutState.from_dict(json.loads(raw))
                        if expected_revision is not None and expected_revision != before.revision:
                            raise Conflict(
                                f"the rollout of {model!r} is at revision {before.revision}, not {expected_revision}: "
                                "someone changed it meanwhile; read it again"
                            )
                        policy = compute(before)
                        if policy is None or policy == before.policy:
                            await pipe.unwatch()
                            return ChangeResult(before, before)
                        after = RolloutState(model, policy, before.revision + 1, time.time(), who)
                        payload = json.dumps(after.to_dict())
                        pipe.multi()
                        pipe.set(key, payload)
                        pipe.xadd(
                            AUDIT_STREAM,
                            {
                                "model": model,
                                "action": action,
                                "who": who,
                                "time": str(after.updated_at),
                                "revision": str(after.revision),
                                "before": json.dumps(before.policy.to_dict()),
                                "after": json.dumps(policy.to_dict()),
                                "reason": reason,
                            },
                            maxlen=AUDIT_MAXLEN,
                            approximate=True,
                        )
                        pipe.publish(CHANNEL, payload)
                        await pipe.execute()
                        await self._durable()
                        return ChangeResult(before, after)
                    except WatchError:
                        continue
            raise Conflict(f"the rollout of {model!r} kept changing underneath {MAX_ATTEMPTS} attempts; retry")
        except RedisError as exc:
            raise Unavailable(f"the rollout store's Redis cannot be reached: {exc}") from None

    async def audit(self, model: str | None = None, count: int = 100) -> list[dict[str, Any]]:
        """The newest ``count`` audit entries (of ``model`` if given), oldest first."""
        try:
            entries = await self._client().xrevrange(AUDIT_STREAM, count=count if model is None else count * 20)
        except RedisError as exc:
            raise Unavailable(f"the rollout store's Redis cannot be reached: {exc}") from None
        records = []
        for entry_id, fields in entries:
            record = {k.decode(): v.decode() for k, v in fields.items()}
            if model is not None and record["model"] != model:
                continue
            records.append(
                {
                    "id": entry_id.decode(),
                    "model": record["model"],
                    "action": record["action"],
                    "who": record["who"],
                    "time": float(record["time"]),
                    "revision": int(record["revision"]),
                    "before": json.loads(record["before"]),
                    "after": json.loads(record["after"]),
                    "reason": record.get("reason", ""),
                }
            )
            if len(records) == count:
                break
        return records[::-1]

    async def changes(self) -> AsyncIterator[RolloutState]:
        """Every state published from now on (raises RedisError when the connection is lost)."""
        pubsub = self._client().pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(CHANNEL)
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "message":
                    yield RolloutState.from_dict(json.loads(message["data"]))
        finally:
            await pubsub.aclose()
