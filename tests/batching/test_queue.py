"""The scheduling rules of _BatchQueue, driven by a fake clock (times are plain numbers)."""

import asyncio

import numpy as np
import pytest

from gateway.batching.batcher import _BatchQueue, _Item
from gateway.batching.policy import PRIORITY_AGING_S, BatchingPolicy
from gateway.core.errors import Overloaded
from tests.batching.policies import make_policy


def policy(**overrides) -> BatchingPolicy:
    return make_policy(**overrides)


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def item(loop, at: float, priority: int = 2, deadline: float | None = None, value: float = 0.0) -> _Item:
    return _Item(np.full((1,), value, np.float32), loop.create_future(), at, priority, deadline)


def test_waits_for_the_delay_then_takes_everything(loop) -> None:
    queue = _BatchQueue(policy())
    for t in (0.0, 0.0005, 0.001):
        queue.put(item(loop, t))
    assert queue.take(0.0019) is None
    assert queue.ready_at() == pytest.approx(0.002)
    assert len(queue.take(0.002)) == 3
    assert len(queue) == 0 and queue.ready_at() is None


def test_full_batch_goes_at_once_and_the_rest_waits(loop) -> None:
    queue = _BatchQueue(policy())
    items = [item(loop, 0.0, value=i) for i in range(11)]
    for i in items:
        queue.put(i)
    first = queue.take(0.0)
    assert first == items[:8]
    assert queue.take(0.0) is None
    assert queue.take(0.002) == items[8:]


def test_largest_fillable_preferred_size(loop) -> None:
    queue = _BatchQueue(policy(max_batch_size=64, preferred_batch_sizes=(4, 16, 32)))
    for _ in range(20):
        queue.put(item(loop, 0.0))
    assert len(queue.take(0.0)) == 16
    assert len(queue.take(0.0)) == 4
    assert queue.take(0.0) is None


def test_higher_priority_first(loop) -> None:
    queue = _BatchQueue(policy(max_batch_size=2))
    low = [item(loop, 0.0, priority=2) for _ in range(2)]
    high = [item(loop, 0.001, priority=1) for _ in range(2)]
    for i in low + high:
        queue.put(i)
    assert queue.take(0.003) == high
    assert queue.take(0.003) == low


def test_low_priority_is_not_starved(loop) -> None:
    queue = _BatchQueue(policy(max_batch_size=2))
    old_low = item(loop, 0.0, priority=2)
    queue.put(old_low)
    now = PRIORITY_AGING_S + 0.001
    fresh_high = [item(loop, now, priority=1) for _ in range(3)]
    for i in fresh_high:
        queue.put(i)
    assert queue.take(now) == [old_low, fresh_high[0]]


def test_bounded_queue_refuses_with_retry_hint(loop) -> None:
    queue = _BatchQueue(policy(max_queue_size=3))
    for _ in range(3):
        queue.put(item(loop, 0.0))
    with pytest.raises(Overloaded, match="queue for this model is full") as raised:
        queue.put(item(loop, 0.0))
    assert raised.value.retry_after_s >= 1


def test_abandoned_items_free_their_place_and_are_never_batched(loop) -> None:
    queue = _BatchQueue(policy(max_queue_size=2))
    gone, kept = item(loop, 0.0), item(loop, 0.0)
    queue.put(gone)
    queue.put(kept)
    gone.future.cancel()
    queue.put(item(loop, 0.001))
    assert gone not in queue.take(0.01)


def test_expired_items_are_separated(loop) -> None:
    queue = _BatchQueue(policy())
    late = item(loop, 0.0, deadline=0.001)
    fine = item(loop, 0.0, deadline=1.0)
    queue.put(late)
    queue.put(fine)
    assert queue.take_expired(0.0015) == [late]
    assert queue.take(0.002) == [fine]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be >= 1"),
        ({"preferred_batch_sizes": (16,)}, "preferred_batch_size"),
        ({"max_queue_size": 0}, "max_queue_size"),
        ({"instances": 0}, "instance_group count"),
        ({"default_priority_level": 3}, "default_priority_level 3"),
    ],
)
def test_policy_is_validated_eagerly(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        policy(**overrides)
