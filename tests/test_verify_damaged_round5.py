"""`audit verify` on a store whose database is damaged (an outside tester, round 5): a dropped
checkpoints table or a zeroed page ended in "internal error" (exit 70, "a bug in pacsguard");
docs/store.md: exit 2 when the store cannot be read. Now a StoreError naming what failed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pacsguard.store import EventStore
from pacsguard.store.errors import StoreError
from pacsguard.store.keys import load_public_key
from pacsguard.store.verify import verify_store
from store_helpers import make_events, new_store, raw_sql


def test_a_dropped_table_is_a_store_that_cannot_be_read(target: str, tmp_path: Path) -> None:
    es, key = new_store(target, tmp_path)
    es.append(make_events(20))
    es.checkpoint()
    es.engine.dispose()
    with raw_sql(target) as cur:
        cur.execute("DROP TABLE checkpoints")
    with pytest.raises(StoreError, match="cannot read the store to verify it: .*checkpoints"):
        verify_store(EventStore.open(target), load_public_key(key))


def test_a_zeroed_page_is_a_store_that_cannot_be_read(tmp_path: Path) -> None:
    target = str(tmp_path / "store.db")
    es, key = new_store(target, tmp_path)
    es.append(make_events(200))
    es.checkpoint()
    es.engine.dispose()
    with sqlite3.connect(target) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_schema WHERE name = 'events'").fetchone()[0]
    with open(target, "r+b") as f:
        f.seek((root - 1) * page)
        f.write(bytes(page))
    with pytest.raises(StoreError, match="malformed"):
        verify_store(EventStore.open(target), load_public_key(key))


def _zero_page_of(target: str, name: str) -> None:
    with sqlite3.connect(target) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_schema WHERE name = ?", (name,)).fetchone()[0]
    with open(target, "r+b") as f:
        f.seek((root - 1) * page)
        f.write(bytes(page))


def test_a_damaged_index_no_record_read_touches_is_a_finding(tmp_path: Path) -> None:
    """A zeroed page of ix_event_batches_time left verify saying OK while searches by time failed
    with exit 70; SQLite's own page check now names it, and the search exits 2."""
    import os
    import subprocess
    import sys

    target = str(tmp_path / "store.db")
    es, key = new_store(target, tmp_path)
    es.append(make_events(50))
    es.checkpoint()
    es.engine.dispose()
    _zero_page_of(target, "ix_event_batches_time")
    report = verify_store(EventStore.open(target), load_public_key(key))
    assert [f.kind for f in report.findings] == ["database"] and not report.ok, report.findings
    done = subprocess.run([sys.executable, "-m", "pacsguard.cli", "events", "search", "--store", target,
                           "--since", "2020-01-01", "--until", "2100-01-01"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 2 and "the store's database failed" in done.stderr, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr


def test_a_store_without_its_format_record_is_named_damaged(tmp_path: Path) -> None:
    target = str(tmp_path / "store.db")
    es, _ = new_store(target, tmp_path)
    es.engine.dispose()
    with sqlite3.connect(target) as db:
        db.execute("DELETE FROM pacsguard_meta WHERE key = 'format'")
    with pytest.raises(StoreError, match="format record is missing: the database is damaged"):
        EventStore.open(target)
