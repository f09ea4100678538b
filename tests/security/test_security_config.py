"""Security settings are validated at start-up with errors that name the key; the CRL writer keeps its list."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from gateway.config import ConfigError, load_settings
from gateway.security.pki import PkiPaths, init_pki, issue_client, write_crl


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"limits": {"rate_per_s": 5.0}}, "limits.rate_per_s and limits.burst must both be > 0"),
        ({"limits": {"burst": -1}}, "limits.rate_per_s and limits.burst must be >= 0"),
        ({"tls": {"crl": "/nonexistent/crl.pem"}}, "tls.crl: /nonexistent/crl.pem does not exist"),
        ({"tls": {"reload_interval_s": 0}}, "tls.reload_interval_s must be > 0"),
        ({"security": {"policy_file": "/nonexistent/policy.toml"}}, "security.policy_file: /nonexistent/policy.toml"),
    ],
)
def test_bad_security_settings_name_the_key(pki: PkiPaths, values: dict, message: str) -> None:
    overrides = {"tls": {"pki_dir": str(pki.root)}, "models": {"repo": "model_repo"}}
    for section, keys in values.items():
        overrides.setdefault(section, {}).update(keys)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_settings(None, overrides=overrides, environ={})


def test_a_broken_policy_file_stops_start_up_naming_the_key(pki: PkiPaths, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('[roles.app]\nmodels = ["*"]\nactions = ["everything"]\n')
    with pytest.raises(ConfigError, match=r"security\.policy_file: .*roles\.app\.actions: unknown action"):
        environ = {"GATEWAY_SECURITY_POLICY_FILE": str(policy)}
        load_settings(None, overrides={"tls": {"pki_dir": str(pki.root)}}, environ=environ)


def test_revoking_adds_to_the_list_and_refuses_another_cas_list(tmp_path: Path) -> None:
    pki = init_pki(tmp_path / "pki")
    assert write_crl(pki) == []
    first, _ = issue_client(pki, "first", "app")
    second, _ = issue_client(pki, "second", "app")
    serial = x509.load_pem_x509_certificate(first.read_bytes()).serial_number
    assert write_crl(pki, revoke=[first]) == [serial]
    both = write_crl(pki, revoke=[second, first])  # revoking twice changes nothing
    assert len(both) == 2 and serial in both
    crl = x509.load_pem_x509_crl(pki.crl.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    other = init_pki(tmp_path / "other")
    with pytest.raises(ValueError, match="not a revocation list of the CA"):
        write_crl(other, crl=pki.crl)
    with pytest.raises(ValueError, match="was not issued by the CA"):
        write_crl(pki, revoke=[other.client_cert("app")])
