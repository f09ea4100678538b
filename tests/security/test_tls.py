"""The server's TLS context: session tickets only when asked for (each one costs the server CPU on every
handshake), and then a client can resume with one. Real handshakes between the gateway's own server and client
contexts over memory buffers."""

from __future__ import annotations

import ssl

import pytest

from gateway.security.pki import PkiPaths
from gateway.security.tls import client_context, server_context


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, session: ssl.SSLSession | None = None) -> ssl.SSLObject:
    """A full (or, with ``session``, resumed) handshake; returns the client's end once the server's tickets,
    if any, were read."""
    server_in, server_out, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
    server_end = server.wrap_bio(server_in, server_out, server_side=True)
    client_end = client.wrap_bio(client_in, client_out, server_hostname="localhost", session=session)
    done = [False, False]
    for _ in range(8):
        for i, end in enumerate((client_end, server_end)):
            if not done[i]:
                try:
                    end.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
            server_in.write(client_out.read())
            client_in.write(server_out.read())
        if all(done):
            break
    assert all(done), "the handshake did not finish"
    server_end.write(b"x")  # TLS 1.3 tickets come after the handshake: read past them
    client_in.write(server_out.read())
    assert client_end.read(1) == b"x"
    return client_end


@pytest.fixture
def client(pki: PkiPaths) -> ssl.SSLContext:
    return client_context(pki.ca_cert, pki.client_cert("app"), pki.client_key("app"))


@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["tls1.3", "tls1.2"])
def test_no_session_ticket_by_default(pki: PkiPaths, client: ssl.SSLContext, maximum: ssl.TLSVersion) -> None:
    client.maximum_version = maximum
    end = handshake(server_context(pki.server_cert, pki.server_key, pki.ca_cert), client)
    assert end.version() == ("TLSv1.3" if maximum is ssl.TLSVersion.TLSv1_3 else "TLSv1.2")
    assert not end.session.has_ticket


def test_with_tickets_a_client_resumes_its_session(pki: PkiPaths, client: ssl.SSLContext) -> None:
    server = server_context(pki.server_cert, pki.server_key, pki.ca_cert, session_tickets=1)
    first = handshake(server, client)
    assert first.session.has_ticket and not first.session_reused
    again = handshake(server, client, session=first.session)
    assert again.session_reused
