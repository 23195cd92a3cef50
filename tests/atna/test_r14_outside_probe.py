"""What an outside probe of the audit repository found (2026-12-06), each fixed:

1. a header line refused for its form was quoted whole in the 400 and in the stored
   `atna.http.rejected` record: an Authorization or Cookie value went into the sealed store;
2. `GET /AuditEvent/<id>` of an id whose time falls in the year 10000 or later answered 500;
3. `audit search --limit` of sys.maxsize or more ended in "internal error" (exit 70);
4. a head whose lines end in a bare LF waited 10 s for a CRLF and got a 408;
5. `_id` was ignored (lenient handling), widening the answer to the whole trail;
6. a token error named no parameter, a 405 of an empty path said "GET of  is";
7. a message resent on several connections left one `atna.delivery.duplicate` record.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from atna_corpus import every_event_id
from receiver import free_port, running

from pacsguard.atna.dedupe import Deduplicator
from pacsguard.atna.http import Broken, _parse_head, _read_head
from pacsguard.atna.ingest import Sender, frame_event
from pacsguard.atna.query import AuditQuery, QueryError, stored_by_id
from store_helpers import new_store
from test_cli import run

TOKEN = "s3cr3t-t0ken-XYZ"
SENDER = Sender("10.20.0.9", 40000, "tcp", "octet-counting")


def _ask(port: int, request: bytes, wait: float = 15) -> tuple[float, bytes]:
    """Seconds to the answer, and the answer, of a raw request."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as conn:
        began = time.monotonic()
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
        return time.monotonic() - began, answer


HIDING = {  # a secret in header lines refused for their form
    "space before the colon": b"Authorization : Bearer " + TOKEN.encode(),
    "tab before the colon": b"Authorization\t: Bearer " + TOKEN.encode(),
    "NUL in the value": b"Authorization: Bearer " + TOKEN.encode() + b"\x00",
    "bare CR in the value": b"Authorization: Bearer " + TOKEN.encode() + b"\rX: y",
    "folded value": b"Authorization: Bearer\r\n " + TOKEN.encode(),
    "cookie": b"Cookie : session=" + TOKEN.encode(),
    "no colon": b"Bearer " + TOKEN.encode(),
}


