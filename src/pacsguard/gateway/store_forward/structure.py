"""Whether a received data set holds together as DICOM encodes it (PS3.5 7.1, 7.5): every data element
header where the one before it ends, each value within the data set (or the item, or the sequence of
defined length, that holds it), every sequence and item of undefined length closed by its
delimitation item, and the data set ending exactly where an element ends, at an even length (PS3.5
7.1.1).

A store-and-forward route walks this before it answers Success (receiver.py): a data set that does
not hold together is refused by dcmtk's storescp and Orthanc alike, so an acknowledged one would be
retried at its destination for ever while the modality believes it archived (docs/gateway.md, "What
is refused at reception").

Headers only: values are skipped, never decoded, and the file is read from the page cache (it was
written a moment ago; pread up to 1 MiB, mmap beyond), so a walk costs a fraction of a microsecond
per element and nothing per byte of pixel data (~60 us for a CT of 262 elements). Not walked: a
transfer syntax that is not one of the standard's (1.2.840.10008.1.2...: its encoding is unknown).

A deflated data set (Deflated Explicit VR Little Endian, PS3.5 A.5) is checked whole, as it is
inflated: its length must be even (PS3.5 7.1.1, A.5: the deflated stream is padded to an even
length), its stream must inflate, and what it inflates to is walked as above, `INFLATE_LIMIT` bytes
at a time (the walk keeps its place between them, so memory stays bounded and a value is skipped
without being held). One that inflates past `MAX_INFLATED` is refused unjudged: that bounds the
work a deflate bomb buys (its ratio is the scanner's to judge).
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Final

from pacsguard.dicom.dataset import transfer_syntax_encoding
from pacsguard.dicom.vr import LONG_VRS, VRS

UNDEFINED: Final = 0xFFFFFFFF  # undefined length (PS3.5 7.1.2)
ITEM: Final = 0xFFFEE000  # (FFFE,E000) Item
ITEM_END: Final = 0xFFFEE00D  # (FFFE,E00D) Item Delimitation Item
SEQUENCE_END: Final = 0xFFFEE0DD  # (FFFE,E0DD) Sequence Delimitation Item
STANDARD_SYNTAXES: Final = "1.2.840.10008.1.2"  # every transfer syntax of PS3.5 Section 10 and Annex A
READ_WHOLE: Final = 1024 * 1024  # data sets up to this are read (pread) rather than mapped (mmap)
#: Bytes of a deflated data set's inflated stream held and walked at a time: the walk resumes where
#: the previous window ended, so the whole data set is judged in bounded memory.
INFLATE_LIMIT: Final = 16 * 1024 * 1024
#: The largest size a deflated data set may inflate to; past it the data set is refused unjudged
#: (a deflate bomb: PS3.5 A.5 sets no bound, and inflating costs up to a second per GiB).
MAX_INFLATED: Final = 2 * 1024 * 1024 * 1024
READ_CHUNK: Final = 1024 * 1024  # deflated bytes read back (pread) at a time
_UNKNOWN_END: Final = 1 << 62  # where a data set ends when only its first bytes are walked

_LONG: Final = frozenset(vr.encode() for vr in LONG_VRS)
_SHORT: Final = frozenset(vr.encode() for vr in VRS) - _LONG

# Kinds of container a walk is inside.
_DATASET, _ITEM, _SEQUENCE, _FRAGMENTS = range(4)
_NAMES: Final = {_DATASET: "the data set", _ITEM: "an item", _SEQUENCE: "a sequence", _FRAGMENTS: "encapsulated data"}


@dataclass(frozen=True, slots=True)
class Flaw:
    """Where a data set stops holding together: ``offset`` in bytes from its first byte."""

    reason: str
    offset: int


@dataclass(slots=True)
class _Frame:
    kind: int
    end: int | None  # None: undefined length, closed by a delimitation item
    implicit: bool
    opened: int  # offset of the header that opened it
    tag: int


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def walk_file(fd: int, start: int, stop: int, transfer_syntax: str | None) -> Flaw | None:
    """Walk the data set held in bytes ``start``-``stop`` of the file ``fd``; None when it holds
    together (or is not walked, see the module's docstring)."""
    if not (transfer_syntax or "").startswith(STANDARD_SYNTAXES) or stop <= start:
        return None
    implicit, little, deflated = transfer_syntax_encoding(transfer_syntax)
    if implicit is None:
        return None
    if deflated:
        return walk_deflated(fd, start, stop)
    if stop - start <= READ_WHOLE:  # a copy from the page cache, read faster than a mapping
        data = os.pread(fd, stop - start, start)
        return walk(data, 0, len(data), implicit=implicit, little_endian=little) if len(data) == stop - start \
            else Flaw(f"only {len(data):,} of {stop - start:,} bytes could be read back", len(data))
    with mmap.mmap(fd, stop, prot=mmap.PROT_READ) as view:
        return walk(view, start, stop, implicit=implicit, little_endian=little)


def walk_deflated(fd: int, start: int, stop: int, max_inflated: int = MAX_INFLATED) -> Flaw | None:
    """Check the deflated data set (PS3.5 A.5) in bytes ``start``-``stop`` of the file ``fd``: an
    even length, a stream that inflates, and all it inflates to walked as Explicit VR Little Endian,
    `INFLATE_LIMIT` bytes at a time; one that inflates past ``max_inflated`` bytes is a flaw."""
    size = stop - start
    if size % 2:
        return Flaw(f"the deflated data set is {size:,} bytes long, an odd length (PS3.5 7.1.1, A.5: the "
                    "deflated stream is padded to an even length)", size)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, no zlib header (PS3.5 A.5, RFC 1951)
    state = _Walk([_Frame(_DATASET, None, False, 0, 0)], 0)
    window = bytearray()  # inflated bytes base .. base + len(window), from where the walk stands
    base = 0
    pos, pending = start, b""
    try:
        while not inflater.eof:
            if not pending:
                if pos >= stop:  # a stream left unclosed: it gave all it holds
                    break
                pending = os.pread(fd, min(READ_CHUNK, stop - pos), pos)
                if not pending:
                    return Flaw(f"only {pos - start:,} of {size:,} bytes could be read back", pos - start)
                pos += len(pending)
            out = inflater.decompress(pending, INFLATE_LIMIT)
            pending = inflater.unconsumed_tail
            if base + len(window) + len(out) > max_inflated:
                return Flaw(f"the deflated data set inflates to more than {max_inflated:,} bytes, more than a "
                            "store-and-forward route inflates to judge it (PS3.5 A.5 sets no bound: a deflate "
                            "bomb is refused unjudged)", max_inflated)
            window += out
            base = _slide(state, window, base)
            if state.pos < base + len(window):  # the walk has bytes to go on with
                flaw = _advance(state, window, base, 0, base + len(window), complete=False)
                if flaw is not None:
                    return _inflated(flaw)
    except zlib.error as exc:
        return Flaw(f"the deflated data set does not inflate (PS3.5 A.5, RFC 1951): {exc}", pos - start)
    return _deflated_end(state, window, base)


def _slide(state: _Walk, window: bytearray, base: int) -> int:
    """Drop from ``window`` (inflated bytes from offset ``base``) what the walk has passed, values
    it skips included; the window's new base."""
    drop = min(state.pos, base + len(window)) - base
    if drop > 0:
        del window[:drop]
    return base + max(drop, 0)


def _deflated_end(state: _Walk, window: bytearray, base: int) -> Flaw | None:
    """The walk of a whole inflated data set finished, now that its length is known (``base`` +
    ``len(window)``): an even length, no value past it, every container closed."""
    total = base + len(window)
    if total % 2:
        return _inflated(Flaw(f"the data set is {total:,} bytes long, an odd length (PS3.5 7.1.1: every value, "
                              "and so the data set, has an even length)", total))
    if state.pos > total and state.jump is not None:  # a value ran past what the stream held
        tag, offset, length, value = state.jump
        return _inflated(_overrun(tag, offset, length, total - value, state.stack[-1]))
    state.stack[0].end = total
    flaw = _advance(state, window, base, 0, total, complete=True)
    return None if flaw is None else _inflated(flaw)


def _inflated(flaw: Flaw) -> Flaw:
    return Flaw(f"in the inflated data set (PS3.5 A.5, byte offsets inflated): {flaw.reason}", flaw.offset)


Buffer = bytes | bytearray | mmap.mmap | memoryview


@dataclass(slots=True)
class _Walk:
    """Where a walk stands between the windows it is given (walk_deflated): the containers open,
    the next header's offset, and the last element whose value ran past the bytes given so far
    (tag, header offset, length, value offset: judged once the data set's end is known)."""

    stack: list[_Frame]
    pos: int
    jump: tuple[int, int, int, int] | None = None


def walk(buf: Buffer, start: int, stop: int, *, implicit: bool, little_endian: bool = True,
         complete: bool = True) -> Flaw | None:
    """Walk the data set in ``buf[start:stop]`` header by header (PS3.5 7.1.2 explicit VR, 7.1.3
    implicit VR, 7.5 nesting, A.4 encapsulated pixel data); the first flaw, or None. Without
    ``complete`` the bytes are the data set's first ones only: running out of them is no flaw,
    what is in them must hold together."""
    if complete and (stop - start) % 2:
        return Flaw(f"the data set is {stop - start:,} bytes long, an odd length (PS3.5 7.1.1: every value, "
                    "and so the data set, has an even length)", stop - start)
    state = _Walk([_Frame(_DATASET, stop if complete else None, implicit, 0, 0)], start)
    return _advance(state, buf, 0, start, stop, complete=complete, little_endian=little_endian)


def _advance(state: _Walk, buf: Buffer, base: int, start: int, stop: int, *, complete: bool,
             little_endian: bool = True) -> Flaw | None:
    """Go on with the walk ``state`` over the bytes at hand: ``buf`` holds those from offset ``base``
    up to ``stop`` (offsets count from the buffer's first byte as given to :func:`walk`, flaws from
    ``start``, the data set's first). ``complete``: ``stop`` is the data set's end. Returns the first
    flaw, or None: the walk is done, or (not ``complete``) it stopped where its bytes ran out,
    ``state.pos``, to go on when more are given."""
    unknown = stop if complete else _UNKNOWN_END  # where a container of undefined length can end
    order = "<" if little_endian else ">"
    tag_length = struct.Struct(order + "HHI")  # tag and 32-bit length (implicit VR, items)
    short_length = struct.Struct(order + "H")
    long_length = struct.Struct(order + "I")
    explicit_header = struct.Struct(order + "HH2sH")  # tag, VR and 16-bit length (PS3.5 Table 7.1-2)
    stack = state.stack
    pos = state.pos
    while True:
        top = stack[-1]
        # ``limit``: where the container ends (as far as known); ``readable``: up to where its bytes
        # are here (the same, unless only the data set's first bytes are).
        limit = top.end if top.end is not None else unknown
        readable = limit if limit <= stop else stop
        if top.kind <= _ITEM:  # the common case first, in a tight loop: elements of a defined length
            pos = (_skip_implicit(buf, base, pos, readable, tag_length) if top.implicit
                   else _skip_explicit(buf, base, pos, readable, explicit_header))
        if pos == top.end:
            if len(stack) == 1:
                return None
            stack.pop()
            continue
        if pos + 8 > readable:
            if pos + 8 > stop and not complete:  # to go on from here with more bytes
                state.pos = pos
                return None
            return _cut_header(pos - start, limit - pos, top)
        group, element, length = tag_length.unpack_from(buf, pos - base)
        tag = group << 16 | element
        if top.kind in (_SEQUENCE, _FRAGMENTS):
            if tag == ITEM:
                pos += 8
                if length == UNDEFINED and top.kind == _SEQUENCE:
                    stack.append(_Frame(_ITEM, None, top.implicit, pos - 8 - start, tag))
                    continue
                if length == UNDEFINED or pos + length > limit:
                    return _overrun(tag, pos - 8 - start, length, limit - pos, top)
                if top.kind == _SEQUENCE:
                    stack.append(_Frame(_ITEM, pos + length, top.implicit, pos - 8 - start, tag))
                else:
                    pos += length  # a fragment: its bytes are not elements
                    if pos > stop:
                        state.jump = (tag, pos - length - 8 - start, length, pos - length)
                continue
            if tag == SEQUENCE_END and top.end is None:
                pos += 8
                stack.pop()
                continue
            return Flaw(f"{_tag_text(tag)} at byte {pos - start:,} inside {_NAMES[top.kind]} opened by "
                        f"{_tag_text(top.tag)} at byte {top.opened:,}, where only an Item (FFFE,E000) or a "
                        "Sequence Delimitation Item (FFFE,E0DD) may stand (PS3.5 7.5)", pos - start)
        if tag == ITEM_END and top.kind == _ITEM and top.end is None:
            pos += 8
            stack.pop()
            continue
        if group == 0xFFFE:
            return Flaw(f"{_tag_text(tag)} at byte {pos - start:,} outside the sequence it belongs in "
                        "(PS3.5 7.5)", pos - start)
        if group == 0x0002 and len(stack) == 1:
            # Spooled after the file meta the gateway writes, it would run on from it: a reader takes
            # it for the object's own (its transfer syntax, its SOP class) and the object is sent as
            # something else, or never (a re-probe: acknowledged, then retried for ever).
            return Flaw(f"{_tag_text(tag)} at byte {pos - start:,}: a File Meta Information element in the "
                        "data set (PS3.10 7.1: group 0002 is the file's, never a data set's)", pos - start)
        explicit = not top.implicit or group == 0x0002  # file meta elements left in: Explicit VR LE (PS3.10 7.1)
        header = 8
        vr = b""
        if explicit:
            vr = bytes(buf[pos - base + 4:pos - base + 6])
            if vr in _LONG:
                if pos + 12 > readable:
                    if pos + 12 > stop and not complete:
                        state.pos = pos
                        return None
                    return _cut_header(pos - start, limit - pos, top)
                (length,) = long_length.unpack_from(buf, pos - base + 8)
                header = 12
            elif vr in _SHORT:
                (length,) = short_length.unpack_from(buf, pos - base + 6)
            else:
                return Flaw(f"element {_tag_text(tag)} at byte {pos - start:,} has no value representation of "
                            f"PS3.5 Table 6.2-1 ({vr!r}) in an explicit VR transfer syntax (PS3.5 7.1.2)",
                            pos - start)
        value = pos + header
        if length == UNDEFINED:
            opened = pos - start
            if not explicit or vr == b"SQ":
                stack.append(_Frame(_SEQUENCE, None, top.implicit, opened, tag))
            elif vr == b"UN":  # its items are Implicit VR Little Endian (PS3.5 6.2.2)
                stack.append(_Frame(_SEQUENCE, None, True, opened, tag))
            elif vr in (b"OB", b"OW"):  # encapsulated pixel data: fragments (PS3.5 A.4)
                stack.append(_Frame(_FRAGMENTS, None, top.implicit, opened, tag))
            else:
                return Flaw(f"element {_tag_text(tag)} at byte {opened:,} has an undefined length, which its VR "
                            f"{vr.decode('latin-1')} cannot have (PS3.5 7.1.2)", opened)
            pos = value
            continue
        if value + length > limit:
            return _overrun(tag, pos - start, length, limit - value, top)
        if vr == b"SQ":
            stack.append(_Frame(_SEQUENCE, value + length, top.implicit, pos - start, tag))
            pos = value
            continue
        if value + length > stop:  # a value past the bytes at hand: judged when the end is known
            state.jump = (tag, pos - start, length, value)
        pos = value + length


def _skip_implicit(buf: Buffer, base: int, pos: int, limit: int, tag_length: struct.Struct) -> int:
    """Past the Implicit VR elements of a defined length from ``pos`` (PS3.5 7.1.3); where one that
    is not, or does not fit, begins (the walk's general path takes it from there)."""
    while pos + 8 <= limit:
        group, _, length = tag_length.unpack_from(buf, pos - base)
        following = pos + 8 + length
        if length == UNDEFINED or group in (0xFFFE, 0x0002) or following > limit:
            break
        pos = following
    return pos


def _skip_explicit(buf: Buffer, base: int, pos: int, limit: int, header: struct.Struct) -> int:
    """Past the Explicit VR elements with a 16-bit length from ``pos`` (PS3.5 Table 7.1-2)."""
    while pos + 8 <= limit:
        group, _, vr, length = header.unpack_from(buf, pos - base)
        following = pos + 8 + length
        if vr not in _SHORT or group in (0xFFFE, 0x0002) or following > limit:
            break
        pos = following
    return pos


def _overrun(tag: int, offset: int, length: int, room: int, top: _Frame) -> Flaw:
    where = "the data set" if top.kind == _DATASET else \
        f"{_NAMES[top.kind]} opened by {_tag_text(top.tag)} at byte {top.opened:,}"
    announced = "an undefined length" if length == UNDEFINED else f"{length:,} bytes"
    return Flaw(f"element {_tag_text(tag)} at byte {offset:,} announces {announced} but {where} has "
                f"{max(room, 0):,} left (PS3.5 7.1)", offset)


def _cut_header(offset: int, room: int, top: _Frame) -> Flaw:
    if room <= 0 and top.end is None:
        return Flaw(f"the data set ends inside {_NAMES[top.kind]} of undefined length opened by "
                    f"{_tag_text(top.tag)} at byte {top.opened:,}, before its delimitation item (PS3.5 7.5)",
                    offset)
    where = "the data set" if top.kind == _DATASET else \
        f"{_NAMES[top.kind]} opened by {_tag_text(top.tag)} at byte {top.opened:,}"
    return Flaw(f"{room} bytes left at byte {offset:,} of {where}: too few for a data element header "
                "(PS3.5 7.1.2)", offset)
