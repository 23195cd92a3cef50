"""The outside tester's fourth round on the receivers (issue #18): connections without a token
cannot shut the RESTful endpoint (a head within HEAD_TIMEOUT, the longest waiting closed to make
room), ITI-81 date= by its precision, Prefer with a quoted value, both credentials when both are
configured, a refused client certificate told by OpenSSL's verify result and its subject, and the
two TCP framings rsyslog's imtcp accepts that were lost. Real sockets against the running service."""

from __future__ import annotations

import dataclasses
import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from atna_corpus import record
from receiver import free_port, running
from test_connection_limits import client_context, send_tls
from test_connection_limits import problems as syslog_problems
from test_restful import TOKEN, call, exchange, no_tracebacks, problems, read_all, responses
from test_senders_real import mutual_pki

from pacsguard.atna.ingest import Sender, frame_event
from pacsguard.atna.message.build import to_xml
from pacsguard.atna.syslog.framing import Framing, Splitter
from pacsguard.tls import make_ca, make_cert
from store_helpers import new_store

SENDER = Sender("10.20.0.9", 40000, "tcp", "octet-counting")


def at(when: str, user: str = "jsmith") -> bytes:
    """A syslog message of a Patient Record read (110110) made at ``when`` (ISO 8601, UTC) by ``user``."""
    base = record("110110")
    who = dataclasses.replace(base.participants[0], user_id=user, user_name=user)
    message = dataclasses.replace(base, time=datetime.fromisoformat(when).replace(tzinfo=timezone.utc),
                                  participants=(who, *base.participants[1:]))
    return b"<85>1 - h a - IHE+RFC-3881 - " + to_xml(message)


def authorised_get(port: int, target: str = "/AuditEvent") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()


# --- 1. connections that show no token cannot lock the endpoint -------------------------------------


def test_connections_without_a_token_make_room_for_a_client_with_it(tmp_path: Path, monkeypatch: Any,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """max_connections held by connections that send nothing, or half a head (slowloris): a client
    with the token is still answered, the longest waiting of them closed to make room and recorded;
    it once was closed unanswered for as long as the holder kept them."""
    caplog.set_level("WARNING")
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    port = free_port()
    with running({"http": {"port": port, "token": {"env": "ATNA_TOKEN"}}, "max_connections": 4}, store) as rx:
        hogs = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
        for hog in hogs[2:]:
            hog.sendall(b"GET /AuditEvent HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.3)  # all four accepted
        for i in range(3):  # each time the hog waiting longest gives up its place; the holder opens another
            ((status, _, _),) = responses(exchange(port, authorised_get(port, "/metadata")))
            assert status == 200
            assert hogs[i].recv(16) == b""
            hogs.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            time.sleep(0.1)
        hogs[3].settimeout(0.3)
        with pytest.raises(TimeoutError):  # the others keep their places until their time is up
            hogs[3].recv(16)
        got = rx.wait(lambda evs: any(p == "too-many-connections" for p, _ in problems(evs)), "the eviction")
        for hog in hogs:
            hog.close()
    store.close()
    evicted = [error for p, error in problems(got) if p == "too-many-connections"]
    assert len(evicted) == 1 and "was closed to make room" in evicted[0], evicted  # one record, the rest counted
    assert not [p for p, _ in problems(got) if p in ("silent", "truncated")]  # the closed ones: recorded once
    no_tracebacks(caplog)


def test_over_https_a_connection_silent_after_its_handshake_makes_room_too(tmp_path: Path, monkeypatch: Any) -> None:
    """The places of HTTPS connections that finished their handshake (a device certificate will do)
    and send nothing are given up to a client with the token, as over plain HTTP."""
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    pki = mutual_pki(tmp_path / "pki")
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    port = free_port()
    section = {"http": {"port": port, "token": {"env": "ATNA_TOKEN"}, "cert_file": pki["cert"], "key_file": pki["key"],
                        "ca_file": pki["ca"]}, "max_connections": 2}
    with running(section, store) as rx:
        context = client_context(pki["ca"], pki["client"], pki["client_key"])
        hogs = [context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                                    server_hostname="localhost") for _ in range(2)]
        time.sleep(0.3)
        with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                 server_hostname="localhost") as client:
            client.sendall(authorised_get(port, "/metadata"))
            assert client.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert hogs[0].recv(16) == b""  # the one waiting longest
        got = rx.wait(lambda evs: any(p == "too-many-connections" for p, _ in problems(evs)), "the eviction")
        for hog in hogs:
            hog.close()
    store.close()
    assert not [p for p, _ in problems(got) if p in ("silent", "truncated")]


