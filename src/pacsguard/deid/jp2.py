"""JPEG 2000 frames wrapped as JP2 files (ITU-T T.800 | ISO/IEC 15444-1 Annex I) instead of bare
codestreams (PS3.5 A.4.4 asks for the codestream alone; some encoders write the file format all
the same, and decoders read it). A JP2 file is a series of boxes (I.4: LBox, TBox, XLBox when LBox
is 1, LBox 0 for the last box up to the end), and some of them hold free text: XML boxes (I.7.1,
a device's metadata, a patient's name), UUID boxes (I.7.2, vendor data), UUID Info boxes (I.7.3,
with URLs), and the Intellectual Property box (I.6); in JPX files label boxes and associations
(ISO/IEC 15444-2 M.11) carry text too. Only the boxes a decoder needs are kept: the signature,
File Type, JP2 Header with the sub-boxes I.5.3 defines, and the Contiguous Codestream, whose
COM segments then go as a bare codestream's do."""

from __future__ import annotations

from collections.abc import Callable

from pacsguard.deid.engine import Withheld

#: The JPEG 2000 Signature box (I.5.1): length 12, type 'jP  ', content 0D0A870A.
SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
#: Boxes of a JP2 file a decoder reads (I.5): File Type, JP2 Header, Contiguous Codestream.
_KEPT = frozenset({b"ftyp", b"jp2h", b"jp2c"})
#: Sub-boxes of the JP2 Header box (I.5.3): Image Header, Bits Per Component, Colour
#: Specification, Palette, Component Mapping, Channel Definition, Resolution (and its two children).
_HEADER_KEPT = frozenset({b"ihdr", b"bpcc", b"colr", b"pclr", b"cmap", b"cdef", b"res "})


class Malformed(Exception):
    """The box structure is not what Annex I describes: what is wrong, in words."""


def boxes(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """The boxes of ``data`` in order: (type, header bytes, content). Raises Malformed when a
    length is below its header's size or runs past the end (I.4)."""
    found, pos = [], 0
    while pos < len(data):
        if pos + 8 > len(data) and not data[pos:].strip(b"\0"):
            break  # the NUL that pads a fragment to even length (PS3.5 A.4), no box
        if pos + 8 > len(data):
            raise Malformed(f"{len(data) - pos} byte(s) at byte {pos} are too few for a box header")
        size, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        head = 8
        if size == 1:  # XLBox: an 8-byte length follows the type
            if pos + 16 > len(data):
                raise Malformed(f"the {_shown(kind)} box at byte {pos} is cut off in its extended length")
            size, head = int.from_bytes(data[pos + 8:pos + 16], "big"), 16
        elif size == 0:  # the last box, up to the end of the file (and its fragment's padding)
            size = len(data) - pos
        if size < head or pos + size > len(data):
            raise Malformed(f"the {_shown(kind)} box at byte {pos} declares {size} bytes, "
                            f"{len(data) - pos} are left")
        found.append((kind, data[pos:pos + head], data[pos + head:pos + size]))
        pos += size
    return found


def _box(kind: bytes, content: bytes) -> bytes:
    """A box of ``kind`` around ``content`` with a plain 4-byte length (or XLBox when it needs one)."""
    if len(content) + 8 <= 0xFFFFFFFF:
        return (len(content) + 8).to_bytes(4, "big") + kind + content
    return b"\x00\x00\x00\x01" + kind + (len(content) + 16).to_bytes(8, "big") + content


def _shown(kind: bytes) -> str:
    return repr(kind.decode("latin-1"))


def without_text_boxes(frame: bytes, strip_codestream: Callable[[bytes], tuple[bytes, int]]) -> tuple[bytes, int]:
    """``frame`` (a JP2 file) with only the boxes a decoder needs, each codestream passed through
    ``strip_codestream`` (COM segments, T.800 A.9.2); and how many boxes and segments went.
    Raises Withheld, naming what is wrong, when the box structure is malformed: a frame whose
    boxes cannot be followed cannot be shown to hold no text."""
    try:
        return _rebuilt(frame, strip_codestream)
    except Malformed as exc:
        raise Withheld(f"a JPEG 2000 frame wrapped as a JP2 file has a malformed box structure "
                       f"(ISO/IEC 15444-1 Annex I): {exc}") from None


def _rebuilt(frame: bytes, strip_codestream: Callable[[bytes], tuple[bytes, int]]) -> tuple[bytes, int]:
    found = boxes(frame)
    if not found or found[0][0] != b"jP  " or found[0][1] + found[0][2] != SIGNATURE:
        raise Malformed("it does not begin with the JPEG 2000 Signature box (I.5.1)")
    out, removed, codestreams = [SIGNATURE], 0, 0
    for kind, _, content in found[1:]:
        if kind not in _KEPT:
            removed += 1
            continue
        if kind == b"jp2h":
            inner = boxes(content)
            kept = [_box(k, c) for k, _, c in inner if k in _HEADER_KEPT]
            removed += len(inner) - len(kept)
            out.append(_box(kind, b"".join(kept)))
        elif kind == b"jp2c":
            codestreams += 1
            if not content.startswith(b"\xff\x4f"):
                raise Malformed("its Contiguous Codestream box does not begin with SOC (T.800 A.4.1)")
            stripped, count = strip_codestream(content)
            removed += count
            out.append(_box(kind, stripped))
        else:
            out.append(_box(kind, content))
    if not codestreams:
        raise Malformed("it has no Contiguous Codestream box (I.5.4)")
    if not removed:
        return frame, 0
    rebuilt = b"".join(out)
    return rebuilt + b"\0" * (len(rebuilt) & 1), removed  # a fragment is of even length (PS3.5 A.4)
