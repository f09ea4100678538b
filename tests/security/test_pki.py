import stat
import subprocess
import sys

import pytest
from cryptography import x509

from gateway.core.errors import PermissionDenied
from gateway.security.identity import identity_from_peercert
from gateway.security.pki import PkiPaths, init_pki, issue_client


def test_init_writes_the_documented_files_with_private_keys_0600(pki: PkiPaths) -> None:
    for path in (pki.ca_cert, pki.server_cert, pki.client_cert("app"), pki.client_cert("operator")):
        assert path.is_file()
    for key in (pki.ca_key, pki.server_key, pki.client_key("app"), pki.client_key("operator")):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_server_certificate_covers_loopback_names(pki: PkiPaths) -> None:
    cert = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}


def test_init_refuses_to_overwrite(pki: PkiPaths) -> None:
    with pytest.raises(FileExistsError, match="--force"):
        init_pki(pki.root)


def test_issue_rejects_unknown_role_and_bad_names(pki: PkiPaths) -> None:
    with pytest.raises(ValueError, match="role must be one of"):
        issue_client(pki, "x", "admin")
    with pytest.raises(ValueError, match="client name"):
        issue_client(pki, "../evil", "app")


def test_cli_issue_creates_a_client_carrying_its_role(pki: PkiPaths) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "pki",
            "issue",
            "--dir",
            str(pki.root),
            "--name",
            "hotdog-app",
            "--role",
            "app",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "hotdog-app.pem" in result.stdout
    cert = x509.load_pem_x509_certificate(pki.client_cert("hotdog-app").read_bytes())
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    assert sorted(uris) == ["urn:gateway:client:hotdog-app", "urn:gateway:role:app"]


def test_identity_from_peercert_reads_role_and_name() -> None:
    peercert = {
        "subject": ((("commonName", "phone-42"),),),
        "subjectAltName": (("URI", "urn:gateway:client:phone-42"), ("URI", "urn:gateway:role:app")),
    }
    identity = identity_from_peercert(peercert)
    assert (identity.name, identity.role, identity.is_operator) == ("phone-42", "app", False)


@pytest.mark.parametrize(
    "san",
    [
        (),
        (("URI", "urn:gateway:role:root"),),
        (("URI", "urn:gateway:role:app"), ("URI", "urn:gateway:role:operator")),
    ],
)
def test_identity_needs_exactly_one_known_role(san: tuple) -> None:
    with pytest.raises(PermissionDenied, match="exactly one gateway role"):
        identity_from_peercert({"subject": ((("commonName", "x"),),), "subjectAltName": san})
