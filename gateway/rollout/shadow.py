"""Shadow comparisons: did the shadow version give the label stable gave? Counted in Redis, logged.

``shadow:{model}:agreement`` holds ``{version}:compared`` and ``{version}:agreed`` counters shared by
every replica; ``shadow:{model}`` is a stream with one entry per comparison (approximate MAXLEN).
"""

from __future__ import annotations

import time

from gateway.redis_client import LazyRedis, ratios_by_version

SHADOW_STREAM_MAXLEN = 100_000


def agreement_key(model: str) -> str:
    return f"shadow:{model}:agreement"


def shadow_stream(model: str) -> str:
    return f"shadow:{model}"


class ShadowTracker(LazyRedis):
    async def record(
        self,
        model: str,
        request_id: str,
        stable: tuple[str, str],
        shadow: tuple[str, str],
    ) -> bool:
        """Count and log one comparison of (version, label) pairs; returns whether they agreed."""
        agreed = stable[1] == shadow[1]
        async with self._client().pipeline(transaction=False) as pipe:
            pipe.hincrby(agreement_key(model), f"{shadow[0]}:compared", 1)
            pipe.hincrby(agreement_key(model), f"{shadow[0]}:agreed", int(agreed))
            pipe.xadd(
                shadow_stream(model),
                {
                    "time": f"{time.time():.3f}",
                    "request_id": request_id,
                    "stable_version": stable[0],
                    "stable_label": stable[1],
                    "shadow_version": shadow[0],
                    "shadow_label": shadow[1],
                    "agree": int(agreed),
                },
                maxlen=SHADOW_STREAM_MAXLEN,
                approximate=True,
            )
            await pipe.execute()
        return agreed

    async def agreement(self, model: str) -> dict[str, dict[str, float | None]]:
        """Per shadowed version: comparisons, agreements, and their ratio."""
        counters = await self._client().hgetall(agreement_key(model))
        return ratios_by_version(counters, "compared", "agreed", "agreement")
