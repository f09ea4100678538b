"""Certificate lifecycle against real gateway processes over real sockets: protocol versions and ciphers,
expired and not-yet-valid client certificates, a CRL reloaded without restart, rotation of the server
certificate and CA bundle without restart and without dropping connections in flight."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from tritonclient.grpc import service_pb2 as kserve_pb2
from tritonclient.grpc import service_pb2_grpc as kserve_pb2_grpc

from gateway.security.pki import PkiPaths, init_pki, issue_client, issue_server, write_crl
from gateway.security.tls import client_context
from tests.conftest import MODEL_REPO, REPO_ROOT, RunningGateway, start_gateway, stop_gateway
from tests.security.helpers import issue_client_valid, replace_file, wait_until

RELOAD_ENV = {"GATEWAY_TLS_RELOAD_INTERVAL_S": "0.1"}


def _address(target: str) -> tuple[str, int]:
    host, port = target.removeprefix("https://").rsplit(":", 1)
    return host, int(port)


def _ports(gateway: RunningGateway) -> dict[str, tuple[str, int]]:
    return {"rest": _address(gateway.base_url), "grpc": _address(gateway.server.grpc_target)}


def _handshake(address: tuple[str, int], context: ssl.SSLContext) -> ssl.SSLSocket:
    """A TLS connection without SNI (the server name is an IP address), handshake done."""
    raw = socket.create_connection(address, timeout=10)
    try:
        return context.wrap_socket(raw, server_hostname=None)
    except BaseException:
        raw.close()
        raise


def _probe_context(pki: PkiPaths, identity: str = "app") -> ssl.SSLContext:
    """A client that will offer anything OpenSSL can (security level 0), so only the server can refuse."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.client_cert(identity)), str(pki.client_key(identity)))
    context.set_ciphers("ALL:@SECLEVEL=0")
    return context


def _refused_by_server(pki: PkiPaths, client: ssl.SSLContext, address: tuple[str, int]) -> str:
    """The handshake error against the gateway, after proving that a permissive server accepts this client
    (so the refusal is the gateway's choice, not something this client cannot do)."""
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    permissive.set_ciphers("ALL:@SECLEVEL=0")
    permissive.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        result: list[object] = []

        def serve() -> None:
            connection, _ = listener.accept()
            try:
                with permissive.wrap_socket(connection, server_side=True) as tls:
                    result.append(tls.version())
            except ssl.SSLError as exc:
                result.append(exc)

        server = threading.Thread(target=serve)
        server.start()
        with _handshake(listener.getsockname(), client) as control:
            version = control.version()
        server.join(10)
    assert result == [version], result
    with pytest.raises(ssl.SSLError) as refused:
        _handshake(address, client)
    return str(refused.value)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
@pytest.mark.parametrize("surface", ["rest", "grpc"])
def test_tls_1_1_is_refused_and_1_2_accepted(gateway: RunningGateway, surface: str) -> None:
    address = _ports(gateway)[surface]
    old = _probe_context(gateway.pki)
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    _refused_by_server(gateway.pki, old, address)
    tls12 = _probe_context(gateway.pki)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with _handshake(address, tls12) as connection:
        assert connection.version() == "TLSv1.2"


@pytest.mark.parametrize("surface", ["rest", "grpc"])
@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA256"])
def test_non_aead_ciphers_are_refused(gateway: RunningGateway, surface: str, cipher: str) -> None:
    address = _ports(gateway)[surface]
    weak = _probe_context(gateway.pki)
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.set_ciphers(f"{cipher}:@SECLEVEL=0")
    _refused_by_server(gateway.pki, weak, address)
    strong = _probe_context(gateway.pki)
    strong.maximum_version = ssl.TLSVersion.TLSv1_2
    strong.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    with _handshake(address, strong) as connection:
        assert connection.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"


def _rest_status(gateway: RunningGateway, cert: Path, key: Path, ca: Path | None = None) -> int | str:
    """The status of GET /api/v1/models on a new connection presenting ``cert``, or the TLS failure."""
    context = client_context(ca or gateway.pki.ca_cert, cert, key)
    try:
        with httpx.Client(base_url=gateway.base_url, verify=context, timeout=10) as client:
            return client.get("/api/v1/models").status_code
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError) as exc:
        return f"refused: {exc}"


def _grpc_code(target: str, cert: Path, key: Path, ca: bytes) -> grpc.StatusCode:
    credentials = grpc.ssl_channel_credentials(ca, key.read_bytes(), cert.read_bytes())
    with grpc.secure_channel(target, credentials) as channel:
        return _live(channel)


