"""The RESTful ATNA endpoint's HTTP/1.1 duties towards the client: `Expect: 100-continue` (RFC 9110
10.1.1), answered before the body is sent, as curl waits a second for it, and the Host header
field that every HTTP/1.1 request must carry exactly once (RFC 9112 3.2)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from atna_corpus import fhir_patient_read
from receiver import running
from test_restful import TOKEN, exchange, get, no_tracebacks, post, problems, read_all, responses, token_endpoint

from pacsguard.atna.sources import count_sources

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CURL = Path("/usr/bin/curl")


def head_of(request: bytes) -> bytes:
    """The head of ``request``, up to and with the empty line that ends it."""
    return request[:request.index(b"\r\n\r\n") + 4]


def prompt(conn: socket.socket, wait: float = 0.5) -> bytes:
    """What the endpoint sends within ``wait`` seconds (b"" if nothing): well under the second a
    client such as curl waits for a 100 (Continue) before it sends the body anyway."""
    conn.settimeout(wait)
    try:
        return conn.recv(65536)
    except TimeoutError:
        return b""
    finally:
        conn.settimeout(10)


def test_expect_100_continue_is_answered_before_the_body_is_read(
        tmp_path: Path, monkeypatch: Any, caplog: pytest.LogCaptureFixture) -> None:
    """RFC 9110 10.1.1: to an HTTP/1.1 request that expects 100-continue and may go on (the token
    is right, the length within bounds, a POST to /AuditEvent), the 100 comes at once, before the
    body; the body then sent is stored (201) and the connection goes on. A request answered with a
    final status instead (401, 413, 411, 404 for a path that takes no body) gets no 100, and its
    connection is closed after the answer, the body unread. An expectation other than
    100-continue is refused (417) and recorded; an HTTP/1.0 request's Expect is ignored."""
    store, body, port = token_endpoint(tmp_path, monkeypatch, caplog)
    expecting = "Expect: 100-continue\r\n"
    with running({"http": {"port": port, "token": {"env": "ATNA_TOKEN"}}}, store) as rx:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(head_of(post(body, extra=expecting)))
            started = time.monotonic()
            assert prompt(conn) == CONTINUE and time.monotonic() - started < 0.5
            conn.sendall(body + get(extra="Connection: close\r\n"))
            answers = responses(read_all(conn))
        assert [a[0] for a in answers] == [201, 200]  # the connection went on after the 100
        chunked = (head_of(post(body, extra=expecting)).replace(b"Content-Length", b"Transfer-Encoding")
                   .replace(str(len(body)).encode() + b"\r\n", b"chunked\r\n"))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(chunked)
            assert prompt(conn) == CONTINUE
            conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
            assert responses(prompt(conn, 5))[0][0] == 201

        final = {401: head_of(post(body, extra=expecting)).replace(TOKEN.encode(), b"wrong"),
                 413: head_of(post(body, length=10**9, extra=expecting)),
                 411: head_of(post(body, extra=expecting)).replace(b"Content-Length", b"X-Length"),
                 404: head_of(post(body, extra=expecting)).replace(b"/AuditEvent", b"/Patient")}
        for status, head in final.items():
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(head)
                answer = prompt(conn, 5)
                assert CONTINUE not in answer and answer.startswith(b"HTTP/1.1 %d " % status), answer
                ((_, fields, _),) = responses(answer)
                assert fields["connection"] == "close"
                conn.sendall(body)  # the body comes after all, as curl sends it after a final status
                assert read_all(conn) == b""  # read and dropped, then closed: no second answer

        ((status, fields, problem),) = responses(exchange(port, post(body, extra="Expect: 200-ok\r\n")))
        assert status == 417 and fields["connection"] == "close"
        assert json.loads(problem)["resourceType"] == "OperationOutcome"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(head_of(post(body, version="HTTP/1.0", extra=expecting)))
            assert prompt(conn, 0.3) == b""  # HTTP/1.0: the expectation is ignored, the body awaited
            conn.sendall(body)
            assert [a[0] for a in responses(read_all(conn))] == [201]
        searched = exchange(port, get("/AuditEvent?patient=PID-0042", extra=expecting))
        assert CONTINUE not in searched and responses(searched)[0][0] == 200  # no content: no 100
        got = rx.wait(lambda evs: len(rx.audits()) == 3 and len(problems(evs)) == 5, "three stored, five refused")
    store.close()
    # 401, 413, 411, the POST to /Patient (404), 417
    assert [p for p, _ in problems(got)] == ["unauthorized", "bad-request", "bad-request", "bad-request", "bad-request"]
    assert "200-ok" in problems(got)[-1][1]
    no_tracebacks(caplog)


