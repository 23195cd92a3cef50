"""Expected connections: associations a protocol exchange just announced (Zeek's "expected
connections"), so that the rules can tell them from unsolicited ones.

A C-MOVE-RQ (PS3.4 C.4.2.1.4.1) names a Move Destination AE; the C-MOVE SCP then opens a new
association of its own, from its host to that AE, to send the instances (PS3.4 C.4.2.2).  The
DICOM adapter records the announcement here when it sees the C-MOVE-RQ and looks each
A-ASSOCIATE-RQ up: a match carries the announcing flow and message id into the observation and
the association's record.

Bounded: at most ``cap`` announcements (oldest evicted first), each valid for ``ttl`` seconds after
it was made or last refreshed (by the C-MOVE's responses), on the engine's clock.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["Expectation", "ExpectedConnections"]


@dataclass(slots=True)
class Expectation:
    """An association from ``host`` to the AE title ``called_ae`` is expected until ``expires``,
    because of message ``message_id`` on flow ``flow``."""

    host: str
    called_ae: str
    flow: str
    message_id: int | None
    expires: float

    def label(self) -> str:
        """``flow#message_id``: the value of the observation field ``expected_by``."""
        return f"{self.flow}#{self.message_id}" if self.message_id is not None else self.flow

    def as_details(self) -> dict[str, object]:
        """The ``expected_by`` details of the expected association's record."""
        return {"flow": self.flow, "message_id": self.message_id}


class ExpectedConnections:
    """The announcements still valid, keyed by (host, called AE title); not thread-safe."""

    __slots__ = ("_data", "cap", "evicted", "ttl")

    def __init__(self, cap: int, ttl: float) -> None:
        if cap < 1:
            raise ValueError("cap must be at least 1")
        self.cap = cap
        self.ttl = ttl
        self._data: OrderedDict[tuple[str, str], Expectation] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._data)

    def expect(self, host: str, called_ae: str, flow: str, message_id: int | None, now: float) -> tuple[str, str]:
        """Announce (or re-announce) an association from ``host`` to ``called_ae``; returns its key."""
        key = (host, called_ae.strip())
        data = self._data
        data.pop(key, None)
        data[key] = Expectation(key[0], key[1], flow, message_id, now + self.ttl)
        while len(data) > self.cap:
            data.popitem(last=False)
            self.evicted += 1
        return key

    def refresh(self, key: tuple[str, str], now: float) -> None:
        """The announcing exchange is still going (a pending response): keep it valid for ``ttl`` more."""
        found = self._data.get(key)
        if found is not None and found.expires >= now:
            found.expires = now + self.ttl
            self._data.move_to_end(key)

    def match(self, host: str, called_ae: str | None, now: float) -> Expectation | None:
        """The announcement an association from ``host`` to ``called_ae`` fulfils, if still valid.
        Not consumed: one C-MOVE may open several sub-associations to its destination."""
        if not called_ae:
            return None
        key = (host, called_ae.strip())
        found = self._data.get(key)
        if found is None:
            return None
        if found.expires < now:
            del self._data[key]
            return None
        return found
