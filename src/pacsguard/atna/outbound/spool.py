"""The durable outbound spool: each message to send is a row (SQLite, committed before the event
is acknowledged by the subscription), with a sequence number the repository sees in the message's
structured data; ``delivered`` is the highest sequence known to have arrived. A restart of
pacsguard resends from there, never skipping a message.

Each spool has an ``instance``: a random identifier made when the spool is created (or first
opened by a version that knows it), sent beside the sequence. A spool made again (a new disk, a
reinstall) starts its sequence at 1 again under a new instance, and two gateways sharing a
``source_id`` have different ones: the repository never confuses their numbers.

The spool holds at most ``max_bytes`` of messages (``atna.outbound.max_spool_bytes``): a
repository down for weeks, or slower than the feed, cannot fill the disk. A message that would
pass the bound is held back: not spooled, so never sent, and counted (``held``, kept in the file
across restarts, recorded by the sender as an Event when the streak starts and when it ends, with
the count); its Event stays in pacsguard's own store. Adding never waits for the repository: the
gateway's recording goes on.

Once delivered messages leave more than ``RECLAIM_BYTES`` of the file free (``RECLAIM_EMPTY_BYTES``
once all is delivered: an outage drained), the spool gives those pages back to the file system
(SQLite's incremental vacuum) and empties its write-ahead log: the file does not stay the size the
outage grew it to."""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from pacsguard.owner_only import create_private_file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, message BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS state (id INTEGER PRIMARY KEY CHECK (id = 1), delivered INTEGER NOT NULL);
INSERT OR IGNORE INTO state (id, delivered) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SpoolError(Exception):
    """The spool file cannot be used (not an SQLite database, a folder, unreadable): ``path`` and why."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


#: The default bound of a spool's messages, bytes: some 170,000 audit messages of 1.5 KB.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
#: Free room in the file above which it is given back: a few of the sender's batches (1,000 messages
#: of ~1.5 KB), so that a spool in steady use reuses its free pages rather than vacuuming each time.
RECLAIM_BYTES = 4 * 1024 * 1024
#: The same once the spool is empty (everything delivered: the pages to move are few).
RECLAIM_EMPTY_BYTES = 1024 * 1024


class Spool:
    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        try:
            self._db = _open(path)
            self._db.executescript(_SCHEMA)
            # 128 random bits: no two spools ever share one (RFC 4122's bound for random UUIDs).
            self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('instance', ?)",
                             (secrets.token_hex(16),))
            row = self._db.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()
            size = self._db.execute("SELECT COALESCE(SUM(LENGTH(message)), 0) FROM spool").fetchone()
            meta = dict(self._db.execute("SELECT key, value FROM meta WHERE key IN ('held', 'held_recorded', "
                                         "'last_event', 'store_from')"))
        except sqlite3.DatabaseError as exc:  # sqlite3.OperationalError is one too
            raise SpoolError(path, _why(path, exc)) from None
        except OSError as exc:
            raise SpoolError(path, f"cannot create it: {exc.strerror or exc}") from None
        self.instance: str = str(row[0])
        self.max_bytes = max_bytes
        #: Bytes of the messages spooled and not delivered.
        self.size = int(size[0])
        # Kept in the file: a restart while messages are held back still records their count.
        #: Messages held back at the bound since it was last released (:meth:`release_held`).
        self.held = int(meta.get("held", 0))
        #: Whether the latest message offered was held back.
        self.full = self.held > 0
        self._held_recorded = meta.get("held_recorded") == "1"
        #: The id of the latest Event whose message was spooled (or held back): the store's Events
        #: after it were not, when pacsguard was killed before its feed took them (Forwarder.follow).
        self.last_event: str | None = meta.get("last_event")
        #: The store's position where the latest run of the feed began (its first Event's seq).
        self.store_from: int | None = int(meta["store_from"]) if "store_from" in meta else None
        self._page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        self._lock = threading.Lock()
        self.added = threading.Condition(self._lock)

    def add(self, messages: list[bytes], last_event: str | None = None) -> int:
        """Spool ``messages`` in order, up to the bound; return how many were held back (the
        first that does not fit and all after it, so that what is spooled keeps its order).
        ``last_event``: the id of the Event of the last of them, kept with them in one transaction."""
        with self._lock:
            room, fits = self.max_bytes - self.size, 0
            for message in messages:
                if len(message) > room:
                    break
                room -= len(message)
                fits += 1
            if fits:
                with self._transaction():
                    self._db.executemany("INSERT INTO spool (message) VALUES (?)", [(m,) for m in messages[:fits]])
                    if last_event is not None:
                        self._keep("last_event", last_event)
                self.size = self.max_bytes - room
                self.added.notify_all()
            elif last_event is not None:
                self._keep("last_event", last_event)  # held back: dealt with, not to be spooled again
            if last_event is not None:
                self.last_event = last_event
            held = len(messages) - fits
            if messages:
                self.full = held > 0
            if held:
                self.held += held
                self._keep("held", str(self.held))
            return held

    @property
    def held_recorded(self) -> bool:
        """Whether the sender recorded that the spool holds messages back (it records the end too)."""
        return self._held_recorded

    @held_recorded.setter
    def held_recorded(self, value: bool) -> None:
        with self._lock:
            self._held_recorded = value
            self._keep("held_recorded", "1" if value else "0")

    def keep_store_from(self, seq: int) -> None:
        """Record where in the store this run of the feed begins (see :attr:`store_from`)."""
        with self._lock:
            self._keep("store_from", str(seq))
            self.store_from = seq

    def _keep(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def release_held(self) -> int:
        """The count of messages held back, once the spool takes messages again (then reset); 0
        while it is still at its bound."""
        with self._lock:
            if self.full:
                return 0
            held, self.held = self.held, 0
            if held:
                self._keep("held", "0")
            return held

    def delivered(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT delivered FROM state WHERE id = 1").fetchone()
        return int(row[0])

    def after(self, seq: int, limit: int = 1000) -> list[tuple[int, bytes]]:
        with self._lock:
            return [(int(s), bytes(m)) for s, m in self._db.execute(
                "SELECT seq, message FROM spool WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))]

    def mark_delivered(self, seq: int) -> None:
        """Everything up to ``seq`` arrived: forget it."""
        with self._lock:
            with self._transaction():
                self._db.execute("UPDATE state SET delivered = MAX(delivered, ?) WHERE id = 1", (seq,))
                freed = self._db.execute("SELECT COALESCE(SUM(LENGTH(message)), 0) FROM spool WHERE seq <= ?",
                                         (seq,)).fetchone()
                self._db.execute("DELETE FROM spool WHERE seq <= ?", (seq,))
            self.size -= int(freed[0])
            self._give_back()

    def _give_back(self) -> None:
        """Return the file's free pages to the file system once they pass ``RECLAIM_BYTES``, and
        empty the write-ahead log the moves went through (sqlite.org/pragma.html: incremental_vacuum,
        wal_checkpoint). A spool made before auto_vacuum was set is converted by a VACUUM, once it is
        empty (then it copies next to nothing)."""
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0] * self._page
        if free < (RECLAIM_EMPTY_BYTES if self.size == 0 else RECLAIM_BYTES):
            return
        try:
            if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] == _INCREMENTAL:
                # As a script: execute() steps a pragma once, and each step frees only one page.
                self._db.executescript("PRAGMA incremental_vacuum;")
            elif self.size == 0:
                self._db.execute(f"PRAGMA auto_vacuum={_INCREMENTAL}")
                self._db.execute("VACUUM")
            else:
                return
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error:
            # Room is only given back: the messages are delivered and forgotten already. A disk too
            # full for the moves leaves the pages free in the file, and the next delivery tries again.
            return

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back when it fails: SQLite ends a transaction by itself
        on some errors (a full disk) but not on all, and one left open would refuse every later BEGIN."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def pending(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM spool").fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


#: PRAGMA auto_vacuum's value for "incremental" (sqlite.org/pragma.html#pragma_auto_vacuum).
_INCREMENTAL = 2


def _open(path: Path) -> sqlite3.Connection:
    # Audit messages name patients: the file is made 0600 before SQLite opens it (SQLite would
    # give it the umask's mode, and copies that mode to its -wal and -shm files).
    if path.is_dir():
        raise sqlite3.OperationalError("is a folder")
    create_private_file(path)
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    try:
        # Before any table exists, so that a new spool can give freed pages back (Spool._give_back).
        db.execute(f"PRAGMA auto_vacuum={_INCREMENTAL}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
    except BaseException:
        db.close()
        raise
    return db


def _why(path: Path, exc: sqlite3.DatabaseError) -> str:
    """What is wrong with the file, in words an administrator acts on."""
    text = str(exc)
    if text == "is a folder":
        return "is a folder, not the spool's SQLite file"
    if "not a database" in text or "malformed" in text:
        return (f"is not a usable SQLite spool ({text}): damaged, or another file; move it aside to start a new "
                "spool (its unsent messages are then lost)")
    return f"cannot be opened as the spool's SQLite database: {text}"