def curl(*args: str) -> tuple[str, float, str]:
    """Run curl with ``args``: its status code, its own time for the request, and its -v trace."""
    assert CURL.exists(), f"{CURL} is needed for this test (apt-get install curl)"
    done = subprocess.run([str(CURL), "-sS", "-v", "-w", "%{http_code} %{time_total}",
                           "-H", f"Authorization: Bearer {TOKEN}", "-H", "Content-Type: application/fhir+json",
                           *args], capture_output=True, text=True, timeout=30, check=True)
    code, took = done.stdout.split()
    return code, float(took), done.stderr


def test_curl_posting_an_audit_event_does_not_wait_a_second_for_a_100(
        tmp_path: Path, monkeypatch: Any, caplog: pytest.LogCaptureFixture) -> None:
    """curl sends `Expect: 100-continue` with the body of an upload (-T, any size, as 7.88 does)
    and with a POST body over 1 MiB (--data; older versions: over 1 KiB), then waits a second for the
    100 before it sends the body anyway: each such POST took over a second while the endpoint did
    not answer the expectation."""
    store, _, port = token_endpoint(tmp_path, monkeypatch, caplog)
    event = fhir_patient_read()
    event["outcomeDesc"] = "the reason, at length. " * 100
    small = tmp_path / "event.json"
    small.write_bytes(orjson.dumps(event))
    assert small.stat().st_size > 2048
    large = tmp_path / "large.json"
    large.write_bytes(orjson.dumps({**event, "outcomeDesc": "x" * 1_100_000}))
    url = f"http://127.0.0.1:{port}/AuditEvent"
    section = {"http": {"port": port, "token": {"env": "ATNA_TOKEN"}}, "max_message": 4 * 1024 * 1024}
    with running(section, store) as rx:
        for how in (["-T", str(small), "-X", "POST"], ["--data-binary", f"@{large}"]):
            code, took, trace = curl("-o", str(tmp_path / "answer.json"), *how, url)
            assert "> Expect: 100-continue" in trace  # what this test is about: curl asked for the 100
            assert "< HTTP/1.1 100 Continue" in trace
            assert code == "201" and took < 0.5, (how[0], code, took)
        answer = json.loads((tmp_path / "answer.json").read_bytes())
        assert len(answer["outcomeDesc"]) == 1_100_000
        rx.wait(lambda evs: len(rx.audits()) == 2, "both AuditEvents stored")
    store.close()
    assert rx.audits()[0].details["raw"] == small.read_text()
    no_tracebacks(caplog)


def test_a_request_without_one_host_header_is_refused_and_recorded(
        tmp_path: Path, monkeypatch: Any, caplog: pytest.LogCaptureFixture) -> None:
    """RFC 9112 3.2: an HTTP/1.1 request without a Host header field, and any request with more
    than one, is answered 400; recorded and counted by `atna sources` like any other refused
    request, nothing stored. An HTTP/1.0 request may leave Host out."""
    store, body, port = token_endpoint(tmp_path, monkeypatch, caplog)
    without = get("/AuditEvent").replace(b"Host: 127.0.0.1\r\n", b"")
    twice = get("/AuditEvent", extra="Host: other.example\r\n")
    invalid = [get("/AuditEvent").replace(b"Host: 127.0.0.1", b"Host: " + value)
               for value in (b"a, b", b"a b/c", b"[::1")]
    with running({"http": {"port": port, "token": {"env": "ATNA_TOKEN"}}}, store) as rx:
        for request in (without, twice, twice.replace(b"HTTP/1.1", b"HTTP/1.0"),
                        post(body).replace(b"Host: 127.0.0.1\r\n", b""), *invalid):
            ((status, fields, problem),) = responses(exchange(port, request + get(), shut=False))
            assert status == 400 and fields["connection"] == "close"  # and the request after it not served
            assert "Host" in json.loads(problem)["issue"][0]["diagnostics"]
        assert [a[0] for a in responses(exchange(port, without.replace(b"HTTP/1.1", b"HTTP/1.0")))] == [200]
        got = rx.wait(lambda evs: len(problems(evs)) == 7, "seven refused")
    store.close()
    assert [p for p, _ in problems(got)] == ["bad-request"] * 7
    assert "without a Host" in problems(got)[0][1] and "2 Host" in problems(got)[1][1]
    assert not rx.audits()
    (row,) = count_sources(got)
    assert row.sender == "127.0.0.1" and row.http_refused == 7
    no_tracebacks(caplog)
