"""A search on SQLite reads a statement's rows in one step of the database (store/search.py), not
one step per row: Python's sqlite3 lets go of the interpreter for every step, and beside a busy
thread (an event loop parsing an ATNA flood) each row then waited to get it back (docs/
PERFORMANCE.md, "A search beside a busy event loop"). Counted here as the rows the driver hands
to Python; the answers are compared with the events stored, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import sqlite3.dbapi2
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from pacsguard.events import Event, Party
from pacsguard.store import EventQuery, EventStore
from pacsguard.store.keys import generate_key
from store_helpers import target  # noqa: F401  (the fixture)


class _Cursor(sqlite3.Cursor):
    """Counts the rows it hands to Python."""

    handed = 0

    def fetchone(self) -> Any:
        row = super().fetchone()
        _Cursor.handed += row is not None
        return row

    def fetchmany(self, size: int | None = None) -> list[Any]:
        rows = super().fetchmany(self.arraysize if size is None else size)
        _Cursor.handed += len(rows)
        return rows

    def fetchall(self) -> list[Any]:
        rows = super().fetchall()
        _Cursor.handed += len(rows)
        return rows


class _Connection(sqlite3.Connection):
    def cursor(self, factory: Any = _Cursor) -> Any:
        return super().cursor(factory)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_Cursor]]:
    connect = sqlite3.dbapi2.connect  # what SQLAlchemy's driver calls
    monkeypatch.setattr(sqlite3.dbapi2, "connect", lambda *a, **k: connect(*a, **k, factory=_Connection))
    _Cursor.handed = 0
    yield _Cursor


def _events(n: int) -> list[Event]:
    return [Event(kind=f"atna.audit.{'query' if i % 2 else 'transfer'}", component="atna",
                  time=datetime(2026, 12, 1, 8, tzinfo=timezone.utc).replace(minute=i % 60),
                  actor=Party(f"MOD{i % 3}", "10.1.0.1"), patient_ids=(f"P{i % 4}",),
                  study_uids=(f"1.2.3.{i % 5}",), message=f"event {i}") for i in range(n)]


def _searches(es: EventStore) -> dict[str, list[int]]:
    day = datetime(2026, 12, 1, tzinfo=timezone.utc)
    queries = {"patient": EventQuery(patient="P1", limit=None),
               "study": EventQuery(study="1.2.3.2", limit=None),
               "actor": EventQuery(actor="MOD2", limit=None),
               "kind prefix": EventQuery(kind="atna.audit.*", limit=None),
               "time range": EventQuery(since=day, until=day.replace(hour=9), limit=None),
               "newest first, limited": EventQuery(since=day, limit=1_234, newest_first=True),
               "all, after a seq": EventQuery(after_seq=700, limit=None)}
    return {name: [s.seq for s in es.search(q)] for name, q in queries.items()}


def test_a_search_reads_its_rows_in_a_few_steps_and_finds_what_it_did(
        tmp_path: Path, counted: type[_Cursor]) -> None:
    key = generate_key(tmp_path / "k.key")
    es = EventStore.open(str(tmp_path / "s.db"), key_path=key, create=True, checkpoint_interval=3600)
    es.append(_events(2_000))
    counted.handed = 0
    found = _searches(es)
    es.close()
    assert counted.handed < 100, f"{counted.handed} rows handed over for {sum(map(len, found.values()))} events"
    seqs = range(2_000)  # the nth event stored is seq n, counted from 0
    assert found["patient"] == [s for s in seqs if s % 4 == 1]
    assert found["study"] == [s for s in seqs if s % 5 == 2]
    assert found["actor"] == [s for s in seqs if s % 3 == 2]
    assert found["kind prefix"] == found["time range"] == list(seqs)
    assert found["newest first, limited"] == list(range(1_999, 1_999 - 1_234, -1))
    assert found["all, after a seq"] == list(range(701, 2_000))


def test_the_search_answers_are_the_same_on_both_databases(tmp_path: Path, target: str) -> None:  # noqa: F811
    key = generate_key(tmp_path / "k.key")
    es = EventStore.open(target, key_path=key, create=True, checkpoint_interval=3600)
    for start in range(0, 1_200, 300):  # several batches: several term rows per term
        es.append(_events(1_200)[start:start + 300])
    found = _searches(es)
    es.close()
    assert len(found["patient"]) == 300 and len(found["kind prefix"]) == 1_200
    assert found["newest first, limited"] == list(range(1_199, -1, -1))
    assert found["actor"] == [s for s in range(1_200) if s % 3 == 2]
