"""Outside round 8 on RFC 5425 TLS refusals, as `atna sources` shows them to the administrator: a
sender that offers only TLS 1.0 or 1.1 (openssl s_client -tls1 / -tls1_1) is refused, BCP 195, and
the record says which version it offered and which is required instead of OpenSSL's
UNSUPPORTED_PROTOCOL alone; a sender that refuses the repository's certificate (it trusts another
CA) is named as the one that ended the handshake, with the alert it sent, where the record said
TLSV1_ALERT_UNKNOWN_CA; a sender without a certificate on a mutual-TLS listener is told so. In-line
and with reading processes."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from receiver import DEADLINE, running

from pacsguard.atna.sources import count_sources
from pacsguard.events.model import Event
from pacsguard.tls import make_ca, make_cert

HOST = "127.0.83.20"  # this suite's own loopback address


def pki(base: Path) -> dict[str, Path]:
    ca, ca_key = make_ca(base, "ATNA Test CA", 2)
    cert, key = make_cert(base, "localhost", ca, ca_key, hosts=["localhost", HOST], server=True, days=1)
    client, client_key = make_cert(base, "modality", ca, ca_key, hosts=["modality.local"], client=True, days=1)
    other_ca, _ = make_ca(base / "other", "Another CA", 2)
    return {"ca": ca, "cert": cert, "key": key, "client": client, "client_key": client_key, "other_ca": other_ca}


def section(files: dict[str, Path], port: int, readers: int) -> dict[str, object]:
    return {"tls": {"host": HOST, "port": port, "cert_file": files["cert"], "key_file": files["key"],
                    "ca_file": files["ca"], "require_client_cert": True}, "readers": readers}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def refusals(events: list[Event]) -> list[str]:
    return [e.details["error"] for e in events if e.details.get("problem") == "tls-handshake-failed"]


@pytest.mark.parametrize("readers", [0, 2])
def test_a_sender_offering_only_tls_1_0_or_1_1_is_refused_and_told_which(tmp_path: Path, readers: int) -> None:
    """RFC 9325 3.1.1: TLS 1.0 and 1.1 MUST NOT be negotiated. The sender presents a good client
    certificate, so only its version is wrong, and the record says so in words."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl (the command) is missing: apt-get install openssl")
    files = pki(tmp_path / "pki")
    port = free_port()
    with running(section(files, port, readers)) as rx:
        for version in ("-tls1", "-tls1_1"):
            subprocess.run(["timeout", "10", openssl, "s_client", "-connect", f"{HOST}:{port}", version,
                            "-cipher", "DEFAULT@SECLEVEL=0", "-CAfile", str(files["ca"]),
                            "-cert", str(files["client"]), "-key", str(files["client_key"])],
                           input=b"", capture_output=True, timeout=DEADLINE)
        got = rx.wait(lambda evs: len(refusals(evs)) == 2, "two refused handshakes")
    told = refusals(got)
    for offered, error in zip(("TLS 1.0", "TLS 1.1"), told, strict=True):
        assert error.startswith(f"TLS handshake failed: the client offers {offered} at most; "
                                "TLS 1.2 or later is required"), told
        assert "UNSUPPORTED_PROTOCOL" in error  # OpenSSL's own reason stays, for a search
    row = count_sources(got)[0]
    assert row.tls_failed == 2 and row.messages == 0
    assert row.last_error is not None and "TLS 1.2 or later is required" in row.last_error


@pytest.mark.parametrize("readers", [0, 2])
def test_a_sender_that_refuses_the_repositorys_certificate_is_named_as_the_one_that_refused(
        tmp_path: Path, readers: int) -> None:
    """A modality configured with another CA ends the handshake with the alert "unknown ca": the
    repository is not at fault, its certificate is not trusted there. And one that sends no
    certificate to this mutual-TLS listener is told apart from one whose certificate failed."""
    files = pki(tmp_path / "pki")
    port = free_port()
    distrustful = ssl.create_default_context(cafile=str(files["other_ca"]))
    distrustful.load_cert_chain(files["client"], files["client_key"])
    anonymous = ssl.create_default_context(cafile=str(files["ca"]))
    anonymous.maximum_version = ssl.TLSVersion.TLSv1_2  # the server's refusal comes in the handshake
    with running(section(files, port, readers)) as rx:
        for context in (distrustful, anonymous):
            with socket.create_connection((HOST, port), timeout=5, source_address=(HOST, 0)) as raw, \
                    pytest.raises(ssl.SSLError):
                context.wrap_socket(raw, server_hostname="localhost").close()
        got = rx.wait(lambda evs: len(refusals(evs)) == 2, "two refused handshakes")
    refused, bare = refusals(got)
    assert refused.startswith('TLS handshake failed: the client sent the alert "unknown ca" '
                              "(TLSV1_ALERT_UNKNOWN_CA): it does not accept this server's certificate"), refused
    assert bare.startswith("TLS handshake failed: the client sent no certificate, and this listener requires one"), bare
    row = count_sources(got)[0]
    assert (row.sender, row.tls_failed) == (HOST, 2)
    assert row.last_error is not None and "sent no certificate" in row.last_error


