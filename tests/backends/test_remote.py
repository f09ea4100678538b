"""The model servers' gRPC channels (RECONNECT_OPTIONS): a replica whose handshake is slow is slow, not dead."""

from __future__ import annotations

import asyncio

import numpy as np

from gateway.backends.triton import TritonModel
from tests.backends.fake_kserve import fake_kserve, slow_handshake


def test_a_replica_that_takes_half_a_second_to_handshake_still_answers() -> None:
    """A busy machine's mTLS handshake with Triton took over 100 ms: gRPC reads min_reconnect_backoff_ms as the
    time a connection attempt may take, so at 100 ms the first call failed UNAVAILABLE (a 503)."""

    async def scenario() -> np.ndarray:
        async with fake_kserve() as fake, slow_handshake(fake.endpoint, delay_s=0.5) as relay:
            model = TritonModel(relay, "mnist", "1", "image", "probabilities", timeout_s=10)
            try:
                return await model.infer(np.zeros((2, 1, 28, 28), np.float32))
            finally:
                await model.close()

    assert asyncio.run(scenario()).shape == (2, 10)
