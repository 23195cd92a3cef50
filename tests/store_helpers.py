"""Helpers shared by the store tests: a store on SQLite or on the real PostgreSQL, and raw SQL
access "from outside" (as an attacker with database rights would have)."""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psycopg

from pacsguard.events import Event, Party, Severity
from pacsguard.store import EventStore
from pacsguard.store.keys import generate_key


def make_events(n: int, start: int = 0) -> list[Event]:
    return [Event(kind="dicom.store.request" if i % 3 else "dicom.association.accepted", component="gateway",
                  severity=Severity.INFO if i % 7 else Severity.WARNING,
                  actor=Party(f"MOD{i % 4}", f"10.1.0.{i % 9}", 104 + i % 2),
                  target=Party("PACS", "10.2.0.1", 104),
                  patient_ids=(f"PID{i % 50:04d}",), study_uids=(f"1.2.826.0.1.3680043.2.{i % 80}",),
                  sop_instance_count=i % 5, message=f"event {i} ünïcode",
                  details={"n": i, "tags": ["a", "b"], "nested": {"x": i / 2}}) for i in range(start, start + n)]


def new_store(target: str, tmp: Path, **kw) -> tuple[EventStore, Path]:
    key = tmp / "keys" / "k.key"
    if not key.exists():
        generate_key(key)
    return EventStore.open(target, key_path=key, create=True, **kw), key


@contextmanager
def raw_sql(target: str) -> Iterator:
    """A DB-API cursor straight on the database, bypassing pacsguard."""
    if "://" in target:
        conn = psycopg.connect(target.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
        with conn:
            yield conn.cursor()
    else:
        conn = sqlite3.connect(target, isolation_level=None)
        try:
            yield conn.cursor()
        finally:
            conn.close()