def _live(channel: grpc.Channel) -> grpc.StatusCode:
    try:
        kserve_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(kserve_pb2.ServerLiveRequest(), timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("name", "starts", "ends"),
    [
        ("expired", dt.timedelta(days=-30), dt.timedelta(days=-1)),
        ("not-yet-valid", dt.timedelta(days=1), dt.timedelta(days=30)),
    ],
)
def test_expired_and_not_yet_valid_client_certificates_are_refused(
    gateway: RunningGateway, name: str, starts: dt.timedelta, ends: dt.timedelta
) -> None:
    now = dt.datetime.now(dt.UTC)
    cert, key = issue_client_valid(gateway.pki, name, now + starts, now + ends)
    status = _rest_status(gateway, cert, key)
    assert isinstance(status, str) and status.startswith("refused"), status
    ca = gateway.pki.ca_cert.read_bytes()
    assert _grpc_code(gateway.server.grpc_target, cert, key, ca) == grpc.StatusCode.UNAVAILABLE
    # the same kind of certificate, currently valid, is accepted: the refusal is about the dates
    good_cert, good_key = issue_client_valid(gateway.pki, f"{name}-ok", now - dt.timedelta(hours=1), now + abs(ends))
    assert _rest_status(gateway, good_cert, good_key) == 200
    assert _grpc_code(gateway.server.grpc_target, good_cert, good_key, ca) == grpc.StatusCode.OK


@pytest.fixture
def own_pki(tmp_path: Path) -> PkiPaths:
    """A PKI this test may change (the session's is shared)."""
    return init_pki(tmp_path / "pki")


@pytest.fixture
def crl_gateway(own_pki: PkiPaths) -> Iterator[RunningGateway]:
    write_crl(own_pki)
    # The kept-open connection idles through the revoke command and the CRL reload (3 s here, over 10 s under
    # load): longer than uvicorn's default keep-alive (5 s), after which the server may legitimately close it.
    keep_alive = {"GATEWAY_SERVER_HTTP_KEEP_ALIVE_S": "300"}
    running = start_gateway(
        own_pki,
        "--model-repo",
        str(MODEL_REPO),
        env={**RELOAD_ENV, **keep_alive, "GATEWAY_TLS_CRL": str(own_pki.crl)},
    )
    yield running
    stop_gateway(running)


def test_a_revoked_certificate_is_refused_without_restart(crl_gateway: RunningGateway, own_pki: PkiPaths) -> None:
    gateway = crl_gateway
    mallory = issue_client(own_pki, "mallory", "app")
    ca = own_pki.ca_cert.read_bytes()
    target = gateway.server.grpc_target
    assert _rest_status(gateway, *mallory) == 200
    # a keep-alive connection opened before the revocation, kept however long the wait (httpx drops idle ones after 5 s)
    kept_open = httpx.Client(
        base_url=gateway.base_url,
        verify=client_context(own_pki.ca_cert, *mallory),
        timeout=10,
        limits=httpx.Limits(keepalive_expiry=None),
    )
    assert kept_open.get("/api/v1/models").status_code == 200
    channel = gateway.grpc_channel("mallory")
    assert _live(channel) == grpc.StatusCode.OK

    subprocess.run(
        [sys.executable, "-m", "gateway.cli", "pki", "revoke", "--dir", str(own_pki.root), "--name", "mallory"],
        check=True,
        cwd=REPO_ROOT,
        capture_output=True,
    )
    wait_until(lambda: _rest_status(gateway, *mallory) != 200, "the new CRL refuses mallory's new connections")
    status = _rest_status(gateway, *mallory)
    assert isinstance(status, str), status  # refused in the handshake (the per-call check would answer 401)
    answer = kept_open.get("/api/v1/models")  # the connection survives; its calls do not
    assert answer.status_code == 401 and "revoked" in answer.json()["error"]["message"]
    assert _live(channel) == grpc.StatusCode.UNAUTHENTICATED
    assert _grpc_code(target, *mallory, ca) == grpc.StatusCode.UNAUTHENTICATED
    assert _rest_status(gateway, own_pki.client_cert("app"), own_pki.client_key("app")) == 200
    assert _grpc_code(target, own_pki.client_cert("app"), own_pki.client_key("app"), ca) == grpc.StatusCode.OK

    replace_file(own_pki.crl, b"not a CRL")  # a broken file keeps the previous list in force
    wait_until(lambda: any("TLS files NOT reloaded" in line for line in gateway.output), "the broken CRL is logged")
    assert isinstance(_rest_status(gateway, *mallory), str)
    assert _live(gateway.grpc_channel("mallory")) == grpc.StatusCode.UNAUTHENTICATED
    assert _rest_status(gateway, own_pki.client_cert("app"), own_pki.client_key("app")) == 200
    kept_open.close()
    channel.close()
    gateway.assert_alive()


