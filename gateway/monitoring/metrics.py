"""Prometheus metrics of the gateway (text format on ``GET /metrics``).

One process: its own registry. Supervised workers (server.workers > 1): prometheus_client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by the supervisor before any worker starts)
keeps every worker's values in memory-mapped files, and ``render`` sums them, so any
worker's /metrics is the whole gateway's. Each gauge says how its workers' values combine.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.batching.batcher import BatchStats
from gateway.core.errors import CallerGone, GatewayError
from gateway.monitoring.event_log import log_answer
from gateway.monitoring.statistics import InferenceStatistics
from gateway.monitoring.tracing import TRACING
from gateway.rollout.policy import RolloutPolicy

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)
SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
STATISTICS_SUBDIR = "inference-statistics"
"""Where the workers' statistics counters live in the multiprocess directory (apart from prometheus_client's)."""

__all__ = ["MULTIPROCESS_DIR_ENV", "GatewayMetrics", "PROMETHEUS_CONTENT_TYPE", "RequestMeter", "note_request"]


class PredictionLogState(Protocol):
    @property
    def spooled(self) -> int: ...
    @property
    def lost(self) -> int: ...


class TlsState(Protocol):
    @property
    def certificate_expires_at(self) -> float: ...
    @property
    def crl_next_update(self) -> float | None: ...


class OperationsGauges(Collector):
    """Values read from the part that owns them when Prometheus scrapes (nothing on the request path): the
    prediction log's spool and losses, the expiry of the server certificate and CRL in force."""

    def __init__(self) -> None:
        self._sources: list[tuple[type, str, str, Callable[[], float | None]]] = []

    def watch_prediction_log(self, log: PredictionLogState) -> None:
        self._sources += [
            (
                GaugeMetricFamily,
                "gateway_prediction_log_spooled_records",
                "Prediction records waiting in the disk spool for Redis to come back",
                lambda: log.spooled,
            ),
            (
                CounterMetricFamily,
                "gateway_prediction_log_lost_records",
                "Prediction records neither Redis nor the spool could take (Redis down and the disk full)",
                lambda: log.lost,
            ),
        ]

    def watch_tls(self, tls: TlsState) -> None:
        self._sources += [
            (
                GaugeMetricFamily,
                "gateway_tls_certificate_expiry_timestamp_seconds",
                "notAfter of the server certificate in force (Unix time)",
                lambda: tls.certificate_expires_at,
            ),
            (
                GaugeMetricFamily,
                "gateway_tls_crl_next_update_timestamp_seconds",
                "nextUpdate of the client CRL in force (Unix time); absent without tls.crl",
                lambda: tls.crl_next_update,
            ),
        ]

    def collect(self) -> Iterator[Metric]:
        for family, name, documentation, read in self._sources:
            value = read()
            if value is not None:  # None leaves the metric out (no CRL configured)
                yield family(name, documentation, value=value)


def instance_execution_histogram(registry: CollectorRegistry) -> Histogram:
    """Per ONNX Runtime instance (a session of a version, on its device): the time of each batch it ran."""
    return Histogram(
        "gateway_instance_execution_seconds",
        "Time one in-process model instance took for one batch, by instance and device (cpu, cuda:N)",
        ("model", "version", "instance", "device"),
        buckets=SECONDS_BUCKETS,
        registry=registry,
    )


def model_cpu_counter(registry: CollectorRegistry) -> Counter:
    """The in-process model's own CPU time, measured on its session's threads (backends/session_cpu.py)."""
    return Counter(
        "gateway_model_cpu_seconds",
        "CPU time the in-process model (ONNX Runtime) spent running batches, on every thread of its session",
        ("model", "version"),
        registry=registry,
    )


class LabelCache:
    """``metric.labels(*values)``, looked up once per label set: prometheus_client validates the values and
    takes a lock on every ``labels`` call, microseconds each, several times per request. Only for metrics
    whose label values are bounded (models, loaded versions, status codes), as every label here is."""

    __slots__ = ("_metric", "_children")

    def __init__(self, metric: Counter | Histogram) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Counter | Histogram] = {}

    def __call__(self, *values: str) -> Counter | Histogram:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


