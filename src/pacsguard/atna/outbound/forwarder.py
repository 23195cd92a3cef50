"""The bus subscriber of the outbound feed: each of pacsguard's own stored Events that PS3.15 A.5
has a message for goes into the spool (committed before the next one is taken)."""

from __future__ import annotations

from pacsguard.atna.message.build import to_xml
from pacsguard.atna.outbound.mapping import to_record
from pacsguard.atna.outbound.spool import Spool
from pacsguard.events.model import Event


class Forwarder:
    def __init__(self, spool: Spool, source_id: str) -> None:
        self.spool = spool
        self.source_id = source_id

    def __call__(self, event: Event) -> None:
        if event.component == "atna":
            return  # received audit messages are not ours to forward (nor our delivery notes)
        record = to_record(event, self.source_id)
        if record is not None:
            self.spool.add([to_xml(record)])
