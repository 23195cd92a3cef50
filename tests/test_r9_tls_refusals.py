"""Outside round 9, area H: a handshake refused by the BCP 195 policy says so.

A modality that speaks TLS 1.0 only, or offers only CBC or RSA key-transport suites, was recorded by
the gateway (`tls.handshake.failed`) and logged by the witness service as "TLS handshake failed:
unsupported protocol" or "... no shared cipher": OpenSSL's words, which do not tell the PACS
administrator that the device's TLS is what pacsguard refuses, nor what it needs. The ATNA
listeners said it already; every user of `explain_tls_error` now does, on both sides of the
connection (RFC 9325 3.1.1: TLS 1.2 at least; 4.1, 4.2: ephemeral key exchange, AEAD ciphers).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from pacsguard.tls import client_context, explain_tls_error, make_ca, make_cert, server_context
from tls_helpers import s_server_connection

HOST = "127.0.108.51"  # this area's loopback range (outside round 9, area H)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca, ca_key = make_ca(d, "Hospital CA", 30)
    cert, key = make_cert(d, "gateway", ca, ca_key, hosts=[HOST], server=True, days=30)
    return {"ca": ca, "cert": cert, "key": key}


def _refusal_as_server(pki: dict[str, Path], *s_client: str) -> str:
    """What a pacsguard listener's context says of an `openssl s_client` with these options."""
    ctx = server_context(pki["cert"], pki["key"])
    said: list[str] = []
    with socket.create_server((HOST, 0)) as listener:
        listener.settimeout(15)

        def run() -> None:
            conn, _ = listener.accept()
            conn.settimeout(15)
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    said.append("accepted")
            except (OSError, ssl.SSLError) as exc:
                said.append(explain_tls_error(exc))
                conn.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        subprocess.run(["openssl", "s_client", "-connect", f"{HOST}:{listener.getsockname()[1]}", *s_client],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=20, check=False)
        thread.join(20)
    assert said, "the listener saw no connection"
    return said[0]


def test_a_listener_names_the_policy_a_client_falls_short_of(pki: dict[str, Path]) -> None:
    for old in ("-tls1", "-tls1_1"):
        said = _refusal_as_server(pki, old)
        assert said.startswith("TLS handshake failed: "), said
        assert "TLS 1.2 or later is required (BCP 195, RFC 9325 3.1.1)" in said, (old, said)
    # Offered TLS 1.2 suites without an ephemeral key exchange or without an AEAD cipher.
    for suites in ("AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA"):
        said = _refusal_as_server(pki, "-no_tls1_3", "-cipher", suites)
        assert "no shared cipher" in said, (suites, said)
        assert "ECDHE with AES-GCM or ChaCha20-Poly1305" in said, (suites, said)


def test_a_client_names_the_policy_a_server_falls_short_of(pki: dict[str, Path]) -> None:
    """The upstream PACS, the ATNA repository, the SIEM collector or a witness speaking TLS 1.1 at
    most: the client's error (recorded by each of them) names the version policy."""
    with s_server_connection(HOST, pki["cert"], pki["key"], "-tls1_1", "-cipher", "ALL@SECLEVEL=0") as raw, \
            pytest.raises(ssl.SSLError) as refused:
        client_context(ca_file=pki["ca"]).wrap_socket(raw, server_hostname=HOST)
    said = explain_tls_error(refused.value)
    assert "TLS 1.2 or later is required (BCP 195, RFC 9325 3.1.1)" in said, said


def test_certificates_for_the_other_side_are_refused_both_ways(pki: dict[str, Path], tmp_path: Path) -> None:
    """Extended key usage (RFC 5280 4.2.1.12): a listener requiring client certificates refuses one
    made for servers only, and a client refuses a server certificate made for clients only, even
    when the CA is right (a guard: OpenSSL's purpose check, which a context setting could turn off)."""
    d = tmp_path / "eku"
    ca, ca_key = make_ca(d, "Hospital CA", 30)
    server_only, server_only_key = make_cert(d, "pacs", ca, ca_key, hosts=[HOST], server=True, days=30)
    client_only, client_only_key = make_cert(d, "ct1", ca, ca_key, hosts=[HOST], client=True, days=30)
    listener = server_context(server_only, server_only_key, ca_file=ca, require_client_cert=True)
    a, b = socket.socketpair()
    said: list[str] = []

    def serve(ctx: ssl.SSLContext, sock: socket.socket) -> None:
        sock.settimeout(10)
        try:
            with ctx.wrap_socket(sock, server_side=True) as tls:
                tls.recv(1)
                said.append("accepted")
        except (OSError, ssl.SSLError) as exc:
            said.append(explain_tls_error(exc))

    with a, b:
        thread = threading.Thread(target=serve, args=(listener, a), daemon=True)
        thread.start()
        b.settimeout(10)
        # The listener's own server-only certificate, offered as a client's: made with ssl itself,
        # since pacsguard's client_context refuses such a certificate when it is loaded.
        wrong_client = ssl.create_default_context(cafile=str(ca))
        wrong_client.load_cert_chain(server_only, server_only_key)
        try:
            with wrong_client.wrap_socket(b, server_hostname=HOST) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass
        thread.join(15)
    assert said and "unsuitable certificate purpose" in said[0], said
    client_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # server_context refuses it when loaded
    client_side.load_cert_chain(client_only, client_only_key)
    a, b = socket.socketpair()
    with a, b:
        thread = threading.Thread(target=serve, args=(client_side, a), daemon=True)
        thread.start()
        b.settimeout(10)
        with pytest.raises(ssl.SSLCertVerificationError) as refused:
            client_context(ca_file=ca).wrap_socket(b, server_hostname=HOST)
        thread.join(15)
    assert refused.value.verify_message == "unsuitable certificate purpose"
