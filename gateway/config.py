"""Gateway settings: defaults, then a TOML file, then GATEWAY_* environment, then CLI flags.

Everything is validated once at start-up; an error names the offending key
(``server.http_port``) and says what was expected.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.core.limits import ParseLimits

if TYPE_CHECKING:
    from gateway.backends.remote_config import BackendsConfig
    from gateway.security.policy import Policy


class ConfigError(ValueError):
    """A setting is missing, unknown or invalid; the message names the key."""


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    http_port: int = 8443
    grpc_port: int = 8444
    health_port: int = 0
    """Plain-HTTP /healthz, /readyz and /metrics for probes without a client certificate; 0: off."""
    reuse_port: bool = False
    """Let several gateway processes share http_port (SO_REUSEPORT): replicas on one machine, one port."""
    http_keep_alive_s: float = 5.0
    """How long an idle REST keep-alive connection stays open; behind a load balancer, above its idle timeout."""
    workers: int = 0
    """Gateway processes serving the same ports, started and supervised by `gateway serve`; 0: one per core."""

    @property
    def effective_workers(self) -> int:
        return self.workers or os.cpu_count() or 1

    def validate(self) -> None:
        if self.workers < 0:
            raise ConfigError(f"server.workers must be >= 0 (0: one per core), got {self.workers}")
        _check_port("server.http_port", self.http_port)
        _check_positive("server.http_keep_alive_s", self.http_keep_alive_s)
        _check_port("server.grpc_port", self.grpc_port)
        _check_port("server.health_port", self.health_port)
        if not self.host:
            raise ConfigError("server.host must not be empty")


MAX_SESSION_TICKETS = 8


@dataclass
class TlsSettings:
    """mTLS is on unless ``enabled`` is explicitly false (local development only)."""

    enabled: bool = True
    pki_dir: Path = Path("pki")
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    crl: Path | None = None
    """A PEM certificate revocation list of the client CA (``gateway pki revoke`` writes one); unset: none."""
    reload_interval_s: float = 1.0
    """How often the server certificate, key, CA bundle and CRL files are checked for changes (no restart)."""
    session_tickets: int = 0
    """TLS 1.3 session tickets the HTTP port sends after each handshake, for clients that resume sessions;
    each costs the server about 0.55 ms per handshake (``gateway.security.tls.server_context``); 0: none."""

    @property
    def cert_path(self) -> Path:
        return self.cert or self.pki_dir / "server.pem"

    @property
    def key_path(self) -> Path:
        return self.key or self.pki_dir / "server.key"

    @property
    def ca_path(self) -> Path:
        return self.ca or self.pki_dir / "ca.pem"

    def validate(self) -> None:
        if not 0 <= self.session_tickets <= MAX_SESSION_TICKETS:
            raise ConfigError(f"tls.session_tickets must be 0 to {MAX_SESSION_TICKETS}, got {self.session_tickets}")
        if not self.enabled:
            return
        for key, path in (("tls.cert", self.cert_path), ("tls.key", self.key_path), ("tls.ca", self.ca_path)):
            if not path.is_file():
                raise ConfigError(
                    f"{key}: {path} does not exist (run `gateway pki init --dir {self.pki_dir}` "
                    "or point tls.cert/tls.key/tls.ca at your own files)"
                )
        if self.crl is not None and not self.crl.is_file():
            raise ConfigError(f"tls.crl: {self.crl} does not exist (`gateway pki crl --dir {self.pki_dir}` writes one)")
        if not self.reload_interval_s > 0:
            raise ConfigError(f"tls.reload_interval_s must be > 0, got {self.reload_interval_s}")


@dataclass
class ModelSettings:
    repo: Path = Path("model_repo")

    def validate(self) -> None:
        if not self.repo.is_dir():
            raise ConfigError(f"models.repo: {self.repo} is not a directory")


@dataclass
class LimitSettings:
    max_body_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_pending_photos: int = 256
    """Photos accepted but not yet preprocessed; beyond it, 429 at once (bounded memory under overload)."""
    rate_per_s: float = 0.0
    """Per-identity token bucket refill rate (requests/s), shared by every replica through Redis; 0: off."""
    burst: int = 0
    """Per-identity token bucket size (requests allowed at once); 0: off."""
    rate_per_model: bool = False
    """One bucket per identity and model instead of one per identity."""
    rate_redis_timeout_ms: int = 250
    """A rate-limit round trip to Redis longer than this falls back to this replica's local bucket."""
    json_max_bytes: int = ParseLimits.json_max_bytes
    """The JSON part of a KServe v2 or TF Serving REST request; beyond it, 413."""
    json_max_depth: int = ParseLimits.json_max_depth
    """Nesting of arrays and objects in any JSON body; beyond it, 400 before parsing."""
    admin_max_bytes: int = ParseLimits.admin_max_bytes
    """An admin (rollout) or feedback body; beyond it, 413."""
    multipart_max_parts: int = ParseLimits.multipart_max_parts
    """Parts of a multipart photo upload; beyond it, 413."""
    max_tensor_elements: int = ParseLimits.max_tensor_elements
    """Elements of one input tensor by its declared shape, on every tensor surface; beyond it, 413."""
    max_header_bytes: int = 32 * 1024
    """The request line and headers of one HTTP request together; beyond it, 431 and the connection closed."""
    grpc_max_message_bytes: int = 10 * 1024 * 1024 + 4096
    """One gRPC request message; beyond it, RESOURCE_EXHAUSTED (gRPC's own check)."""
    grpc_max_metadata_bytes: int = 16 * 1024
    """The metadata (headers) of one gRPC call; beyond it, RESOURCE_EXHAUSTED (gRPC's own check)."""
    max_connections: int = 10_000
    """Open HTTP connections (and requests in progress) per gateway process, beyond it 503; and open gRPC
    connections per process, beyond it a new one is closed at once."""
    max_connections_per_client: int = 256
    """Open HTTP connections of one client certificate per gateway process; beyond it, 429 and closed."""
    tls_handshake_timeout_s: float = 10.0
    """A TLS handshake not done by then is dropped: HTTP (asyncio's default: 60 s) and gRPC (with the HTTP/2
    preface; gRPC's default: 120 s)."""
    header_timeout_s: float = 10.0
    """The request line and headers must arrive within this of the connection (or the request's first byte); 408."""
    accept_rate_per_address: float = 100.0
    """New HTTP connections per second from one source address, checked before their TLS handshake (beyond
    it, reset at once); 0: off. Behind a NAT or a balancer that hides clients' addresses, raise it or turn it off."""
    accept_burst_per_address: int = 100
    """New connections one source address may open at once before ``accept_rate_per_address`` applies."""
    tls_handshakes_per_address: int = 2
    """TLS handshakes of one source address in progress at once on the HTTP port, per process; its next
    connections wait (within ``tls_handshake_timeout_s``), so its handshakes cannot crowd out another address's;
    0: no bound."""
    grpc_idle_timeout_s: float = 300.0
    """A gRPC connection with no call for this long is closed (GOAWAY); clients reconnect when they next call."""
    grpc_max_streams_per_connection: int = 128
    """Concurrent calls on one gRPC connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS); more wait client-side."""
    grpc_max_calls_per_client: int = 256
    """gRPC calls in progress of one client certificate per gateway process; beyond it, RESOURCE_EXHAUSTED."""

    def validate(self) -> None:
        if self.rate_per_s < 0 or self.burst < 0:
            raise ConfigError(f"limits.rate_per_s and limits.burst must be >= 0, got {self.rate_per_s}, {self.burst}")
        if (self.rate_per_s > 0) != (self.burst > 0):
            raise ConfigError(
                "limits.rate_per_s and limits.burst must both be > 0 (rate limits on) or both 0 (off), "
                f"got {self.rate_per_s} and {self.burst}"
            )
        _check_positive("limits.rate_redis_timeout_ms", self.rate_redis_timeout_ms)
        if self.accept_rate_per_address < 0:
            raise ConfigError(
                f"limits.accept_rate_per_address must be >= 0 (0: off), got {self.accept_rate_per_address}"
            )
        if self.accept_rate_per_address > 0:
            _check_positive("limits.accept_burst_per_address", self.accept_burst_per_address)
        if self.tls_handshakes_per_address < 0:
            raise ConfigError(
                f"limits.tls_handshakes_per_address must be >= 0 (0: no bound), got {self.tls_handshakes_per_address}"
            )
        _check_positive("limits.max_body_bytes", self.max_body_bytes)
        _check_positive("limits.max_image_pixels", self.max_image_pixels)
        _check_positive("limits.max_pending_photos", self.max_pending_photos)
        for key in _PARSER_LIMITS:
            _check_positive(f"limits.{key}", getattr(self, key))
        if self.json_max_depth > 512:
            raise ConfigError(
                f"limits.json_max_depth must be <= 512 (Python's JSON parser recurses once per level), "
                f"got {self.json_max_depth}"
            )

    def parse_limits(self) -> ParseLimits:
        """What the edges check on every request."""
        return ParseLimits(
            body_max_bytes=self.max_body_bytes,
            json_max_bytes=self.json_max_bytes,
            json_max_depth=self.json_max_depth,
            admin_max_bytes=self.admin_max_bytes,
            multipart_max_parts=self.multipart_max_parts,
            max_tensor_elements=self.max_tensor_elements,
        )


