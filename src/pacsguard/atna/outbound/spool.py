"""The durable outbound spool: each message to send is a row (SQLite, committed before the event
is acknowledged by the subscription), with a sequence number the repository sees in the message's
structured data; ``delivered`` is the highest sequence known to have arrived. A restart of
pacsguard resends from there, never skipping a message.

Each spool has an ``instance``: a random identifier made when the spool is created (or first
opened by a version that knows it), sent beside the sequence. A spool made again (a new disk, a
reinstall) starts its sequence at 1 again under a new instance, and two gateways sharing a
``source_id`` have different ones: the repository never confuses their numbers."""

from __future__ import annotations

import secrets
import sqlite3
import threading
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


class Spool:
    def __init__(self, path: Path) -> None:
        try:
            self._db = _open(path)
            self._db.executescript(_SCHEMA)
            # 128 random bits: no two spools ever share one (RFC 4122's bound for random UUIDs).
            self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('instance', ?)",
                             (secrets.token_hex(16),))
            row = self._db.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()
        except sqlite3.DatabaseError as exc:  # sqlite3.OperationalError is one too
            raise SpoolError(path, _why(path, exc)) from None
        except OSError as exc:
            raise SpoolError(path, f"cannot create it: {exc.strerror or exc}") from None
        self.instance: str = str(row[0])
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


def _open(path: Path) -> sqlite3.Connection:
    # Audit messages name patients: the file is made 0600 before SQLite opens it (SQLite would
    # give it the umask's mode, and copies that mode to its -wal and -shm files).
    if path.is_dir():
        raise sqlite3.OperationalError("is a folder")
    create_private_file(path)
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    try:
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
