"""Server TLS material that can change under a running gateway: certificate, key, CA bundle, CRL.

How a rotation reaches each listener without a restart and without touching connections in flight:

- REST (uvicorn, asyncio or uvloop): the listening socket keeps one *base* SSLContext whose SNI
  callback hands every new handshake the newest context (``SSLObject.context = ...``, which is
  OpenSSL's ``SSL_set_SSL_CTX``: certificate, key and CA store of the new context). OpenSSL calls the
  servername callback on every ClientHello, with ``None`` when the client sends no SNI (a client of
  ``https://127.0.0.1``); the tests check both.
- gRPC (grpc.aio): ``dynamic_ssl_server_credentials``, whose fetcher gRPC calls before every new
  handshake; it returns the new configuration once after each change, ``None`` otherwise.
- Revocation: REST refuses a revoked certificate in the handshake (``VERIFY_CRL_CHECK_LEAF``);
  gRPC's Python credentials take no CRL, so every call on either surface is also checked against
  the CRL's serial numbers (``check_not_revoked``), which also refuses the next call on a
  connection opened before the revocation.

Established connections keep the session they negotiated. A set of files that does not load
(a certificate written before its key, a CRL not signed by the CA) keeps the previous material,
logs why, and is tried again when the files change again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509

from gateway.config import TlsSettings
from gateway.core.errors import Unauthenticated
from gateway.security.tls import server_context

log = logging.getLogger(__name__)


class TlsMaterialError(ValueError):
    """The files do not make a usable server configuration (the message says which and why)."""


@dataclass(frozen=True)
class _Loaded:
    context: ssl.SSLContext
    grpc_config: grpc.ServerCertificateConfiguration
    revoked: frozenset[int]
    generation: int
    certificate_expires_at: float
    """The server certificate's notAfter (Unix seconds): exported so an alert fires before it lapses."""
    crl_next_update: float | None
    """The CRL's nextUpdate (Unix seconds); None without a CRL (or one without nextUpdate)."""


def _file_state(paths: tuple[Path, ...]) -> tuple:
    states = []
    for path in paths:
        try:
            stat = os.stat(path)
            states.append((stat.st_mtime_ns, stat.st_size, stat.st_ino))
        except OSError:
            states.append(None)
    return tuple(states)


def _load_crl(crl_path: Path) -> x509.CertificateRevocationList:
    try:
        return x509.load_pem_x509_crl(crl_path.read_bytes())
    except ValueError as exc:
        raise TlsMaterialError(f"tls.crl: {crl_path} is not a PEM CRL: {exc}") from None


def revoked_serials(crl_path: Path, ca_pem: bytes) -> frozenset[int]:
    """Serial numbers the CRL revokes; the CRL must be signed by a CA of the bundle."""
    crl = _load_crl(crl_path)
    for ca in x509.load_pem_x509_certificates(ca_pem):
        if ca.subject == crl.issuer and crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
            next_update = crl.next_update_utc
            if next_update is not None and next_update < dt.datetime.now(dt.UTC):
                log.error(
                    "tls.crl: %s expired at %s: OpenSSL refuses REST clients until it is refreshed (`gateway pki crl`)",
                    crl_path,
                    next_update.isoformat(),
                )
            return frozenset(entry.serial_number for entry in crl)
    raise TlsMaterialError(f"tls.crl: {crl_path} is not signed by any CA in the bundle")


class TlsMaterial:
    """The newest loaded server TLS files, for REST (SSLContext) and gRPC (certificate configuration)."""

    def __init__(self, settings: TlsSettings) -> None:
        self._cert, self._key, self._ca = settings.cert_path, settings.key_path, settings.ca_path
        self._crl = settings.crl
        self._session_tickets = settings.session_tickets
        self.reload_interval_s = settings.reload_interval_s
        self._lock = threading.Lock()
        self._state = _file_state(self._paths)
        self._loaded = self._load(1)
        self._grpc_generation = 1
        self._base = self._load(1).context
        self._base.sni_callback = self._select_context
        self.reloads = 0
        self.reload_failures = 0

    @property
    def _paths(self) -> tuple[Path, ...]:
        return (self._cert, self._key, self._ca) + ((self._crl,) if self._crl is not None else ())

    def _load(self, generation: int) -> _Loaded:
        try:
            cert, key, ca = self._cert.read_bytes(), self._key.read_bytes(), self._ca.read_bytes()
            context = server_context(self._cert, self._key, self._ca, self._crl, self._session_tickets)
        except (OSError, ssl.SSLError) as exc:
            raise TlsMaterialError(f"the server TLS files do not load: {exc}") from None
        revoked = revoked_serials(self._crl, ca) if self._crl is not None else frozenset()
        config = grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)
        expires_at = x509.load_pem_x509_certificate(cert).not_valid_after_utc.timestamp()
        next_update = _load_crl(self._crl).next_update_utc if self._crl is not None else None
        next_update_s = None if next_update is None else next_update.timestamp()
        return _Loaded(context, config, revoked, generation, expires_at, next_update_s)

    # -- REST: the SNI callback of the listening socket's context ----------------------------------------

    def server_context(self) -> ssl.SSLContext:
        """The context to listen with: each new handshake is switched to the newest material."""
        return self._base

    def _select_context(self, connection: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext) -> None:
        connection.context = self._loaded.context

    # -- gRPC ---------------------------------------------------------------------------------------------

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._loaded.grpc_config, self._fetch_grpc_config, require_client_authentication=True
        )

    def _fetch_grpc_config(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before every new handshake: the new configuration once per change, else None."""
        loaded = self._loaded
        with self._lock:
            if loaded.generation == self._grpc_generation:
                return None
            self._grpc_generation = loaded.generation
        return loaded.grpc_config

    @property
    def certificate_expires_at(self) -> float:
        """notAfter of the server certificate in force (Unix seconds)."""
        return self._loaded.certificate_expires_at

    @property
    def crl_next_update(self) -> float | None:
        """nextUpdate of the CRL in force (Unix seconds), None without one."""
        return self._loaded.crl_next_update

    # -- revocation, checked on every call ----------------------------------------------------------------

    def is_revoked(self, serial: int) -> bool:
        return serial in self._loaded.revoked

    # -- reloading ----------------------------------------------------------------------------------------

    def reload_if_changed(self) -> bool:
        """Load the files again if any changed since the last look; True when new material is in force."""
        state = _file_state(self._paths)
        if state == self._state:
            return False
        self._state = state
        try:
            self._loaded = self._load(self._loaded.generation + 1)
        except TlsMaterialError as exc:
            self.reload_failures += 1
            log.error("TLS files NOT reloaded, the previous ones stay in force: %s", exc)
            return False
        self.reloads += 1
        log.info(
            "TLS files reloaded (certificate %s, CA %s%s): new handshakes use them",
            self._cert,
            self._ca,
            f", CRL {self._crl} with {len(self._loaded.revoked)} revoked" if self._crl else "",
        )
        return True

    async def watch(self) -> None:
        """Look for changed files every ``reload_interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(self.reload_interval_s)
            await asyncio.to_thread(self.reload_if_changed)


_active: TlsMaterial | None = None


def activate(material: TlsMaterial | None) -> None:
    """Make ``material`` the one every call's revocation check consults (one per process)."""
    global _active
    _active = material


def check_not_revoked(serial: int | None) -> None:
    """Refuse a call whose client certificate the current CRL revokes."""
    if _active is not None and serial is not None and _active.is_revoked(serial):
        raise Unauthenticated(f"the client certificate (serial {serial:X}) has been revoked")