def test_a_refused_header_line_never_has_its_value_answered_or_stored(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    port = free_port()
    answers = {}
    with running({"http": {"port": port, "token": {"env": "ATNA_TOKEN"}}}, store) as rx:
        for name, line in HIDING.items():
            answers[name] = _ask(port, b"GET /metadata HTTP/1.1\r\nHost: x\r\n" + line + b"\r\n\r\n")[1]
        events = list(rx.events)
    store.close()
    for name, answer in answers.items():
        assert answer.startswith(b"HTTP/1.1 400 "), (name, answer[:80])
        assert TOKEN.encode() not in answer, (name, answer)
    rejected = [e for e in events if e.kind == "atna.http.rejected"]
    assert rejected and all(TOKEN not in orjson.dumps(e.to_dict()).decode() for e in events)
    said = orjson.loads(answers["space before the colon"].split(b"\r\n\r\n", 1)[1])["issue"][0]["diagnostics"]
    assert said.startswith("not a header field (the field 'Authorization ', its value not shown)"), said
    folded = orjson.loads(answers["folded value"].split(b"\r\n\r\n", 1)[1])["issue"][0]["diagnostics"]
    assert folded.startswith("a folded header line (obs-fold, RFC 9112 5.2"), folded


def test_a_head_of_bare_lf_lines_is_refused_at_once(tmp_path: Path) -> None:
    async def head() -> bytes:
        reader = asyncio.StreamReader()  # made in the loop: Python 3.11 asks for the running one
        reader.feed_data(b"ET /metadata HTTP/1.1\nHost: x\n\nleft for the body")
        return await _read_head(reader, asyncio.get_running_loop().time() + 5)

    got = asyncio.run(head())
    assert got == b"ET /metadata HTTP/1.1\nHost: x\n\n"
    with pytest.raises(Broken, match="ends in a bare LF, not CRLF"):
        _parse_head(b"G" + got)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    port = free_port()
    with running({"http": {"port": port, "token": {"file": _token_file(tmp_path)}}}, store):
        took, answer = _ask(port, b"GET /metadata HTTP/1.1\nHost: x\n\n")
    store.close()
    assert answer.startswith(b"HTTP/1.1 400 ") and b"bare LF" in answer, answer[:200]
    assert took < 5, f"answered after {took:.1f} s"


def _token_file(tmp_path: Path) -> str:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return str(path)


def test_an_id_of_the_far_future_is_not_found_and_id_searches_find_only_theirs(tmp_path: Path) -> None:
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    frames = [frame_event(SENDER, b"<85>1 - h a - IHE+RFC-3881 - " + every_event_id()[e])
              for e in ("110110", "110104", "110114")]
    store.append(frames)
    for far in ("e677d21fdc0070008000000000000000", "ffffffffffff7fffbfffffffffffffff"):
        assert stored_by_id(store, far) is None
    wanted = [frames[2].id, frames[0].id]
    q = AuditQuery.parse({"_id": [",".join(wanted)]})
    found = [s.event.id for s in q.stored(store) if q.matches(s.event)]
    assert found == [frames[0].id, frames[2].id]
    q = AuditQuery.parse({"_id": [frames[1].id], "date": ["2000"]})
    assert [s for s in q.stored(store) if q.matches(s.event)] == []
    store.close()


@pytest.mark.parametrize(("params", "said"), [
    ({"patient": ["a|b|c"]}, "patient: expected system|value, got 'a|b|c'"),
    ({"entity-identifier": ["|"]}, "entity-identifier: an empty identifier value ('|'): give one, or leave it out"),
    ({"type": ["a|b|c"]}, "type: expected system|code, got 'a|b|c'"),
    ({"source": ["|"]}, "source: an empty value ('|'): name the audit source, or leave it out"),
    ({"source:identifier": ["a|b|c"]}, "source:identifier: expected system|value, value or Device/ID"),
    ({"_count": ["x"]}, "_count: expected 0..10000, got 'x'"),
])
def test_a_refused_search_value_names_its_parameter(params: dict[str, list[str]], said: str) -> None:
    with pytest.raises(QueryError) as refused:
        AuditQuery.parse(params)
    assert str(refused.value).startswith(said), str(refused.value)


def test_a_405_of_an_empty_path_says_so(tmp_path: Path) -> None:
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    port = free_port()
    with running({"http": {"port": port, "token": {"file": _token_file(tmp_path)}}}, store):
        answer = _ask(port, b"DELETE //AuditEvent HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")[1]
    store.close()
    assert b"DELETE of an empty path is not supported" in answer, answer[:300]


def test_each_connection_s_resend_has_its_record() -> None:
    from pacsguard.atna.outbound.sender import frame

    message = every_event_id()["110104"]
    records: list[Any] = []
    dedupe = Deduplicator(records.append)

    def received(port: int) -> Any:
        sender = Sender("127.0.0.1", port, "tls", "octet-counting", certificate="CN=gateway-a")
        return frame_event(sender, frame("site-a", 1, message, "gw").split(b" ", 1)[1])

    verdicts = [dedupe.fresh(received(port)) for port in (4000, 4001, 4001, 4002, 4003)]
    assert verdicts == [True, False, False, False, False]
    assert dedupe.dropped == 4
    assert [r.actor.port for r in records] == [4001, 4002, 4003]  # the second on 4001 is the same resend


def test_audit_search_refuses_limits_and_event_ids_it_cannot_take(tmp_path: Path) -> None:
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    store.close()
    for args, said in ((["--limit", "9223372036854775807"], "--limit"),
                       (["--limit", "99999999999999999999"], "--limit"),
                       (["--event-id", ""], "--event-id: empty")):
        done = run("audit", "search", "--store", str(tmp_path / "store.db"), *args, cwd=tmp_path, check_code=2)
        assert said in done.stderr and "internal error" not in done.stderr, done.stderr
    run("audit", "search", "--store", str(tmp_path / "store.db"), "--limit", "1000000000000000", cwd=tmp_path)


@pytest.mark.parametrize(("recorded", "taken"), [
    ("2026-12-31T23:59:60Z", True),
    ("2027-01-01T00:59:60+01:00", True),  # the same leap second, written in another zone
    ("2026-06-15T10:00:60Z", False),
    ("2026-06-30T23:58:60Z", False),
])
def test_second_60_is_taken_only_where_a_leap_second_falls(recorded: str, taken: bool) -> None:
    from pacsguard.atna.message.dicom_xml import AuditMessageError
    from pacsguard.atna.message.fhir import parse_instant

    if taken:
        assert parse_instant(recorded).isoformat().endswith("23:59:59.999999+00:00")
    else:
        with pytest.raises(AuditMessageError, match="second 60 only ends a UTC day"):
            parse_instant(recorded)
