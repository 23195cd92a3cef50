"""Helpers shared by the store tests: a store on SQLite or on the real PostgreSQL, and raw SQL
access "from outside" (as an attacker with database rights would have)."""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import psycopg
import pytest

from pacsguard.events import Event, Party, Severity
from pacsguard.store import EventStore
from pacsguard.store.keys import generate_key, load_public_key
from pacsguard.store.merkle import leaf_hash
from pacsguard.store.verify import VerifyReport, verify_store


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store's path (SQLite) or the URL of a database of its own on the real PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    url: str = request.getfixturevalue("postgres_db_url")
    return url


def param(target: str) -> str:
    """The DB-API parameter marker of the target's driver."""
    return "?" if "://" not in target else "%s"


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


def rehashed(target: str, tmp: Path, seq: int = 9) -> VerifyReport:
    """30 events and a checkpoint; then event ``seq`` is edited by an attacker who also recomputes its
    leaf hash. Returns the verify report."""
    es, key = new_store(target, tmp)
    es.append(make_events(30))
    es.checkpoint()
    es.engine.dispose()
    with raw_sql(target) as cur:
        cur.execute(f"SELECT body FROM event_bodies WHERE seq = {seq}")
        body = cur.fetchone()[0].replace(f"event {seq} ", "event X ")
        p = param(target)
        cur.execute(f"UPDATE event_bodies SET body = {p} WHERE seq = {seq}", (body,))
        cur.execute(f"UPDATE events SET leaf = {p} WHERE seq = {seq}", (leaf_hash(body.encode()),))
    return verify_store(EventStore.open(target), load_public_key(key))


def write_revision_0001_store(target: str, sent: Sequence[Event]) -> None:
    """A store as pacsguard wrote it at Alembic revision 0001 (format 1, before the search index),
    holding ``sent`` sealed and chained, its rows written straight into the old tables."""
    from alembic import command

    from pacsguard.store import database
    from pacsguard.store.merkle import Frontier
    from pacsguard.store.store import GENESIS_PREV, seal

    eng = database.make_engine(database.normalise_target(target), create=True)
    cfg = database._alembic_config()
    with eng.execution_options(**{database.WRITE: True}).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    eng.dispose()
    frontier, prev, rows, patients, studies = Frontier(), GENESIS_PREV, [], [], []
    for seq, ev in enumerate(sent):
        body = seal(ev.to_json(), prev, seq)
        prev = leaf_hash(body.encode())
        frontier.append(prev)
        rows.append((seq, ev.id, ev.time_us, ev.kind, int(ev.severity), ev.component, ev.outcome,
                     ev.actor.ae_title, ev.actor.host, ev.actor.user, ev.target.ae_title, ev.target.host,
                     ev.sop_instance_count, body, prev))
        patients += [(p, seq) for p in ev.patient_ids]
        studies += [(u, seq) for u in ev.study_uids]
    mark = param(target)
    with raw_sql(target) as cur:
        cur.executemany(f"INSERT INTO events VALUES ({', '.join([mark] * 15)})", rows)
        cur.executemany(f"INSERT INTO event_patients VALUES ({mark}, {mark})", patients)
        cur.executemany(f"INSERT INTO event_studies VALUES ({mark}, {mark})", studies)
        cur.execute(f"INSERT INTO tree_state VALUES (1, {mark}, {mark}, {mark})", (len(sent), frontier.to_bytes(),
                                                                                  prev))
        cur.executemany(f"INSERT INTO pacsguard_meta VALUES ({mark}, {mark})", [("format", "pacsguard-store"),
                                                                                ("format_version", "1")])
