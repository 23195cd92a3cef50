"""The bus subscriber of the outbound feed: each of pacsguard's own stored Events that PS3.15 A.5
has a message for goes into the spool: those the subscription hands over one after another in
one transaction, committed once it has no more queued (at most BATCH at a time).

The subscription only sees what is written after it began; `follow` spools what the store took
before (serve's ``pacsguard.service.started`` is published before the services start), each Event
once: one the subscription delivers as well is skipped by its id.

The store takes an Event before the subscription hands it to the feed, so a pacsguard killed
(SIGKILL, a power cut) in between, or before their batch was committed, leaves stored Events
that were never spooled. The spool keeps, with each message, the id of its Event, and where in
the store the run began: `follow` spools, at the next start, what the store took after that
Event.

A transfer (C-STORE, C-MOVE, C-GET) whose patient the association has not transferred yet gets a
Begin Transferring DICOM Instances message (PS3.15 A.5.3.5) before its Instances Transferred, in the
same spool entry. Which patients (and studies) each association began is remembered for
MAX_ASSOCIATIONS associations (the least recently active forgotten first), MAX_REMEMBERED each,
and forgotten at the association's end; forgetting costs at most a repeated Begin Transferring,
never a missing one. A pacsguard killed and started again remembers nothing: an association in
flight then may get a second one.

A spool that cannot take a message (its disk full, the file unwritable) loses nothing either: the
Event is in the store, so the feed says so once and, at most every RETRY_EVERY seconds while it
fails, spools from the store what came after the last Event spooled, as after a kill."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from pacsguard.atna.message.build import to_xml
from pacsguard.atna.outbound.mapping import (
    TRANSFERS,
    AssociationKey,
    association_of,
    begin_record,
    to_record,
    transferred_patients,
)
from pacsguard.atna.outbound.spool import Spool
from pacsguard.events.model import Event

if TYPE_CHECKING:
    from pacsguard.events.subscription import Subscription
    from pacsguard.store import EventStore

#: Events read from the store at a time while catching up.
_CHUNK = 1000
#: Seconds between two tries of a spool that failed to take a message.
RETRY_EVERY = 2.0
#: Events whose messages go into the spool in one transaction at most (`Forwarder._flush`).
BATCH = 1000
#: Associations whose patients with a Begin Transferring message are remembered at once, and
#: patients and studies remembered per association: a bound on memory whatever the traffic.
MAX_ASSOCIATIONS = 1024
MAX_REMEMBERED = 2048
#: The phases after which an association's ends may be another association's (PS3.8 9.3): an
#: A-ASSOCIATE-RQ too, in case the previous association's end was never recorded.
_ENDS = frozenset({"dicom.association.requested", "dicom.association.rejected", "dicom.association.released",
                   "dicom.association.aborted"})

log = logging.getLogger("pacsguard.atna.outbound")


class Forwarder:
    def __init__(self, spool: Spool, source_id: str) -> None:
        self.spool = spool
        self.source_id = source_id
        # Held while catching up: the subscription's thread waits, so that what both deliver is
        # known (``_caught``) before the subscription's copy comes.
        self._lock = threading.Lock()
        self._caught: set[str] = set()
        self._gone = False
        #: association -> ("patient", ID) of each patient whose Begin Transferring is spooled, and
        #: ("study", UID) of each study those transfers named
        self._begun: OrderedDict[AssociationKey, dict[tuple[str, str], None]] = OrderedDict()
        # What `follow` was given, for `_recover`: the subscription, whose drops it watches
        # (``_drops_seen``), the store and the seq of this run's first Event.
        self._subscription: Subscription | None = None
        self._store: EventStore | None = None
        self._since = 0
        self._drops_seen = 0
        self._failing_since: float | None = None  # the spool failed to take a message (monotonic)
        self._tried = 0.0
        self._passed = 0  # Events delivered while it failed, for the log
        #: Events taken, and their messages, not spooled yet: spooled together once the
        #: subscription has no more queued (or BATCH are waiting), in one transaction. Each
        #: statement makes the feed's thread wait for the GIL beside a busy event loop: with a
        #: transaction an Event, 14 Events a second were spooled beside one (bench/outbound.py).
        self._pending: list[tuple[Event, list[bytes]]] = []

    def __call__(self, event: Event) -> None:
        with self._lock:
            if self._gone:
                return
            subscription = self._subscription
            if subscription is not None and subscription.dropped > self._drops_seen and self._failing_since is None:
                self._flush()  # first: the catch-up starts after the last Event spooled
                if self._failing_since is None:
                    try:
                        self._recover(subscription.dropped)
                    except sqlite3.Error as exc:
                        self._failed(exc)
            if self._failing_since is not None and not self._retry(event):
                self._passed += 1  # in the store: spooled by the retry that succeeds
                return
            if self._caught and event.id in self._caught:
                self._caught.discard(event.id)
                return
            messages = self.messages(event)
            if messages:
                self._pending.append((event, messages))
            if self._pending and (subscription is None or not subscription.pending or len(self._pending) >= BATCH):
                self._flush()

    def _flush(self) -> None:
        """Spool the messages of the Events taken since the last flush, in one transaction."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            self.spool.add([m for _, messages in batch for m in messages], batch[-1][0].id)
        except sqlite3.Error as exc:
            self._forget([event for event, _ in batch])
            self._failed(exc)

    def _failed(self, exc: sqlite3.Error) -> None:
        """The spool took no message: said once, and tried again by `_retry`, which spools from the
        store all that came after the last Event spooled (the dropped ones too)."""
        self._failing_since = self._tried = time.monotonic()
        log.error("outbound: the spool cannot take messages (%s): they stay in the store and are spooled from "
                  "it once it can", exc)

    def _recover(self, dropped: int) -> None:
        """The subscription dropped Events (its queue was full: the feed fell far behind, each
        message costing the feed ~0.4 ms of CPU); they are in the store. Spooled from it now, from
        after the last Event spooled on, as at a start after a kill; what the subscription still
        delivers of them is skipped by its id."""
        missed, self._drops_seen = dropped - self._drops_seen, dropped
        if self._store is None:
            log.error("outbound: the feed fell behind and %d events were dropped before they were spooled", missed)
            return
        start = self._after_spooled(self._store, self._since)
        log.warning("outbound: the feed fell behind (%d events dropped from its queue): taking what it missed "
                    "from the store, from seq %d on", missed, start)
        self._catch_up(self._store, start, 0)

    def _retry(self, event: Event) -> bool:
        """Spool from the store what the failing spool missed, at most every RETRY_EVERY seconds;
        whether it took it. The subscription delivered every Event up to ``event``, the one in
        hand: only those after it are still to come, and to skip."""
        now = time.monotonic()
        if now - self._tried < RETRY_EVERY:
            return False
        self._tried = now
        assert self._failing_since is not None
        if self._store is None:
            log.error("outbound: %d events passed while the spool failed, and there is no store to take their "
                      "messages from: trying the spool again", self._passed)
        else:
            try:
                self._catch_up(self._store, self._after_spooled(self._store, self._since), 0, delivered=event.id)
            except sqlite3.Error:
                return False
            log.warning("outbound: the spool takes messages again after %.0f s; what it missed is spooled from "
                        "the store", now - self._failing_since)
        self._passed = 0
        self._failing_since = None
        return True

    def messages(self, event: Event) -> list[bytes]:
        """The A.5 messages of one of pacsguard's own Events, in order: its own (``message``), and
        before it, for a transfer, a Begin Transferring for each patient new to its association."""
        message = self.message(event)
        association = association_of(event) if event.component != "atna" else None
        if association is None:
            return [] if message is None else [message]
        if event.kind in _ENDS:
            self._begun.pop(association, None)
        if event.kind not in TRANSFERS or message is None:
            return [] if message is None else [message]
        begun = self._begun.pop(association, None) or {}
        self._begun[association] = begun  # now the most recently active
        if len(self._begun) > MAX_ASSOCIATIONS:
            self._begun.popitem(last=False)
        out = []
        studies = [("study", uid) for uid in event.study_uids]
        for patient in transferred_patients(event):
            begun_before = ("patient", patient) in begun
            # An unknown patient (a C-GET or C-MOVE whose identifier named none) is told by its
            # studies: begun when this association began all of them, as a C-GET's own C-STORE
            # sub-operations (PS3.4 C.4.3) do, naming the patient; another study of an unknown
            # patient may be anyone's.
            if not patient and studies:
                begun_before = all(study in begun for study in studies)
            if begun_before:
                continue
            out.append(to_xml(begin_record(event, self.source_id, patient)))
            begun[("patient", patient)] = None
        begun.update(dict.fromkeys(studies))
        while len(begun) > MAX_REMEMBERED:
            del begun[next(iter(begun))]
        return [*out, message]

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
            self._subscription, self._store, self._since = subscription, store, since
            try:
                if store is not None:
                    redone = self._catch_up(store, self._resume(store, since), since)
                    if redone:
                        log.warning("outbound: %d audit messages of events stored before pacsguard last stopped had "
                                    "not reached the spool (pacsguard was killed): spooled now", redone)
                    self.spool.keep_store_from(since)
            except BaseException:
                self._gone = True  # what the subscription still delivers is dropped: no spool then
                subscription.unsubscribe(0)
                raise
        return subscription

    def _resume(self, store: EventStore, since: int) -> int:
        """Where in the store to start spooling: ``since`` (this run's first Event), or earlier when
        the previous run stored Events after the last one it spooled (it was killed)."""
        begun = self.spool.store_from
        if begun is None or begun >= since:
            return since  # a new spool, or one of a version that kept no position: nothing to redo
        # The previous run spooled nothing (no last Event found): each of its Events is yet to be.
        return min(since, self._after_spooled(store, begun))

    def _after_spooled(self, store: EventStore, origin: int) -> int:
        """The seq after the last Event spooled (`Spool.last_event`), looked for from ``origin`` on;
        ``origin`` when it is not there."""
        last = self.spool.last_event
        found = None if last is None else _find(store, origin, last)
        return origin if found is None else found + 1

    def _catch_up(self, store: EventStore, start: int, since: int, *, delivered: str | None = None) -> int:
        """Spool the store's Events from seq ``start`` to its end; those from ``since`` on are marked
        as the subscription's to skip, but for those before the Event ``delivered``, which the
        subscription has brought already. Returns the messages spooled of Events before
        ``since``."""
        from pacsguard.store import EventQuery

        position, redone = start - 1, 0
        caught: set[str] = set()
        if delivered is not None:
            # Where the Event in hand is: those before it were delivered (the subscription brings
            # them in the store's order) and are not to be skipped later; it is, by the caller.
            found = _find(store, start, delivered)
            since = since if found is None else max(since, found)
        while True:
            batch = list(store.search(EventQuery(after_seq=position, limit=_CHUNK)))
            if not batch:
                break
            mapped = [(s.seq, self.messages(s.event)) for s in batch]
            messages = [m for _, ms in mapped for m in ms]
            redone += sum(len(ms) for seq, ms in mapped if seq < since)
            # The subscription may deliver any of these too (written after it began, at `since` on);
            # only those with messages need skipping (an Event without spools nothing either way),
            # which keeps the set to pacsguard's own transfers, not every audit message received.
            caught.update(s.event.id for s, (_, ms) in zip(batch, mapped, strict=True) if ms and s.seq >= since)
            if messages:
                try:
                    self.spool.add(messages, batch[-1].event.id)
                except sqlite3.Error:
                    # Not spooled: the next try starts after the last Event spooled, and marks
                    # again what it must skip; forgetting what these began costs at most a
                    # repeated Begin Transferring.
                    self._forget([s.event for s in batch])
                    raise
            position = batch[-1].seq
        self._caught |= caught
        return redone

    def _forget(self, events: list[Event]) -> None:
        """Forget which patients the associations of ``events`` began: their messages, Begin
        Transferring among them, did not reach the spool and will be made again."""
        for event in events:
            association = association_of(event) if event.component != "atna" else None
            if association is not None:
                self._begun.pop(association, None)


def _find(store: EventStore, start: int, event_id: str) -> int | None:
    """The seq of the Event ``event_id`` in the store at ``start`` or after, None when it is not there.
    Looked for among the newest first (after a kill it is near the end), then from ``start`` on."""
    from pacsguard.store import EventQuery

    for stored in store.search(EventQuery(after_seq=start - 1, limit=_CHUNK, newest_first=True)):
        if stored.event.id == event_id:
            return stored.seq
    position = start - 1
    while True:
        batch = list(store.search(EventQuery(after_seq=position, limit=_CHUNK)))
        if not batch:
            return None
        for stored in batch:
            if stored.event.id == event_id:
                return stored.seq
        position = batch[-1].seq