@pytest.mark.parametrize("readers", [0, 2])
def test_a_tls_sender_that_sends_nothing_is_recorded_as_a_tcp_one_is(tmp_path: Path, readers: int) -> None:
    """A sender that completes its handshake and then sends no frame (it closes, or waits until
    the idle timeout) is a silent connection, as the same sender over TCP is: the handshake's
    octets once counted as something said, and nothing was recorded. One that closes in the middle
    of its handshake, without an alert, is a failed handshake; it went unrecorded too."""
    files = pki(tmp_path / "pki")
    port = free_port()
    client = ssl.create_default_context(cafile=str(files["ca"]))
    client.load_cert_chain(files["client"], files["client_key"])
    with running({**section(files, port, readers), "idle_timeout": 1.0}) as rx:
        with socket.create_connection((HOST, port), timeout=5, source_address=(HOST, 0)) as raw, \
                client.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.unwrap()  # close_notify, nothing before it
        with socket.create_connection((HOST, port), timeout=5, source_address=(HOST, 0)) as raw, \
                client.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.recv(16) == b""  # the listener closes it at its idle timeout
        with socket.create_connection((HOST, port), timeout=5, source_address=(HOST, 0)) as raw:
            raw.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, then gone
        got = rx.wait(lambda evs: len([e for e in evs if e.kind == "atna.frame.rejected"]) == 3, "three records")
    told = [(e.details["problem"], e.details["error"]) for e in got]
    assert told[0] == ("silent", "connected and sent nothing after its TLS handshake"), told
    assert told[1][0] == "silent" and told[1][1].startswith("connected and sent nothing after its TLS handshake for ")
    assert told[2][0] == "tls-handshake-failed" and "closed the connection in it" in told[2][1], told
    assert all(e.details["sender"]["certificate"] == "CN=modality" for e in got[:2])
    row = count_sources(got)[0]
    assert (row.sender, row.silent_connections, row.tls_failed) == (HOST, 2, 1)


@pytest.mark.parametrize("readers", [0, 2])
def test_a_sender_asking_to_renegotiate_is_refused_and_the_record_says_so(tmp_path: Path, readers: int) -> None:
    """RFC 9325 3.5: no TLS 1.2 renegotiation. openssl s_client's "R" asks for it after a frame was
    sent; the listener refuses, the client ends the connection with an alert, and the record says
    the client asked to renegotiate instead of naming its alert alone. The frame before it stays."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl (the command) is missing: apt-get install openssl")
    files = pki(tmp_path / "pki")
    port = free_port()
    frame = b"<85>1 - h a - IHE+RFC-3881 - <AuditMessage/>"
    with running(section(files, port, readers)) as rx:
        client = subprocess.Popen(["timeout", "15", openssl, "s_client", "-connect", f"{HOST}:{port}", "-tls1_2",
                                   "-CAfile", str(files["ca"]), "-cert", str(files["client"]),
                                   "-key", str(files["client_key"])],
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert client.stdin is not None
        try:
            client.stdin.write(b"%d %s" % (len(frame), frame))  # s_client sends each read of its stdin
            client.stdin.flush()
            rx.wait(lambda evs: len(evs) == 1, "the frame")
            client.stdin.write(b"R\n")  # a line "R" alone: renegotiate
            client.stdin.flush()
            got = rx.wait(lambda evs: len(evs) == 2, "the refusal")
        finally:
            client.kill()
            client.wait(DEADLINE)
    assert got[0].kind == "atna.message.unparsed" and got[0].details["sender"]["certificate"] == "CN=modality"
    assert got[1].details["problem"] == "malformed-frame"
    assert got[1].details["error"].startswith("TLS record refused: the client asked to renegotiate, which is "
                                              "refused (RFC 9325 3.5); then the client sent the alert"), got[1].details
