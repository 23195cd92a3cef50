"""The durable outbound spool: each message to send is a row (SQLite, committed before the event
is acknowledged by the subscription), with a sequence number the repository sees in the message's
structured data; ``delivered`` is the highest sequence known to have arrived. A restart of
pacsguard resends from there, never skipping a message."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from pacsguard.owner_only import create_private_file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, message BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS state (id INTEGER PRIMARY KEY CHECK (id = 1), delivered INTEGER NOT NULL);
INSERT OR IGNORE INTO state (id, delivered) VALUES (1, 0);
"""


class Spool:
    def __init__(self, path: Path) -> None:
        # Audit messages name patients: the file is made 0600 before SQLite opens it (SQLite would
        # give it the umask's mode, and copies that mode to its -wal and -shm files).
        create_private_file(path)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self.added = threading.Condition(self._lock)

    def add(self, messages: list[bytes]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT INTO spool (message) VALUES (?)", [(m,) for m in messages])
            self._db.execute("COMMIT")
            self.added.notify_all()

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
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE state SET delivered = MAX(delivered, ?) WHERE id = 1", (seq,))
            self._db.execute("DELETE FROM spool WHERE seq <= ?", (seq,))
            self._db.execute("COMMIT")

    def pending(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM spool").fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
