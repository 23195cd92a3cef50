"""Holding the stream senders back while the store is behind (docs/audit.md, "When the store falls
behind").

Every received message waits in the event bus until the store has it. When the store is slower
than the senders (a burst, a slow disk) or cannot write at all (a full disk, a database down), the
bus's backlog grows: in memory, and past the bus's bound (events.bus.EventBus.MAX_SPOOL) while the
store fails, messages are dropped. TCP and TLS senders need not be: once the backlog reaches
``atna.max_backlog``, every TLS and TCP listener stops reading its connections (TCP's window then
holds each sender back, which queues on its side: rsyslog's and syslog-ng's disk queues), and
reads them again once the backlog is down to half of it. UDP (RFC 5426) cannot be held back: its
datagrams are dropped meanwhile and counted per sender (`backlog-full`), as a full socket buffer
would drop them, rather than held in memory. The RESTful endpoint answers only once its message is
durable: it is not held.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("pacsguard.atna")

#: Seconds between two looks at the backlog while the senders are held.
POLL = 0.1


class Holdable(Protocol):
    def hold(self) -> None: ...

    def release(self) -> None: ...


class Backpressure:
    """Holds ``listeners`` when ``backlog()`` reaches ``high``; releases them at ``high // 2``."""

    def __init__(self, backlog: Callable[[], int], high: int) -> None:
        self.backlog = backlog
        self.high = high
        self.low = high // 2
        self.listeners: list[Holdable] = []
        self.holding = False
        self.holds = 0  # times the senders were held back
        self._since = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def check(self) -> None:
        """After a message was published: hold the senders if the backlog has reached ``high``."""
        if self.holding or self.backlog() < self.high:
            return
        self.holding = True
        self.holds += 1
        self._since = time.monotonic()
        for listener in self.listeners:
            listener.hold()
        log.warning("holding the TLS and TCP syslog senders back (UDP datagrams dropped, counted): %d events wait "
                    "to be stored "
                    "(atna.max_backlog: %d); reading them again at %d", self.backlog(), self.high, self.low)
        self._timer = asyncio.get_running_loop().call_later(POLL, self._poll)

    def _poll(self) -> None:
        if self.backlog() > self.low:
            self._timer = asyncio.get_running_loop().call_later(POLL, self._poll)
            return
        self._timer = None
        self.release()
        log.warning("reading the TLS and TCP syslog senders again after %.1f s", time.monotonic() - self._since)

    def release(self) -> None:
        """Read the senders again."""
        self.stop()
        if not self.holding:
            return
        self.holding = False
        for listener in self.listeners:
            listener.release()

    def stop(self) -> None:
        """No more looks at the backlog (the service stops; its listeners close as they are)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