_PARSER_LIMITS = (
    "json_max_bytes",
    "json_max_depth",
    "admin_max_bytes",
    "multipart_max_parts",
    "max_tensor_elements",
    "max_header_bytes",
    "grpc_max_message_bytes",
    "grpc_max_metadata_bytes",
    "max_connections",
    "max_connections_per_client",
    "tls_handshake_timeout_s",
    "header_timeout_s",
    "grpc_idle_timeout_s",
    "grpc_max_streams_per_connection",
    "grpc_max_calls_per_client",
)


@dataclass
class RuntimeSettings:
    onnx_threads: int = 0
    """ONNX Runtime intra-op threads; 0 means one per CPU core (ORT's own default is 1 here)."""
    preprocess_workers: int = 0
    """Threads that decode and preprocess photos off the event loop; 0 means one per core."""

    def validate(self) -> None:
        for key in ("onnx_threads", "preprocess_workers"):
            if getattr(self, key) < 0:
                raise ConfigError(f"runtime.{key} must be >= 0, got {getattr(self, key)}")

    @property
    def effective_onnx_threads(self) -> int:
        return self.onnx_threads or os.cpu_count() or 1

    @property
    def effective_preprocess_workers(self) -> int:
        return self.preprocess_workers or os.cpu_count() or 1


