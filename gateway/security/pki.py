"""A development PKI: one CA, a server certificate for loopback, client certificates with roles.

The client's role and name travel in the certificate as SAN URIs
(``urn:gateway:role:<role>``, ``urn:gateway:client:<name>``) so the server can
authorize from the TLS handshake alone.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLES = ("app", "operator")
ROLE_URI_PREFIX = "urn:gateway:role:"
CLIENT_URI_PREFIX = "urn:gateway:client:"
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class PkiPaths:
    """Where `pki init` writes, and where `serve` and clients look."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    def client_cert(self, name: str) -> Path:
        return self.root / "clients" / f"{name}.pem"

    def client_key(self, name: str) -> Path:
        return self.root / "clients" / f"{name}.key"

    @property
    def crl(self) -> Path:
        return self.root / "crl.pem"

    def exists(self) -> bool:
        return self.ca_cert.is_file() and self.server_cert.is_file() and self.server_key.is_file()


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _load_ca(paths: PkiPaths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if not paths.ca_key.is_file():
        raise FileNotFoundError(f"no CA key at {paths.ca_key}: run `gateway pki init --dir {paths.root}` first")
    cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{paths.ca_key} is not an EC private key")
    return cert, key


def _builder(subject: x509.Name, issuer: x509.Name, public_key, days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gateway dev PKI"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _create_ca(paths: PkiPaths, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    name = _name("gateway dev CA")
    cert = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(paths.ca_key, key)
    _write_cert(paths.ca_cert, cert)
    return cert, key


def _issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    san: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    cert = (
        _builder(_name(common_name), ca_cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def issue_server(paths: PkiPaths, hostnames: list[str], days: int = 825) -> None:
    """Issue the server certificate for the given DNS names and IP addresses."""
    ca_cert, ca_key = _load_ca(paths)
    san: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            san.append(x509.DNSName(host))
    cert, key = _issue_leaf(ca_cert, ca_key, hostnames[0], san, ExtendedKeyUsageOID.SERVER_AUTH, days)
    _write_key(paths.server_key, key)
    _write_cert(paths.server_cert, cert)


def issue_client(paths: PkiPaths, name: str, role: str, days: int = 365) -> tuple[Path, Path]:
    """Issue a client certificate carrying ``name`` and ``role``; returns (cert, key) paths."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if not _NAME_PATTERN.match(name):
        raise ValueError(f"client name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    ca_cert, ca_key = _load_ca(paths)
    san: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(CLIENT_URI_PREFIX + name),
        x509.UniformResourceIdentifier(ROLE_URI_PREFIX + role),
    ]
    cert, key = _issue_leaf(ca_cert, ca_key, name, san, ExtendedKeyUsageOID.CLIENT_AUTH, days)
    _write_key(paths.client_key(name), key)
    _write_cert(paths.client_cert(name), cert)
    return paths.client_cert(name), paths.client_key(name)


def init_pki(root: Path, *, force: bool = False, hostnames: list[str] | None = None) -> PkiPaths:
    """Create the CA, the server certificate and the `app` and `operator` client identities.

    Refuses to overwrite an existing PKI unless ``force`` is set, so a rerun never
    invalidates certificates already handed to clients.
    """
    paths = PkiPaths(Path(root))
    if paths.ca_cert.exists() and not force:
        raise FileExistsError(f"{paths.ca_cert} exists; pass --force to replace the whole PKI")
    paths.root.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.root, 0o700)
    _create_ca(paths, days=3650)
    issue_server(paths, hostnames or ["localhost", "127.0.0.1", "::1"])
    for role in ROLES:
        issue_client(paths, role, role)
    return paths


def write_crl(paths: PkiPaths, revoke: list[Path] | None = None, crl: Path | None = None, days: int = 30) -> list[int]:
    """Write (or refresh) the CA's revocation list at ``crl`` (default ``DIR/crl.pem``), keeping the serials it
    already revokes and adding those of the ``revoke`` certificates; returns every revoked serial.

    Written to a temporary file and renamed, so a gateway re-reading it never sees half a file. A CRL
    is valid for ``days``: refresh it before then (a gateway with an expired CRL refuses every client).
    """
    target = crl or paths.crl
    ca_cert, ca_key = _load_ca(paths)
    now = dt.datetime.now(dt.UTC)
    revoked: dict[int, dt.datetime] = {}
    if target.is_file():
        existing = x509.load_pem_x509_crl(target.read_bytes())
        if existing.issuer != ca_cert.subject or not existing.is_signature_valid(ca_key.public_key()):
            raise ValueError(f"{target} is not a revocation list of the CA in {paths.root}")
        revoked = {entry.serial_number: entry.revocation_date_utc for entry in existing}
    for path in revoke or []:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            raise ValueError(f"{path} was not issued by the CA in {paths.root}") from None
        revoked.setdefault(cert.serial_number, now)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=days))
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
    )
    for serial, when in sorted(revoked.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    data = builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, target)
    return sorted(revoked)
