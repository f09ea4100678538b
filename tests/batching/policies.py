"""One way to build a BatchingPolicy in tests: explicit defaults, overridden per test."""

from gateway.batching.policy import BatchingPolicy


def make_policy(**overrides) -> BatchingPolicy:
    values = dict(
        max_batch_size=8,
        preferred_batch_sizes=(),
        max_queue_delay_s=0.002,
        max_queue_size=100,
        instances=1,
        default_timeout_s=None,
        priority_levels=2,
        default_priority_level=2,
    )
    values.update(overrides)
    return BatchingPolicy(**values)
