"""`pacsguard atna sources` against a real `pacsguard atna listen`: what each sender's connections
did, counted per sender, the HTTP endpoint's refusals and silent connections among them, and
`--since` meaning the time the repository received a message, not the time the sender claims."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
from atna_corpus import every_event_id, fhir_patient_read
from receiver import free_port

from event_schema import check_event
from pacsguard.events.model import Event
from pacsguard.store import EventQuery, EventStore
from store_helpers import new_store
from terminal import in_terminal

TOKEN = "token-of-the-sources-test"
OLD_CLOCK = "127.0.0.2"  # a syslog sender whose messages say 2001
WEB = "127.0.0.3"  # an HTTP client with every kind of trouble


@contextmanager
def listening(base: Path) -> Iterator[tuple[int, int, Path]]:
    """`pacsguard atna listen --tcp --http` into a store of its own: (tcp port, http port, store)."""
    tcp, http, store = free_port(), free_port(), base / "audit.db"
    log = base / "listen.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pacsguard.cli", "atna", "listen", "--tcp", f"127.0.0.1:{tcp}", "--http",
             f"127.0.0.1:{http}", "--http-token-env", "ATNA_TOKEN", "--store", str(store)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "ATNA_TOKEN": TOKEN, "COLUMNS": "200"})
    try:
        end = time.monotonic() + 60
        while not _accepts(http):
            assert proc.poll() is None and time.monotonic() < end, log.read_text()
            time.sleep(0.1)
        yield tcp, http, store
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    text = log.read_text()
    assert "Traceback" not in text and "Unhandled exception" not in text, text


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def connect(port: int, source: str) -> socket.socket:
    """A connection from ``source``, one of the loopback addresses (each is a sender of its own)."""
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def send(port: int, source: str, data: bytes) -> bytes:
    """``data`` on one connection from ``source``; then the client closes its side and reads to the end."""
    with connect(port, source) as conn:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := conn.recv(65536):
            out += chunk
        return out


def post(body: bytes, *, token: str = TOKEN, length: int | None = None) -> bytes:
    return (f"POST /AuditEvent HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n\r\n").encode() + body


def sources(store: Path, *args: str) -> list[dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "pacsguard.cli", "atna", "sources", "--store", str(store),
                          "--format", "json", *args], capture_output=True, text=True, timeout=120, check=True)
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def test_sources_counts_http_troubles_and_since_is_the_time_of_receipt(tmp_path: Path) -> None:
    """A sender whose messages say 2001 (a wrong clock, a backlog) is among the senders "since a
    minute ago": it sent them now (it once vanished from `--since`, which took the messages'
    EventDateTime). The HTTP client's connection that sent nothing is counted as silent, as a
    syslog one is; its refused requests (no token, a transfer coding it does not read, a body cut short) are counted in
    "HTTP refused" (they were only ever the last error); its two pipelined POSTs are two messages."""
    old = every_event_id()["110110"].replace(b"2026-12-03T09:30:15Z", b"2001-01-01T00:00:00Z")
    frame = b"<85>1 2001-01-01T00:00:00Z oldclock app - IHE+RFC-3881 - " + old
    body = orjson.dumps(fhir_patient_read())
    with listening(tmp_path) as (tcp, http, store):
        since = (datetime.now(timezone.utc) - timedelta(seconds=1)).isoformat()
        send(tcp, OLD_CLOCK, (b"%d " % len(frame) + frame) * 2)
        connect(http, WEB).close()  # silent
        assert send(http, WEB, post(body, token="wrong")).startswith(b"HTTP/1.1 401 ")
        chunked = b"POST /AuditEvent HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n" % TOKEN.encode()
        assert send(http, WEB, chunked + b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                    ).startswith(b"HTTP/1.1 501 ")
        assert send(http, WEB, post(body, length=len(body) + 10)).startswith(b"HTTP/1.1 400 ")
        answers = send(http, WEB, post(body) + post(body))
        assert answers.count(b"HTTP/1.1 201 ") == 2
        end = time.monotonic() + 30
        while True:
            rows = {r["sender"]: r for r in sources(store, "--since", since)}
            if {OLD_CLOCK, WEB} <= set(rows) and rows[WEB]["messages"] == 2 and rows[OLD_CLOCK]["messages"] == 2:
                break
            assert time.monotonic() < end, rows
            time.sleep(0.5)
        assert rows[OLD_CLOCK]["last_seen"] >= since  # received now, whatever the messages say
        web = rows[WEB]
        assert (web["transports"], web["silent_connections"], web["http_refused"], web["malformed_frames"]) == (
            ["http"], 1, 3, 0)
        assert web["last_error"].startswith("truncated: body of ")
        assert sources(store, "--since", (datetime.now(timezone.utc) + timedelta(minutes=5)).isoformat()) == []
        table = in_terminal("atna", "sources", "--store", str(store), cwd=tmp_path, columns=80)
        reading = EventStore.open(str(store))
        for stored in reading.search(EventQuery(kind="atna.*", limit=None)):
            check_event(stored.event, "atna listen")  # problems of docs/events.schema.json
        reading.close()
    assert all(len(line) <= 80 for line in table.splitlines()), table
    assert "HTTP refused: 3" in table, table


def _made_at(when: datetime) -> str:
    """An Event id made at ``when`` (the layout of pacsguard.events.model.new_event_id, UUIDv7)."""
    ms = int(when.timestamp() * 1000)
    return f"{(ms << 80) | (0x7 << 76) | (0b10 << 62) | random.getrandbits(62):032x}"


def _silent(sender: str, when: datetime) -> Event:
    return Event(kind="atna.frame.rejected", component="atna", time=when, id=_made_at(when),
                 details={"sender": {"host": sender, "transport": "tcp"}, "problem": "silent",
                          "error": "connected and sent nothing"})


class Counting:
    """A store that counts the events its searches read."""

    def __init__(self, store: Any) -> None:
        self.store, self.read = store, 0

    def size(self) -> int:
        return int(self.store.size())

    def search(self, query: EventQuery) -> Iterator[Any]:
        for found in self.store.search(query):
            self.read += 1
            yield found


def test_since_reads_only_the_events_stored_since(tmp_path: Path) -> None:
    """`--since` on a large store reads what was stored since (and an hour before, for the order
    of arrival), found by a binary search over the store's positions: not every ATNA event ever
    received, though their EventDateTime says nothing about when they came."""
    from pacsguard.atna.sources import recorded

    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    now = datetime.now(timezone.utc)
    for day in range(10, 0, -1):
        store.append([_silent("10.0.0.1", now - timedelta(days=day)) for _ in range(300)])
    store.append([_silent("10.0.0.2", now) for _ in range(5)])
    counting = Counting(store)
    kept = list(recorded(counting, now - timedelta(minutes=5)))
    assert [e.actor.host or e.details["sender"]["host"] for e in kept] == ["10.0.0.2"] * 5
    assert counting.read < 40, counting.read  # of 3,005: the binary search's probes and the 5
    assert len(list(recorded(store))) == 3005
    store.close()