def test_a_request_head_has_head_timeout_from_the_connection_opening(tmp_path: Path, monkeypatch: Any) -> None:
    """A head trickled an octet at a time (slowloris) is cut HEAD_TIMEOUT after the connection
    opened (408), not TIMEOUT after each octet; a connection that sends nothing is closed then too."""
    from pacsguard.atna import http

    monkeypatch.setattr(http, "HEAD_TIMEOUT", 1.0)
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    port = free_port()
    with running({"http": {"port": port, "token": {"env": "ATNA_TOKEN"}}}, store) as rx:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            started = time.monotonic()
            answer = b""
            for octet in authorised_get(port)[:-2]:
                try:
                    slow.sendall(bytes([octet]))
                except OSError:
                    break
                if time.monotonic() - started > 3:
                    break
                time.sleep(0.1)
            answer = read_all(slow)
            assert answer.startswith(b"HTTP/1.1 408 ") and time.monotonic() - started < 5
        with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:
            started = time.monotonic()
            assert read_all(idle) == b"" and time.monotonic() - started < 5
        got = rx.wait(lambda evs: len(problems(evs)) == 2, "two records")
    store.close()
    assert problems(got) == [("truncated", "request head not complete after 1 s"),
                             ("silent", "connected and sent nothing for 1 s")]


def test_a_client_with_the_token_is_not_closed_to_make_room(tmp_path: Path, monkeypatch: Any) -> None:
    """A connection that has shown the token keeps its place: a newcomer finding every place so
    held is answered 503 with Retry-After (it was closed without a word)."""
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    port = free_port()
    with running({"http": {"port": port, "token": {"env": "ATNA_TOKEN"}}, "max_connections": 1}, store):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(authorised_get(port, "/metadata"))
            assert client.recv(65536).startswith(b"HTTP/1.1 200 ")
            ((status, fields, body),) = responses(exchange(port, authorised_get(port, "/metadata")))
            assert status == 503 and fields["retry-after"] == "5" and fields["connection"] == "close"
            assert "atna.max_connections" in json.loads(body)["issue"][0]["diagnostics"]
            client.sendall(authorised_get(port, "/metadata"))  # and the held one is served still
            assert client.recv(65536).startswith(b"HTTP/1.1 200 ")
    store.close()


# --- 2, 5. ITI-81 date= by its precision; Prefer with a quoted value ------------------------------


def test_date_is_the_range_of_its_precision_and_other_forms_are_refused(tmp_path: Path, monkeypatch: Any) -> None:
    """FHIR R4 search (date): a value is the implicit range of its precision, a minute a minute; a
    form that is no FHIR date(Time) is 400 naming the value and the forms taken. 23:59Z once found
    only 23:59:00, T08 and 20261203 answered 200 with next to nothing."""
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    store.append([frame_event(SENDER, at(when)) for when in
                  ("2026-12-03T00:00:00", "2026-12-03T08:20:00", "2026-12-03T08:20:00.250", "2026-12-03T23:59:30")])
    port = free_port()
    with running({"http": {"port": port, "token": {"env": "ATNA_TOKEN"}}}, store):
        base = f"http://127.0.0.1:{port}/AuditEvent"

        def total(value: str) -> int:
            status, bundle = call(f"{base}?date={value}")
            assert status == 200, (value, bundle)
            return int(bundle["total"])

        assert total("2026-12-03T23:59Z") == 1
        assert total("2026-12-04T00:59%2B01:00") == 1  # the same minute, in another zone
        assert total("2026-12-03T08:20") == 2 and total("2026-12-03T08:20:00") == 2
        assert total("2026-12-03T08:20:00.2") == 1 and total("2026-12-03T08:20:00.25Z") == 1
        assert total("2026-12-03") == 4 and total("2026-12") == 4 and total("2026") == 4
        assert total("ge2026-12-03T08:21") == 1 and total("lt2026-12-03T08:20") == 1
        for bad in ("2026-12-03T08", "20261203", "2026-12-03T08:20:00+25:00", "2026-13", "2026-12-3"):
            status, problem = call(f"{base}?date={bad.replace('+', '%2B')}")
            text = problem["issue"][0]["diagnostics"]
            assert status == 400 and repr(bad) in text and "YYYY-MM-DDThh:mm" in text, (bad, text)
    store.close()


