"""The repository's side of exactly-once delivery: a sender that resends after a reconnection
(pacsguard's outbound feed) numbers its messages per origin in its structured data; a message at or
below the highest sequence already stored for its origin is dropped.

An origin is only ever compared with what the same sender delivered (its client certificate's
subject, else its address): a message from another sender that names the origin cannot suppress
the real one's. What was stored before a restart is learnt once, at start, from the newest
LOOKBACK audit messages in the store; an origin whose last delivery is older than that starts from
nothing, so a message it resends may be stored twice (a duplicate, never a loss)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pacsguard.events.model import Event, Party, Severity

if TYPE_CHECKING:
    from pacsguard.store import EventStore

_PARAMS = re.compile(r'\[pacsguard@32473 origin="((?:[^"\\]|\\.)*)" seq="(\d+)"\]')

#: Audit messages read back at start to learn each origin's highest sequence (~20 us each).
LOOKBACK = 50_000

#: (sender, origin): the sender is its certificate subject or its address.
Key = tuple[str, str]


def delivery_of(structured_data: str | None) -> tuple[str, int] | None:
    if not structured_data:
        return None
    match = _PARAMS.search(structured_data)
    if match is None:
        return None
    return match.group(1).replace('\\"', '"').replace("\\]", "]").replace("\\\\", "\\"), int(match.group(2))


def _delivery(event: Event) -> tuple[Key, int] | None:
    syslog = event.details.get("syslog")
    found = delivery_of(syslog.get("structured_data") if isinstance(syslog, dict) else None)
    if found is None:
        return None
    sender: Any = event.details.get("sender")
    sender = sender if isinstance(sender, dict) else {}
    who = str(sender.get("certificate") or sender.get("host") or "?")
    return (who, found[0]), found[1]


class Deduplicator:
    """The highest sequence stored per (sender, origin); ``record`` is given one Event for the first
    resent message of each run of them, so a drop leaves a trace without a record per message."""

    def __init__(self, record: Callable[[Event], None] | None = None) -> None:
        self.record = record
        self.highest: dict[Key, int] = {}
        self.dropped = 0
        self._in_run: set[Key] = set()

    def learn(self, store: EventStore, lookback: int = LOOKBACK) -> None:
        """Each (sender, origin)'s highest sequence among the newest ``lookback`` audit messages."""
        from pacsguard.store import EventQuery

        for stored in store.search(EventQuery(kind="atna.*", newest_first=True, limit=lookback)):
            found = _delivery(stored.event)
            if found is not None:
                key, seq = found
                self.highest[key] = max(seq, self.highest.get(key, 0))

    def fresh(self, event: Event) -> bool:
        """False for a message this repository already stored (then it is not published again)."""
        found = _delivery(event)
        if found is None:
            return True
        key, seq = found
        highest = self.highest.get(key, 0)
        if seq > highest:
            self.highest[key] = seq
            self._in_run.discard(key)
            return True
        self.dropped += 1
        if key not in self._in_run and self.record is not None:
            self._in_run.add(key)
            self.record(_duplicate(event, key, seq, highest))
        return False


def _duplicate(event: Event, key: Key, seq: int, highest: int) -> Event:
    who, origin = key
    sender: Any = event.details.get("sender") or {}
    return Event(kind="atna.delivery.duplicate", component="atna", severity=Severity.NOTICE,
                 actor=Party(host=sender.get("host"), port=sender.get("port")),
                 message=f"{origin} via {who} resent message {seq}, already stored (highest {highest}): dropped, "
                         "and any more of this resend",
                 details={"sender": sender, "origin": origin, "seq": seq, "highest": highest})
