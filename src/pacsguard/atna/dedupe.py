"""The repository's side of exactly-once delivery: a sender that resends after a reconnection
(pacsguard's outbound feed) numbers its messages per origin in its structured data; a message at or
below the highest sequence already stored for its origin is dropped. The highest sequence of an
origin not seen since start is read from the store (the newest event that origin delivered)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pacsguard.events.model import Event

if TYPE_CHECKING:
    from pacsguard.store import EventStore

_PARAMS = re.compile(r'\[pacsguard@32473 origin="((?:[^"\\]|\\.)*)" seq="(\d+)"\]')


def delivery_of(structured_data: str | None) -> tuple[str, int] | None:
    if not structured_data:
        return None
    match = _PARAMS.search(structured_data)
    if match is None:
        return None
    return match.group(1).replace('\\"', '"').replace("\\]", "]").replace("\\\\", "\\"), int(match.group(2))


class Deduplicator:
    def __init__(self, store: EventStore | None) -> None:
        self.store = store
        self.highest: dict[str, int] = {}
        self.dropped = 0

    def fresh(self, event: Event) -> bool:
        """False for a message this repository already stored (then it is not published again)."""
        syslog = event.details.get("syslog")
        found = delivery_of(syslog.get("structured_data") if isinstance(syslog, dict) else None)
        if found is None:
            return True
        origin, seq = found
        if origin not in self.highest:
            self.highest[origin] = self._stored_highest(origin)
        if seq <= self.highest[origin]:
            self.dropped += 1
            return False
        self.highest[origin] = seq
        return True

    def _stored_highest(self, origin: str) -> int:
        if self.store is None:
            return 0
        from pacsguard.store import EventQuery

        for stored in self.store.search(EventQuery(kind="atna.*", newest_first=True, limit=None)):
            syslog = stored.event.details.get("syslog")
            found = delivery_of(syslog.get("structured_data") if isinstance(syslog, dict) else None)
            if found is not None and found[0] == origin:
                return found[1]
        return 0
