"""The benchmarks' closed and open loops, against a stand-in server (a coroutine with a fixed service time):
what they send and what their window counts."""

from __future__ import annotations

import asyncio

from gateway.bench.load_loops import Window, closed_loop, open_loop

SERVICE_S = 0.02


def test_a_closed_loop_numbers_each_connections_requests_and_counts_only_the_window() -> None:
    sent: list[tuple[int, int]] = []

    async def run() -> Window:
        async def send(index: int, sequence: int) -> bool:
            sent.append((index, sequence))
            await asyncio.sleep(SERVICE_S)  # the stand-in server's service time
            return sequence % 5 != 4  # every fifth request fails

        now = asyncio.get_running_loop().time()
        window = Window(now + 0.1, now + 0.3)
        await closed_loop(send, 3, window)
        return window

    window = asyncio.run(run())
    for index in range(3):
        assert [s for i, s in sent if i == index][:3] == [index, index + 3, index + 6]
    assert window.answered == len(sent)
    counted = len(window.latencies) + window.errors
    assert 0 < counted < len(sent)  # the warm-up's answers are not in the window
    assert window.errors > 0 and min(window.latencies) >= SERVICE_S * 0.9


def test_an_open_loop_counts_the_wait_for_a_busy_connection_from_the_scheduled_arrival() -> None:
    async def run() -> Window:
        async def send(index: int, sequence: int) -> bool:
            await asyncio.sleep(SERVICE_S)
            return True

        now = asyncio.get_running_loop().time()
        window = Window(now, now + 0.5)
        await open_loop(send, 1, 200.0, window)  # 200 arrivals/s on one connection that serves 50/s
        return window

    window = asyncio.run(run())
    assert window.errors == 0 and window.answered == len(window.latencies) > 50
    # a closed loop would show every latency near the service time; queued arrivals wait far longer
    assert max(window.latencies) > 10 * SERVICE_S