@dataclass
class PreprocessSettings:
    device: str = "cpu"
    """Where JPEGs are decoded: cpu (the default) or cuda (nvJPEG through torchvision, the gpu extra; other
    formats and every refusal stay on the CPU path). Checked at start: cuda without a GPU decoder is refused."""
    batch: int = 64
    """With device = cuda: the most photos decoded in one device call (those handed over at the same moment;
    no photo waits for others). The preprocess threads are at least this many, so that a batch can form."""

    def validate(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f'preprocess.device must be "cpu" or "cuda", got {self.device!r}')
        if self.batch < 1:
            raise ConfigError(f"preprocess.batch must be >= 1, got {self.batch}")


@dataclass
class BatchingSettings:
    enabled: bool = True
    """False runs every request alone (batch size 1), whatever config.pbtxt says: for comparisons."""

    def validate(self) -> None:
        return


@dataclass
class BackendsSettings:
    """Models served by remote model servers (Triton, TF Serving): see gateway/backends/remote_config.py."""

    file: Path | None = None
    """A TOML file naming each remote model's server and replicas; unset: every model runs in process."""
    parsed: BackendsConfig | None = field(default=None, init=False, repr=False, compare=False)
    """The file as ``validate`` parsed it (once, at start); the registry builds remote backends from it."""

    def validate(self) -> None:
        from gateway.backends.remote_config import BackendsConfigError, load_backends_config

        try:
            self.parsed = load_backends_config(self.file)
        except BackendsConfigError as exc:
            raise ConfigError(f"backends.file: {exc}") from None

    def check_models(self, repo: Path) -> None:
        """Every model the file names must be in the repository (a typo would silently run it in process)."""
        if self.file is None or self.parsed is None:
            return
        known = {p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file()}
        unknown = sorted(set(self.parsed.models) - known)
        if unknown:
            raise ConfigError(
                f"backends.file: {self.file} names model(s) {unknown} that {repo} does not have "
                f"(it has {sorted(known)})"
            )


