"""Object checks: what a store-and-forward route does with each composite object it has received
completely (PS3.4 B.2, the C-STORE of one SOP Instance) before it forwards it.

A route in store-and-forward mode spools an object, then runs the route's ``object_checks`` in
order: the scanner's ``scan``, de-identification's ``deidentify``. Each check returns an
ObjectVerdict: forward (possibly a replacement file), refuse with a DIMSE status, or quarantine.
The first check that does not forward decides; a replacement is what the next check sees.
Parts offer checks through ``Part.object_checks`` (pacsguard.runtime.part)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    from pacsguard.events import Event


@dataclass(frozen=True, slots=True)
class ReceivedObject:
    """One object in the spool: a Part-10 file (PS3.10 7.1: preamble, file meta, data set) and
    what the association said about it."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    calling_ae: str
    called_ae: str
    peer_host: str
    route: str
    association_id: str = ""
    #: the sender's user: its TLS certificate's subject, else the username it claimed in User
    #: Identity Negotiation (PS3.7 D.3.3.7.1); "" when neither named one
    user: str = ""


class ObjectAction(str, Enum):
    FORWARD = "forward"
    REFUSE = "refuse"  # answer the C-STORE with a failure status, keep nothing
    QUARANTINE = "quarantine"  # answer with a failure status, keep the object aside for review


#: PS3.4 Table B.2-1: "Cannot understand" (0xC000 range) is the failure a refused object gets
#: unless the check names another; 0xA700 (out of resources) is for a full spool.
STATUS_CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True, slots=True)
class ObjectVerdict:
    """What one check decided. ``status`` is the C-STORE-RSP status for refuse/quarantine;
    ``replacement`` a new Part-10 file to forward instead (written by the check next to the
    original; the route makes it durable); ``events`` are recorded whatever the action."""

    action: ObjectAction = ObjectAction.FORWARD
    check: str = ""
    rule: str = ""
    reason: str = ""
    status: int = STATUS_CANNOT_UNDERSTAND
    replacement: Path | None = None
    events: tuple[Event, ...] = ()


class ObjectCheck(Protocol):
    """One object check. ``inspect`` runs in a worker thread (it may read the whole file) and
    must not raise for any input: a file it cannot judge is refused, naming why."""

    name: str

    def inspect(self, obj: ReceivedObject) -> ObjectVerdict: ...
