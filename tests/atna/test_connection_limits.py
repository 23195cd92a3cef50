"""What a hostile or broken sender can hold of the syslog listeners: a TLS handshake that fails or
never ends (recorded with its reason: the event loop's own TLS used to hide it), a frame trickled
one octet at a time (cut at frame_timeout), and places held without delivering (given up to the
next sender when the listener is full). Real sockets against the running service."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest
from receiver import Received, free_port, running
from test_senders_real import mutual_pki, one_line

from pacsguard.tls import make_ca, make_cert

GOOD = b"<85>1 - h a - IHE+RFC-3881 - " + one_line("110110").encode()
FRAMED = b"%d %s" % (len(GOOD), GOOD)


def problems(rx: Received, name: str) -> list[str]:
    return [e.details["error"] for e in rx.events if e.details.get("problem") == name]


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def send_tls(port: int, context: ssl.SSLContext, data: bytes) -> None:
    """Send over TLS; a server that refuses the client's certificate (TLS 1.3: after the client's
    handshake is done) may reset the connection under the send: that is the point here."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(data)
            s.recv(1)
    except (OSError, ssl.SSLError):
        pass


@pytest.mark.parametrize("readers", [0, 2])
def test_failed_tls_handshakes_are_recorded_with_their_reason(tmp_path: Path, readers: int) -> None:
    pki = mutual_pki(tmp_path / "pki")
    other_ca, other_key = make_ca(tmp_path / "other", "Another CA", 2)
    stranger, stranger_key = make_cert(tmp_path / "other", "stranger", other_ca, other_key, hosts=["x.local"],
                                       client=True, days=1)
    port = free_port()
    section = {"tls": {"port": port, "cert_file": pki["cert"], "key_file": pki["key"], "ca_file": pki["ca"],
                       "require_client_cert": True}, "readers": readers, "frame_timeout": 1.0}
    with running(section) as rx:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # plain text on the TLS port
            s.sendall(FRAMED)
            s.recv(64)
        send_tls(port, client_context(pki["ca"]), FRAMED)  # no client certificate
        send_tls(port, client_context(pki["ca"], stranger, stranger_key), FRAMED)  # one from another CA
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # a handshake begun, never ended
            s.sendall(b"\x16\x03\x01\x02\x00")
            rx.wait(lambda evs: len(problems(rx, "tls-handshake-failed")) == 4, "four failed handshakes")
        send_tls(port, client_context(pki["ca"], pki["client"], pki["client_key"]), FRAMED)  # and a good one
        rx.wait(lambda evs: len(rx.audits()) == 1, "the good sender's message")
    failed = problems(rx, "tls-handshake-failed")
    assert len(failed) == 4, failed
    assert any("WRONG_VERSION_NUMBER" in f or "HTTP_REQUEST" in f for f in failed), failed
    assert any("CERTIFICATE" in f for f in failed), failed  # no certificate, and the untrusted one
    assert any("not complete 1 s after it began" in f for f in failed), failed
    assert "CN=modality" in rx.audits()[0].details["sender"]["certificate"]


@pytest.mark.parametrize("readers", [0, 1])
def test_a_frame_trickled_slower_than_frame_timeout_is_cut(readers: int) -> None:
    port = free_port()
    with running({"tcp": {"port": port}, "readers": readers, "frame_timeout": 1.0}) as rx:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as slow:
            slow.sendall(FRAMED)  # one whole frame first: a sender that worked, then trickles
            slow.sendall(FRAMED[:20])
            end = time.monotonic() + 4
            closed = False
            for octet in FRAMED[20:60]:
                try:
                    slow.sendall(bytes([octet]))
                except OSError:
                    closed = True
                    break
                if time.monotonic() > end:
                    break
                time.sleep(0.1)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as other:
                other.sendall(FRAMED)
                rx.wait(lambda evs: bool(problems(rx, "too-slow")) and len(rx.audits()) == 2,
                        "the slow frame cut, the other sender's message stored")
    assert closed or slow.fileno() == -1
    assert "not complete 1 s after its first octet" in problems(rx, "too-slow")[0]
    assert not problems(rx, "truncated")  # reported once, as too slow


@pytest.mark.parametrize("readers", [0, 1])
def test_a_full_listener_gives_the_quietest_place_to_the_next_sender(readers: int) -> None:
    """max_connections places held by connections that sent one octet, or an empty line, and went
    quiet (nothing pending then, so once never chosen): a new sender still gets in, by closing
    the one quiet longest; once, it was shut out until they hung up. A sender still sending a
    large frame, slowly, is never the one closed."""
    port = free_port()
    big = b"<85>1 - h a - IHE+RFC-3881 - " + one_line("110110").encode().replace(
        b"</AuditMessage>", b"<!--" + b"z" * 300_000 + b"--></AuditMessage>")
    with running({"tcp": {"port": port}, "readers": readers, "max_connections": 4}) as rx:
        held = []
        for octets in (b"\n", b"1", b"\n"):  # an empty line leaves nothing pending: quiet all the same
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(octets)
            held.append(s)
            time.sleep(0.2)  # accepted in this order: the first is the one quiet longest
        steady = socket.create_connection(("127.0.0.1", port), timeout=5)
        framed = b"%d %s" % (len(big), big)
        steady.sendall(framed[:20_000])
        time.sleep(1.1)  # the held ones quiet for over a second; the steady one keeps sending
        for n in range(3):
            steady.sendall(framed[20_000 * (n + 1):20_000 * (n + 2)])
            with socket.create_connection(("127.0.0.1", port), timeout=5) as legit:
                legit.sendall(FRAMED)
                rx.wait(lambda evs, n=n: len(rx.audits()) == n + 1, f"legitimate message {n + 1}")
        steady.sendall(framed[80_000:])
        rx.wait(lambda evs: len(rx.audits()) == 4, "the steady sender's large message")
        assert held[0].recv(16) == b""  # closed to make room: the quietest (the others had room after)
        for s in [*held, steady]:
            s.close()
    evicted = problems(rx, "too-many-connections")
    assert evicted and "closed to make room" in evicted[0]


@pytest.mark.parametrize("readers", [0, 1])
def test_a_tls_close_notify_ends_the_connection_at_once(tmp_path: Path, readers: int) -> None:
    """RFC 8446 6.1: a sender's close_notify is answered and the connection closed; it was not seen
    (SSLObject.read gives b"" then) and the connection stayed open until idle_timeout."""
    pki = mutual_pki(tmp_path / "pki")
    port = free_port()
    section = {"tls": {"port": port, "cert_file": pki["cert"], "key_file": pki["key"]}, "readers": readers}
    with running(section) as rx:
        context = client_context(pki["ca"])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            tls = context.wrap_socket(raw, server_hostname="localhost")
            tls.sendall(FRAMED)
            began = time.monotonic()
            tls.unwrap()  # sends close_notify, waits for the server's
            assert time.monotonic() - began < 3
        rx.wait(lambda evs: len(rx.audits()) == 1, "the message sent before close_notify")
    assert not [e for e in rx.events if e.kind == "atna.frame.rejected"]