def test_prefer_handling_strict_may_be_quoted(tmp_path: Path, monkeypatch: Any) -> None:
    """RFC 7240 2: a preference's value is a token or a quoted-string; handling="strict" was taken
    as lenient, and a misspelt parameter answered the whole repository."""
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    port = free_port()
    with running({"http": {"port": port, "token": {"env": "ATNA_TOKEN"}}}, store):
        for prefer, status in (('handling="strict"', 400), ("return=minimal, handling = strict; x=1", 400),
                               ('x="handling=strict", handling=lenient', 200), ("HANDLING=STRICT", 400)):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/AuditEvent?colour=blue",
                                             headers={"Authorization": f"Bearer {TOKEN}", "Prefer": prefer})
            try:
                with urllib.request.urlopen(request, timeout=20) as answer:
                    got = answer.status
            except urllib.error.HTTPError as exc:
                got = exc.code
            assert got == status, prefer
    store.close()


# --- 6. HTTPS with a token and require_client_cert: both --------------------------------------------


def test_a_certificate_alone_is_not_enough_when_a_token_is_configured_too(tmp_path: Path, monkeypatch: Any) -> None:
    """Both a token and require_client_cert configured: each request needs both (a device
    certificate of the hospital CA alone once read the whole audit trail); the banner names both."""
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    pki = tmp_path / "pki"
    ca, ca_key = make_ca(pki, "ATNA Test CA", 2)
    cert, key = make_cert(pki, "localhost", ca, ca_key, hosts=["localhost", "127.0.0.1"], server=True, days=1)
    device, device_key = make_cert(pki, "modality", ca, ca_key, hosts=["modality"], client=True, days=1)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    port = free_port()
    section = {"http": {"port": port, "token": {"env": "ATNA_TOKEN"}, "cert_file": cert, "key_file": key,
                        "ca_file": ca, "require_client_cert": True}}
    with running(section, store) as rx:
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(device, device_key)
        url = f"https://localhost:{port}/AuditEvent?_count=1"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url), context=context, timeout=20)
        assert refused.value.code == 401
        with_token = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(with_token, context=context, timeout=20) as answer:
            assert answer.status == 200
        got = rx.wait(lambda evs: any(p == "unauthorized" for p, _ in problems(evs)), "the refusal")
        assert rx.service is not None
        (endpoint,) = [x for x in rx.service.listeners if hasattr(x, "authentication")]
        assert endpoint.authentication == "token and mutual TLS"  # as the banner says
    store.close()
    assert [e for p, e in problems(got) if p == "unauthorized"] == [
        "no valid bearer token (a client certificate alone is not enough: both are configured)"]


# --- 3. a refused client certificate: OpenSSL's verify result and its subject -------------------


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_a_refused_client_certificate_is_told_by_its_verify_result_and_subject(
        tmp_path: Path, version: ssl.TLSVersion) -> None:
    """An expired certificate of the CA and one of another CA were both recorded as
    "CERTIFICATE_VERIFY_FAILED": now OpenSSL's verify result (as the DICOM gateway tells it), and
    the certificate's subject, issuer and validity, from the handshake message (TLS 1.3 and 1.2)."""
    pki = mutual_pki(tmp_path / "pki")
    expired, expired_key = expired_client_cert(tmp_path / "old", pki["ca"], tmp_path / "pki")
    other_ca, other_key = make_ca(tmp_path / "other", "Another CA", 2)
    stranger, stranger_key = make_cert(tmp_path / "other", "stranger", other_ca, other_key, hosts=["x.local"],
                                       client=True, days=1)
    port = free_port()
    section = {"tls": {"port": port, "cert_file": pki["cert"], "key_file": pki["key"], "ca_file": pki["ca"],
                       "require_client_cert": True}}
    with running(section) as rx:
        for cert, key in ((expired, expired_key), (stranger, stranger_key)):
            context = client_context(pki["ca"], cert, key)
            context.maximum_version = version
            send_tls(port, context, b"x")
        rx.wait(lambda evs: len(syslog_problems(rx, "tls-handshake-failed")) == 2, "two failed handshakes")
    lapsed, foreign = syslog_problems(rx, "tls-handshake-failed")
    assert lapsed.startswith("TLS handshake failed: certificate has expired (CERTIFICATE_VERIFY_FAILED); client "
                             "certificate CN=lapsed-modality"), lapsed
    assert "issued by CN=" in lapsed and " until " in lapsed
    assert foreign.startswith("TLS handshake failed: unable to get local issuer certificate "
                              "(CERTIFICATE_VERIFY_FAILED); client certificate CN=stranger"), foreign
    assert "issued by CN=Another CA" in foreign


