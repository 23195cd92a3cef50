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

from pacsguard.dicom.errors import UNKNOWN_PDU_TYPE, DecodeError
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
            # kept up to HEAD bytes, for cut_short() when the client closes before a PDU header
            self.done = len(self.head) >= HEAD
            return None
        if len(self.head) < NEEDED:
            return None
        self.done = True
        guess = guess_protocol(self.head)
        return None if guess == "unknown" else guess

    def cut_short(self) -> DecodeError | None:
        """The client closed before a whole PDU header (PS3.8 9.3.1: six bytes) arrived, so the PDU
        reader never judged its first byte: when that byte is no PDU type, the error the reader
        gives such bytes once it has six (unknown-pdu-type at offset 0, the bytes in ``head``), so
        the IDS hears of them as non-DICOM, as the passive sensor does (``\\r\\n\\r\\n`` and a
        close); None for a PDU type byte (the connection ended inside a PDU: truncated-pdu)."""
        if not self.head or self.head[0] in PDU_TYPE_NAMES:
            return None
        exc = DecodeError(UNKNOWN_PDU_TYPE, f"unknown PDU type 0x{self.head[0]:02X} (the connection closed "
                                            f"after {len(self.head)} bytes, before a whole PDU header)", 0)
        exc.head = bytes(self.head)
        return exc
