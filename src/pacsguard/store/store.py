"""The event store: append-only, hash-chained and Merkle-sealed, signed at checkpoints.

Each event is sealed as the canonical JSON {"event": ..., "prev": <hex leaf hash of the event
before>, "seq": n}; that text's RFC 9162 leaf hash is leaf n of the store's Merkle tree. A
checkpoint signs (tree size, root, time) with the store's Ed25519 key. There is deliberately no
update or delete API.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Row, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError

from pacsguard.events.model import Event
from pacsguard.store import keys
from pacsguard.store.columns import (
    REFUSALS,
    ae_key,
    append_refusing,
    host_key,
    kind_key,
    optional,
    patient_key,
    user_key,
)
from pacsguard.store.database import WRITE, check_or_create, describe, first_line, make_engine, normalise_target
from pacsguard.store.errors import StoreError
from pacsguard.store.index import BatchIndex, placed_by
from pacsguard.store.merkle import HASH_SIZE, Frontier, leaf_hash
from pacsguard.store.rows import RowsInsert
from pacsguard.store.schema import (
    STORE_FORMAT,
    STORE_FORMAT_VERSION,
    checkpoints,
    event_batches,
    event_bodies,
    event_patients,
    event_studies,
    event_terms,
    events,
    meta,
    tree_state,
)
from pacsguard.store.search import EventQuery, damaged, select_events
from pacsguard.store.stall import WRITE_TIMEOUT_S, StallGuard

GENESIS_PREV = bytes(HASH_SIZE)
#: Free room below which a SQLite store empties its write-ahead log after every commit: twice what
#: the log grows to between SQLite's automatic checkpoints (1,000 pages of 16 KiB), since the
#: checkpoint copies the pages into the database file before the log is emptied.
WAL_ROOM = 2 * 1000 * 16384
log = logging.getLogger("pacsguard.store")


def seal(event_json: str, prev: bytes, seq: int) -> str:
    """The sealed record of one event; keys in sorted order, so it is canonical JSON too."""
    return f'{{"event":{event_json},"prev":"{prev.hex()}","seq":{seq}}}'


def checkpoint_message(tree_size: int, root: bytes, time_us: int) -> bytes:
    """The exact bytes an Ed25519 checkpoint signature covers."""
    return f"pacsguard-checkpoint/v1\n{tree_size}\n{root.hex()}\n{time_us}\n".encode()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    tree_size: int
    root: bytes
    time_us: int
    key_id: str
    signature: bytes


class CheckpointListener(Protocol):
    """Told of each checkpoint once it is committed (witness delivery); must not block the writer."""

    def signed(self, checkpoint: Checkpoint) -> None: ...

    def close(self) -> None:
        """Called by the store's close(), after its final checkpoint."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    event: Event


