"""The repository's side of exactly-once delivery. A sender that resends after a reconnection
(pacsguard's outbound feed) numbers its messages in its structured data: the origin (its
AuditSourceID), the instance of its spool (random, made with the spool) and a sequence.

Audit messages are evidence, so a message is dropped as a resend only when this repository already
stored the very same message: the same payload bytes (their digest) under the same origin,
instance and sequence, from the same authenticated sender (the subject of a TLS client
certificate). A message from UDP, plain TCP or TLS without a client certificate is always stored:
anyone can send one with any numbers. A number used again with other content (a forged message,
a sender restored from a backup) is stored too, and flagged with an ``atna.delivery.sequence-reused``
record naming both messages. So a message can be stored twice, never lost.

What was stored is remembered for the newest ``REMEMBER`` numbered messages (a digest and an id
each, in memory: bounded), learnt once at start from the newest ``LOOKBACK`` audit messages in the
store; a resend of an older one is stored a second time."""

from __future__ import annotations

import base64
import hashlib
import re
import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from pacsguard.events.model import Event, Outcome, Party, Severity

if TYPE_CHECKING:
    from pacsguard.store import EventStore

#: Where the element starts: most messages have none, and a substring test is cheaper than the regex.
_SD_START = "[pacsguard@32473"
#: The SD-ELEMENT of the delivery parameters (RFC 5424 6.3), its SD-PARAMs in any order.
_ELEMENT = re.compile(r'\[pacsguard@32473((?:\s+[^\s="\]]+="(?:[^"\\]|\\.)*")*)\s*\]')
_PARAM = re.compile(r'([^\s="\]]+)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = re.compile(r'\\(["\\\]])')

#: Audit messages read back at start to learn what was stored (~20 us each).
LOOKBACK = 50_000
#: Numbered messages remembered (about 270 bytes each, 14 MB in all): what a sender resends after a
#: reconnection is what it sent since its last confirmed delivery, seconds' worth.
REMEMBER = 50_000
#: Resends remembered as having their record (`Deduplicator.fresh`).
MAX_RUNS = 10_000


class Delivery(NamedTuple):
    """The delivery parameters of a numbered message; ``instance`` is "" from senders that predate it."""

    origin: str
    instance: str
    seq: int


#: (certificate subject, origin, instance): one sender's sequence space.
Stream = tuple[str, str, str]
#: A stream and a sequence number.
Key = tuple[str, str, str, int]


def delivery_params(structured_data: str | None) -> Delivery | None:
    """The pacsguard@32473 parameters of a message's STRUCTURED-DATA, when it has them."""
    if not structured_data or _SD_START not in structured_data:
        return None
    element = _ELEMENT.search(structured_data)
    if element is None:
        return None
    params = {name: _UNESCAPE.sub(r"\1", value) if "\\" in value else value
              for name, value in _PARAM.findall(element.group(1))}
    origin, seq = params.get("origin"), params.get("seq")
    if origin is None or seq is None or not seq.isdigit() or not seq.isascii():
        return None
    return Delivery(origin, params.get("instance", ""), int(seq))


def delivery_of(structured_data: str | None) -> tuple[str, int] | None:
    """(origin, seq) of a numbered message (see `delivery_params`)."""
    found = delivery_params(structured_data)
    return None if found is None else (found.origin, found.seq)


def _numbered(event: Event) -> tuple[Key, Delivery] | None:
    """The key of a numbered message from an authenticated sender; None for any other message."""
    # The syslog header first: the reading processes send it decoded, the rest of the details is
    # decoded only when read (atna/syslog/readers.py), here only for numbered messages.
    syslog = event.details.get("syslog")
    found = delivery_params(syslog.get("structured_data") if isinstance(syslog, dict) else None)
    if found is None:
        return None
    sender: Any = event.details.get("sender")
    # Only a client certificate says who sent it: an address is forged with one datagram.
    if not isinstance(sender, dict) or sender.get("transport") != "tls" or not sender.get("certificate"):
        return None
    # Interned: the many keys of one sender share its strings.
    stream = (sys.intern(str(sender["certificate"])), sys.intern(found.origin), sys.intern(found.instance))
    return (*stream, found.seq), found


def payload_digest(event: Event) -> bytes | None:
    """A digest of the message's payload (MSG, RFC 5424 6.4) as received: what a resend repeats byte
    for byte (its header, with the time of sending, changes)."""
    raw = event.details.get("raw")
    syslog = event.details.get("syslog")
    sd = syslog.get("structured_data") if isinstance(syslog, dict) else None
    payload: bytes | None = None
    if isinstance(raw, str) and isinstance(sd, str) and sd in raw:
        # The MSG follows the STRUCTURED-DATA (RFC 5424 6): cheaper than parsing the frame again.
        payload = raw[raw.index(sd) + len(sd):].strip().encode("utf-8")
    else:
        payload = _parsed_payload(event)
    if payload is None:
        return None
    return hashlib.blake2b(payload.removeprefix(b"\xef\xbb\xbf"), digest_size=_DIGEST).digest()


def _parsed_payload(event: Event) -> bytes | None:
    """The MSG of a frame received as bytes that are not UTF-8 (``raw_base64``)."""
    from pacsguard.atna.syslog import rfc5424

    try:
        frame = base64.b64decode(event.details["raw_base64"])
        return rfc5424.parse(frame).msg.strip()
    except (KeyError, ValueError, TypeError):
        return None


class Deduplicator:
    """What was stored per numbered message (a digest and an event id); ``record`` is given one Event
    for the first resent message of each run of them, so a drop leaves a trace without a record per
    message, and one for each number used again with other content."""

    def __init__(self, record: Callable[[Event], None] | None = None, remember: int = REMEMBER) -> None:
        self.record = record
        self.remember = remember
        #: key -> digest + event id (`_pack`), oldest first; a number used again keeps its other
        #: messages in ``others`` (rare: a forger or a sender restored from a backup).
        self.stored: OrderedDict[Key, bytes] = OrderedDict()
        self.others: dict[Key, list[bytes]] = {}
        self.dropped = 0
        #: The connections (stream, host, port) whose resend has its record: one per resend.
        self._in_run: set[tuple[Stream, Any, Any]] = set()

    def learn(self, store: EventStore, lookback: int = LOOKBACK) -> None:
        """What the newest ``lookback`` audit messages of the store were (oldest remembered first)."""
        from pacsguard.store import EventQuery

        found = []
        for stored in store.search(EventQuery(kind="atna.audit.*", newest_first=True, limit=lookback)):
            numbered = _numbered(stored.event)
            if numbered is not None:
                digest = payload_digest(stored.event)
                if digest is not None:
                    found.append((numbered[0], _pack(digest, stored.event.id)))
        for key, packed in reversed(found):
            if self._match(key, packed[:_DIGEST]) is None:
                self._remember(key, packed)

    def fresh(self, event: Event) -> bool:
        """False for a message this repository already stored (then it is not published again)."""
        numbered = _numbered(event)
        if numbered is None:
            return True
        key, delivery = numbered
        digest = payload_digest(event)
        if digest is None:
            return True
        sender = _sender(event)
        # A resend is what one connection sends again, up to its first message not stored before.
        run = (key[:3], sender.get("host"), sender.get("port"))
        same = self._match(key, digest)
        if same is not None:
            self.dropped += 1
            if run not in self._in_run and self.record is not None:
                if len(self._in_run) >= MAX_RUNS:  # connections that ended inside a resend: at worst a record more
                    self._in_run.clear()
                self._in_run.add(run)
                self.record(_duplicate(event, delivery, same))
            return False
        self._in_run.discard(run)
        first = self.stored.get(key)
        if first is not None and self.record is not None:
            self.record(_reused(event, delivery, first[_DIGEST:].decode()))
        self._remember(key, _pack(digest, event.id))
        return True

    def _match(self, key: Key, digest: bytes) -> str | None:
        """The id of the stored message under ``key`` with this digest, if any."""
        candidates: list[bytes] = [self.stored.get(key, b""), *self.others.get(key, [])]
        for packed in candidates:
            if packed[:_DIGEST] == digest:
                return packed[_DIGEST:].decode()
        return None

    def _remember(self, key: Key, packed: bytes) -> None:
        if key in self.stored:
            others = self.others.setdefault(key, [])
            if len(others) < MAX_OTHERS:  # past it, more reuses are stored and flagged, not remembered
                others.append(packed)
            return
        self.stored[key] = packed
        while len(self.stored) > self.remember:
            oldest, _ = self.stored.popitem(last=False)
            self.others.pop(oldest, None)


_DIGEST = 16
#: Other messages remembered under one sequence number: a sender reusing one number for thousands
#: of messages must not make each new one cost a walk of them all (a resend of one past this is
#: stored again and flagged, never lost).
MAX_OTHERS = 16


def _pack(digest: bytes, event_id: str) -> bytes:
    """One remembered message in one object (~50 bytes, not a tuple of two): its digest, its id."""
    return digest + event_id.encode()


def _sender(event: Event) -> dict[str, Any]:
    sender: Any = event.details.get("sender")
    return dict(sender) if isinstance(sender, dict) else {}


def _duplicate(event: Event, delivery: Delivery, stored_id: str) -> Event:
    sender = _sender(event)
    instance = f" instance {delivery.instance}" if delivery.instance else ""
    return Event(kind="atna.delivery.duplicate", component="atna", severity=Severity.NOTICE,
                 actor=Party(host=sender.get("host"), port=sender.get("port")),
                 message=f"{delivery.origin}{instance} via {sender.get('certificate')} resent message "
                         f"{delivery.seq}, already stored byte for byte (event {stored_id}): dropped, and any "
                         "more of this resend",
                 details={"sender": sender, "origin": delivery.origin, "instance": delivery.instance,
                          "seq": delivery.seq, "stored_id": stored_id})


def _reused(event: Event, delivery: Delivery, stored_id: str) -> Event:
    sender = _sender(event)
    instance = f" instance {delivery.instance}" if delivery.instance else ""
    return Event(kind="atna.delivery.sequence-reused", component="atna", severity=Severity.WARNING,
                 outcome=Outcome.MINOR_FAILURE, actor=Party(host=sender.get("host"), port=sender.get("port")),
                 message=f"{delivery.origin}{instance} via {sender.get('certificate')} numbered two different "
                         f"messages {delivery.seq}: event {stored_id} and event {event.id}; both are stored",
                 details={"sender": sender, "origin": delivery.origin, "instance": delivery.instance,
                          "seq": delivery.seq, "stored_id": stored_id, "new_id": event.id})
