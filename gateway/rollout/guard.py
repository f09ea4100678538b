"""The automatic guard: judge a canary (and a shadow) against configured bounds, say why it must go.

Error rate and p99 latency come from each replica's own window of the newest canary requests
(every replica judges what it served; any replica may roll back, and the rollback is one atomic,
idempotent change of the shared state). Live accuracy (from feedback) and shadow agreement are
counters in Redis that all replicas share.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gateway.rollout.policy import RolloutPolicy


@dataclass(frozen=True)
class GuardBounds:
    window: int = 500
    """Newest canary requests (per replica) the error rate and p99 are computed over."""
    min_requests: int = 100
    """Fewer canary requests in the window: no verdict on error rate or latency."""
    max_error_rate: float = 0.05
    max_p99_ms: float = 2000.0
    """0: latency is not judged."""
    min_accuracy: float = 0.9
    """Live accuracy of the canary version from feedback; 0: not judged."""
    min_feedback: int = 50
    min_agreement: float = 0.9
    """Share of shadowed requests whose label matched stable's; 0: not judged."""
    min_compared: int = 100


@dataclass(frozen=True)
class Verdict:
    reason: str
    """error_rate | p99 | accuracy | agreement (a metric label)."""
    message: str


class ArmWindow:
    """The newest outcomes of one arm's requests: whether each failed, and how long it took."""

    def __init__(self, size: int) -> None:
        self._failed: deque[bool] = deque(maxlen=size)
        self._latency_s: deque[float] = deque(maxlen=size)

    def add(self, failed: bool, latency_s: float) -> None:
        self._failed.append(failed)
        self._latency_s.append(latency_s)

    @property
    def count(self) -> int:
        return len(self._failed)

    @property
    def error_rate(self) -> float:
        return sum(self._failed) / len(self._failed) if self._failed else 0.0

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(np.fromiter(self._latency_s, float), 99)) * 1000 if self._latency_s else 0.0


def judge_canary(
    bounds: GuardBounds, window: ArmWindow | None, accuracy: dict | None, agreement: dict | None
) -> Verdict | None:
    """Why the canary must be rolled back, or None. ``accuracy``/``agreement``: its version's counters."""
    if window is not None and window.count >= bounds.min_requests:
        if window.error_rate > bounds.max_error_rate:
            return Verdict(
                "error_rate",
                f"error rate {window.error_rate:.1%} over the last {window.count} canary requests "
                f"(bound {bounds.max_error_rate:.1%})",
            )
        if bounds.max_p99_ms > 0 and window.p99_ms > bounds.max_p99_ms:
            return Verdict(
                "p99",
                f"p99 latency {window.p99_ms:.0f} ms over the last {window.count} canary requests "
                f"(bound {bounds.max_p99_ms:.0f} ms)",
            )
    verdict = judge_accuracy(bounds, accuracy)
    return verdict or judge_agreement(bounds, agreement)


def judge_accuracy(bounds: GuardBounds, accuracy: dict | None) -> Verdict | None:
    if bounds.min_accuracy <= 0 or not accuracy or accuracy.get("feedback", 0) < bounds.min_feedback:
        return None
    if accuracy["accuracy"] < bounds.min_accuracy:
        return Verdict(
            "accuracy",
            f"live accuracy {accuracy['accuracy']:.1%} over {accuracy['feedback']} predictions with feedback "
            f"(bound {bounds.min_accuracy:.1%})",
        )
    return None


def judge_agreement(bounds: GuardBounds, agreement: dict | None) -> Verdict | None:
    if bounds.min_agreement <= 0 or not agreement or agreement.get("compared", 0) < bounds.min_compared:
        return None
    if agreement["agreement"] < bounds.min_agreement:
        return Verdict(
            "agreement",
            f"agreement with stable {agreement['agreement']:.1%} over {agreement['compared']} shadowed requests "
            f"(bound {bounds.min_agreement:.1%})",
        )
    return None


class CanaryJudge:
    """The guard's judgement on this replica: a window of outcomes per canary version, and the verdict on
    a model's canary (error rate, p99, live accuracy, shadow agreement) and its shadow (agreement)."""

    def __init__(self, bounds: GuardBounds) -> None:
        self.bounds = bounds
        self._windows: dict[tuple[str, str], ArmWindow] = {}

    def add(self, model: str, version: str, failed: bool, latency_s: float) -> None:
        """One finished canary request of ``model`` on ``version``."""
        window = self._windows.get((model, version))
        if window is None:
            window = self._windows[(model, version)] = ArmWindow(self.bounds.window)
        window.add(failed, latency_s)

    def forget(self, model: str, version: str) -> None:
        """Drop the window of a version that is no longer the canary."""
        self._windows.pop((model, version), None)

    def verdict(
        self, model: str, policy: RolloutPolicy, accuracy: dict | None, agreement: dict[str, dict]
    ) -> tuple[str, str, Verdict] | None:
        """(arm, version, why) of what must go, canary first, or None. ``accuracy``: the canary's counters;
        ``agreement``: the shadow counters of every version."""
        if policy.canary is not None:
            window = self._windows.get((model, policy.canary))
            verdict = judge_canary(self.bounds, window, accuracy, agreement.get(policy.canary))
            if verdict is not None:
                return "canary", policy.canary, verdict
        if policy.shadow is not None:
            verdict = judge_agreement(self.bounds, agreement.get(policy.shadow))
            if verdict is not None:
                return "shadow", policy.shadow, verdict
        return None


def removal(arm: str, version: str) -> Callable[[RolloutPolicy], RolloutPolicy | None]:
    """The change that removes ``version`` from ``arm`` (canary or shadow); None if it is no longer there."""

    def compute(policy: RolloutPolicy) -> RolloutPolicy | None:
        if getattr(policy, arm) != version:
            return None  # someone (or another replica's guard) already changed it
        return policy.with_changes({arm: None})

    return compute
