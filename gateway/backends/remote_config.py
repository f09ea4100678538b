"""Which models run on remote model servers: the backends file (TOML), named by ``backends.file``.

Endpoints, replicas and client certificates belong to a deployment, not to a model, so they
live in the gateway's configuration; ``model_repo/`` stays the unchanged Triton repository
(the same directory NVIDIA's Triton serves). A model not named here runs in process on ONNX
Runtime, the default.

```toml
[tls]                                     # the gateway's own client identity towards the model servers
ca = "pki-models/ca.pem"                  # the CA that issued the model servers' certificates
cert = "pki-models/clients/gateway.pem"   # omit cert and key for server-only TLS; omit [tls] for plaintext
key = "pki-models/clients/gateway.key"

[models.mnist]
server = "triton"                         # or "tfserving"
replicas = ["10.0.0.5:8001", "10.0.0.6:8001"]
remote_name = "mnist"                     # the model's name on the server (default: the same)
timeout_s = 10.0                          # deadline of one batch on a replica
health_interval_s = 1.0                   # ServerReady/ModelReady of every replica, this often
max_inflight_per_replica = 1              # batches in flight on one replica (its instance count)
```
"""

from __future__ import annotations

import importlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.backends.remote import ClientTls
from gateway.backends.replicas import ReplicaSet
from gateway.models.repository import ModelSpec

SERVERS = {"triton": "gateway.backends.triton:TritonModel", "tfserving": "gateway.backends.tfserving:TFServingModel"}
"""Imported only when configured: TF Serving's messages (gateway.tfs) must not enter the descriptor pool of a
process that also imports TensorFlow (the tests), and the gateway's own TF Serving edge loads them anyway."""


class BackendsConfigError(ValueError):
    """The backends file is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class RemoteModel:
    server: str
    replicas: tuple[str, ...]
    remote_name: str | None = None
    timeout_s: float = 10.0
    health_interval_s: float = 1.0
    max_inflight_per_replica: int = 1


@dataclass(frozen=True)
class BackendsConfig:
    models: dict[str, RemoteModel] = field(default_factory=dict)
    tls: ClientTls | None = None


_MODEL_KEYS = {
    "server": str,
    "replicas": list,
    "remote_name": str,
    "timeout_s": (int, float),
    "health_interval_s": (int, float),
    "max_inflight_per_replica": int,
}


def _model(origin: str, name: str, values: Any) -> RemoteModel:
    where = f"{origin}: models.{name}"
    if not isinstance(values, dict):
        raise BackendsConfigError(f"{where} must be a table")
    for key, value in values.items():
        if key not in _MODEL_KEYS:
            raise BackendsConfigError(f"{where}.{key} is not a known key (known: {', '.join(_MODEL_KEYS)})")
        if not isinstance(value, _MODEL_KEYS[key]) or isinstance(value, bool):
            raise BackendsConfigError(f"{where}.{key} has the wrong type: {value!r}")
    server = values.get("server")
    if server not in SERVERS:
        raise BackendsConfigError(f"{where}.server must be one of {', '.join(SERVERS)}, got {server!r}")
    replicas = values.get("replicas") or []
    if not replicas or not all(isinstance(r, str) and ":" in r for r in replicas):
        raise BackendsConfigError(f'{where}.replicas must list one or more "host:port" endpoints, got {replicas!r}')
    if len(set(replicas)) != len(replicas):
        raise BackendsConfigError(f"{where}.replicas names an endpoint twice: {replicas!r}")
    model = RemoteModel(server, tuple(replicas), **{k: v for k, v in values.items() if k not in ("server", "replicas")})
    for key in ("timeout_s", "health_interval_s", "max_inflight_per_replica"):
        if getattr(model, key) <= 0:
            raise BackendsConfigError(f"{where}.{key} must be > 0, got {getattr(model, key)}")
    return model


def load_backends_config(path: Path | None) -> BackendsConfig:
    """Parse and validate the backends file (None: every model runs in process)."""
    if path is None:
        return BackendsConfig()
    origin = str(path)
    try:
        with open(path, "rb") as handle:
            values = tomllib.load(handle)
    except FileNotFoundError:
        raise BackendsConfigError(f"backends file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise BackendsConfigError(f"backends file {path} is not valid TOML: {exc}") from None
    unknown = set(values) - {"tls", "models"}
    if unknown:
        raise BackendsConfigError(f"{origin}: unknown section(s) {sorted(unknown)} (known: tls, models)")
    tls = None
    if "tls" in values:
        table = values["tls"]
        paths = {}
        for key in ("ca", "cert", "key"):
            if key in table:
                candidate = Path(table[key])
                if not candidate.is_absolute():
                    candidate = path.parent / candidate
                if not candidate.is_file():
                    raise BackendsConfigError(f"{origin}: tls.{key}: {candidate} does not exist")
                paths[key] = candidate
        if "ca" not in paths or ("cert" in paths) != ("key" in paths):
            raise BackendsConfigError(f"{origin}: tls needs ca, and cert and key together (or neither)")
        tls = ClientTls(paths["ca"], paths.get("cert"), paths.get("key"))
    models = {name: _model(origin, name, table) for name, table in values.get("models", {}).items()}
    return BackendsConfig(models, tls)


def remote_backend(config: BackendsConfig, spec: ModelSpec, version: str) -> ReplicaSet | None:
    """The replica set serving ``spec`` version ``version``, checked against its config, or None (in process)."""
    remote = config.models.get(spec.name)
    if remote is None:
        return None
    module, name = SERVERS[remote.server].split(":")
    server_class = getattr(importlib.import_module(module), name)
    remote_name = remote.remote_name or spec.name

    def factory(endpoint: str):
        return server_class(
            endpoint,
            remote_name,
            version,
            spec.input.name,
            spec.output.name,
            tls=config.tls,
            timeout_s=remote.timeout_s,
        )

    replicas = ReplicaSet(
        spec,
        version,
        list(remote.replicas),
        factory,
        remote_name=remote_name,
        health_interval_s=remote.health_interval_s,
        max_inflight_per_replica=remote.max_inflight_per_replica,
    )
    replicas.verify()
    return replicas
