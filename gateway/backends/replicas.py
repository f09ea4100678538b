"""Several replicas of one model version behind the gateway's one backend interface.

Contract of ``ReplicaSet.infer(batch)``:

- the batch goes to the healthy replica with the least outstanding work (rows in flight);
- if that replica turns out to be down (``ReplicaDown``: unreachable, reset, timed out), it is
  ejected and the batch is retried once on another replica (inference is idempotent);
- ``Unavailable`` (503 / UNAVAILABLE) is raised only when no replica could serve it;
- every remote call has a deadline (``timeout_s``), so no caller waits forever.

A background health check asks every replica ``ready()`` each ``health_interval_s``: a replica
that fails is ejected, an ejected one that passes (and still has the configured inputs and
outputs) is admitted again. When every replica is ejected, batches still try them (as Envoy's
panic mode does), so a recovered fleet serves before the next check.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from opentelemetry.trace import SpanKind

from gateway.backends.remote import ModelServer, RemoteModelError, ReplicaDown, check_metadata
from gateway.core.errors import Unavailable
from gateway.models.repository import ModelSpec, RepositoryError
from gateway.monitoring.tracing import TRACING

log = logging.getLogger(__name__)

ServerFactory = Callable[[str], ModelServer]
"""Makes the client of one endpoint (host:port); called on the event loop that will use it."""


@dataclass(eq=False)
class Replica:
    endpoint: str
    server: ModelServer
    healthy: bool = True
    outstanding: int = 0
    """Rows sent and not yet answered."""
    served: int = 0
    """Batches answered (for tests and /metrics-style introspection)."""
    last_error: str = ""


class ReplicaSet:
    """One model version served by ``endpoints`` (each a ModelServer made by ``factory``)."""

    def __init__(
        self,
        spec: ModelSpec,
        version: str,
        endpoints: list[str],
        factory: ServerFactory,
        *,
        remote_name: str,
        health_interval_s: float = 1.0,
        max_inflight_per_replica: int = 1,
    ) -> None:
        if not endpoints:
            raise RepositoryError(f"model {spec.name!r}: a remote backend needs at least one replica endpoint")
        self._spec = spec
        self._version = version
        self._endpoints = list(endpoints)
        self._factory = factory
        self._remote_name = remote_name
        self._health_interval_s = health_interval_s
        self.max_concurrent_batches = max_inflight_per_replica * len(endpoints)
        self._replicas: list[Replica] | None = None
        self._health_task: asyncio.Task | None = None
        self._next = 0

    @property
    def replicas(self) -> list[Replica]:
        return self._ensure_started()

    def describe(self) -> str:
        return f"model {self._spec.name!r} version {self._version} on {', '.join(self._endpoints)}"

    # -- start-up ------------------------------------------------------------------------------

    def verify(self) -> None:
        """Check every reachable replica's inputs and outputs against config.pbtxt, before serving.

        Raises RepositoryError (the gateway refuses to start) on any mismatch, or when no replica
        can be reached; an unreachable replica among reachable ones starts ejected. Runs on a
        private event loop in a thread, so it works from synchronous start-up code inside a loop.
        """
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            problems = pool.submit(asyncio.run, self._verify_all()).result()
        if len(problems) == len(self._endpoints):
            raise RepositoryError(f"no replica of {self.describe()} can be reached: " + "; ".join(problems.values()))
        self._down_at_start = set(problems)
        for endpoint, problem in problems.items():
            log.warning("replica %s of model %s starts ejected: %s", endpoint, self._spec.name, problem)

    async def _verify_all(self) -> dict[str, str]:
        async def one(endpoint: str) -> str | None:
            server = self._factory(endpoint)
            try:
                if not await server.ready():
                    return f"{endpoint}: not ready (ServerReady/ModelReady)"
                check_metadata(self._spec, self._version, endpoint, self._remote_name, await server.metadata())
            except (ReplicaDown, RemoteModelError) as exc:
                return str(exc)
            finally:
                await server.close()
            return None

        results = await asyncio.gather(*(one(e) for e in self._endpoints))
        return {e: problem for e, problem in zip(self._endpoints, results, strict=True) if problem is not None}

    def _ensure_started(self) -> list[Replica]:
        """Clients and the health check live on the serving loop, so they are made on first use there."""
        if self._replicas is None:
            down = getattr(self, "_down_at_start", set())
            self._replicas = [Replica(e, self._factory(e), healthy=e not in down) for e in self._endpoints]
            self._health_task = asyncio.get_running_loop().create_task(
                self._watch_health(), name=f"health-{self._spec.name}-{self._version}"
            )
        return self._replicas

    def start(self) -> None:
        """Start the health checks now (else on the first batch); needs a running event loop."""
        self._ensure_started()

    # -- health --------------------------------------------------------------------------------

    def _eject(self, replica: Replica, reason: str) -> None:
        replica.last_error = reason
        if replica.healthy:
            replica.healthy = False
            log.warning("ejected replica %s of model %s: %s", replica.endpoint, self._spec.name, reason)

    async def _check(self, replica: Replica) -> None:
        if not await replica.server.ready():
            self._eject(replica, "health check: not ready (ServerReady/ModelReady)")
            return
        if replica.healthy:
            return
        try:  # a replica coming back may have been redeployed with another model: check before admitting
            check_metadata(
                self._spec, self._version, replica.endpoint, self._remote_name, await replica.server.metadata()
            )
        except (ReplicaDown, RemoteModelError, RepositoryError) as exc:
            replica.last_error = str(exc)
            log.warning("replica %s of model %s stays ejected: %s", replica.endpoint, self._spec.name, exc)
            return
        replica.healthy = True
        log.info("re-admitted replica %s of model %s", replica.endpoint, self._spec.name)

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(self._health_interval_s)
            await asyncio.gather(*(self._check(r) for r in self._replicas or []), return_exceptions=True)

    async def check_health(self) -> None:
        """Run one round of health checks now (tests, and a readiness probe that wants a fresh answer)."""
        await asyncio.gather(*(self._check(r) for r in self._ensure_started()))

    # -- inference -----------------------------------------------------------------------------

    def _pick(self, tried: list[Replica]) -> Replica | None:
        replicas = self._ensure_started()
        candidates = [r for r in replicas if r.healthy and r not in tried]
        if not candidates and not any(r.healthy for r in replicas):
            candidates = [r for r in replicas if r not in tried]  # panic: everyone is ejected, try anyway
        if not candidates:
            return None
        least = min(r.outstanding for r in candidates)
        tied = [r for r in candidates if r.outstanding == least]
        self._next += 1
        return tied[self._next % len(tied)]

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        tried: list[Replica] = []
        failures: list[str] = []
        while len(tried) < 2:
            replica = self._pick(tried)
            if replica is None:
                break
            tried.append(replica)
            replica.outstanding += len(batch)
            started = time.perf_counter()
            try:
                with TRACING.span("backend", SpanKind.CLIENT, **{"server.address": replica.endpoint}):
                    output = await replica.server.infer(batch)
            except ReplicaDown as exc:
                self._eject(replica, str(exc))
                failures.append(str(exc))
                continue
            except RemoteModelError as exc:
                raise Unavailable(f"the model server failed the batch: {exc}") from None
            finally:
                replica.outstanding -= len(batch)
            replica.served += 1
            elapsed_ms = (time.perf_counter() - started) * 1e3
            log.debug("batch of %d on %s in %.1f ms", len(batch), replica.endpoint, elapsed_ms)
            return output
        detail = "; ".join(failures) or "every replica is ejected"
        raise Unavailable(f"no replica of {self.describe()} can serve: {detail}")

    def close(self) -> None:
        """Stop the health checks and close every client (on the serving loop, when it still runs)."""
        if self._health_task is not None:
            self._health_task.cancel()
        replicas, self._replicas = self._replicas or [], None
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
            for replica in replicas:
                loop.create_task(replica.server.close())
