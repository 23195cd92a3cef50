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
