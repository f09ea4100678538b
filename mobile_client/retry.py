"""When to retry and how long to wait: exponential backoff with full jitter, honouring Retry-After."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from mobile_client.errors import ClientError


@dataclass(frozen=True)
class RetryPolicy:
    """Up to ``attempts`` tries. Before try n+1 wait uniformly in [0, min(cap_s, base_s * 2**n)] ("full
    jitter", so a crowd of phones does not come back in step), but at least what the gateway asked for
    (Retry-After / grpc-retry-pushback-ms), and never past the call's deadline."""

    attempts: int = 4
    base_s: float = 0.2
    cap_s: float = 5.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if self.base_s < 0 or self.cap_s < 0:
            raise ValueError("base_s and cap_s must not be negative")

    def delay_s(self, attempt: int, error: ClientError) -> float:
        """How long to wait after failed try number ``attempt`` (0-based)."""
        backoff = self.rng.uniform(0.0, min(self.cap_s, self.base_s * (2**attempt)))
        return max(backoff, error.retry_after_s or 0.0)

    def should_retry(self, attempt: int, error: ClientError) -> bool:
        return error.retryable and attempt + 1 < self.attempts


NO_RETRY = RetryPolicy(attempts=1)
