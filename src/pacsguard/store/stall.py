"""Ending a PostgreSQL write that the database has stopped answering.

libpq waits for a server's answer without a limit (PostgreSQL docs, "libpq: Connection Parameters":
``connect_timeout`` bounds the connection only). A server that accepts the bytes and never answers
(a backend stopped or frozen on I/O, a pgbouncer queueing clients, a proxy or firewall that keeps
the TCP session open) held the store's writer for ever: no `RECORDING FAILED`, no alert, and every
later event waited behind it. TCP keepalives would not help: the peer's kernel acknowledges them.

So each write runs under a limit: when it passes, the sessions of the store's engine are shut
down at the socket (shutdown(2), which wakes the blocked wait with end of file), the write fails
with a `StoreError`, and the bus's retry opens new sessions (`EventStore._drop_sessions`).
PostgreSQL rolls back a transaction whose client went away, so nothing half-written stays.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

#: Seconds a write transaction (or checkpoint) may take before its sessions are cut, plus
#: `PER_EVENT_S` per event of the batch: a batch of 65,536 events (the bus's largest) took ~6 s
#: on a loaded test server, so the limit is far above any write that is still making progress.
WRITE_TIMEOUT_S = 30.0
PER_EVENT_S = 0.001
log = logging.getLogger("pacsguard.store")


class StallGuard:
    """Cuts the sessions of a PostgreSQL engine when a write exceeds its limit."""

    def __init__(self, engine: Engine, name: str, timeout: float = WRITE_TIMEOUT_S) -> None:
        self.timeout = timeout
        self._name = name
        self._sessions: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()
        # Per thread: the checkpoint timer's reads run under limits of their own beside the writer's.
        self._latest = threading.local()
        event.listen(engine, "connect", self._connected)

    def _connected(self, dbapi_conn: Any, _record: object) -> None:
        with self._lock:
            self._sessions.add(dbapi_conn)

    def limit_for(self, events: int) -> float:
        """The limit of a write of ``events`` events."""
        return self.timeout + events * PER_EVENT_S

    @contextmanager
    def limited(self, seconds: float) -> Iterator[None]:
        """Run the body with a limit of ``seconds``; past it, every session is cut (see module)."""
        fired: list[float] = []
        self._latest.fired = fired
        timer = threading.Timer(seconds, self._cut, args=(seconds, fired))
        timer.name = "pacsguard-store-stall-guard"
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def cut_after(self) -> float | None:
        """The limit that the calling thread's latest write passed (None: it did not)."""
        fired: list[float] = getattr(self._latest, "fired", [])
        return fired[0] if fired else None

    def _cut(self, seconds: float, fired: list[float]) -> None:
        fired.append(seconds)
        log.error("%s: the database has not answered for %.0f s: closing its sessions; the events are kept "
                  "and written again on new ones", self._name, seconds)
        with self._lock:
            sessions = list(self._sessions)
        for conn in sessions:
            _shut_down(conn)


def _shut_down(conn: Any) -> None:
    """Shut a psycopg connection's socket down for both directions (a duplicate descriptor, so that
    libpq's own stays valid until it closes it)."""
    try:
        fd = conn.pgconn.socket
    except Exception:  # noqa: BLE001 - closed already: psycopg raises its OperationalError
        return
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # closed meanwhile, or not connected: nothing to wake
