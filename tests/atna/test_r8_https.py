"""Round 8, the RESTful endpoint over HTTPS (issue #18): a handshake it refuses (TLS 1.0 or 1.1,
BCP 195; no client certificate, or one of another CA, with mutual TLS) is told to the client by
TLS alert (RFC 8446 6.2), as the gateway's TLS tells it, and recorded with the sender. The alert
OpenSSL wrote was taken off the session's BIO by keep_alerts and never sent: the client read an
unexpected EOF and could not say why it was refused. Loopback 127.0.81.0/24."""

from __future__ import annotations

import socket
import ssl
import warnings
from pathlib import Path
from typing import Any

from receiver import running

from pacsguard.tls import make_ca, make_cert
from peers.dcmtk import free_port
from store_helpers import new_store

HOST = "127.0.81.4"
TOKEN = "round8-https-token-0123456789"


def _client(ca: Path, *, version: ssl.TLSVersion, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)
    context.check_hostname = False
    with warnings.catch_warnings():  # TLS 1.0 and 1.1 are deprecated: offered here to be refused
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = context.maximum_version = version
    if version < ssl.TLSVersion.TLSv1_2:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # else OpenSSL offers nothing TLS 1.0/1.1 can use
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def _refusal(port: int, context: ssl.SSLContext) -> str:
    """What the client learns of its refusal: the reason of the SSLError its handshake, or its first
    read after (TLS 1.3 sends the client certificate's verdict after the handshake), ends with."""
    with socket.create_connection((HOST, port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw) as tls:
                tls.sendall(f"GET /metadata HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
                answer = tls.recv(4096)
        except ssl.SSLError as exc:
            return str(exc.reason)
    raise AssertionError(f"not refused: {answer[:80]!r}")


def test_a_refused_handshake_is_told_by_alert_and_recorded(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    pki, other = tmp_path / "pki", tmp_path / "other"
    ca, ca_key = make_ca(pki, "ATNA R8 CA", 2)
    cert, key = make_cert(pki, "localhost", ca, ca_key, hosts=["localhost", HOST], server=True, days=1)
    portal = make_cert(pki, "portal", ca, ca_key, hosts=["portal"], client=True, days=1)
    other_ca, other_key = make_ca(other, "Another CA", 2)
    stranger = make_cert(other, "portal", other_ca, other_key, hosts=["portal"], client=True, days=1)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    port = free_port(HOST)
    section = {"http": {"host": HOST, "port": port, "cert_file": cert, "key_file": key, "ca_file": ca,
                        "require_client_cert": True, "token": {"env": "ATNA_TOKEN"}}}
    with running(section, store) as rx:
        for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
            assert "PROTOCOL_VERSION" in _refusal(port, _client(ca, version=old, cert=portal)), old
        v12, v13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
        assert "ALERT_HANDSHAKE_FAILURE" in _refusal(port, _client(ca, version=v12))
        assert "ALERT_CERTIFICATE_REQUIRED" in _refusal(port, _client(ca, version=v13))
        assert "ALERT_UNKNOWN_CA" in _refusal(port, _client(ca, version=v12, cert=stranger))
        assert "ALERT_UNKNOWN_CA" in _refusal(port, _client(ca, version=v13, cert=stranger))
        # The client of the CA is served, over either version.
        for version in (v12, v13):
            with socket.create_connection((HOST, port), timeout=10) as raw, \
                    _client(ca, version=version, cert=portal).wrap_socket(raw) as tls:
                tls.sendall(f"GET /metadata HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                            "Connection: close\r\n\r\n".encode())
                assert tls.recv(4096).startswith(b"HTTP/1.1 200 ")
        failed = rx.wait(lambda evs: sum(e.details.get("problem") == "tls-handshake-failed" for e in evs) == 6,
                         "six refused handshakes recorded")
    store.close()
    reasons = [e.details["error"] for e in failed if e.details.get("problem") == "tls-handshake-failed"]
    assert sum("UNSUPPORTED_PROTOCOL" in r for r in reasons) == 2, reasons
    assert sum("Another CA" in r for r in reasons) == 2, reasons
    assert all(e.kind == "atna.http.rejected" and e.details["sender"]["transport"] == "https" for e in failed
               if e.details.get("problem") == "tls-handshake-failed")


def test_openssl_refused_by_either_tls_listener_reads_the_alert(tmp_path: Path, monkeypatch: Any) -> None:
    """The syslog TLS listener (RFC 5425) runs its TLS through the same session as the HTTPS
    endpoint: openssl s_client without a client certificate reads the handshake_failure alert
    from both, where it read an unexpected EOF."""
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed"
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    pki = tmp_path / "pki"
    ca, ca_key = make_ca(pki, "ATNA R8 CA", 2)
    cert, key = make_cert(pki, "localhost", ca, ca_key, hosts=["localhost", HOST], server=True, days=1)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    tls = {"cert_file": cert, "key_file": key, "ca_file": ca, "require_client_cert": True}
    ports = {"tls": free_port(HOST), "http": free_port(HOST)}
    section = {"tls": {"host": HOST, "port": ports["tls"], **tls},
               "http": {"host": HOST, "port": ports["http"], "token": {"env": "ATNA_TOKEN"}, **tls}}
    with running(section, store) as rx:
        for name, port in ports.items():
            done = subprocess.run([openssl, "s_client", "-connect", f"{HOST}:{port}", "-tls1_2", "-CAfile", str(ca)],
                                  input=b"", capture_output=True, timeout=20)
            said = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
            assert "alert handshake failure" in said and "unexpected eof" not in said, (name, said[-400:])
        rx.wait(lambda evs: sum(e.details.get("problem") == "tls-handshake-failed" for e in evs) == 2,
                "both refusals recorded")
    store.close()
