"""Incremental PDU splitter over an arbitrarily segmented TCP byte stream (PS3.8 9.3.1).

Used by the inline relay (fed with whatever ``StreamReader.read`` returns) and by
the passive IDS (fed with reassembled pcap payloads, possibly starting
mid-stream, hence the ``resync`` mode).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from . import errors as E
from .errors import DecodeError
from .pdu import (
    ASSOCIATE_FIXED_LENGTH,
    FIXED_PDU_LENGTH,
    MIN_P_DATA_TF_LENGTH,
    PDU_ABORT,
    PDU_ASSOCIATE_AC,
    PDU_ASSOCIATE_RJ,
    PDU_ASSOCIATE_RQ,
    PDU_HEADER_LENGTH,
    PDU_P_DATA_TF,
    PDU_TYPE_NAMES,
    Buffer,
)

#: Default largest PDU-length accepted (the 6-byte header is not counted, like the
#: Maximum Length sub-item of PS3.8 D.1).  Generous: real AEs negotiate 16 KiB to
#: a few MiB; callers that know the negotiated value should pass it.
DEFAULT_MAX_PDU_LENGTH: Final = 16 * 1024 * 1024

# Minimum PDU-length per type (PS3.8 9.3.2 - 9.3.8).
_MIN_LENGTH: Final = (
    0,
    ASSOCIATE_FIXED_LENGTH,  # 0x01
    ASSOCIATE_FIXED_LENGTH,  # 0x02
    FIXED_PDU_LENGTH,  # 0x03
    MIN_P_DATA_TF_LENGTH,  # 0x04
    FIXED_PDU_LENGTH,  # 0x05
    FIXED_PDU_LENGTH,  # 0x06
    FIXED_PDU_LENGTH,  # 0x07
)

_HEADER = struct.Struct(">BBI")
_U32 = struct.Struct(">I")

# Compact the buffer once this many consumed bytes sit at its front: keeps
# appends amortised O(n) without shifting the buffer after every PDU.
_COMPACT_THRESHOLD: Final = 64 * 1024


# The first 12 bytes of a P-DATA-TF holding one PDV: PDU type and reserved byte, PDU-length, PDV
# item length, presentation context ID, message control header (PS3.8 9.3.5, E.2).
_DATA_PDU = struct.Struct(">HIIBB")
_DATA_PDU_TYPE: Final = PDU_P_DATA_TF << 8  # type 0x04, reserved byte 0


def data_fragment_run(data: Buffer, pos: int, context_id: int, limit: int, *, whole: bool,
                      values: list[memoryview] | None = None) -> tuple[int, int]:
    """The run of P-DATA-TF PDUs from *pos* that each carry one data set fragment which is not
    the last (PS3.8 9.3.5, E.2: one PDV, on *context_id*, message control header 0), with a
    PDU-length of at most *limit*. Checks the headers in place, for callers that take the bulk of
    a data set without splitting it into PDUs; the first PDU that is anything else ends the run.

    Returns (where the run ends, how many PDUs). With *whole*, every PDU of the run lies within
    *data*; otherwise the last one may run past its end (its header was checked: the caller passes
    the rest on as it arrives). *values*, when given, receives a view of each fragment's bytes.
    """
    end = len(data)
    view = memoryview(data)
    count = 0
    unpack = _DATA_PDU.unpack_from
    while end - pos >= 12:
        type_reserved, length, pdv_length, pdv_context, mch = unpack(view, pos)
        if (type_reserved != _DATA_PDU_TYPE or length > limit or pdv_length + 4 != length or pdv_length < 2
                or pdv_context != context_id or mch or (whole and pos + 6 + length > end)):
            break
        if values is not None:
            values.append(view[pos + 12:pos + 6 + length])
        count += 1
        pos += 6 + length
    return pos, count


@dataclass(slots=True, frozen=True)
class RawPDU:
    """One complete PDU as received: type byte and the bytes *including* the header."""

    pdu_type: int
    raw: bytes

    @property
    def length(self) -> int:
        """The PDU-length field value (bytes after the 6-byte header)."""
        return len(self.raw) - PDU_HEADER_LENGTH

    @property
    def name(self) -> str:
        return PDU_TYPE_NAMES.get(self.pdu_type, f"0x{self.pdu_type:02X}")


def _plausible(buf: Buffer, pos: int, avail: int, max_length: int) -> bool | None:
    """Resync test for a PDU header at *pos*: True/False, or None if more bytes are needed.

    Stricter than the normal header check because a match in random image bytes
    must be unlikely: reserved byte 0, a length consistent with the type, and for
    P-DATA-TF a first PDV whose length fits and whose context ID is odd (PS3.8 9.3.5).
    """
    if avail < PDU_HEADER_LENGTH:
        return None
    pdu_type, reserved, length = _HEADER.unpack_from(buf, pos)
    if reserved != 0 or not 1 <= pdu_type <= 7 or length > max_length:
        return False
    if pdu_type == PDU_P_DATA_TF:
        if length < MIN_P_DATA_TF_LENGTH:
            return False
        if avail < 12:
            return None
        pdv_length = _U32.unpack_from(buf, pos + 6)[0]
        context_id = buf[pos + 10]
        mch = buf[pos + 11]
        return 2 <= pdv_length <= length - 4 and context_id & 1 == 1 and mch & 0xFC == 0
    if pdu_type in (PDU_ASSOCIATE_RQ, PDU_ASSOCIATE_AC):
        if length < ASSOCIATE_FIXED_LENGTH:
            return False
        if avail < 8:
            return None
        # Protocol version bit 0 (PS3.8 9.3.2)
        return buf[pos + 6] == 0 and buf[pos + 7] == 1
    if length != FIXED_PDU_LENGTH:
        return False
    if avail < 10:
        return None
    if pdu_type == PDU_ASSOCIATE_RJ:
        return buf[pos + 7] in (1, 2) and buf[pos + 8] in (1, 2, 3)
    if pdu_type == PDU_ABORT:
        return buf[pos + 8] in (0, 1, 2) and buf[pos + 9] <= 6
    return True


class PDUReader:
    """Split a TCP byte stream into complete PDUs (PS3.8 9.3.1).

    ``feed`` returns the PDUs completed by the new bytes; partial PDUs stay
    buffered.  A header that announces more than *max_pdu_length* raises
    ``pdu-length-exceeds-maximum`` before any of the body is buffered, so a
    hostile peer cannot make the relay allocate gigabytes.

    After a :class:`DecodeError` the offending header stays at the front of the
    buffer and every later ``feed`` raises again: the stream is unusable and the
    caller must abort it.

    With ``resync=True`` (passive IDS joining mid-stream or after a capture gap)
    implausible headers are skipped byte by byte instead of raising; the number of
    bytes skipped is in :attr:`skipped_bytes` and the number of separate skips in
    :attr:`resync_count`.

    With ``strict=True`` the reserved header byte must be 0 and the fixed-size
    PDUs must have PDU-length exactly 4 (PS3.8 says receivers "shall not test"
    reserved fields, so this is for anomaly detection, not for interoperability).
    """

    __slots__ = (
        "max_pdu_length",
        "strict",
        "resync",
        "skipped_bytes",
        "resync_count",
        "pdu_count",
        "_buf",
        "_pos",
        "_consumed",
        "_need",
        "_error",
    )

    def __init__(
        self,
        max_pdu_length: int = DEFAULT_MAX_PDU_LENGTH,
        *,
        strict: bool = False,
        resync: bool = False,
    ) -> None:
        if max_pdu_length < ASSOCIATE_FIXED_LENGTH:
            raise ValueError(f"max_pdu_length {max_pdu_length} is too small for any association")
        self.max_pdu_length = max_pdu_length
        self.strict = strict
        self.resync = resync
        self.skipped_bytes = 0
        self.resync_count = 0
        self.pdu_count = 0
        self._buf = bytearray()
        self._pos = 0  # start of unconsumed data in _buf
        self._consumed = 0  # stream offset of _buf[0], for error offsets
        self._need = 0  # bytes needed from _pos before it is worth looking again
        self._error: DecodeError | None = None  # set once the stream is unusable

    @property
    def pending_bytes(self) -> int:
        """Bytes buffered that do not yet form a complete PDU."""
        return len(self._buf) - self._pos

    @property
    def stream_offset(self) -> int:
        """Stream offset of the next unconsumed byte."""
        return self._consumed + self._pos

    @property
    def missing_bytes(self) -> int:
        """Bytes still needed to complete the buffered partial PDU.

        0 when nothing is pending, when the pending bytes do not yet hold a whole
        header (the PDU-length is unknown), in resync mode and after an error.
        """
        pending = len(self._buf) - self._pos
        if pending < PDU_HEADER_LENGTH or self.resync or self._error is not None:
            return 0
        length: int = _U32.unpack_from(self._buf, self._pos + 2)[0]
        return PDU_HEADER_LENGTH + length - pending

    def skip(self, pdus: int, nbytes: int) -> None:
        """Count *pdus* whole PDUs (*nbytes* in all) that the caller took from the stream itself.

        For a caller that checks some PDUs in place instead of feeding them (the
        relay's data set fast path): keeps :attr:`stream_offset` and
        :attr:`pdu_count` right.  Only allowed between PDUs, with nothing pending.
        """
        if self.pending_bytes or self._error is not None:
            raise ValueError("PDUReader.skip inside a PDU or after an error")
        self._consumed += nbytes
        self.pdu_count += pdus

    def feed(self, data: Buffer) -> list[RawPDU]:
        """Add *data* and return every PDU it completes, in order.

        On a :class:`DecodeError` the PDUs completed before the bad header are in
        the exception's ``partial`` list.
        """
        if self._error is not None:
            # A fresh exception each time: callers attach their own partial results.
            raise DecodeError(self._error.code, self._error.detail, self._error.offset)
        if not data:
            return []
        out: list[RawPDU] = []
        buf = self._buf
        try:
            if self._pos == len(buf):
                # Nothing pending: cut PDUs straight out of *data* and buffer only the
                # tail.  The common relay case (whole PDUs per read) never copies twice.
                self._consumed += len(buf)
                buf.clear()
                self._pos = 0
                used = self._split(data, 0, self._consumed, out)
                self._consumed += used
                if used < len(data):
                    buf += memoryview(data)[used:]
                return out
            if not self.resync:
                return self._complete(data, out)
            buf += data
            if len(buf) - self._pos < self._need:
                return out  # still inside a large PDU: nothing to look at yet
            pos = self._split(buf, self._pos, self._consumed, out)
            if pos == len(buf):
                self._consumed += pos
                buf.clear()
                pos = 0
            elif pos > _COMPACT_THRESHOLD and pos * 2 > len(buf):
                del buf[:pos]
                self._consumed += pos
                pos = 0
            self._pos = pos
            return out
        except DecodeError as exc:
            exc.partial = list(out)
            self._error = exc
            raise

    def _complete(self, data: Buffer, out: list[RawPDU]) -> list[RawPDU]:
        """``feed`` with a partial PDU buffered (not in resync mode).

        Only the bytes that complete the buffered PDU are taken from *data*; that PDU
        is joined from the two pieces (one copy) and the PDUs after it are cut
        straight from *data*, like ``feed`` does when nothing is pending.
        """
        buf = self._buf
        pending = len(buf) - self._pos
        size = len(data)
        if pending + size < self._need:
            buf += data
            return out  # still inside a large PDU: nothing to look at yet
        base = self._consumed + len(buf)  # stream offset of data[0]
        view = memoryview(data)
        used = 0
        if pending < PDU_HEADER_LENGTH:
            used = PDU_HEADER_LENGTH - pending
            if size < used:
                buf += data
                self._need = PDU_HEADER_LENGTH
                return out
            buf += view[:used]  # just the rest of the header: a few bytes
            pending = PDU_HEADER_LENGTH
        pdu_type, reserved, length = _HEADER.unpack_from(buf, self._pos)
        self._check(pdu_type, reserved, length, self._consumed + self._pos)
        total = PDU_HEADER_LENGTH + length
        missing = total - pending
        if size - used < missing:
            buf += view[used:]
            self._need = total
            return out
        with memoryview(buf) as head:
            raw = b"".join((head[self._pos :], view[used : used + missing]))
        out.append(RawPDU(pdu_type, raw))
        self.pdu_count += 1
        used += missing
        buf.clear()
        self._pos = 0
        self._consumed = base + used
        end = self._split(view, used, base, out)
        self._consumed = base + end
        if end < size:
            buf += view[end:]
        return out

    def _split(self, src: Buffer, pos: int, base: int, out: list[RawPDU]) -> int:
        """Append complete PDUs from ``src[pos:]`` to *out*; return the new position.

        *base* is the stream offset of ``src[0]`` (for error offsets).
        """
        end = len(src)
        max_length = self.max_pdu_length
        resync = self.resync
        self._need = 0
        while True:
            avail = end - pos
            if avail < PDU_HEADER_LENGTH:
                self._need = PDU_HEADER_LENGTH
                break
            if resync:
                ok = _plausible(src, pos, avail, max_length)
                if ok is None:
                    self._need = avail + 1
                    break
                if not ok:
                    skip_from = pos
                    pos += 1
                    find = getattr(src, "find", None)  # bytes/bytearray; memoryview has none
                    while end - pos >= PDU_HEADER_LENGTH:
                        if find is not None:
                            # Every plausible header has a zero reserved byte at +1:
                            # jump between zero bytes instead of testing each offset.
                            zero = find(b"\x00", pos + 1)
                            if zero < 0:
                                pos = end - 1  # the last byte may still start a header
                                break
                            pos = zero - 1
                        if _plausible(src, pos, end - pos, max_length) is not False:
                            break
                        pos += 1
                    self.skipped_bytes += pos - skip_from
                    self.resync_count += 1
                    continue
            pdu_type, reserved, length = _HEADER.unpack_from(src, pos)
            if not resync:
                try:
                    self._check(pdu_type, reserved, length, base + pos)
                except DecodeError as exc:
                    exc.head = bytes(src[pos : pos + 16])  # what was sent instead of a PDU header
                    raise
            total = PDU_HEADER_LENGTH + length
            if avail < total:
                self._need = total
                break
            out.append(RawPDU(pdu_type, bytes(src[pos : pos + total])))
            self.pdu_count += 1
            pos += total
        return pos

    def _check(self, pdu_type: int, reserved: int, length: int, offset: int) -> None:
        if not 1 <= pdu_type <= 7:
            raise DecodeError(
                E.UNKNOWN_PDU_TYPE,
                f"unknown PDU type 0x{pdu_type:02X} (PDU-length field {length})",
                offset,
            )
        name = PDU_TYPE_NAMES[pdu_type]
        if length > self.max_pdu_length:
            raise DecodeError(
                E.PDU_LENGTH_EXCEEDS_MAXIMUM,
                f"{name} announces PDU-length {length}, more than the allowed {self.max_pdu_length}",
                offset + 2,
            )
        minimum = _MIN_LENGTH[pdu_type]
        if length < minimum:
            raise DecodeError(
                E.BAD_PDU_LENGTH,
                f"{name} announces PDU-length {length}, less than its minimum {minimum}",
                offset + 2,
            )
        if self.strict:
            if reserved != 0:
                raise DecodeError(
                    E.RESERVED_FIELD_NONZERO,
                    f"{name} reserved header byte is 0x{reserved:02X}",
                    offset + 1,
                )
            if minimum == FIXED_PDU_LENGTH and length != FIXED_PDU_LENGTH:
                raise DecodeError(
                    E.BAD_PDU_LENGTH,
                    f"{name} announces PDU-length {length}, expected exactly {FIXED_PDU_LENGTH}",
                    offset + 2,
                )


def looks_like_associate_rq(first_bytes: Buffer) -> bool:
    """Heuristic: do the first bytes of a TCP stream start an A-ASSOCIATE-RQ (PS3.8 9.3.2)?

    Checks PDU type 0x01, reserved byte 0, a plausible PDU-length, protocol
    version 0x0001 and two printable, non-blank AE titles.  Needs the first 42
    bytes (header + both AE titles); returns False with fewer.  Lets the IDS
    find DICOM on any port.
    """
    if len(first_bytes) < 42:
        return False
    pdu_type, reserved, length = _HEADER.unpack_from(first_bytes, 0)
    if pdu_type != PDU_ASSOCIATE_RQ or reserved != 0:
        return False
    # 68 fixed bytes plus at least an application context and one presentation context.
    if not ASSOCIATE_FIXED_LENGTH < length <= 1024 * 1024:
        return False
    if first_bytes[6] != 0 or first_bytes[7] != 1:
        return False
    for start in (10, 26):
        title = bytes(first_bytes[start : start + 16])
        if any(b < 0x20 or b > 0x7E or b == 0x5C for b in title) or not title.strip(b" "):
            return False
    return True
