"""Outside round 14 (D2): one byte that is not UTF-8 in a sealed record (SQLite keeps whatever bytes
an edit writes as TEXT) made `events search` fail with sqlite3's "Could not decode to UTF-8 column
'body' with text '{"event":...'": ~150 characters of the record, patient data, on the terminal,
and no row named. The search now reads the record's bytes and names the row; every connection
pacsguard opens decodes TEXT itself and raises `UndecodableText`, which holds no byte of the value;
and the CLI's "the store's database failed" line drops the text sqlite3 quotes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import select

from pacsguard.store import EventQuery, EventStore
from pacsguard.store.database import UndecodableText, without_text
from pacsguard.store.errors import StoreError
from pacsguard.store.schema import event_bodies
from store_helpers import make_events, new_store
from test_cli import run

EDITED = 7  # make_events: event 7 names PID0007


def _store(tmp: Path) -> Path:
    path = tmp / "store.db"
    es, _ = new_store(str(path), tmp)
    es.append(make_events(60))
    es.checkpoint()
    es.close()
    conn = sqlite3.connect(path)
    body = conn.execute("SELECT body FROM event_bodies WHERE seq = ?", (EDITED,)).fetchone()[0]
    raw = body.encode().replace(b'"PID0007"', b'"PID000\xff"', 1)
    assert raw != body.encode()
    conn.execute("UPDATE event_bodies SET body = CAST(? AS TEXT) WHERE seq = ?", (raw, EDITED))
    conn.commit()
    conn.close()
    return path


def _no_record_text(text: str) -> None:
    for piece in ("PID000", "component", "ünïcode", "with text", '{"event"'):
        assert piece not in text, text


@pytest.mark.parametrize("query", [("--patient", "PID0007"), ("--study", "1.2.826.0.1.3680043.2.7"), ()])
def test_the_search_names_the_row_and_echoes_nothing(tmp_path: Path, query: tuple[str, ...]) -> None:
    path = _store(tmp_path)
    proc = run("events", "search", "--store", str(path), *query, cwd=tmp_path, check_code=2)
    assert f"events row #{EDITED}: its sealed record is not valid UTF-8 text" in proc.stderr, proc.stderr
    assert "the store is damaged" in proc.stderr and "audit verify" in proc.stderr
    _no_record_text(proc.stderr.replace("PID0007", ""))  # the ID searched for is the caller's own


def test_the_patient_report_names_the_row(tmp_path: Path) -> None:
    path = _store(tmp_path)
    proc = run("audit", "patient", "PID0007", "--store", str(path), "--key", str(tmp_path / "keys" / "k.key"),
               "--format", "json", cwd=tmp_path, check_code=2)
    assert f"events row #{EDITED}: its sealed record is not valid UTF-8 text" in proc.stderr
    assert proc.stdout == ""
    _no_record_text(proc.stderr.replace("PID0007", ""))


def test_the_search_api_raises_a_store_error(tmp_path: Path) -> None:
    es = EventStore.open(str(_store(tmp_path)))
    try:
        with pytest.raises(StoreError, match=f"events row #{EDITED}: its sealed record is not valid UTF-8"):
            list(es.search(EventQuery(limit=None)))
        assert [e.seq for e in es.search(EventQuery(patient="PID0008"))] == [8, 58]  # other rows read as before
    finally:
        es.close()


def test_any_other_read_of_the_text_raises_undecodable_text_without_it(tmp_path: Path) -> None:
    """What `audit verify` (or any reader that selects the column as text) now meets: a StoreError
    subclass naming the store, never the sqlite3 OperationalError that quotes the value."""
    es = EventStore.open(str(_store(tmp_path)))
    try:
        with es.engine.connect() as conn, pytest.raises(UndecodableText) as caught:
            conn.execute(select(event_bodies.c.body).where(event_bodies.c.seq == EDITED)).all()
    finally:
        es.close()
    message = str(caught.value)
    assert "not valid UTF-8" in message and str(tmp_path) in message
    _no_record_text(message)


def test_sqlite3s_quoted_text_is_dropped_from_messages() -> None:
    said = "Could not decode to UTF-8 column 'body' with text '{\"event\":{\"component\":\"gw\",\n\"PID0007\"'"
    shown = without_text(said)
    assert shown.startswith("Could not decode to UTF-8 column 'body'")
    _no_record_text(shown)
    assert without_text("database disk image is malformed") == "database disk image is malformed"