class EventStore:
    """Open with `EventStore.open(path_or_url, ...)`; it is also an EventSink (`emit`)."""

    def __init__(self, url: str, *, signing_key: Ed25519PrivateKey | None = None,
                 create: bool = False, checkpoint_interval: float = 60.0,
                 write_timeout: float = WRITE_TIMEOUT_S) -> None:
        self.url = normalise_target(url)
        self.name = describe(self.url)
        self.engine = make_engine(self.url, create=create)
        # PostgreSQL only: SQLite's writer waits on a local file, with its own busy timeout.
        self._guard = StallGuard(self.engine, self.name, write_timeout) \
            if self.engine.dialect.name == "postgresql" else None
        self._writer = self.engine.execution_options(**{WRITE: True})
        self._signing_key = signing_key
        self._key_id = keys.key_id(signing_key.public_key()) if signing_key else ""
        self.checkpoint_interval = checkpoint_interval
        self._last_checkpoint = time.monotonic()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        check_or_create(self.engine, self.url, create=create, initialise=_initialise)
        self._damaged = self._check_head()
        paramstyle = self.engine.dialect.paramstyle
        (self._insert_event, self._insert_body, self._insert_patient, self._insert_study, self._insert_term,
         self._insert_batch) = (RowsInsert.of(t, paramstyle) for t in (
            events, event_bodies, event_patients, event_studies, event_terms, event_batches))
        self._timer: threading.Thread | None = None
        self._disk_full = False  # a write failed with SQLITE_FULL: reclaim the WAL once one succeeds
        database = self.engine.url.database if self.engine.dialect.name == "sqlite" else None
        self._folder = Path(database).parent if database and database != ":memory:" else None
        self._listeners: list[CheckpointListener] = []
        if signing_key is not None:
            # Holds only a weak reference: a store dropped without close() ends its timer too.
            self._timer = threading.Thread(target=_sign_on_timer, args=(weakref.ref(self), self._closing),
                                           name="pacsguard-checkpoint-timer", daemon=True)
            self._timer.start()

    @classmethod
    def open(cls, target: str, *, key_path: "str | Path | None" = None, create: bool = False,
             checkpoint_interval: float = 60.0, key_role: str = "",
             write_timeout: float = WRITE_TIMEOUT_S) -> "EventStore":
        """``key_role``: the option or configuration key that gave ``key_path``, named in its errors
        (the key is loaded before the database is opened or made). ``write_timeout``: PostgreSQL only,
        seconds a write may go unanswered before its sessions are cut (stall.py)."""
        key = keys.load_private_key(Path(key_path), role=key_role) if key_path is not None else None
        return cls(target, signing_key=key, create=create, checkpoint_interval=checkpoint_interval,
                   write_timeout=write_timeout)

    def _begin(self) -> AbstractContextManager[Connection]:
        try:
            return self._writer.begin()
        except OperationalError as exc:
            raise StoreError(f"{self.name}: {exc.orig}") from None

    def _check_head(self) -> str | None:
        """What is wrong with the tree head as the store opens (None: nothing), logged at once. Only a
        hint: another writer may append between the reads, so each append and checkpoint checks again
        in its own transaction, which decides (RFC 9162 2.1.1: the frontier holds the tree's
        perfect-subtree roots, whose root the next checkpoint signs)."""
        try:
            with self.engine.connect() as conn:
                state = conn.execute(select(tree_state).where(tree_state.c.id == 1)).one_or_none()
                problem = "the tree head (tree_state) is missing" if state is None else _head_damage(conn, state)
        except DBAPIError:
            return None  # unreadable: reading and writing report that themselves, naming the error
        if problem is not None:
            log.warning("%s: the tree head looks damaged (%s): appends and checkpoints will be refused while it "
                        "is; run `pacsguard audit verify`", self.name, problem)
        return problem

    def _refuse_damaged(self, conn: Connection, state: Row[Any]) -> None:
        """Within the writer's transaction (tree_state locked: no other writer moves the head): refuse
        a damaged head, so that nothing is chained to it and no root of no stored tree is signed."""
        self._damaged = _head_damage(conn, state)
        if self._damaged is not None:
            raise StoreError(f"{self.name}: the tree head is damaged ({self._damaged}); refusing to append or "
                             "sign: run `pacsguard audit verify` and restore the store from a backup")

    # --- writing -------------------------------------------------------------------------------

    def emit(self, batch: Sequence[Event]) -> None:
        self.append(batch)

    def append(self, batch: Sequence[Event]) -> int:
        """Seal and store a batch in one transaction; returns the new tree size. When this returns,
        the events are durable (acknowledged); a crash before it leaves the store as it was."""
        if not batch:
            return self.size()
        with self._lock:
            try:
                with self._limited(len(batch)), self._writer.begin() as conn:
                    size = self._append(conn, batch)
            except REFUSALS:
                # What an event holds, not the database's state, failed: retried whole, the batch
                # would fail for ever and stall every later event (columns.py).
                size = self._append_refusing(batch)
            except DBAPIError as exc:
                self._disk_full = self._disk_full or _disk_full(exc)
                if self._disk_full:
                    self._reclaim_wal()
                self._drop_sessions()
                raise StoreError(f"{self.name}: writing {len(batch)} events failed: {self._why(exc)}") from None
            if self._disk_full or self._short_of_space():
                # Space came back, or little is left: give back at once what the log of writes
                # (SQLite's WAL) took, so that the next writes do not fill the disk again. Left to
                # grow, the log took the room back, and its checkpoint then found none to copy the
                # pages into the database: recording failed again, for good.
                self._disk_full = not self._reclaim_wal()
        if self._signing_key is not None and time.monotonic() - self._last_checkpoint >= self.checkpoint_interval:
            try:
                self.checkpoint()
            except (StoreError, DBAPIError) as exc:
                # The batch is committed: raising would make the bus write it a second time. The
                # timer signs the head once the database takes writes again.
                log.warning("%s: checkpoint after a write failed: %s", self.name, first_line(exc))
        return size

    def _limited(self, events: int) -> AbstractContextManager[None]:
        """The stall guard's limit for a write of ``events`` events (stall.py; none on SQLite)."""
        return nullcontext() if self._guard is None else self._guard.limited(self._guard.limit_for(events))

    def _why(self, exc: DBAPIError) -> str:
        """The driver's reason, or, when the stall guard cut the sessions, that the database did not
        answer in time (the driver only saw its connection closed)."""
        cut = self._guard.cut_after() if self._guard is not None else None
        if cut is not None:
            return f"the database did not answer within {cut:.0f} s (its sessions were closed)"
        return str(exc.orig)

    def _drop_sessions(self) -> None:
        """After a failed write to PostgreSQL, close the pooled sessions so that the retry opens new
        ones. A session keeps what it was started with: one opened while the database or role had
        ``default_transaction_read_only`` set (ALTER DATABASE/ROLE ... SET, read at session start,
        PostgreSQL docs "runtime-config-client") refused every write for ever after the database
        took writes again, and recording never recovered. SQLite's connections hold no such state."""
        if self.engine.dialect.name != "sqlite":
            self.engine.dispose()

    def _short_of_space(self) -> bool:
        """A SQLite file store whose file system has less than `WAL_ROOM` free."""
        if self._folder is None:
            return False
        try:
            room = os.statvfs(self._folder)
        except OSError:
            return False
        return room.f_bavail * room.f_frsize < WAL_ROOM

    def _reclaim_wal(self) -> bool:
        """SQLite only: copy the write-ahead log into the database and truncate it to nothing
        (sqlite.org/pragma.html#pragma_wal_checkpoint, TRUNCATE). The WAL keeps every version of
        every page written since its last checkpoint, which runs only after 1,000 pages (16 MiB
        here); on a disk that filled up it is most of what the store holds on it. True when done;
        on a disk still too full for it, the next write tries again."""
        if self.engine.dialect.name != "sqlite":
            return True
        try:
            with self.engine.connect() as conn:
                # The driver's own connection: no BEGIN (a checkpoint cannot run in a transaction).
                raw = conn.connection.driver_connection
                assert raw is not None
                busy = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as exc:
            log.warning("%s: could not give back the write-ahead log's space: %s", self.name, exc)
            return False
        return not busy

    def _append_refusing(self, batch: Sequence[Event]) -> int:
        """Store the batch without the events the database refuses, a refusal record in the place of
        each (columns.append_refusing), in one transaction."""
        try:
            with self._limited(len(batch)), self._writer.begin() as conn:
                return append_refusing(conn, batch, self._append)[0]
        except DBAPIError as exc:
            self._drop_sessions()
            raise StoreError(f"{self.name}: writing {len(batch)} events failed: {self._why(exc)}") from None

    def _append(self, conn: Connection, batch: Sequence[Event]) -> int:
        # FOR UPDATE serialises writers on PostgreSQL; on SQLite, BEGIN IMMEDIATE already did.
        state = conn.execute(select(tree_state).where(tree_state.c.id == 1).with_for_update()).one()
        self._refuse_damaged(conn, state)
        frontier = Frontier.from_bytes(state.size, state.frontier)
        prev, first = state.last_leaf, int(state.size)
        rows = []
        bodies = []
        append_leaf = frontier.append
        idx = BatchIndex(first)
        index = idx.add
        for seq, ev in enumerate(batch, first):
            body = seal(ev.to_json(), prev, seq)
            prev = leaf_hash(body.encode())
            append_leaf(prev)
            actor = ev.actor
            time_us = ev.time_us
            patients = ev.patient_ids
            place = index(seq, time_us, ev.kind, actor.ae_title, actor.host, actor.user, patients, ev.study_uids)
            # Column order of schema.events.
            # Column copies as columns.py keys them; the body keeps every value as it is.
            rows.append((place, seq, placed_by(patients), time_us, kind_key(ev.kind), optional(ae_key, actor.ae_title),
                         optional(host_key, actor.host), optional(user_key, actor.user), prev))
            bodies.append((seq, body))
        seq = first + len(rows)
        rows.sort()  # in place order the B-tree takes the batch in one sweep
        # The driver with tuples: SQLAlchemy's per-row parameter processing cost more than hashing
        # and SQLite together (bench/store.py); many rows a statement (store.rows).
        run = conn.exec_driver_sql
        self._insert_event.run(run, rows)
        # In seq order: appended at the end of the bodies' B-tree (schema.event_bodies).
        self._insert_body.run(run, bodies)
        self._insert_patient.run(run, idx.patients)
        self._insert_study.run(run, idx.studies)
        self._insert_term.run(run, idx.term_rows())
        self._insert_batch.run(run, [(first, seq - 1, idx.min_time, idx.max_time)])
        conn.execute(update(tree_state).where(tree_state.c.id == 1).values(
            size=seq, frontier=frontier.to_bytes(), last_leaf=prev))
        return seq

    def checkpoint(self) -> Checkpoint | None:
        """Sign the current tree head, unless it is already signed. Needs the signing key."""
        if self._signing_key is None:
            raise StoreError(f"{self.name}: no signing key loaded, cannot write a checkpoint")
        try:
            cp = self._sign()
        except DBAPIError as exc:
            self._drop_sessions()
            # Named as the store's error (serve's stop, `audit patient --checkpoint`): it was told as
            # "the store's database failed ... tells what is damaged" with no store named.
            raise StoreError(f"{self.name}: signing a checkpoint failed: {self._why(exc)}; the events are stored, "
                             "those after the newest checkpoint are signed when a writer next signs one") from None
        if cp is None:
            return None
        for listener in list(self._listeners):  # committed: now it may leave the host
            listener.signed(cp)
        return cp

    def _sign(self) -> Checkpoint | None:
        """Sign and store the checkpoint of the tree head in one transaction (None: already signed)."""
        assert self._signing_key is not None
        with self._lock, self._limited(0), self._begin() as conn:
            self._last_checkpoint = time.monotonic()
            state = conn.execute(select(tree_state).where(tree_state.c.id == 1).with_for_update()).one()
            self._refuse_damaged(conn, state)
            last = conn.execute(select(func.max(checkpoints.c.tree_size))).scalar()
            if state.size == 0 or last == state.size:
                return None
            root = Frontier.from_bytes(state.size, state.frontier).root()
            now_us = time.time_ns() // 1000
            signature = self._signing_key.sign(checkpoint_message(state.size, root, now_us))
            cp = Checkpoint(state.size, root, now_us, self._key_id, signature)
            conn.execute(insert(checkpoints), {"tree_size": cp.tree_size, "root": cp.root, "time_us": cp.time_us,
                                               "key_id": cp.key_id, "signature": cp.signature})
        return cp

    def add_checkpoint_listener(self, listener: CheckpointListener) -> None:
        """Have ``listener`` told of every checkpoint this store signs from now on, and closed after the
        final one (close())."""
        self._listeners.append(listener)

    def checkpoint_due(self) -> float:
        """Seconds until the next timed checkpoint (0 or less: due now)."""
        return self._last_checkpoint + self.checkpoint_interval - time.monotonic()

    def unsigned(self) -> bool:
        """Whether the tree has grown past its newest checkpoint (one short read, no lock)."""
        with self._limited(0), self.engine.connect() as conn:
            size = conn.execute(select(tree_state.c.size).where(tree_state.c.id == 1)).scalar_one()
            signed = conn.execute(select(func.max(checkpoints.c.tree_size))).scalar() or 0
        return bool(size > signed)

    def close(self) -> None:
        """Write a final checkpoint (if a key is loaded and events are unsigned) and release the database."""
        self._closing.set()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.join()
        try:
            if self._signing_key is not None:
                try:
                    self.checkpoint()
                except StoreError as exc:
                    if self._damaged is None:
                        raise
                    # A damaged head is never signed; closing still releases the database.
                    log.warning("%s: no final checkpoint: %s", self.name, exc)
        finally:
            try:
                for listener in self._listeners:
                    listener.close()
            finally:
                self.engine.dispose()

    # --- reading -------------------------------------------------------------------------------

    def size(self) -> int:
        with self.engine.connect() as conn:
            size: int = conn.execute(select(tree_state.c.size).where(tree_state.c.id == 1)).scalar_one()
        return size

    def checkpoints(self) -> list[Checkpoint]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(checkpoints).order_by(checkpoints.c.tree_size)).all()
        # A row edited to hold another type (a root as text) proves nothing: left out here, named
        # by `audit verify` (verify.py reads the rows itself).
        return [Checkpoint(r.tree_size, r.root, r.time_us, r.key_id, r.signature) for r in rows
                if _int(r.tree_size) and _int(r.time_us) is not None and isinstance(r.root, bytes)
                and len(r.root) == HASH_SIZE and isinstance(r.signature, bytes) and isinstance(r.key_id, str)]

    def leaves(self, start: int, end: int) -> list[bytes]:
        """The stored leaf hashes of events #start..#end-1, in seq order (for consistency proofs)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(events.c.leaf).where(events.c.seq >= start, events.c.seq < end)
                                .order_by(events.c.seq)).scalars().all()
        return [bytes(leaf) for leaf in rows]

    def search(self, query: EventQuery) -> Iterator[StoredEvent]:
        wanted = None if query.patient is None else patient_key(query.patient)
        with self.engine.connect() as conn:
            for seq, body in select_events(conn, query):
                try:
                    event = Event.from_json(_event_part(body))
                except (ValueError, LookupError, TypeError) as exc:
                    raise damaged(conn, f"events row #{seq}: its event does not decode "
                                        f"({type(exc).__name__})") from None
                if wanted is not None and wanted not in {patient_key(p) for p in event.patient_ids}:
                    # The index names the patient, the sealed record does not: one of them was edited
                    # (the record, if `audit verify` finds it modified); not listed as the patient's.
                    raise damaged(conn, f"events row #{seq}: the patient index gives it the patient searched for, "
                                        "its sealed record does not name that patient")
                yield StoredEvent(seq, event)


def _sign_on_timer(ref: weakref.ref[EventStore], closing: threading.Event) -> None:
    """The checkpoint timer: every `checkpoint_interval` seconds, sign the tree head if it grew since
    the newest checkpoint, so that a burst of events shorter than the interval is signed within one
    interval even when nothing follows it (not only at the next event or at shutdown)."""
    while True:
        store = ref()
        if store is None:
            return
        wait = max(store.checkpoint_due(), 0.0)
        interval = store.checkpoint_interval
        del store  # no strong reference while asleep
        if closing.wait(min(wait, interval)):
            return
        store = ref()
        if store is None:
            return
        if store.checkpoint_due() > 0:
            continue  # an append signed meanwhile
        try:
            if store.unsigned():
                store.checkpoint()
            else:
                store._last_checkpoint = time.monotonic()
        except (StoreError, DBAPIError) as exc:
            # The database is away: the next interval tries again; appends report the outage themselves.
            store._last_checkpoint = time.monotonic()
            log.warning("%s: timed checkpoint failed: %s", store.name, first_line(exc))
        del store


def _disk_full(exc: DBAPIError) -> bool:
    """SQLite's SQLITE_FULL (13): "database or disk is full"."""
    return getattr(exc.orig, "sqlite_errorcode", None) == 13


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _head_damage(conn: Connection, state: Row[Any]) -> str | None:
    """The cheap checks of the tree head, made before each append and checkpoint: a size that is a
    count, a frontier of one hash per set bit of it, the last leaf that of the newest event, no
    event past the head; with an odd size the frontier's last node is that leaf itself; with a
    checkpoint at the head's size, the frontier's root is its root. None: as the writer left it (a
    frontier edited within these bounds is found by `audit verify`)."""
    size, frontier, last = state.size, state.frontier, state.last_leaf
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return f"tree_state.size holds {size!r}, not a count of events"
    if not isinstance(frontier, bytes) or len(frontier) != bin(size).count("1") * HASH_SIZE:
        return f"tree_state.frontier is not the {bin(size).count('1')} hashes a tree of {size} events has"
    newest = conn.execute(select(events.c.seq, events.c.leaf).where(events.c.seq >= size - 1)
                          .order_by(events.c.seq).limit(2)).all()
    if size == 0:
        expected = GENESIS_PREV if not newest else None
    else:
        expected = newest[0].leaf if newest and newest[0].seq == size - 1 and len(newest) == 1 else None
    if expected is None:
        return (f"the tree head counts {size} events but the stored events end elsewhere"
                f" (newest #{newest[-1].seq})" if newest else
                f"the tree head counts {size} events but event #{size - 1}, the newest it counts, is not stored")
    if last != expected:
        return f"tree_state.last_leaf is not the leaf of event #{size - 1}" if size else \
            "tree_state.last_leaf of the empty tree is not the genesis value"
    if size & 1 and frontier[-HASH_SIZE:] != expected:
        return f"tree_state.frontier does not end with the leaf of event #{size - 1}"
    signed = conn.execute(select(checkpoints.c.root).where(checkpoints.c.tree_size == size)).scalar()
    if isinstance(signed, bytes) and Frontier.from_bytes(size, frontier).root() != signed:
        return f"tree_state.frontier does not give the root signed at size {size}"
    return None


def _initialise(conn: Connection) -> None:
    """The rows of a new store: its format and an empty tree (in the transaction that created it)."""
    conn.execute(insert(meta), [
        {"key": "format", "value": STORE_FORMAT},
        {"key": "format_version", "value": STORE_FORMAT_VERSION},
        {"key": "created", "value": datetime.now().astimezone().isoformat()},
    ])
    conn.execute(insert(tree_state), {"id": 1, "size": 0, "frontier": b"", "last_leaf": GENESIS_PREV})


def _event_part(body: str) -> str:
    # The sealed record starts with {"event": and ends with ,"prev":"<64 hex>","seq":N}; slicing
    # avoids parsing the envelope on every search result.
    start = len('{"event":')
    end = body.rindex(',"prev":"')
    return body[start:end]


