"""The small async interface every remote model server implements, and what is shared between them.

A ``ModelServer`` is one replica of one model version on one server (Triton, TF Serving):
``metadata()`` (its inputs and outputs), ``ready()`` (can it serve now) and ``infer(batch)``.
Failures come in two kinds, because the replica set treats them differently:

- ``ReplicaDown``: the replica could not be reached or died mid-call (gRPC UNAVAILABLE,
  DEADLINE_EXCEEDED, a reset connection). Inference is idempotent, so the batch is retried
  once on another replica and this one is ejected until its health check passes again.
- ``RemoteModelError``: the server answered, with an error about the request or the model.
  Another replica would answer the same, so it is not retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
import numpy as np

from gateway.models.repository import ModelSpec, RepositoryError
from gateway.models.tensors import tensor_metadata

RECONNECT_OPTIONS = [
    # A restarted replica is reconnected within a second instead of gRPC's default backoff of up to 120 s.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Not a backoff: gRPC gives each connection attempt (TCP, TLS, the server's HTTP/2 SETTINGS) this long
    # (default 20 s). At 100 ms a busy machine's mTLS handshake overran it and the call failed UNAVAILABLE;
    # a refused connection still fails at once, an unanswering host holds a call at most this long.
    ("grpc.min_reconnect_backoff_ms", 5000),
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
]
RETRYABLE_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


class ReplicaDown(Exception):
    """The replica could not be reached or died during the call: retry elsewhere, eject it."""


class RemoteModelError(Exception):
    """The model server answered with an error; another replica would too."""


@dataclass(frozen=True)
class RemoteTensor:
    name: str
    datatype: str
    """KServe v2 datatype name: FP32, INT64, ..."""
    shape: tuple[int, ...]
    """With the batch dimension as -1."""


@dataclass(frozen=True)
class RemoteMetadata:
    inputs: tuple[RemoteTensor, ...]
    outputs: tuple[RemoteTensor, ...]


@dataclass(frozen=True)
class ClientTls:
    """The gateway's own identity towards model servers (mTLS), and the CA their certificates come from."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )


class ModelServer(Protocol):
    """One replica of one model version on a remote server."""

    endpoint: str

    async def metadata(self) -> RemoteMetadata: ...

    async def ready(self) -> bool:
        """True when the server and the model version can serve; False (never raises) otherwise."""
        ...

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        """[N, *input dims] -> [N, *output dims]; raises ReplicaDown or RemoteModelError."""
        ...

    async def close(self) -> None: ...


def grpc_failure(endpoint: str, code: grpc.StatusCode | None, details: str) -> Exception:
    """The typed failure for a gRPC error of a model server."""
    name = code.name if code is not None else "UNKNOWN"
    message = f"{endpoint}: {name}: {details}"
    return ReplicaDown(message) if code in RETRYABLE_CODES else RemoteModelError(message)


def _expected(spec: ModelSpec) -> RemoteMetadata:
    def tensor(t) -> RemoteTensor:
        metadata = tensor_metadata(t)
        return RemoteTensor(metadata["name"], metadata["datatype"], tuple(metadata["shape"]))

    return RemoteMetadata((tensor(spec.input),), (tensor(spec.output),))


def check_metadata(spec: ModelSpec, version: str, endpoint: str, remote_name: str, actual: RemoteMetadata) -> None:
    """The remote model must take and give exactly what config.pbtxt says, or the gateway refuses it.

    A dynamic dimension (-1) reported by the server matches any configured size.
    """
    expected = _expected(spec)
    where = f"{endpoint} model {remote_name!r} version {version} (for {spec.directory}/config.pbtxt)"
    for kind, want, got in (("input", expected.inputs, actual.inputs), ("output", expected.outputs, actual.outputs)):
        if [t.name for t in got] != [t.name for t in want]:
            raise RepositoryError(
                f"{where}: {kind}s are {[t.name for t in got]}, config.pbtxt says {[t.name for t in want]}"
            )
        for w, g in zip(want, got, strict=True):
            if g.datatype != w.datatype:
                raise RepositoryError(
                    f"{where}: {kind} {w.name!r} has datatype {g.datatype}, config.pbtxt says {w.datatype}"
                )
            matches = len(g.shape) == len(w.shape) and all(a in (b, -1) for a, b in zip(g.shape, w.shape, strict=True))
            if not matches:
                raise RepositoryError(
                    f"{where}: {kind} {w.name!r} has shape {list(g.shape)}, config.pbtxt says {list(w.shape)} "
                    "(-1: the batch dimension)"
                )
