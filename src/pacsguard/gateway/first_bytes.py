"""The client's first bytes on a route's port: DICOM, or another protocol whose header reads as a
PDU header?

PS3.8 9.2 (state Sta2): the requestor opens with an A-ASSOCIATE-RQ, and any other PDU there is a
protocol error. Most other protocols start with a byte that is no PDU type (PS3.8 9.3.1: 01 to 07),
which the PDU reader refuses at once. RDP does not: its TPKT header (RFC 1006: 03 00 and a length)
reads as an A-ASSOCIATE-RJ whose PDU-length is two bytes of the length and two of what follows, so
the reader waits for megabytes that never come. The passive sensor tells such bytes apart by their
look (pacsguard.ids.sniff.guess_protocol) and reports them as non-DICOM; the gateway does the same
with :class:`FirstBytes`, so that the inline IDS gives the same alert for the same bytes."""

from __future__ import annotations

from typing import Final

from pacsguard.dicom.pdu import PDU_TYPE_NAMES
from pacsguard.ids.sniff import guess_protocol

#: How many first bytes are kept: what the IDS's ``non-dicom`` observation reports (first_bytes).
HEAD: Final = 16
#: Bytes needed to tell: every guess whose first byte is also a PDU type (RDP's TPKT) needs 4.
NEEDED: Final = 4


class FirstBytes:
    """Collects the first bytes of a client until it can tell whether they are another protocol."""

    __slots__ = ("head", "done")

    def __init__(self) -> None:
        self.head = bytearray()
        self.done = False

    def feed(self, data: bytes | memoryview) -> str | None:
        """The protocol the client's first bytes look like, once that is known and it is not DICOM;
        None while undecided, or for a PDU type byte no other protocol matches, or for a byte that is
        no PDU type (the PDU reader refuses those itself: unknown-pdu-type)."""
        if self.done:
            return None
        self.head += bytes(data[: HEAD - len(self.head)])
        if not self.head:
            return None
        if self.head[0] not in PDU_TYPE_NAMES:
            self.done = True
            return None
        if len(self.head) < NEEDED:
            return None
        self.done = True
        guess = guess_protocol(self.head)
        return None if guess == "unknown" else guess
