"""The two ways the benchmarks load a gateway, and what they count: a closed loop (N requests always in
flight) and an open loop (Poisson arrivals over a pool of N connections, each latency from its scheduled
arrival, so a slow server is not hidden by a client that waits for it)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

Send = Callable[[int, int], Awaitable[bool]]
"""Send request number ``sequence`` on connection ``index``: ``send(index, sequence)``; True when it succeeded."""


@dataclass
class Window:
    """Answers to requests sent inside [start, end) count; the others (warm-up) only add to ``answered``."""

    start: float
    end: float
    latencies: list[float] = field(default_factory=list)
    """Seconds, of the successful answers."""
    errors: int = 0
    answered: int = 0

    def record(self, sent_at: float, answered_at: float, ok: bool) -> None:
        self.answered += 1
        if not self.start <= sent_at < self.end:
            return
        if ok:
            self.latencies.append(answered_at - sent_at)
        else:
            self.errors += 1


async def closed_loop(send: Send, connections: int, window: Window) -> None:
    """Each connection sends back to back until the window closes; connection i sends i, i + N, i + 2N, ..."""
    loop = asyncio.get_running_loop()

    async def client(index: int) -> None:
        sequence = index
        while (began := loop.time()) < window.end:
            ok = await send(index, sequence)
            window.record(began, loop.time(), ok)
            sequence += connections

    await asyncio.gather(*(client(i) for i in range(connections)))


async def open_loop(send: Send, connections: int, rate: float, window: Window) -> None:
    """Poisson arrivals at ``rate`` per second until the window closes, each on the first idle connection
    (waiting for one when all are busy); latency counts from the scheduled arrival."""
    loop = asyncio.get_running_loop()
    idle: asyncio.Queue[int] = asyncio.Queue()
    for index in range(connections):
        idle.put_nowait(index)
    rng = np.random.default_rng(0)

    async def one_request(arrival: float, sequence: int) -> None:
        index = await idle.get()
        try:
            ok = await send(index, sequence)
        finally:
            idle.put_nowait(index)
        window.record(arrival, loop.time(), ok)

    pending: set[asyncio.Task] = set()
    arrival, sequence = loop.time(), 0
    while (arrival := arrival + rng.exponential(1.0 / rate)) < window.end:
        await asyncio.sleep(max(0.0, arrival - loop.time()))  # the load's schedule, not synchronisation
        task = asyncio.create_task(one_request(arrival, sequence))
        pending.add(task)
        task.add_done_callback(pending.discard)
        sequence += 1
    await asyncio.gather(*pending)