def expired_client_cert(out: Path, ca: Path, pki: Path) -> tuple[Path, Path]:
    """A client certificate of the CA (``mutual_pki``'s) that expired a year ago: make_cert will not
    make one."""
    from datetime import timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    issuer = x509.load_pem_x509_certificate(ca.read_bytes())
    (ca_key_file,) = [k for k in pki.glob("*.key") if k.stem not in ("localhost", "modality")]
    ca_key = serialization.load_pem_private_key(ca_key_file.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                                  "lapsed-modality")]))
            .issuer_name(issuer.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=400)).not_valid_after(now - timedelta(days=365))
            .sign(ca_key, hashes.SHA256()))
    out.mkdir(parents=True, exist_ok=True)
    (out / "lapsed.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "lapsed.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return out / "lapsed.crt", out / "lapsed.key"


# --- 4. TCP framing per frame; the last LF-framed message of a connection ----------------------------


def test_an_lf_framed_message_after_an_octet_counted_one_is_read() -> None:
    """RFC 6587 3.4: the framing is told per frame (a digit starts an octet count, '<' a message
    framed by LF): "<85>1" after an octet-counted frame was a bad octet count."""
    one, two, three = at("2026-12-03T08:00:00", "oct1"), at("2026-12-03T08:00:01", "lf2"), at("2026-12-03T08:00:02")
    stream = b"%d %s" % (len(one), one) + two + b"\n" + b"%d %s" % (len(three), three)
    for cut in (0, len(one) + 3, len(one) + 40, len(stream) - 5):
        splitter = Splitter()
        first, problems_a = splitter.feed(stream[:cut])
        rest, problems_b = splitter.feed(stream[cut:])
        assert first + rest == [one, two, three] and not problems_a + problems_b, cut
    # and a blank line some senders end an octet-counted frame with
    assert Splitter().feed(b"%d %s\n%d %s" % (len(one), one, len(two), two)) == ([one, two], [])
    # Each frame keeps its own framing, so a listener stamps (and flags, over TLS) each on its own:
    # both were once stamped with the framing the read ended in.
    splitter = Splitter()
    assert splitter.feed(stream)[0] == [one, two, three]
    assert splitter.kinds == [Framing.OCTET_COUNTING, Framing.NON_TRANSPARENT, Framing.OCTET_COUNTING]


def test_the_last_lf_framed_message_of_a_connection_needs_no_lf() -> None:
    """A sender that closes after its last message instead of an LF: the message is taken, as
    rsyslog's imtcp does (it was lost as truncated). An octet-counted frame cut short is not."""
    one, two = at("2026-12-03T08:00:00"), at("2026-12-03T08:00:01")
    splitter = Splitter()
    frames, _ = splitter.feed(one + b"\n" + two)
    assert frames == [one] and splitter.flush() == []  # mid-stream: it may go on
    assert splitter.flush(final=True) == [two] and splitter.finish() == []
    cut = Splitter()
    assert cut.feed(b"%d %s" % (len(one), one[:-10])) == ([], []) and cut.flush(final=True) == []
    assert [p.problem for p in cut.finish()] == ["truncated"]


@pytest.mark.parametrize("readers", [0, 1])
def test_both_framings_rsyslog_accepts_are_stored_from_real_connections(readers: int) -> None:
    port = free_port()
    oct1, lf2, last3 = at("2026-12-03T08:00:00", "oct1"), at("2026-12-03T08:00:01", "lf2"), at(
        "2026-12-03T08:00:02", "noterm3")
    with running({"tcp": {"port": port}, "readers": readers}) as rx:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"%d %s" % (len(oct1), oct1) + lf2 + b"\n")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(last3)
        got = rx.wait(lambda evs: len(rx.audits()) == 3, "three messages")
    users = sorted(e.details["participants"][0]["user_id"] for e in rx.audits())
    assert users == ["lf2", "noterm3", "oct1"]
    assert not [e for e in got if e.kind == "atna.frame.rejected"]
