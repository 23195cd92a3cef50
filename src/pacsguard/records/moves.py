"""What a C-MOVE delivered, when its sub-operations come back through another route.

A C-MOVE's SCP performs its C-STORE sub-operations on an association of its own to the Move
Destination (PS3.4 C.4.2.2); through the gateway that association arrives on the destination's
return route, whose records name the patients. `MoveLedger` is shared by every route of one
gateway: the C-MOVE's record opens an entry when the request is tracked, each sub-operation's
C-STORE record credits the entry it belongs to at its final response, and the C-MOVE's record
reads the entry at its own final response (the SCP sends it only after its sub-operations,
PS3.4 C.4.2.3), so that the C-MOVE names whom it disclosed to the destination even when its
identifier named no patient (a STUDY-level move).

Which C-MOVE a C-STORE belongs to: the Move Originator Message ID (0000,1031) of the C-STORE-RQ
is the C-MOVE-RQ's Message ID and the Move Originator AE Title (0000,1030) the AE title of who
invoked the C-MOVE (PS3.7 9.1.1.1, Table 9.3-1); the called AE title of the sub-operation's
association is the Move Destination (0000,0600). An SCP that writes another AE title as Move
Originator (pynetdicom 3 writes its own) is still linked by Message ID and destination, and the
mismatch is flagged on both records; nothing recorded is changed. A C-STORE without a Move
Originator Message ID is linked to the C-MOVEs open to its destination whose SCP (the C-MOVE
route's upstream AE title) is its caller: every one of them, since an object disclosed must not
go unnamed.

Which one a C-STORE names (`details.c_move`): every C-MOVE it matched is credited, but it names
only one. A capture of a gateway holds both legs of each C-MOVE (requestor to gateway, gateway to
PACS) and of each sub-operation, so a sub-operation matches two C-MOVEs there. The Move SCP is
who opens the sub-operation's association (PS3.4 C.4.2.2): of several, the C-STORE names the
C-MOVE whose SCP's host is the C-STORE's caller's host (`OpenMove.scp_host`), else the one whose
SCP's AE title is the C-STORE's calling AE title; when that still leaves several, none.

When it is credited: at the C-STORE's final response as its record sees it, on a relay route the
destination's Success or Warning (PS3.4 B.2.3), which says the destination holds the object
whether or not the gateway then gets that response to the SCP. A store-and-forward route is the
destination itself: its Success may wait for its record (route `record_before_response`) and
never leave if the association ends first, and the object is then withdrawn from the spool, never
forwarded; so its records see the ledger through `CreditWhenSent`, whose credits wait until the
route has sent that Success.

Bounds: the ledger holds at most MAX_OPEN_MOVES entries and, across all of them, MAX_HELD
identifiers (SOP Instance UIDs, patients, studies, AE titles and routes), besides each entry's own
limits. Past it a credit still counts in `instances`, but what it names is not listed: its SOP
Instance UID, already past nine tenths of MAX_HELD (a repeat of it then counts again:
`instances_unchecked`), its patient (`patients_omitted`), its study (`studies_omitted`); the
C-MOVE's `details.delivered` then says `ledger_full`, and the log says when the ledger fills and
when it has room again (AE titles and a Message ID, never a patient). Nothing is raised.

Past MAX_OPEN_MOVES open C-MOVEs the oldest is forgotten (evicted): it is credited no more, so its
event would name fewer deliveries than were made; `details.delivered` says `evicted` instead (also
when nothing had been credited yet), and the log says once per burst that C-MOVEs are being
forgotten, then how many once a fifth of the ledger is free again (AE title and Message ID only).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("pacsguard.records")

#: C-MOVEs waiting for their final response, over all routes of one gateway; past it the oldest
#: is forgotten (its record then names what its own identifier and responses said, as before).
MAX_OPEN_MOVES = 10_000
#: Identifiers (SOP Instance UIDs, patients, studies, AE titles, routes) the open C-MOVEs' entries
#: hold together, whatever their number: ~200 bytes each, ~40 MB in all. Eighteen C-MOVEs of the
#: largest studies an entry tells apart (MAX_INSTANCES) fit at once.
MAX_HELD = 200_000
#: Patients and studies one C-MOVE's entry lists; further ones are counted (records.dicom lists
#: at most MAX_IDS_PER_EVENT per event as well).
MAX_DELIVERED_IDS = 1000
#: Move Originator AE titles and return routes one entry lists.
MAX_NAMES = 16
#: SOP instances one entry tells apart (a sub-operation the SCP repeats, or the two legs of one
#: through a gateway a capture holds, count once); past it every credit counts.
MAX_INSTANCES = 10_000


class Held:
    """How many identifiers the entries of one ledger hold, against its MAX_HELD."""

    __slots__ = ("limit", "count", "full")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.full = False  # said so in the log; said again once a fifth of it is free

    def take(self, move: OpenMove, *, instance: bool = False) -> bool:
        """One more identifier for *move*, or False when the ledger holds its limit. A SOP Instance
        UID (*instance*) leaves the last tenth free: telling repeats apart matters less than
        naming the patients and studies delivered."""
        if self.count < self.limit - (self.limit // 10 if instance else 0):
            self.count += 1
            return True
        if not self.full:
            self.full = True
            log.warning("the C-MOVE ledger is full (%d of %d identifiers held): C-MOVE Message ID %d "
                        "from %s (route %s), and others until C-MOVEs end, count further sub-operations "
                        "without listing them (details.delivered.ledger_full)", self.count, self.limit,
                        move.message_id, move.requestor_ae or "?", move.route or "?")
        return False

    def give(self, count: int) -> None:
        self.count -= count
        if self.full and self.count <= self.limit - self.limit // 5:
            self.full = False
            log.info("the C-MOVE ledger has room again (%d of %d identifiers held)", self.count, self.limit)


@dataclass(slots=True, eq=False)
class OpenMove:
    """One C-MOVE relayed by a route, until its final response (PS3.4 C.4.2)."""

    requestor_ae: str | None
    message_id: int
    destination: str
    scp_ae: str | None
    route: str | None
    scp_host: str | None = None  # the host of the C-MOVE's SCP (the acceptor of its association)
    instances: int = 0
    sop_instances: dict[str, None] = field(default_factory=dict)
    patients: dict[str, None] = field(default_factory=dict)
    studies: dict[str, None] = field(default_factory=dict)
    patients_omitted: int = 0
    studies_omitted: int = 0
    instances_unchecked: int = 0  # counted without their SOP Instance UID held: a repeat counts again
    routes: dict[str, None] = field(default_factory=dict)
    originators: dict[str, None] = field(default_factory=dict)
    mismatched: int = 0
    held: Held | None = None  # the ledger's count while the entry is open in it
    holding: int = 0  # of that count, this entry's
    ledger_full: bool = False  # the ledger's limit left something of this entry unlisted
    evicted: bool = False  # forgotten by a full ledger before its final response: credits after it are lost
    closed: bool = False

    def credit(self, sop_instance: str | None, patient_id: str | None, study_uid: str | None,
               route: str | None, originator_ae: str | None) -> None:
        """One instance the destination acknowledged (a C-STORE sub-operation's final response).
        Nothing once the entry is closed: its event is out, and its identifiers given back."""
        if self.closed or (sop_instance and sop_instance in self.sop_instances):
            return  # acknowledged before: the same object once
        if sop_instance and not self._keep(self.sop_instances, sop_instance, MAX_INSTANCES):
            self.instances_unchecked += 1
        self.instances += 1
        if not self._keep(self.patients, patient_id, MAX_DELIVERED_IDS):
            self.patients_omitted += 1
        if not self._keep(self.studies, study_uid, MAX_DELIVERED_IDS):
            self.studies_omitted += 1
        self._keep(self.routes, route, MAX_NAMES)
        self._keep(self.originators, originator_ae, MAX_NAMES)
        if self.mismatch(originator_ae):
            self.mismatched += 1

    def _keep(self, names: dict[str, None], value: str | None, limit: int) -> bool:
        """Add *value* to one of the entry's lists *names*, within its *limit* and the ledger's;
        True also when it is empty or listed already, False when it did not fit."""
        if not value or value in names:
            return True
        if len(names) >= limit:
            return False
        if self.held is not None:
            if not self.held.take(self, instance=names is self.sop_instances):
                self.ledger_full = True
                return False
            self.holding += 1
        names[value] = None
        return True

    def release(self) -> None:
        """The entry is closed: its identifiers go back to the ledger's count. The SOP Instance
        UIDs go (no credit comes any more); what the C-MOVE's event names stays until it is out."""
        self.closed = True
        if self.held is not None:
            self.held.give(self.holding)
            self.held, self.holding = None, 0
        self.sop_instances.clear()

    def mismatch(self, originator_ae: str | None) -> bool:
        """Whether a sub-operation's Move Originator AE Title names another AE than the one that
        invoked this C-MOVE (PS3.7 9.1.1.1 asks for the invoker's)."""
        return originator_ae is not None and originator_ae.strip() != (self.requestor_ae or "").strip()

    def details(self) -> dict[str, Any]:
        """`details.delivered` of the C-MOVE's event (docs/events.md)."""
        out: dict[str, Any] = {"instances": self.instances, "routes": list(self.routes)}
        if self.originators:
            out["move_originators"] = list(self.originators)
        if self.mismatched:
            out["originator_mismatch"] = self.mismatched
        for name in ("patients_omitted", "studies_omitted", "instances_unchecked"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        if self.ledger_full:
            out["ledger_full"] = True
        if self.evicted:
            out["evicted"] = True
        return out


class MoveLedger:
    """The C-MOVEs a gateway's routes are relaying, for their sub-operations to be linked to;
    indexed by Move Destination, so that a C-STORE looks only at the C-MOVEs to its own."""

    __slots__ = ("capacity", "held", "forgotten", "_order", "_by_destination")

    def __init__(self, capacity: int = MAX_OPEN_MOVES, held: int = MAX_HELD) -> None:
        self.capacity = capacity
        self.held = Held(held)  # the identifiers the open entries hold, together
        self.forgotten = 0  # C-MOVEs evicted in the current burst (0: none since it last had room)
        self._order: dict[int, OpenMove] = {}  # id() -> entry, in the order opened
        self._by_destination: dict[str, dict[int, OpenMove]] = {}

    def __len__(self) -> int:
        return len(self._order)

    def open(self, *, requestor_ae: str | None, message_id: int, destination: str, scp_ae: str | None,
             route: str | None, scp_host: str | None = None) -> OpenMove:
        move = OpenMove(requestor_ae, message_id, destination.strip(), scp_ae, route, scp_host, held=self.held)
        self._order[id(move)] = move
        self._by_destination.setdefault(move.destination, {})[id(move)] = move
        if len(self._order) > self.capacity:
            self._evict(next(iter(self._order.values())))
        return move

    def close(self, move: OpenMove) -> None:
        if not self._remove(move):
            return
        if self.forgotten and len(self._order) <= self.capacity - max(1, self.capacity // 5):
            # The burst is over: said once, as the identifiers' bound says it (`Held.give`).
            log.info("the C-MOVE ledger has room again (%d of %d open C-MOVEs); %d C-MOVEs were forgotten "
                     "meanwhile", len(self._order), self.capacity, self.forgotten)
            self.forgotten = 0

    def _evict(self, move: OpenMove) -> None:
        """Forget the oldest open C-MOVE *move*: its later sub-operations are credited to nothing,
        and its event says so (`details.delivered.evicted`). The log says it at a burst's first."""
        move.evicted = True
        self._remove(move)
        if not self.forgotten:
            log.warning("the C-MOVE ledger holds its limit of %d open C-MOVEs: the oldest are forgotten, "
                        "first C-MOVE Message ID %d from %s (route %s); their events say "
                        "details.delivered.evicted and name only what was delivered before",
                        self.capacity, move.message_id, move.requestor_ae or "?", move.route or "?")
        self.forgotten += 1

    def _remove(self, move: OpenMove) -> bool:
        """Take *move* out of the ledger; False when it was not in it (closed or forgotten already)."""
        if self._order.get(id(move)) is not move:
            return False
        del self._order[id(move)]
        move.release()
        same = self._by_destination.get(move.destination)
        if same is not None:
            same.pop(id(move), None)
            if not same:
                del self._by_destination[move.destination]
        return True

    def sub_operation(self, *, destination: str | None, caller_ae: str | None, originator_ae: str | None,
                      originator_message_id: int | None) -> tuple[list[OpenMove], str]:
        """The open C-MOVEs a C-STORE-RQ on an association called *destination* by *caller_ae* is
        a sub-operation of (see the module docstring), and what linked them: ``move_originator``
        (Move Originator AE Title and Message ID), ``message_id`` (the Message ID only: the AE
        title named someone else) or ``destination`` (no Move Originator Message ID); ([], "")
        when it is none's."""
        candidates = list(self._by_destination.get((destination or "").strip(), {}).values())
        if originator_message_id is None:
            caller = (caller_ae or "").strip()
            found = [m for m in candidates if caller and (m.scp_ae or "").strip() == caller]
            return found, "destination" if found else ""
        by_id = [m for m in candidates if m.message_id == originator_message_id]
        exact = [m for m in by_id if not m.mismatch(originator_ae)]
        if exact:
            return exact, "move_originator"
        return by_id, "message_id" if by_id else ""

    @staticmethod
    def named(moves: list[OpenMove], *, caller_host: str | None, caller_ae: str | None) -> OpenMove | None:
        """Which of the C-MOVEs *moves* (:meth:`sub_operation`'s) a C-STORE on an association
        opened from *caller_host* by *caller_ae* names, or None when it cannot tell (see the
        module docstring): the Move SCP opens the sub-operation's association (PS3.4 C.4.2.2)."""
        if len(moves) <= 1:
            return moves[0] if moves else None
        host = [m for m in moves if caller_host and m.scp_host == caller_host]
        if len(host) == 1:
            return host[0]
        # none on the caller's host (a capture without the SCP's own address), or several on it:
        # the caller's AE title may still tell
        ae = (caller_ae or "").strip()
        found = [m for m in host or moves if ae and (m.scp_ae or "").strip() == ae]
        return found[0] if len(found) == 1 else None


class SubOperationsOnly(MoveLedger):
    """A route that only stores (a store-and-forward route, a Storage SCP) sees the gateway's
    ledger through this: its acknowledged C-STOREs are linked and credit the C-MOVEs relay routes
    opened, but a C-MOVE-RQ sent to it, which it refuses (PS3.7 C.5.4), opens no entry. Left
    open until its answer, such an entry could take credit for another C-MOVE's sub-operations
    to the same destination and Message ID, and a refused C-MOVE would then name patients."""

    __slots__ = ("_ledger",)

    def __init__(self, ledger: MoveLedger) -> None:  # the shared entries are the ledger's own
        self._ledger = ledger

    def __len__(self) -> int:
        return len(self._ledger)

    def open(self, *, requestor_ae: str | None, message_id: int, destination: str, scp_ae: str | None,
             route: str | None, scp_host: str | None = None) -> OpenMove:
        # Not indexed: no sub-operation can reach it, and closing it changes nothing.
        return OpenMove(requestor_ae, message_id, destination.strip(), scp_ae, route, scp_host)

    def close(self, move: OpenMove) -> None:
        self._ledger.close(move)

    def sub_operation(self, *, destination: str | None, caller_ae: str | None, originator_ae: str | None,
                      originator_message_id: int | None) -> tuple[list[OpenMove], str]:
        return self._ledger.sub_operation(destination=destination, caller_ae=caller_ae,
                                          originator_ae=originator_ae,
                                          originator_message_id=originator_message_id)


#: A credit waiting for its C-STORE's response to be sent: the entry, and `OpenMove.credit`'s arguments.
Due = tuple[OpenMove, tuple[str | None, str | None, str | None, str | None, str | None]]


@dataclass(slots=True, eq=False)
class _Awaiting(OpenMove):
    """What a record of `CreditWhenSent` links a C-STORE to: the open C-MOVE *of*, as the record
    reads it (`MoveLedger.named`), whose credit waits in *due* instead of reaching it."""

    of: OpenMove | None = None
    due: list[Due] | None = None

    def credit(self, sop_instance: str | None, patient_id: str | None, study_uid: str | None,
               route: str | None, originator_ae: str | None) -> None:
        if self.of is not None and self.due is not None:
            self.due.append((self.of, (sop_instance, patient_id, study_uid, route, originator_ae)))


class CreditWhenSent(MoveLedger):
    """One association of a store-and-forward route sees the gateway's ledger through this: its
    record links each acknowledged C-STORE as any record does (`details.c_move`), but the credit
    waits until `take()`'s function is called, once the route has sent that Success (PS3.4 B.2.3;
    see the module docstring). A Success that never leaves (the association ended first, its
    object withdrawn from the spool) credits nothing."""

    __slots__ = ("_ledger", "_due")

    def __init__(self, ledger: MoveLedger) -> None:  # the shared entries are the ledger's own
        self._ledger = ledger
        self._due: list[Due] = []

    def __len__(self) -> int:
        return len(self._ledger)

    def open(self, *, requestor_ae: str | None, message_id: int, destination: str, scp_ae: str | None,
             route: str | None, scp_host: str | None = None) -> OpenMove:
        return self._ledger.open(requestor_ae=requestor_ae, message_id=message_id, destination=destination,
                                 scp_ae=scp_ae, route=route, scp_host=scp_host)

    def close(self, move: OpenMove) -> None:
        self._ledger.close(move)

    def sub_operation(self, *, destination: str | None, caller_ae: str | None, originator_ae: str | None,
                      originator_message_id: int | None) -> tuple[list[OpenMove], str]:
        moves, linked_by = self._ledger.sub_operation(destination=destination, caller_ae=caller_ae,
                                                      originator_ae=originator_ae,
                                                      originator_message_id=originator_message_id)
        return [self._awaiting(move) for move in moves], linked_by

    def _awaiting(self, move: OpenMove) -> OpenMove:
        return _Awaiting(move.requestor_ae, move.message_id, move.destination, move.scp_ae, move.route,
                         move.scp_host, of=move, due=self._due)

    def take(self) -> Callable[[], None]:
        """The credits of the C-STOREs answered since the last call, as a function that makes them:
        call it once their responses are sent, or never."""
        due, self._due = self._due, []

        def credit() -> None:
            for move, args in due:
                move.credit(*args)
        return credit
