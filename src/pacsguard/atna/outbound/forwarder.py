"""The bus subscriber of the outbound feed: each of pacsguard's own stored Events that PS3.15 A.5
has a message for goes into the spool (committed before the next one is taken).

The subscription only sees what is written after it began; `follow` spools what the store took
before (serve's ``pacsguard.service.started`` is published before the services start), each Event
once: one the subscription delivers as well is skipped by its id."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from pacsguard.atna.message.build import to_xml
from pacsguard.atna.outbound.mapping import to_record
from pacsguard.atna.outbound.spool import Spool
from pacsguard.events.model import Event

if TYPE_CHECKING:
    from pacsguard.events.subscription import Subscription
    from pacsguard.store import EventStore

#: Events read from the store at a time while catching up.
_CHUNK = 1000


class Forwarder:
    def __init__(self, spool: Spool, source_id: str) -> None:
        self.spool = spool
        self.source_id = source_id
        # Held while catching up: the subscription's thread waits, so that what both deliver is
        # known (``_caught``) before the subscription's copy comes.
        self._lock = threading.Lock()
        self._caught: set[str] = set()
        self._gone = False

    def __call__(self, event: Event) -> None:
        with self._lock:
            if self._gone:
                return
            if self._caught and event.id in self._caught:
                self._caught.discard(event.id)
                return
            message = self.message(event)
            if message is not None:
                self.spool.add([message])

    def message(self, event: Event) -> bytes | None:
        """The A.5 message of one of pacsguard's own Events, or None when there is none to send."""
        if event.component == "atna":
            return None  # received audit messages are not ours to forward (nor our delivery notes)
        record = to_record(event, self.source_id)
        return None if record is None else to_xml(record)

    def follow(self, subscribe: Callable[[Forwarder], Subscription], store: EventStore | None,
               since: int) -> Subscription:
        """Subscribe, then spool what the store took from seq ``since`` on before the subscription
        began; what the subscription delivers meanwhile waits, and is skipped if it was caught up."""
        with self._lock:
            subscription = subscribe(self)
            try:
                if store is not None:
                    self._catch_up(store, since)
            except BaseException:
                self._gone = True  # what the subscription still delivers is dropped: no spool then
                subscription.unsubscribe(0)
                raise
        return subscription

    def _catch_up(self, store: EventStore, since: int) -> None:
        from pacsguard.store import EventQuery

        position = since - 1
        while True:
            batch = list(store.search(EventQuery(after_seq=position, limit=_CHUNK)))
            if not batch:
                return
            messages = [m for m in (self.message(s.event) for s in batch) if m is not None]
            # The subscription may deliver any of these too (written after it began).
            self._caught.update(s.event.id for s in batch)
            if messages:
                self.spool.add(messages)
            position = batch[-1].seq
