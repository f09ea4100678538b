"""Batching settings read from a model's config.pbtxt, with Triton's names and meaning."""

from __future__ import annotations

from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2 as mc

DEFAULT_MAX_QUEUE_SIZE = 1024
"""Triton treats max_queue_size 0 as unbounded; the gateway never queues without bound."""
PRIORITY_AGING_S = 0.1
"""A request that has waited this long is served before newer requests of any priority."""


@dataclass(frozen=True)
class BatchingPolicy:
    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_s: float
    max_queue_size: int
    instances: int
    default_timeout_s: float | None
    priority_levels: int
    default_priority_level: int

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        bad = [size for size in self.preferred_batch_sizes if not 1 <= size <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred_batch_size {bad} must lie in 1..max_batch_size ({self.max_batch_size})")
        if self.max_queue_delay_s < 0:
            raise ValueError(f"max_queue_delay_microseconds must be >= 0, got {self.max_queue_delay_s * 1e6:.0f}")
        if self.max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {self.max_queue_size}")
        if self.instances < 1:
            raise ValueError(f"instance_group count must be >= 1, got {self.instances}")
        if self.priority_levels < 1 or not 1 <= self.default_priority_level <= self.priority_levels:
            raise ValueError(
                f"default_priority_level {self.default_priority_level} must lie in 1..priority_levels "
                f"({self.priority_levels})"
            )

    @classmethod
    def unbatched(cls, base: BatchingPolicy) -> BatchingPolicy:
        """The same model served one request per execution (for comparisons)."""
        return cls(
            1,
            (),
            0.0,
            base.max_queue_size,
            base.instances,
            base.default_timeout_s,
            base.priority_levels,
            base.default_priority_level,
        )

    @classmethod
    def from_model_config(cls, config: mc.ModelConfig) -> BatchingPolicy:
        """Read max_batch_size, dynamic_batching and instance_group as Triton would.

        Without a dynamic_batching block, Triton runs each request alone; so does the gateway.
        """
        batching = config.dynamic_batching
        has_batching = config.HasField("dynamic_batching")
        queue_policy = batching.default_queue_policy
        timeout_us = queue_policy.default_timeout_microseconds
        levels = max(1, batching.priority_levels)
        return cls(
            max_batch_size=max(1, config.max_batch_size) if has_batching else 1,
            preferred_batch_sizes=tuple(sorted(batching.preferred_batch_size)) if has_batching else (),
            max_queue_delay_s=batching.max_queue_delay_microseconds / 1e6,
            max_queue_size=queue_policy.max_queue_size or DEFAULT_MAX_QUEUE_SIZE,
            instances=sum(group.count or 1 for group in config.instance_group) or 1,
            default_timeout_s=timeout_us / 1e6 if timeout_us else None,
            priority_levels=levels,
            default_priority_level=batching.default_priority_level or (levels + 1) // 2,
        )