def redis_metrics(registry: CollectorRegistry) -> tuple[Gauge, Counter]:
    """The shared Redis: reachable at the last probe, and the changes of master (Sentinel failovers) followed."""
    up = "1 when the Redis of the prediction log, rollout state and rate limits answered the last probe"
    failovers = "Changes of the Redis master (Sentinel failovers) this process followed"
    return (
        Gauge("gateway_redis_up", up, multiprocess_mode="min", registry=registry),
        Counter("gateway_redis_failovers", failovers, registry=registry),
    )


def connections_refused_counter(registry: CollectorRegistry) -> Counter:
    """New HTTP connections reset before their handshake, by reason (gateway/ingress/admission.py)."""
    return Counter(
        "gateway_connections_refused",
        "New HTTP connections reset before their TLS handshake: past their address's accept rate (accept_rate) "
        "or with too many of its connections already waiting for a handshake slot (handshake_queue)",
        ("reason",),
        registry=registry,
    )


class GatewayMetrics:
    """Own registry per process (and per test), never the global one."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        directory = os.environ.get(MULTIPROCESS_DIR_ENV)
        self.inference = InferenceStatistics(Path(directory) / STATISTICS_SUBDIR if directory else None)
        """Triton's per-version statistics (ModelStatistics, ``/v2/models/{m}/stats``), also on /metrics."""
        self.registry.register(self.inference)
        self._serving()
        self._monitoring()
        self._rollout()
        self._shadow()
        self._security()
        self.model_cpu = model_cpu_counter(self.registry)
        self.redis_up, self.redis_failovers = redis_metrics(self.registry)
        self.connections_refused = connections_refused_counter(self.registry)
        self.operations = OperationsGauges()
        self.registry.register(self.operations)
        cached = ("requests", "request_latency", "batch_size", "execution", "queue_delay", "batch_failures")
        self.cached = {name: LabelCache(getattr(self, name)) for name in cached}

    def _serving(self) -> None:
        """Requests, batches, queues and version loads."""
        version_labels = ("model", "version")
        self.requests = Counter(
            "gateway_requests", "Answered requests", ("protocol", "model", "version", "code"), registry=self.registry
        )
        self.request_latency = Histogram(
            "gateway_request_latency_seconds",
            "Time from receipt to answer",
            ("protocol", "model"),
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "gateway_batch_size",
            "Requests per executed batch",
            version_labels,
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.queue_delay = Histogram(
            "gateway_queue_delay_seconds",
            "Time a request waited in the batcher's queue",
            version_labels,
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.execution = Histogram(
            "gateway_batch_execution_seconds",
            "Time the backend took for one batch",
            version_labels,
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "gateway_queue_depth",
            "Requests waiting in the batcher's queue",
            version_labels,
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.queue_capacity = Gauge(
            "gateway_queue_capacity",
            "Requests the batcher's queue holds before refusing with 429 (config.pbtxt max_queue_size)",
            version_labels,
            multiprocess_mode="max",
            registry=self.registry,
        )
        self.batch_failures = Counter(
            "gateway_batch_failures", "Batches the backend failed", version_labels, registry=self.registry
        )
        self.instance_execution = instance_execution_histogram(self.registry)
        self.version_loads = Counter(
            "gateway_version_loads",
            "Version loads from the repository, by result",
            ("model", "version", "result"),
            registry=self.registry,
        )

    def _monitoring(self) -> None:
        """Live accuracy and training/serving skew (per input surface)."""
        version_labels = ("model", "version")
        surface_labels = (*version_labels, "surface")
        feature_labels = (*surface_labels, "feature")
        gauge = partial(Gauge, registry=self.registry, multiprocess_mode="mostrecent")
        self.live_accuracy = gauge(
            "gateway_live_accuracy", "Share of predictions with feedback that were right", version_labels
        )
        self.skew_distance = gauge(
            "gateway_skew_distance",
            "Distance of the live window of one input surface from its baseline (PSI; L-inf for labels)",
            feature_labels,
        )
        self.skew_threshold = gauge(
            "gateway_skew_threshold",
            "Threshold of gateway_skew_distance, calibrated on the null for the window's size",
            feature_labels,
        )
        self.skew_alarm = gauge(
            "gateway_skew_alarm",
            "1 when any feature of the live window of one input surface crosses its threshold",
            surface_labels,
            multiprocess_mode="max",
        )
        self.estimated_accuracy = gauge(
            "gateway_estimated_accuracy",
            "Accuracy estimated without labels: mean temperature-calibrated confidence of the live window",
            surface_labels,
        )
        self.estimate_trusted = gauge(
            "gateway_estimate_trusted",
            "1: the estimate can be read as the accuracy (no alarm, enough records)",
            surface_labels,
            multiprocess_mode="min",
        )

    def _rollout(self) -> None:
        """Routing by arm, the followed rollout state and the guard."""
        self.routed = Counter(
            "gateway_routed",
            "Requests by the rollout arm that answered them",
            ("model", "version", "arm"),
            registry=self.registry,
        )
        self.rollout_version = Gauge(
            "gateway_rollout_version",
            "Version each rollout arm points at, as this replica follows it (0: none)",
            ("model", "arm"),
            multiprocess_mode="mostrecent",
            registry=self.registry,
        )
        self.canary_percent = Gauge(
            "gateway_rollout_canary_percent",
            "Share of routing keys sent to the canary",
            ("model",),
            multiprocess_mode="mostrecent",
            registry=self.registry,
        )
        self.rollout_revision = Gauge(
            "gateway_rollout_revision",
            "Revision of the rollout state this replica follows",
            ("model",),
            multiprocess_mode="min",
            registry=self.registry,
        )
        self.rollout_changes = Counter(
            "gateway_rollout_changes",
            "Rollout changes made through this replica",
            ("model", "action"),
            registry=self.registry,
        )
        self.guard_rollbacks = Counter(
            "gateway_rollout_guard_rollbacks",
            "Canaries (or shadows) the automatic guard removed, by reason",
            ("model", "version", "reason"),
            registry=self.registry,
        )
        self.follow_delay = Histogram(
            "gateway_rollout_follow_seconds",
            "From a rollout change (its updated_at) to this replica applying it",
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )

    def _shadow(self) -> None:
        """Shadow traffic compared with stable."""
        version_labels = ("model", "version")
        self.shadow_comparisons = Counter(
            "gateway_shadow_comparisons",
            "Shadowed requests compared with stable",
            ("model", "version", "agree"),
            registry=self.registry,
        )
        self.shadow_agreement = Gauge(
            "gateway_shadow_agreement",
            "Share of shadowed requests that agreed with stable (all replicas)",
            version_labels,
            multiprocess_mode="mostrecent",
            registry=self.registry,
        )
        self.shadow_dropped = Counter(
            "gateway_shadow_dropped",
            "Shadow copies dropped (too many in flight, or failed)",
            ("model", "why"),
            registry=self.registry,
        )

    def _security(self) -> None:
        """Authorization denials and rate limits."""
        self.authz_denied = Counter(
            "gateway_authorization_denied",
            "Requests refused by the authorization policy (the audit log line names the client)",
            ("action", "model"),
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "gateway_rate_limited",
            "Requests refused by the per-identity rate limit",
            ("client",),
            registry=self.registry,
        )
        self.rate_limit_fallbacks = Counter(
            "gateway_rate_limit_redis_fallbacks",
            "Times Redis did not answer a rate-limit check in time and local buckets took over",
            registry=self.registry,
        )

    def observe_batch(self, model: str, version: str, stats: BatchStats) -> None:
        cached = self.cached
        cached["batch_size"](model, version).observe(stats.size)
        cached["execution"](model, version).observe(stats.execution_s)
        delays = cached["queue_delay"](model, version)
        for delay in stats.queue_delays_s:
            delays.observe(delay)
        if stats.failed:
            cached["batch_failures"](model, version).inc()
        self.inference.of(model, version).batch_done(stats)

    def observe_skew(self, model: str, version: str, report: dict) -> None:
        for surface, skew in report["surfaces"].items():
            for feature, result in (*skew["features"].items(), ("labels", skew["labels"])):
                if result["distance"] is not None:
                    self.skew_distance.labels(model, version, surface, feature).set(result["distance"])
                self.skew_threshold.labels(model, version, surface, feature).set(result["threshold"])
            self.skew_alarm.labels(model, version, surface).set(int(skew["alarm"]))
            if skew["estimated_accuracy"] is not None:
                self.estimated_accuracy.labels(model, version, surface).set(skew["estimated_accuracy"])
            self.estimate_trusted.labels(model, version, surface).set(int(skew["estimate_trusted"]))

    def observe_rollout(self, model: str, policy: RolloutPolicy, revision: int) -> None:
        """The rollout state this replica now follows for ``model``."""
        for arm in ("stable", "canary", "shadow"):
            version = getattr(policy, arm)
            self.rollout_version.labels(model, arm).set(int(version) if version else 0)
        self.canary_percent.labels(model).set(policy.canary_percent)
        self.rollout_revision.labels(model).set(revision)

    def observe_request(self, protocol: str, model: str, version: str, code: str, seconds: float) -> None:
        self.cached["requests"](protocol, model, version, code).inc()
        self.cached["request_latency"](protocol, model).observe(seconds)

    def render(self) -> bytes:
        return render(self.registry, self.inference, self.operations)


def render(registry: CollectorRegistry, inference: Collector, operations: OperationsGauges) -> bytes:
    """The text of ``/metrics``: this process's registry, or (supervised workers) every worker's values summed."""
    directory = os.environ.get(MULTIPROCESS_DIR_ENV)
    if not directory:
        return generate_latest(registry)
    every_worker = CollectorRegistry()
    multiprocess.MultiProcessCollector(every_worker, path=directory)
    every_worker.register(inference)  # summed over the workers' shared counters
    every_worker.register(operations)  # read from this worker (its spool; the TLS files are shared)
    return generate_latest(every_worker)


class RequestMeter:
    """Counts one request in the request metrics, and writes its log line, however it ends: ``done(code)``, or
    an exception leaving the ``with`` block, counted under ``error_code(error)`` (each edge names its own status
    codes): a GatewayError as itself, a cancellation (the caller left, or gRPC ended the call at its deadline) as
    CallerGone, anything else as an internal error. Inside the block it is the current request: the data plane
    notes the caller and the request id on it (``note_request``), so the edges need not pass them."""

    __slots__ = (
        "_metrics",
        "_labels",
        "_protocol",
        "_model",
        "_version",
        "_error_code",
        "_started",
        "_counted",
        "_log",
        "_token",
        "request_id",
        "client",
    )

    def __init__(
        self,
        metrics: GatewayMetrics,
        labels: Callable[[str, str | None], tuple[str, str]],
        protocol: str,
        model: str,
        version: str | None,
        error_code: Callable[[GatewayError], str],
        *,
        log: bool = False,
    ) -> None:
        self._metrics = metrics
        self._log = log
        self._token: contextvars.Token | None = None
        self.request_id: str | None = None
        self.client: str | None = None
        self._labels = labels
        self._protocol = protocol
        self._model = model
        self._version = version
        self._error_code = error_code
        self._started = time.perf_counter()
        self._counted = False

    def done(self, code: str, version: str | None = None, *, ok: bool = True) -> None:
        model, label_version = self._labels(self._model, version or self._version)
        latency_s = time.perf_counter() - self._started
        self._metrics.observe_request(self._protocol, model, label_version, code, latency_s)
        if label_version:  # a loaded version: its statistics count the request (success or failure)
            self._metrics.inference.of(model, label_version).request_done(ok, latency_s)
        self._counted = True
        if self._log:
            log_answer(
                self._protocol, self._model, version or self._version, code, latency_s, self.request_id, self.client
            )
        if TRACING.on:
            TRACING.annotate(self._protocol, self._model, version or self._version, code)

    def __enter__(self) -> RequestMeter:
        self._token = _current_request.set(self)
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        _current_request.reset(self._token)
        if exc is None or self._counted:
            return
        if isinstance(exc, GatewayError):
            self.done(self._error_code(exc), ok=False)
        elif isinstance(exc, asyncio.CancelledError):
            self.done(self._error_code(CallerGone("cancelled before an answer")), ok=False)
        else:
            self.done(self._error_code(GatewayError(f"unexpected {type(exc).__name__}")), ok=False)


_current_request: contextvars.ContextVar[RequestMeter | None] = contextvars.ContextVar("current_request", default=None)


def note_request(request_id: str | None = None, client: str | None = None) -> None:
    """Tell the request being metered (if any) its id and caller, for its log line."""
    meter = _current_request.get()
    if meter is not None:
        meter.request_id = request_id or meter.request_id
        meter.client = client or meter.client
