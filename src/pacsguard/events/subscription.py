"""A live follower of the event stream (a console, an exporter): `EventBus.subscribe()` returns one.

Delivery guarantee: a subscriber sees each Event after the bus's sink accepted it (so never an event
the store did not take), in publish order, at most once. Each subscriber has its own thread and a
bounded queue: a slow subscriber falls behind and, past ``max_pending`` queued events, misses the
newest ones (counted in ``dropped``) instead of slowing the writer; an exception in the callback is
logged and the next event is delivered. Nothing a subscriber does reaches the publisher or the store.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence

from pacsguard.events.model import Event

log = logging.getLogger("pacsguard.events")


class Subscription:
    def __init__(self, callback: Callable[[Event], None], *, max_pending: int = 100_000) -> None:
        self.callback = callback
        self.max_pending = max_pending
        self.dropped = 0
        self.delivered = 0
        self._queue: deque[Event] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pacsguard-event-subscriber", daemon=True)
        self._thread.start()

    def offer(self, batch: Sequence[Event]) -> None:
        """Queue a written batch for the callback; never blocks on the callback."""
        with self._ready:
            if self._closed:
                return
            room = max(0, self.max_pending - len(self._queue))
            self._queue.extend(batch[:room])
            self.dropped += max(0, len(batch) - room)
            self._ready.notify()

    def unsubscribe(self, timeout: float = 5.0) -> None:
        """Stop after delivering what is queued (waiting at most ``timeout`` seconds)."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def active(self) -> bool:
        return not self._closed

    @property
    def pending(self) -> int:
        """Events queued and not yet handed to the callback: none, for the callback of the last one
        taken, when no more have come (a follower that works in batches ends its batch there)."""
        return len(self._queue)

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if not self._queue:
                    return
                event = self._queue.popleft()
            try:
                self.callback(event)
            except Exception:  # noqa: BLE001 - a failing follower must not stop the others or the store
                log.exception("event subscriber %r failed on %s", self.callback, event.kind)
            self.delivered += 1
