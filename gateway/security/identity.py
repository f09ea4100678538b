"""Turn the peer certificate of a TLS connection into an Identity."""

from __future__ import annotations

import functools
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.core.errors import PermissionDenied
from gateway.core.types import Identity
from gateway.security.pki import CLIENT_URI_PREFIX, ROLE_URI_PREFIX, ROLES

PeerCert = dict[str, Any]
"""What ``ssl.SSLSocket.getpeercert()`` returns for a verified peer."""

DEV_IDENTITY = Identity(name="local-dev", role="operator")
"""The identity every request gets when mTLS is explicitly disabled for local development."""


def _common_name(peercert: PeerCert) -> str | None:
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def identity_from_peercert(peercert: PeerCert) -> Identity:
    """Read the gateway role and client name from the certificate's SAN URIs."""
    uris = [value for kind, value in peercert.get("subjectAltName", ()) if kind == "URI"]
    roles = [uri.removeprefix(ROLE_URI_PREFIX) for uri in uris if uri.startswith(ROLE_URI_PREFIX)]
    names = [uri.removeprefix(CLIENT_URI_PREFIX) for uri in uris if uri.startswith(CLIENT_URI_PREFIX)]
    known_roles = [role for role in roles if role in ROLES]
    if len(known_roles) != 1:
        raise PermissionDenied(
            "the client certificate must carry exactly one gateway role as a SAN URI "
            f"({', '.join(ROLE_URI_PREFIX + r for r in ROLES)}); found {roles or 'none'}"
        )
    name = names[0] if names else _common_name(peercert) or "unknown"
    return Identity(name=name, role=known_roles[0])


def serial_of_peercert(peercert: PeerCert) -> int | None:
    serial = peercert.get("serialNumber")
    return int(serial, 16) if serial else None


def identity_from_pem(pem: bytes) -> Identity:
    """The same as identity_from_peercert, for a PEM certificate (what gRPC's auth context carries)."""
    return peer_from_pem(pem)[0]


@functools.lru_cache(maxsize=1024)
def peer_from_pem(pem: bytes) -> tuple[Identity, int]:
    """The Identity and the serial number of a PEM certificate (parsed once per certificate: gRPC hands
    every call its connection's PEM, and parsing it cost about a tenth of a tensor call)."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    peercert: PeerCert = {
        "subject": ((("commonName", str(names[0].value)),),) if names else (),
        "subjectAltName": tuple(("URI", uri) for uri in uris),
    }
    return identity_from_peercert(peercert), cert.serial_number
