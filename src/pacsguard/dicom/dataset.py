"""Data set inspection: a tolerant identifier peek and a strict identifier decoder.

:func:`peek_identifiers` walks the *first fragment* of a data set as it crosses
the wire (PS3.5 7.1 data element encoding, 7.5 nesting) and picks the handful
of attributes the gateway and the IDS key on.  It never raises and never
allocates in proportion to a length field: a truncated or malformed fragment
just yields fewer attributes and ``complete=False``.

:func:`decode_identifier` fully decodes the small C-FIND/C-MOVE/C-GET
identifiers with pydicom and maps every pydicom failure to ``DecodeError``.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from . import errors as E
from .errors import DecodeError
from .pdu import Buffer
from .uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from .vr import LONG_VRS

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

# pydicom (~100 ms to import) is loaded only where it is used: decoding text in a specific character
# set, and decoding an identifier. Peeking at ASCII data sets, what the gateway and the IDS do per
# object, needs none of it.

#: Largest inflated prefix examined for Deflated Explicit VR Little Endian; the
#: identifiers sit in the first few KiB, the cap defuses deflate bombs.
PEEK_INFLATE_LIMIT: Final = 256 * 1024
#: `DatasetPeek.anomaly` of a deflated data set whose walk reached `PEEK_INFLATE_LIMIT` before it
#: got past (0020,000E): the identifiers further on were not read.
INFLATE_LIMIT: Final = "inflate-limit"
#: Largest wanted value a peek keeps (a UI, CS, SH, LO or PN: 64 characters or so, PS3.5 6.2); past
#: it only padding may follow. Covers every value an explicit VR's 2-byte length can announce.
PEEK_VALUE_CAP: Final = 64 * 1024
#: Largest identifier :func:`decode_identifier` accepts (encoded or inflated).
MAX_IDENTIFIER_LENGTH: Final = 1024 * 1024

_UNDEFINED: Final = 0xFFFFFFFF
# Open undefined-length sequences and items a peek follows: sequences nested 128 deep, each with its item
# (docs/gateway.md); data sets nest a handful.
_MAX_DEPTH: Final = 256
#: Element and item headers a walk reads one by one (inside undefined-length sequences; a long value
#: or a defined-length sequence is skipped whole): the wanted attributes come before (0020,000E), so
#: an honest data set reads a few thousand at most, and a flood of tiny elements must not hold the
#: gateway's event loop (~50 ns each in C would be fine, ~0.4 us each here is not, unbounded).
_MAX_HEADERS: Final = 100_000
# Bytes of a fragment joined to the start of a header cut by the previous one: more than the most
# a header needs to be read (14: an item tag, and the 6 bytes of its first element that tell whether
# the item is encoded implicit).
_HEAD_ROOM: Final = 32
# Last wanted tag: once a top level tag passes it nothing interesting follows
# (data elements are in ascending tag order, PS3.5 7.1).
_STOP_TAG: Final = 0x0020000E

# UI and CS values use the default repertoire; SH, LO and PN may use the
# Specific Character Set (PS3.5 6.1.2.3).
_PLAIN, _TEXT = 0, 1
_WANTED: Final = MappingProxyType(
    {
        0x00080005: ("specific_character_set", _PLAIN),
        0x00080016: ("sop_class_uid", _PLAIN),
        0x00080018: ("sop_instance_uid", _PLAIN),
        0x00080050: ("accession_number", _TEXT),
        0x00080052: ("query_retrieve_level", _PLAIN),
        0x00080060: ("modality", _PLAIN),
        0x00100010: ("patient_name", _TEXT),
        0x00100020: ("patient_id", _TEXT),
        0x0020000D: ("study_instance_uid", _PLAIN),
        0x0020000E: ("series_instance_uid", _PLAIN),
    }
)


def _vr_code(vr: str) -> int:
    return (ord(vr[0]) << 8) | ord(vr[1])


# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2, Table 7.1-1).
_LONG_VRS: Final = frozenset(_vr_code(vr) for vr in LONG_VRS)
_VR_SQ: Final = _vr_code("SQ")
_VR_UN: Final = _vr_code("UN")

# The same VR codes as two little-endian bytes, as the top-level skim reads them (see `_skim`).
_LONG_VRS_LE: Final = frozenset(((code & 0xFF) << 8) | (code >> 8) for code in _LONG_VRS)

_LE_TAG = struct.Struct("<HHI")  # tag + 4-byte length (implicit VR, items, delimiters)
_LE_EXPLICIT = struct.Struct("<HHHH")  # tag, VR, 2-byte length (explicit VR little endian)
_BE_TAG = struct.Struct(">HHI")
_LE_U16 = struct.Struct("<H")
_BE_U16 = struct.Struct(">H")
_LE_U32 = struct.Struct("<I")
_BE_U32 = struct.Struct(">I")

# PS3.5 6.1.2.5.3: PN delimiters that must not be decoded as part of an escape sequence.
_PN_DELIMITERS: Final = frozenset({0x5C, 0x3D, 0x5E})


@dataclass(slots=True)
class DatasetPeek:
    """Identifiers found at the top level of a data set (the walk stops after (0020,000E)).

    ``complete`` is True when the walk got past (0020,000E) - so every wanted
    attribute that exists has been seen - or reached the exact end of a data
    set known to be whole.  ``anomaly`` names the structural problem that
    stopped the walk early, if any (the walker itself never raises).
    """

    patient_id: str | None = None
    patient_name: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    modality: str | None = None
    query_retrieve_level: str | None = None
    accession_number: str | None = None
    specific_character_set: str | None = None
    complete: bool = False
    bytes_examined: int = 0
    anomaly: str | None = None


def walk_stop(peek: DatasetPeek) -> str:
    """Where and why the walk of a data set ended before it got past (0020,000E) (``peek.complete``
    False), in the words a refusal or a record gives: what lies further on was not read."""
    at = peek.bytes_examined
    if peek.anomaly == INFLATE_LIMIT:
        return (f"the walk stopped at byte {at:,} inflated ({INFLATE_LIMIT}: a deflated data set is "
                f"walked through its first {PEEK_INFLATE_LIMIT // 1024} KiB, PS3.5 A.5)")
    if peek.anomaly:
        return f"the walk stopped at byte {at:,} ({peek.anomaly})"
    return f"the data set ended {at:,} bytes in, inside an element or a sequence (PS3.5 7.1, 7.5)"


def transfer_syntax_encoding(transfer_syntax_uid: str | None) -> tuple[bool | None, bool, bool]:
    """``(implicit_vr, little_endian, deflated)`` for a transfer syntax (PS3.5 10, A.1-A.5).

    ``implicit_vr`` is None for an unknown (None) syntax: the walker then guesses
    from the first element.  Every encapsulated syntax encodes its data set as
    Explicit VR Little Endian, so unrecognised UIDs map to that.
    """
    if transfer_syntax_uid is None:
        return None, True, False
    if transfer_syntax_uid == IMPLICIT_VR_LITTLE_ENDIAN:
        return True, True, False
    if transfer_syntax_uid == EXPLICIT_VR_BIG_ENDIAN:
        return False, False, False
    if transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        return False, True, True
    return False, True, False


def _looks_explicit(buf: Buffer, pos: int) -> bool:
    # Same heuristic as pydicom: two upper-case letters where an explicit VR sits.
    # An implicit length would have to exceed 16 KiB to look like this.
    return 0x40 < buf[pos + 4] < 0x5B and 0x40 < buf[pos + 5] < 0x5B


def _decode_text(raw: bytes, charset: str | None) -> str:
    if raw.isascii() or not charset:
        # Default repertoire; latin-1 never fails and matches pydicom's default.
        return raw.decode("latin-1")
    from pydicom.charset import convert_encodings, decode_bytes

    try:
        return decode_bytes(raw, convert_encodings(charset.split("\\")), set(_PN_DELIMITERS))
    except Exception:  # an exotic or broken charset must not break a peek
        return raw.decode("latin-1")


def _store(peek: DatasetPeek, attr: str, kind: int, raw: bytes) -> None:
    # UI pads with NUL, text VRs with spaces (PS3.5 6.2); both are insignificant.
    if kind == _PLAIN:
        value = raw.decode("latin-1")
    else:
        value = _decode_text(raw, peek.specific_character_set)
    setattr(peek, attr, value.strip(" \x00"))


class PeekWalker:
    """A resumable walk of the top level of a data set for `_WANTED`, fed fragment by fragment.

    The data set is read as it crosses the wire (PS3.5 7.1 data element encoding, 7.5 nesting) and
    never held: between fragments the walker keeps the encodings of the open undefined-length
    sequences and items (``_MAX_DEPTH`` at most), the absolute offset of the next element header
    (past the end of what was fed while a long value is being skipped), a header cut by a fragment
    boundary (14 bytes at most) and a wanted value cut by one (``value_cap`` bytes at most). So a
    long value or a sequence of defined length before the wanted attributes costs nothing per
    fragment, and sequences of undefined length are walked element by element: linear time,
    bounded memory, however long the data set. The outcome does not depend on where the data set
    is cut into fragments.

    ``done`` turns True once nothing more is to be learnt: the walk got past (0020,000E)
    (``peek.complete``), met a structural problem (``peek.anomaly``) or was finished. Never raises.
    """

    __slots__ = ("peek", "done", "_declared", "_guessed", "_implicit", "_little", "_skim", "_stack", "_next",
                 "_fed", "_carry", "_attr", "_kind", "_value", "_value_at", "_value_end", "_cap", "_dirty",
                 "_inflater", "_inflate_left", "_headers")

    def __init__(self, implicit: bool | None, little: bool, peek: DatasetPeek | None = None, *,
                 value_cap: int = PEEK_VALUE_CAP, skim: bool = True, deflated: bool = False) -> None:
        self.peek = DatasetPeek() if peek is None else peek
        self.done = False
        self._declared = implicit
        self._guessed = False  # the top level's VR encoding is guessed from the first element
        self._implicit = True
        self._little = little
        self._skim = skim and little
        # Encoding of the content of each open undefined-length sequence / item.
        self._stack: list[tuple[bool, bool]] = []
        self._next = 0  # absolute offset of the next unread byte: a header, or a wanted value's next byte
        self._fed = 0  # bytes fed so far
        self._carry = b""  # the start of a header cut by the end of the last fragment (at self._next)
        self._attr: str | None = None  # the wanted value being collected, if any
        self._kind = _PLAIN
        self._value = bytearray()
        self._value_at = 0  # absolute offset of its element header
        self._value_end = 0  # absolute offset of its end
        self._cap = value_cap
        self._headers = 0  # headers read one by one so far (_MAX_HEADERS)
        self._dirty = False  # a byte other than padding past value_cap
        # Deflated Explicit VR Little Endian (PS3.5 A.5): raw deflate, no zlib header; only the first
        # PEEK_INFLATE_LIMIT bytes inflated are walked, which defuses deflate bombs.
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS) if deflated else None
        self._inflate_left = PEEK_INFLATE_LIMIT

    def feed(self, fragment: Buffer) -> bool:
        """Walk the next fragment of the data set; returns ``done``."""
        if self.done:
            return True
        try:
            if self._inflater is None:
                self._feed(fragment)
            else:
                self._feed_deflated(fragment)
        except Exception:  # defensive: the walker is bounds checked, but a peek must never raise
            self._fail()
        return self.done

    def finish(self) -> DatasetPeek:
        """The data set ended after the last fragment fed: end the walk and return the peek.

        Reaching the exact end of the data set at the top level makes the peek complete; a header
        or a wanted value cut by the end (a truncated data set) is not read."""
        if not self.done:
            # A deflated data set is whole only if its deflate stream ended within the limit.
            if self._inflater is None or self._inflater.eof:
                try:
                    carry, self._carry = self._carry, b""
                    self._run(carry, self._next if carry else self._fed, True)
                except Exception:
                    self._fail()
            self.done = True
        return self.peek

    def _feed_deflated(self, fragment: Buffer) -> None:
        inflater = self._inflater
        assert inflater is not None
        if inflater.eof:
            return
        try:
            data = inflater.decompress(fragment, self._inflate_left)
        except zlib.error:
            self.peek.anomaly = "inflate-failed"
            self.done = True
            return
        self._inflate_left -= len(data)
        self._feed(data)
        if self._inflate_left <= 0 and not inflater.eof:
            self._inflater = None  # nothing more will be walked, nor its unconsumed input held
            if not self.done:
                # The walk had not got past (0020,000E): what follows is unread, and says so, like a
                # walk stopped at any other limit (a record must not pass off "not read" as "absent").
                self.peek.anomaly = INFLATE_LIMIT
                self.peek.bytes_examined = self._fed
                self.done = True

    def _fail(self) -> None:
        self.peek.anomaly = self.peek.anomaly or "internal-error"
        self.peek.complete = False
        self.done = True

    def _feed(self, fragment: Buffer) -> None:
        base = self._fed
        size = len(fragment)
        if not size:
            return
        self._fed = base + size
        if self._carry:
            # Complete the cut header from the head of this fragment; _HEAD_ROOM bytes are more
            # than any header needs, so the walk leaves the joined bytes inside this fragment.
            carry, self._carry = self._carry, b""
            self._run(carry + bytes(fragment[:_HEAD_ROOM]), base - len(carry), False)
            if self.done or size <= _HEAD_ROOM:
                return
            self._carry = b""  # a header cut again lies inside this fragment: read it there
        self._run(fragment, base, False)

    def _run(self, buf: Buffer, base: int, final: bool) -> None:
        """Walk *buf*, the data set's bytes from absolute offset *base*, from ``self._next`` on;
        *final*: the data set ends with *buf*."""
        size = len(buf)
        pos = self._next - base
        peek = self.peek
        if self._attr is not None:
            pos = self._collect(buf, base, pos, final)
            if pos < 0:
                return
        if not self._guessed:
            # Like pydicom, trust the bytes over the declared syntax: some senders
            # label implicit data explicit and vice versa.
            if size - pos >= 6:
                self._implicit = not _looks_explicit(buf, pos)
            elif not final:
                self._hold(buf, base, pos)
                return
            elif self._declared is not None:
                self._implicit = self._declared
            self._guessed = True
        top = (self._implicit, self._little)
        stack = self._stack
        skim = self._skim
        if skim and not stack:
            pos = _skim(buf, pos, top[0], peek, self._cap)
            if peek.complete:
                self._stop(base, pos, size)
                return
        while True:
            if size - pos < 8:
                if pos >= size and not final:
                    self._next = base + pos  # skipping a value that goes on in the next fragment
                    peek.bytes_examined = base + size
                elif not final:
                    self._hold(buf, base, pos)
                else:
                    if pos == size and not stack:
                        peek.complete = True
                    self._stop(base, pos, size)
                return
            self._headers += 1
            if self._headers > _MAX_HEADERS:
                self._stop(base, pos, size, "too-many-elements")
                return
            cur_implicit, cur_little = stack[-1] if stack else top
            group, element, length = (_LE_TAG if cur_little else _BE_TAG).unpack_from(buf, pos)
            if group == 0xFFFE:
                # Item / delimiters carry no VR in any transfer syntax (PS3.5 7.5).
                if element == 0xE000:
                    if not stack:
                        self._stop(base, pos + 8, size, "item-outside-sequence")
                        return
                    if length == _UNDEFINED:
                        mode = stack[-1]
                        # pydicom tolerates items encoded implicit inside explicit data; so do we.
                        if not mode[0]:
                            if size - pos < 14 and not final:
                                self._hold(buf, base, pos)  # the item's first element decides
                                return
                            if size - pos >= 14 and not _looks_explicit(buf, pos + 8):
                                if not (buf[pos + 8] == 0xFE and buf[pos + 9] == 0xFF):
                                    mode = (True, mode[1])
                        if not self._push(mode, base, pos + 8, size):
                            return
                        pos += 8
                    else:
                        pos += 8 + length
                    continue
                if element in (0xE00D, 0xE0DD):
                    pos += 8
                    if not stack:
                        self._stop(base, pos, size, "unexpected-delimiter")
                        return
                    stack.pop()
                    if not stack and skim:  # back at the top level: the fast path again
                        pos = _skim(buf, pos, top[0], peek, self._cap)
                        if peek.complete:
                            self._stop(base, pos, size)
                            return
                    continue
                self._stop(base, pos + 8, size, "bad-item-tag")
                return
            tag = (group << 16) | element
            if not stack and tag > _STOP_TAG:
                peek.complete = True
                self._stop(base, pos, size)
                return
            vr = 0
            if cur_implicit:
                value_start = pos + 8
            else:
                vr = (buf[pos + 4] << 8) | buf[pos + 5]
                if vr in _LONG_VRS:
                    if size - pos < 12:
                        if final:
                            self._stop(base, pos, size)
                        else:
                            self._hold(buf, base, pos)
                        return
                    length = (_LE_U32 if cur_little else _BE_U32).unpack_from(buf, pos + 8)[0]
                    value_start = pos + 12
                else:
                    length = (_LE_U16 if cur_little else _BE_U16).unpack_from(buf, pos + 6)[0]
                    value_start = pos + 8
            if length == _UNDEFINED:
                # Undefined length: a sequence, UN holding a sequence (content is Implicit
                # VR Little Endian, PS3.5 6.2.2) or encapsulated pixel data items.
                if not self._push((True, True) if vr == _VR_UN else (cur_implicit, cur_little), base, pos, size):
                    return
                pos = value_start
                continue
            value_end = value_start + length
            if not stack:
                wanted = _WANTED.get(tag)
                if wanted is not None:
                    if getattr(peek, wanted[0]) is not None:
                        # A repeated identifying element is malformed (PS3.5 7.1: each tag once per data
                        # set); readers differ on which copy they keep, so the first is kept and the walk
                        # ends on it.
                        self._stop(base, pos, size, "repeated-element")
                        return
                    if value_end > size or length > self._cap:
                        if final and value_end > size:
                            self._stop(base, pos, size)  # value cut by the end of the data set
                            return
                        # Cut by the fragment end, or long: collected (up to value_cap) as it comes.
                        self._attr, self._kind = wanted
                        self._value_at, self._value_end = base + pos, base + value_end
                        pos = self._collect(buf, base, value_start, final)
                        if pos < 0:
                            return
                        continue
                    _store(peek, wanted[0], wanted[1], bytes(buf[value_start:value_end]))
            pos = value_end

    def _collect(self, buf: Buffer, base: int, pos: int, final: bool) -> int:
        """Take the wanted value's bytes in *buf* from *pos*; returns where its element ends in
        *buf* once it is whole (and stored), else -1. Past ``value_cap`` bytes only padding (PS3.5
        6.2) may follow: a longer value is an anomaly that ends the walk."""
        size = len(buf)
        end = self._value_end - base
        stop = min(end, size)
        if stop > pos:
            value = self._value
            keep = min(stop - pos, self._cap - len(value))
            if keep > 0:
                value += buf[pos:pos + keep]
            if not self._dirty and stop > pos + keep and bytes(buf[pos + keep:stop]).strip(b" \x00"):
                self._dirty = True
        if end > size:
            if final:
                self._stop(base, self._value_at - base, size)  # cut by the end of the data set
            else:
                self._next = base + size
                self.peek.bytes_examined = self._value_at
            return -1
        attr, self._attr = self._attr, None
        value, self._value = self._value, bytearray()
        if self._dirty:
            self._stop(base, self._value_at - base, size, "value-too-long")
            return -1
        assert attr is not None
        _store(self.peek, attr, self._kind, bytes(value))
        return end

    def _push(self, mode: tuple[bool, bool], base: int, pos: int, size: int) -> bool:
        if len(self._stack) >= _MAX_DEPTH:
            self._stop(base, pos, size, "nesting-too-deep")
            return False
        self._stack.append(mode)
        return True

    def _hold(self, buf: Buffer, base: int, pos: int) -> None:
        """Keep the start of a header cut by the fragment end (fewer than `_HEAD_ROOM` bytes)."""
        self._carry = bytes(buf[pos:])
        self._next = base + pos
        self.peek.bytes_examined = base + pos

    def _stop(self, base: int, pos: int, size: int, anomaly: str | None = None) -> None:
        if anomaly is not None:
            self.peek.anomaly = anomaly
        self.peek.bytes_examined = base + min(pos, size)
        self._next = base + pos
        self.done = True


def _walk(buf: Buffer, implicit: bool | None, little: bool, final: bool, peek: DatasetPeek, *,
          skim: bool = True) -> None:
    """Walk a data set (or its first bytes) in one go (``skim=False``: without the fast path, the
    reference the tests hold `_skim` to)."""
    walker = PeekWalker(implicit, little, peek, skim=skim)
    walker.feed(buf)
    if final:
        walker.finish()


def _skim(buf: Buffer, pos: int, implicit: bool, peek: DatasetPeek, cap: int) -> int:
    """`PeekWalker`'s fast path for the common case: the top level of a little-endian data set from
    ``pos``, element after element, as long as every length is defined and every header and wanted
    value lies in *buf*. Returns where it stopped (past (0020,000E): ``peek.complete``); the general
    loop of `PeekWalker._run` takes over from there (an undefined length, an item tag, the end of
    *buf*, a wanted value cut by it or longer than *cap*) and reads the same bytes the same way (this
    one only saves the per-element bookkeeping of nesting and of fragments).

    It runs once per stored object over every top-level element up to (0020,000E), ~120 of them in
    a CT header: constants as literals and locals, and a value's end computed only for the few
    wanted elements."""
    last = len(buf) - 8  # the last offset where an element header fits
    wanted_of = _WANTED.get
    head = _LE_TAG.unpack_from if implicit else _LE_EXPLICIT.unpack_from
    u32 = _LE_U32.unpack_from
    long_vrs = _LONG_VRS_LE
    while pos <= last:
        if implicit:
            group, element, length = head(buf, pos)
            start = pos + 8
        else:
            group, element, vr, length = head(buf, pos)
            if vr in long_vrs:
                if pos + 4 > last:
                    return pos
                length = u32(buf, pos + 8)[0]
                start = pos + 12
            else:
                start = pos + 8
        if group == 0xFFFE or length == 0xFFFFFFFF:
            return pos
        tag = (group << 16) | element
        if tag > 0x0020000E:  # _STOP_TAG
            peek.complete = True
            return pos
        wanted = wanted_of(tag)
        if wanted is not None:
            if start + length > last + 8 or length > cap or getattr(peek, wanted[0]) is not None:
                # Cut by the fragment end, long (for `PeekWalker._collect`) or repeated: the general loop's
                return pos
            _store(peek, wanted[0], wanted[1], bytes(buf[start:start + length]))
        pos = start + length
    return pos


_SEQUENCE, _ITEM = 0, 1


def _structure_problem(buf: Buffer, implicit: bool, little: bool) -> tuple[int, str] | None:
    """Strictly walk a whole data set (PS3.5 7.1, 7.5); return (offset, problem) or None.

    Unlike the peek walker this descends into sequences of defined length too,
    and insists that every value, item and sequence ends inside its container
    and that the data ends exactly after the last element.  pydicom silently
    accepts truncated values, so :func:`decode_identifier` runs this first.
    """
    from pydicom.datadict import dictionary_VR

    size = len(buf)
    # (kind, implicit, little, end offset or None for undefined length)
    stack: list[tuple[int, bool, bool, int | None]] = []
    pos = 0
    while True:
        if stack:
            kind, cur_implicit, cur_little, end = stack[-1]
            if end is not None and pos == end:
                stack.pop()
                continue
            limit = size if end is None else end
        else:
            kind, cur_implicit, cur_little, limit = _ITEM, implicit, little, size
        if pos == size:
            return (pos, "data ends inside an unterminated sequence or item") if stack else None
        if limit - pos < 8:
            return pos, f"{limit - pos} trailing byte(s), too short for an element header"
        group, element, length = (_LE_TAG if cur_little else _BE_TAG).unpack_from(buf, pos)
        if group == 0xFFFE:
            if element == 0xE000:
                if kind != _SEQUENCE:
                    return pos, "item tag outside a sequence"
                if length == _UNDEFINED:
                    stack.append((_ITEM, cur_implicit, cur_little, None))
                elif pos + 8 + length > limit:
                    return pos, f"item of {length} bytes exceeds its sequence"
                else:
                    stack.append((_ITEM, cur_implicit, cur_little, pos + 8 + length))
            elif element in (0xE00D, 0xE0DD):
                expected = _ITEM if element == 0xE00D else _SEQUENCE
                if not stack or kind != expected or stack[-1][3] is not None:
                    return pos, f"unexpected delimiter (FFFE,{element:04X})"
                stack.pop()
            else:
                return pos, f"invalid item tag (FFFE,{element:04X})"
            pos += 8
            continue
        if kind == _SEQUENCE:
            return pos, "data element directly inside a sequence (expected an item)"
        tag = (group << 16) | element
        if cur_implicit:
            value_start = pos + 8
            try:
                is_sequence = dictionary_VR(tag) == "SQ"
            except KeyError:
                is_sequence = False
            vr = _VR_SQ if is_sequence else 0
        else:
            vr = (buf[pos + 4] << 8) | buf[pos + 5]
            if vr in _LONG_VRS:
                if limit - pos < 12:
                    return pos, "truncated element header"
                length = (_LE_U32 if cur_little else _BE_U32).unpack_from(buf, pos + 8)[0]
                value_start = pos + 12
            else:
                length = (_LE_U16 if cur_little else _BE_U16).unpack_from(buf, pos + 6)[0]
                value_start = pos + 8
        if length == _UNDEFINED:
            if vr == _VR_UN:
                stack.append((_SEQUENCE, True, True, None))
            else:
                stack.append((_SEQUENCE, cur_implicit, cur_little, None))
            pos = value_start
            continue
        value_end = value_start + length
        if value_end > limit:
            return pos, (
                f"element ({group:04X},{element:04X}) announces {length} bytes but only "
                f"{limit - value_start} remain"
            )
        if vr == _VR_SQ:
            stack.append((_SEQUENCE, cur_implicit, cur_little, value_end))
            pos = value_start
            continue
        pos = value_end


def peek_walker(transfer_syntax_uid: str | None, *, value_cap: int = PEEK_VALUE_CAP) -> PeekWalker:
    """A :class:`PeekWalker` for a data set in *transfer_syntax_uid* (None: unknown, guess implicit or
    explicit little endian from the first element). A deflated data set (PS3.5 A.5) is inflated as
    it is fed, and only its first `PEEK_INFLATE_LIMIT` bytes inflated are walked."""
    implicit, little, deflated = transfer_syntax_encoding(transfer_syntax_uid)
    return PeekWalker(implicit, little, value_cap=value_cap, deflated=deflated)


def peek_identifiers(
    fragment: Buffer, transfer_syntax_uid: str | None, *, final: bool = False
) -> DatasetPeek:
    """Extract identifiers from a data set, or from its first fragment; never raises.

    *transfer_syntax_uid* is the presentation context's transfer syntax (None:
    unknown, guess implicit/explicit LE from the first element).  Pass
    ``final=True`` when *fragment* is known to hold the whole data set, so that
    reaching its end counts as complete.  Sequences of defined and undefined
    length are skipped; only top level attributes are reported.  To walk a data
    set fragment by fragment, use :func:`peek_walker`.
    """
    walker = peek_walker(transfer_syntax_uid)
    walker.feed(fragment)
    return walker.finish() if final else walker.peek


def decode_identifier(
    data: Buffer, transfer_syntax_uid: str, *, max_length: int = MAX_IDENTIFIER_LENGTH
) -> Dataset:
    """Decode a C-FIND/C-MOVE/C-GET identifier with pydicom (PS3.4 C.4).

    Every element is converted eagerly so that a malformed value fails here, as
    ``DecodeError("identifier-invalid")``, rather than later in the caller.
    """
    if len(data) > max_length:
        raise DecodeError(
            E.IDENTIFIER_TOO_LARGE,
            f"identifier of {len(data)} bytes exceeds the limit of {max_length}",
            None,
        )
    implicit, little, deflated = transfer_syntax_encoding(transfer_syntax_uid)
    raw = inflate_dataset(data, max_length) if deflated else bytes(data)
    if len(raw) >= 6:
        implicit = not _looks_explicit(raw, 0)  # the same guess pydicom makes
    problem = _structure_problem(raw, bool(implicit), little)
    if problem is not None:
        raise DecodeError(
            E.IDENTIFIER_INVALID,
            f"identifier ({len(raw)} bytes, transfer syntax {transfer_syntax_uid}): {problem[1]}",
            problem[0],
        )
    from pydicom.filereader import read_dataset

    try:
        dataset = read_dataset(io.BytesIO(raw), bool(implicit), little)
        for element in dataset.iterall():
            _ = element.value
    except Exception as exc:  # pydicom raises many types; the contract is DecodeError only
        raise DecodeError(
            E.IDENTIFIER_INVALID,
            f"identifier ({len(raw)} bytes, transfer syntax {transfer_syntax_uid}) "
            f"cannot be decoded: {type(exc).__name__}: {exc}",
            None,
        ) from exc
    return dataset


def inflate_dataset(data: Buffer, max_length: int = MAX_IDENTIFIER_LENGTH) -> bytes:
    """The Explicit VR Little Endian encoding of a whole data set in Deflated Explicit VR Little
    Endian (PS3.5 A.5: raw deflate, RFC 1951, no zlib header), at most *max_length* bytes inflated.

    Raises ``DecodeError``: ``identifier-invalid`` for a damaged or unfinished deflate stream,
    ``identifier-too-large`` past *max_length* (a deflate bomb costs no more than that)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        raw = inflater.decompress(bytes(data), max_length)
    except zlib.error as exc:
        raise DecodeError(E.IDENTIFIER_INVALID, f"deflated identifier: {exc}", None) from None
    if inflater.unconsumed_tail:
        raise DecodeError(
            E.IDENTIFIER_TOO_LARGE,
            f"deflated identifier inflates to more than {max_length} bytes",
            None,
        )
    if not inflater.eof:
        raise DecodeError(E.IDENTIFIER_INVALID, "deflated identifier: the deflate stream does not end", None)
    return raw


def deflate_dataset(raw: Buffer) -> bytes:
    """*raw*, an Explicit VR Little Endian data set, in Deflated Explicit VR Little Endian (PS3.5
    A.5): raw deflate, padded with one NUL to an even length as pydicom and pynetdicom write it
    (an inflater stops at the end of the deflate stream and never reads the pad)."""
    packer = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = packer.compress(raw) + packer.flush()
    return out + b"\0" if len(out) % 2 else out