@dataclass
class PredictionLogSettings:
    """Where every prediction is logged: a Redis Stream per model, spooled to disk while Redis is down."""

    redis_url: str = ""
    """A shared Redis (redis://host:port/db, rediss://, unix://), or a Sentinel-managed one that fails over
    (redis+sentinel://[:password@]host:port[,host:port]/service_name[/db]); empty: an embedded redis-server
    (a child process). The prediction log, feedback, rollout state, idempotent answers and rate limits share it."""
    redis_wait_replicas: int = -1
    """Writes of the log and of rollout changes count as done once this many replicas hold them (WAIT);
    -1 (default): 1 with redis+sentinel (a failover loses no confirmed write), else 0 (the master's word)."""
    redis_wait_timeout_ms: int = 1_000
    """How long a write waits for those replicas; past it the log spools the records (replayed, written once)."""
    embedded_db: Path = Path("var/redis/gateway.db")
    spool_dir: Path = Path("var/spool")
    buffer_size: int = 10_000
    stream_maxlen: int = 1_000_000
    sample_photos: float = 0.0
    """Fraction of photo requests whose original bytes are kept for retraining (0: none, the default)."""
    photo_maxlen: int = 1_000
    """Sampled photos kept per model (approximate MAXLEN of the ``photos:{model}`` stream)."""
    input_max_values: int = 1_024
    """A record keeps its model input (float16) when it has at most this many values (mnist's 784: yes;
    hot dog's 150,528: no); 0: never. What ``gateway predictions export`` turns into training data."""

    def validate(self) -> None:
        _check_positive("predictions.buffer_size", self.buffer_size)
        _check_positive("predictions.stream_maxlen", self.stream_maxlen)
        _check_positive("predictions.photo_maxlen", self.photo_maxlen)
        if self.input_max_values < 0:
            raise ConfigError(f"predictions.input_max_values must be 0 (off) or more, got {self.input_max_values}")
        if not 0.0 <= self.sample_photos <= 1.0:
            raise ConfigError(f"predictions.sample_photos must be a fraction 0.0-1.0, got {self.sample_photos}")
        from gateway.redis_link import RedisUrlError, check_url

        if self.redis_url:
            try:
                check_url(self.redis_url)
            except RedisUrlError as exc:
                raise ConfigError(f"predictions.redis_url: {exc}") from None
        if self.redis_wait_replicas < -1:
            raise ConfigError(
                f"predictions.redis_wait_replicas must be -1 (auto), 0 (off) or more, got {self.redis_wait_replicas}"
            )
        _check_positive("predictions.redis_wait_timeout_ms", self.redis_wait_timeout_ms)

    @property
    def wait_replicas(self) -> int:
        """``redis_wait_replicas`` with -1 resolved: 1 for a Sentinel URL, else 0."""
        if self.redis_wait_replicas >= 0:
            return self.redis_wait_replicas
        from gateway.redis_link import SENTINEL_SCHEME

        return 1 if self.redis_url.startswith(f"{SENTINEL_SCHEME}://") else 0


@dataclass
class SkewSettings:
    """The training/serving skew monitor (distances of the live window against each version's baseline)."""

    window: int = 500
    window_s: int = 0
    """The live window holds no record older than this many seconds (by its stream id); 0: no age limit."""
    interval_s: int = 30
    """How often the background check refreshes the skew gauges in /metrics."""
    background_check: bool = True
    """false: no background check in this process (skew queries still refresh the gauges). With server.workers,
    only the first worker checks: every worker reads the same log, and /metrics shows the most recent gauges."""
    psi_threshold: float = 0.25
    labels_threshold: float = 0.15
    """Fixed thresholds, used only for a version whose baselines carry no calibrated thresholds."""
    min_window: int = 50
    """Below this many live records of a surface, no verdict (nor below the smallest calibrated window)."""
    feature_thresholds: str = ""
    """Per-feature PSI thresholds overriding the calibrated ones, e.g. "megapixels=2.0,aspect_ratio=0.5"."""

    def _threshold_items(self) -> list[str]:
        return [part.strip() for part in self.feature_thresholds.split(",") if part.strip()]

    @property
    def per_feature(self) -> dict[str, float]:
        return {name.strip(): float(value) for name, _, value in (i.partition("=") for i in self._threshold_items())}

    def validate(self) -> None:
        for key in ("window", "interval_s", "min_window"):
            _check_positive(f"skew.{key}", getattr(self, key))
        from gateway.monitoring.features import DIGIT_FEATURES, PHOTO_FEATURES, SOURCE_FEATURES

        known = (*DIGIT_FEATURES, *PHOTO_FEATURES, *SOURCE_FEATURES)
        for item in self._threshold_items():
            name, equals, value = item.partition("=")
            try:
                valid = bool(equals) and name.strip() in known and float(value) > 0
            except ValueError:
                valid = False
            if not valid:
                raise ConfigError(
                    f"skew.feature_thresholds: {item!r} must be FEATURE=THRESHOLD with a threshold > 0 "
                    f"and a feature among {', '.join(known)}"
                )
        if self.window_s < 0:
            raise ConfigError(f"skew.window_s must be >= 0 (0: no age limit), got {self.window_s}")
        for key in ("psi_threshold", "labels_threshold"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"skew.{key} must be > 0, got {getattr(self, key)}")


