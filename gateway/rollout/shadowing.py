"""Shadow traffic: a copy of an answered stable request runs on the shadow version, off the caller's path."""

from __future__ import annotations

import asyncio
import logging
from typing import NamedTuple

import numpy as np
from redis.exceptions import RedisError

from gateway.batching.batcher import DynamicBatcher
from gateway.core.errors import GatewayError
from gateway.monitoring.metrics import GatewayMetrics
from gateway.rollout.manager import RolloutManager

log = logging.getLogger(__name__)


class ShadowedAnswer(NamedTuple):
    request_id: str
    version: str
    label: str


class ShadowCopies:
    """Runs shadow copies: each waits for the caller's answer to be handed back first; at most
    ``max_in_flight`` at once (beyond it a copy is dropped and counted, never queued)."""

    def __init__(self, rollout: RolloutManager, metrics: GatewayMetrics, *, max_in_flight: int) -> None:
        self._rollout = rollout
        self._metrics = metrics
        self._max_in_flight = max_in_flight
        self.in_flight: set[asyncio.Task] = set()

    def send(
        self,
        model: str,
        version: str,
        batcher: DynamicBatcher,
        labels: tuple[str, ...],
        row: np.ndarray,
        answer: ShadowedAnswer,
    ) -> None:
        """Copy ``row`` to shadow ``version`` (its ``batcher``); ``answer``: what stable said, compared with."""
        if len(self.in_flight) >= self._max_in_flight:
            self._metrics.shadow_dropped.labels(model, "in_flight").inc()
            return
        task = asyncio.get_running_loop().create_task(self._run(model, version, batcher, labels, row, answer))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    async def _run(
        self,
        model: str,
        version: str,
        batcher: DynamicBatcher,
        labels: tuple[str, ...],
        row: np.ndarray,
        answer: ShadowedAnswer,
    ) -> None:
        await asyncio.sleep(0)  # the caller's answer goes first
        try:
            probabilities, _ = await batcher.submit(row)
            label = labels[int(probabilities.argmax())]
            agreed = label == answer.label
            tracker = self._rollout.shadow
            if tracker is not None:
                agreed = await tracker.record(
                    model, answer.request_id, (answer.version, answer.label), (version, label)
                )
            self._metrics.shadow_comparisons.labels(model, version, str(agreed).lower()).inc()
        except (GatewayError, RedisError, KeyError, OSError) as exc:
            self._metrics.shadow_dropped.labels(model, "failed").inc()
            log.debug("shadow copy of %s to version %s failed: %s", answer.request_id, version, exc)

    async def aclose(self) -> None:
        await asyncio.gather(*self.in_flight, return_exceptions=True)