def _server_serial(address: tuple[str, int], ca: Path, identity: tuple[Path, Path]) -> int:
    context = client_context(ca, *identity)
    context.check_hostname = False
    with _handshake(address, context) as connection:
        return x509.load_der_x509_certificate(connection.getpeercert(binary_form=True)).serial_number


def _get_on(connection: ssl.SSLSocket, path: str) -> bytes:
    """One HTTP/1.1 keep-alive request on an open TLS connection; returns the status line."""
    connection.sendall(f"GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n".encode())
    return _status_line(connection)


def _status_line(connection: ssl.SSLSocket) -> bytes:
    """Read one HTTP/1.1 answer (with Content-Length) from ``connection``; returns its status line."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = connection.recv(65536)
        assert chunk, "the server closed the connection"
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = int(next(line.split(b":")[1] for line in lines if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += connection.recv(65536)
    return head.split(b"\r\n")[0]


def test_server_certificate_and_ca_bundle_rotate_without_restart_or_dropped_connections(
    own_pki: PkiPaths, tmp_path: Path
) -> None:
    gateway = start_gateway(own_pki, "--model-repo", str(MODEL_REPO), env=RELOAD_ENV)
    try:
        rest, target = _address(gateway.base_url), gateway.server.grpc_target
        app = (own_pki.client_cert("app"), own_pki.client_key("app"))
        first_serial = _server_serial(rest, own_pki.ca_cert, app)
        context = client_context(own_pki.ca_cert, *app)
        context.check_hostname = False
        in_flight = _handshake(rest, context)  # opened before the rotation, used after it
        assert _get_on(in_flight, "/api/v1/models") == b"HTTP/1.1 200 OK"
        channel = gateway.grpc_channel("app")
        assert _live(channel) == grpc.StatusCode.OK
        uploading = _handshake(rest, context)  # a request whose upload is cut in two by the rotation
        photo = (REPO_ROOT / "docs" / "examples" / "seven.jpg").read_bytes()
        uploading.sendall(
            b"POST /api/v1/models/mnist/classify HTTP/1.1\r\nHost: gateway\r\nContent-Type: image/jpeg\r\n"
            + f"Content-Length: {len(photo)}\r\n\r\n".encode()
            + photo[: len(photo) // 2]
        )

        new_ca = init_pki(tmp_path / "new-ca")  # a new CA, its own clients, and a server certificate from it
        bundle = own_pki.ca_cert.read_bytes() + new_ca.ca_cert.read_bytes()
        bundle_path = tmp_path / "bundle.pem"
        bundle_path.write_bytes(bundle)
        new_client = (new_ca.client_cert("app"), new_ca.client_key("app"))
        assert isinstance(_rest_status(gateway, *new_client, ca=bundle_path), str)  # not trusted yet
        issue_server(new_ca, ["localhost", "127.0.0.1"])
        new_serial = x509.load_pem_x509_certificate(new_ca.server_cert.read_bytes()).serial_number
        replace_file(own_pki.ca_cert, bundle)
        replace_file(own_pki.server_key, new_ca.server_key.read_bytes())
        replace_file(own_pki.server_cert, new_ca.server_cert.read_bytes())

        wait_until(lambda: _server_serial(rest, bundle_path, app) == new_serial, "new handshakes get the new cert")
        assert new_serial != first_serial
        assert _rest_status(gateway, *new_client, ca=bundle_path) == 200  # the new CA is trusted for clients
        assert _rest_status(gateway, *app, ca=bundle_path) == 200  # and the old one still is
        assert _grpc_code(target, *new_client, bundle) == grpc.StatusCode.OK
        assert _grpc_code(target, *app, bundle) == grpc.StatusCode.OK
        wait_until(lambda: _server_serial(_address(target), bundle_path, app) == new_serial, "gRPC's too")
        assert _get_on(in_flight, "/api/v1/models") == b"HTTP/1.1 200 OK"  # the old connection was not dropped
        uploading.sendall(photo[len(photo) // 2 :])
        assert _status_line(uploading) == b"HTTP/1.1 200 OK"  # nor the request in flight
        uploading.close()
        assert _live(channel) == grpc.StatusCode.OK
        in_flight.close()
        channel.close()
        assert not any("Traceback" in line for line in gateway.output), "".join(gateway.output[-30:])
    finally:
        stop_gateway(gateway)