@dataclass
class RolloutSettings:
    """Versioned rollout: following the shared state, re-scanning the repository, shadowing, the guard."""

    follow_poll_s: float = 5.0
    """Re-read every model's rollout state this often (changes arrive at once by pub/sub; this is the safety net)."""
    scan_interval_s: float = 2.0
    """Re-scan the model repository for added, removed or replaced version directories this often; 0: never."""
    shadow_max_in_flight: int = 64
    """Shadow copies running at once; beyond it a copy is dropped (counted), never queued behind live traffic."""
    guard_enabled: bool = True
    guard_interval_s: float = 5.0
    guard_window: int = 500
    guard_min_requests: int = 100
    guard_max_error_rate: float = 0.05
    guard_max_p99_ms: float = 2000.0
    guard_min_accuracy: float = 0.9
    guard_min_feedback: int = 50
    guard_min_agreement: float = 0.9
    guard_min_compared: int = 100

    def validate(self) -> None:
        for key in ("follow_poll_s", "guard_interval_s"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"rollout.{key} must be > 0, got {getattr(self, key)}")
        if self.scan_interval_s < 0:
            raise ConfigError(f"rollout.scan_interval_s must be >= 0 (0: never), got {self.scan_interval_s}")
        for key in ("shadow_max_in_flight", "guard_window", "guard_min_requests", "guard_min_feedback"):
            _check_positive(f"rollout.{key}", getattr(self, key))
        _check_positive("rollout.guard_min_compared", self.guard_min_compared)
        if self.guard_min_requests > self.guard_window:
            raise ConfigError(
                f"rollout.guard_min_requests ({self.guard_min_requests}) cannot exceed "
                f"rollout.guard_window ({self.guard_window})"
            )
        for key in ("guard_max_error_rate", "guard_min_accuracy", "guard_min_agreement"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"rollout.{key} must be a fraction 0.0-1.0, got {getattr(self, key)}")
        if self.guard_max_p99_ms < 0:
            raise ConfigError(f"rollout.guard_max_p99_ms must be >= 0 (0: not judged), got {self.guard_max_p99_ms}")


@dataclass
class SecuritySettings:
    """Authorization: which identities and roles may use which models and actions (gateway/security/policy.py)."""

    policy_file: Path | None = None
    """A TOML policy file; unset: any app certificate may classify and give feedback on any model, operators
    may do everything. Re-read when it changes (a broken new file keeps the old policy)."""
    policy_reload_s: float = 1.0
    """How often (at most) a request checks whether the policy file changed."""
    parsed_policy: Policy | None = field(default=None, init=False, repr=False, compare=False)
    """The policy file as ``validate`` parsed it at start (the authorizer starts from it, then follows the file)."""

    def validate(self) -> None:
        if not self.policy_reload_s > 0:
            raise ConfigError(f"security.policy_reload_s must be > 0, got {self.policy_reload_s}")
        if self.policy_file is None:
            return
        from gateway.security.policy import PolicyError, load_policy

        try:
            self.parsed_policy = load_policy(self.policy_file)
        except PolicyError as exc:
            raise ConfigError(f"security.policy_file: {exc}") from None


@dataclass
class TracingSettings:
    """OpenTelemetry traces, exported over OTLP/gRPC; off (and free) unless otlp_endpoint is set."""

    otlp_endpoint: str = ""
    """The collector's OTLP gRPC address: http://host:4317 (plaintext) or https://host:4317 (TLS); empty: off."""
    sample_ratio: float = 1.0
    """Share of new traces recorded; a caller's traceparent decides for the traces it continues."""
    service_name: str = "image-gateway"

    def validate(self) -> None:
        if self.otlp_endpoint and not self.otlp_endpoint.startswith(("http://", "https://")):
            raise ConfigError(
                f"tracing.otlp_endpoint must be http://host:port (plaintext) or https://host:port (TLS), "
                f"got {self.otlp_endpoint!r}"
            )
        if not 0.0 <= self.sample_ratio <= 1.0:
            raise ConfigError(f"tracing.sample_ratio must be a fraction 0.0-1.0, got {self.sample_ratio}")
        if not self.service_name:
            raise ConfigError("tracing.service_name must not be empty")


LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass
class LoggingSettings:
    """The gateway's own log on stderr (the prediction log is configured under [predictions])."""

    format: str = "text"
    """text: for people; json: one JSON object per line (request id, trace id, client, model, version, code,
    latency) for a log collector."""
    level: str = "info"
    requests: bool = True
    """One line per answered or refused request (logger gateway.requests); false: none."""

    def validate(self) -> None:
        if self.format not in LOG_FORMATS:
            raise ConfigError(f"logging.format must be one of {', '.join(LOG_FORMATS)}, got {self.format!r}")
        if self.level not in LOG_LEVELS:
            raise ConfigError(f"logging.level must be one of {', '.join(LOG_LEVELS)}, got {self.level!r}")


@dataclass
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    models: ModelSettings = field(default_factory=ModelSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    preprocess: PreprocessSettings = field(default_factory=PreprocessSettings)
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    backends: BackendsSettings = field(default_factory=BackendsSettings)
    predictions: PredictionLogSettings = field(default_factory=PredictionLogSettings)
    skew: SkewSettings = field(default_factory=SkewSettings)
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)

    def validate(self) -> Settings:
        for section in dataclasses.fields(self):
            getattr(self, section.name).validate()
        self.backends.check_models(self.models.repo)
        return self


def _check_port(key: str, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ConfigError(f"{key} must be a port number 0-65535, got {value}")


def _check_positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{key} must be > 0, got {value}")


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """Convert a TOML or environment value to the field's type hint, or say why not."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))  # X | None: X
    from_env = isinstance(value, str)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_env and value.lower() in (*_TRUE, *_FALSE):
            return value.lower() in _TRUE
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_env:
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_env and value.strip().lstrip("-").isdigit():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if hint is Path:
        if isinstance(value, (str, Path)) and str(value):
            return Path(value)
        raise ConfigError(f"{key} must be a path, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise AssertionError(f"no coercion for {hint!r}")


def _parsed_types() -> dict[str, type]:
    """The types of what ``validate`` parses (imported late: they import the settings' neighbours)."""
    from gateway.backends.remote_config import BackendsConfig
    from gateway.security.policy import Policy

    return {"BackendsConfig": BackendsConfig, "Policy": Policy}


def _apply(settings: Settings, values: Mapping[str, Mapping[str, Any]], origin: str) -> None:
    sections = {f.name: f for f in dataclasses.fields(settings)}
    for section_name, section_values in values.items():
        if section_name not in sections:
            raise ConfigError(f"{origin}: unknown section {section_name!r} (known: {', '.join(sections)})")
        if not isinstance(section_values, Mapping):
            raise ConfigError(f"{origin}: {section_name} must be a table")
        section = getattr(settings, section_name)
        hints = typing.get_type_hints(type(section), localns=_parsed_types())
        fields = [f.name for f in dataclasses.fields(section) if f.init]
        for key, value in section_values.items():
            full_key = f"{section_name}.{key}"
            if key not in fields:
                raise ConfigError(f"{origin}: unknown key {full_key!r} (known: {', '.join(fields)})")
            setattr(section, key, _coerce(full_key, hints[key], value))


def _environment_values(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """GATEWAY_SERVER_HTTP_PORT=8443 -> {"server": {"http_port": "8443"}}."""
    values: dict[str, dict[str, str]] = {}
    section_names = [f.name for f in dataclasses.fields(Settings)]
    for name, value in environ.items():
        if not name.startswith("GATEWAY_"):
            continue
        rest = name.removeprefix("GATEWAY_").lower()
        section = next((s for s in section_names if rest.startswith(s + "_")), None)
        if section is None:
            continue
        values.setdefault(section, {})[rest.removeprefix(section + "_")] = value
    return values


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build validated settings from defaults, the file, the environment, then explicit overrides."""
    settings = Settings()
    if config_file is not None:
        try:
            with open(config_file, "rb") as handle:
                file_values = tomllib.load(handle)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {config_file} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from exc
        _apply(settings, file_values, str(config_file))
    _apply(settings, _environment_values(os.environ if environ is None else environ), "environment")
    if overrides:
        _apply(
            settings,
            {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in overrides.items()},
            "command line",
        )
    return settings.validate()
