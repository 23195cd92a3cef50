"""A defensive Part-10 reader (PS3.10 7.1): preamble, file meta information, then the data set's
elements walked without recursion, trusting no length, with bounded depth, element count and
inflated size. It never raises for any input: what it cannot parse becomes a Problem, and the
walk stops there, so callers always know how far the file made sense. A top-level element that
repeats or goes back in tag order is noted and read on, as dcmtk does.

Encodings: PS3.5 7.1 (explicit and implicit VR, both byte orders), 7.5 (sequences, items and
their delimiters), A.4 (encapsulated pixel data fragments), A.5 (deflated data sets)."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from functools import lru_cache

from pacsguard.dicom.uids import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from pacsguard.dicom.vr import LONG_VRS, VRS
from pacsguard.scan import signatures
from pacsguard.scan.model import Level

PREAMBLE = 128
MAGIC = b"DICM"
UNDEFINED = 0xFFFFFFFF

ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
TS_IMPLICIT_LE = IMPLICIT_VR_LITTLE_ENDIAN
TS_EXPLICIT_BE = EXPLICIT_VR_BIG_ENDIAN
#: PS3.5 A.5 deflate, and the JPIP referenced deflate syntax whose data set is deflated the same way.
TS_DEFLATED = (DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, "1.2.840.10008.1.2.4.95")



@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one file may cost to read (issue #19: bounded time and memory per file)."""

    max_depth: int = 32
    max_elements: int = 500_000
    max_fragments: int = 200_000
    max_inflated: int = 256 * 1024 * 1024
    #: Inflated/compressed ratios above this, past 16 MiB, are an amplification attack
    #: (fo-dicom measured 2,000x); real deflated images stay well under 100x.
    max_inflate_ratio: int = 500
    #: Bytes all the streams of one PDF (a file, or an encapsulated document) are decoded to
    #: (pacsguard.scan.pdf.Bounds.max_total): what is past it is named, not read.
    max_pdf_inflated: int = 64 * 1024 * 1024


@dataclass(slots=True)  # not frozen: a frozen __init__ costs a third of the walk on small files
class Element:
    """One element as found: ``offset`` of its header and ``value_offset`` of its value in the body
    (the file, or the inflated stream); ``length`` is the bytes of value present (-1: a sequence or
    encapsulated value of undefined length); ``fragments`` are (offset, length) of pixel fragments."""

    tag: int
    vr: str
    offset: int
    value_offset: int
    length: int
    depth: int
    meta: bool = False
    fragments: tuple[tuple[int, int], ...] = ()

    @property
    def group(self) -> int:
        return self.tag >> 16

    @property
    def private(self) -> bool:
        return bool(self.group & 1)

    @property
    def label(self) -> str:
        return tag_label(self.tag)


@dataclass(frozen=True, slots=True)
class Problem:
    """Something the walk found wrong with the structure itself."""

    rule: str
    level: Level
    explanation: str
    offset: int | None
    tag: int | None = None


@dataclass(slots=True)
class Parsed:
    """What the reader made of one file. ``body`` is the file, or the inflated data set when the
    transfer syntax is deflated (``inflated``); ``end`` is where the walk stopped (in ``body``)."""

    data: bytes
    part10: bool = False
    #: False for a file that is not DICOM at all (no Part-10 header, nor a data set's first element).
    dicom: bool = True
    preamble: bytes = b""
    meta: dict[int, Element] = field(default_factory=dict)
    meta_end: int = 0
    transfer_syntax: str | None = None
    explicit: bool = True
    little: bool = True
    inflated: bool = False
    body: bytes = b""
    dataset_start: int = 0
    end: int = 0
    #: True when the walk stopped on bytes it could not read as an element (``end`` is where).
    stopped: bool = False
    elements: list[Element] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    #: For a deflated data set: the compressed bytes consumed (end of the deflate stream in the file).
    compressed_end: int = 0
    #: (needle index, offset in ``body``) of pacsguard.scan.signatures.NEEDLES, when a YARA pass
    #: found them already; None: the embedded family searches itself. (index, -1) marks a needle
    #: YARA stopped recording at its match limit (a flood): that one is searched again.
    needles: list[tuple[int, int]] | None = None
    #: The bounds it was read with, which the rules' own readers (a PDF's streams) keep to as well.
    limits: Limits = field(default_factory=Limits)
    _top: dict[int, Element] | None = None

    def value(self, element: Element) -> bytes:
        if element.length < 0:
            return b""
        src = self.data if element.meta else self.body
        return bytes(src[element.value_offset:element.value_offset + element.length])

    def top(self, tag: int) -> Element | None:
        """The first element with ``tag`` at depth 0 (meta group included)."""
        if tag in self.meta:
            return self.meta[tag]
        if self._top is None:
            self._top = {}
            for element in self.elements:
                if element.depth == 0:
                    self._top.setdefault(element.tag, element)
        return self._top.get(tag)

    def is_pixel_data(self, element: Element) -> bool:
        """Is ``element`` the pixel data: the data set's first top-level (7FE0,0010), the one the walk
        took as the image, or one inside an item (an icon's, PS3.3 C.7.6.1)? A repeated top-level one
        is not (PS3.5 7.1: a tag occurs once; pydicom reads the last), and is searched as any value."""
        return element.tag == PIXEL_DATA and (element.depth > 0 or self.top(PIXEL_DATA) is element)

    def text(self, tag: int) -> str | None:
        """The top-level string value of ``tag``, stripped of padding; None when absent."""
        element = self.top(tag)
        if element is None or element.length < 0 or element.length > 4096:
            return None
        return self.value(element).decode("latin-1").strip("\x00 ")


@lru_cache(maxsize=1)
def _dictionary() -> tuple[dict[int, tuple[str, ...]], tuple[tuple[int, int, str], ...]]:
    """PS3.6's data dictionary as pydicom ships it (its _dicom_dict module, a plain table), loaded
    without importing pydicom itself: that import (~170 ms, numpy with it) was most of a
    `pacsguard scan` run's start-up. The standard tags, and the repeating groups (60xx, 50xx) as
    (mask, value, VR)."""
    import importlib.util
    from pathlib import Path

    try:
        package = importlib.util.find_spec("pydicom")
        if package is None or package.origin is None:
            return {}, ()
        spec = importlib.util.spec_from_file_location("pacsguard_ps36_dictionary",
                                                      Path(package.origin).parent / "_dicom_dict.py")
        if spec is None or spec.loader is None:
            return {}, ()
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError, SyntaxError):
        return {}, ()
    # The most specific mask first: 50xx3000 (Curve Data) before 50xx0000-style wider ones.
    masks = sorted(module.RepeatersDictionary.items(), key=lambda item: item[0].count("x"))
    repeaters = tuple((int("".join("0" if c == "x" else "F" for c in mask), 16), int(mask.replace("x", "0"), 16),
                       entry[0]) for mask, entry in masks)
    return module.DicomDictionary, repeaters


@lru_cache(maxsize=8192)
def dictionary_vr(tag: int) -> str:
    """The VR an implicit-VR element has (PS3.6; the first of "US or SS"); UN when the dictionary
    does not know it."""
    standard, repeaters = _dictionary()
    entry = standard.get(tag)
    vr = str(entry[0]) if entry is not None else next((v for m, value, v in repeaters if tag & m == value), "")
    return vr.split(" ")[0] if vr else "UN"


@lru_cache(maxsize=8)
def dictionary_tags(vrs: frozenset[str]) -> frozenset[int]:
    """The standard tags whose dictionary VR (PS3.6; the first of "US or SS") is one of ``vrs``."""
    standard, _ = _dictionary()
    return frozenset(tag for tag, entry in standard.items() if str(entry[0]).split(" ")[0] in vrs)


def read(data: bytes, limits: Limits = Limits()) -> Parsed:
    """Parse ``data`` (a whole file) as far as it makes sense; never raises."""
    parsed = Parsed(data=data, limits=limits)
    size = len(data)
    if size >= PREAMBLE + 4 and bytes(data[PREAMBLE:PREAMBLE + 4]) == MAGIC:
        parsed.part10 = True
        parsed.preamble = bytes(data[:PREAMBLE])
        _read_meta(parsed, PREAMBLE + 4)
        start = parsed.meta_end
    elif _magic_first(data):
        parsed.part10 = True
        parsed.problems.append(Problem("structure.missing-preamble", Level.LOW,
                                       '"DICM" at offset 0: the 128-byte preamble is missing', 0))
        _read_meta(parsed, len(MAGIC))
        start = parsed.meta_end
    else:
        start = 0
        if size >= 6 and data[0:2] == b"\x02\x00" and _is_vr(bytes(data[4:6])):
            _read_meta(parsed, 0)  # a meta group with no preamble: pydicom writes these
            start = parsed.meta_end
        elif _plausible(data, 0, ">") and not _plausible(data, 0):
            parsed.little = False  # PS3.5 A.3 explicit VR big endian (retired), read with no meta
        elif not _plausible(data, 0):
            parsed.dicom = False
            parsed.body = data
            return parsed
    _choose_encoding(parsed, start)
    if parsed.transfer_syntax in TS_DEFLATED:
        _inflate(parsed, start, limits)
    else:
        parsed.body = data
        parsed.dataset_start = start
    _walk(parsed, limits)
    if any(p.rule == "structure.vr-encoding" for p in parsed.problems):
        _stated_encoding(parsed, limits)
    return parsed


def _stated_encoding(parsed: Parsed, limits: Limits) -> None:
    """The data set read as its transfer syntax says, after the walk read it as its first element
    looked (_choose_encoding). dcmtk, and Orthanc on it, trust the transfer syntax (and read a VR of
    no letters with a 2-byte length), so a file can be crafted to be two data sets: one for a
    reader that corrects the encoding, one for dcmtk. The elements the stated reading reads are
    judged by every rule, whether or not it reaches the end: a reader acts on what it read before
    it failed (dcmtk's dcmIgnoreParsingErrors, a viewer showing what it parsed), so a payload cannot
    hide behind bytes that stop that reading. Bounded as any walk (Limits); its structure problems
    are the misreading's, not the file's, and are dropped. Reading through to the end, it is a
    confusion attack (high); stopping early, a note (low) of what was read that way."""
    other = Parsed(data=parsed.data, part10=parsed.part10, transfer_syntax=parsed.transfer_syntax,
                   explicit=not parsed.explicit, little=parsed.little, body=parsed.body,
                   dataset_start=parsed.dataset_start, limits=limits)
    _walk(other, limits, dcmtk_vr=True)
    seen = {e.offset for e in parsed.elements}
    read = [e for e in other.elements if e.offset not in seen]
    if not read:
        return  # nothing read that way that the walk did not read: one data set
    parsed.elements.extend(read)
    parsed._top = None
    first, second = "explicit" if parsed.explicit else "implicit", "explicit" if other.explicit else "implicit"
    if not other.stopped and not any(p.level >= Level.HIGH for p in other.problems):
        parsed.problems.append(Problem(
            "structure.transfer-syntax-confusion", Level.HIGH,
            f"the data set reads to its end both as {first} VR (its first element) and as {second} VR (its "
            "transfer syntax, as dcmtk reads it): two data sets in one file, both judged", parsed.dataset_start))
        return
    # Mostly a writer's slip (the meta names the wrong encoding): low, what the elements hold is
    # judged by the rules like any value (a payload there is reported at its own level).
    parsed.problems.append(Problem(
        "structure.transfer-syntax-confusion", Level.LOW,
        f"read as {second} VR (its transfer syntax, as dcmtk reads it) the data set stops at offset "
        f"{other.end:,}; the {len(read):,} elements read that way before it are judged too", parsed.dataset_start))


def _magic_first(data: bytes) -> bool:
    """PS3.10 7.1: "DICM" comes after a 128-byte preamble; some writers leave the preamble out and
    start with "DICM". A reader looking for it at 0 too reads the file, so its content is judged as
    DICOM: "DICM", then the meta group (or, failing that, what starts like a data set)."""
    return (len(data) >= 12 and bytes(data[:4]) == MAGIC
            and (bytes(data[4:6]) == b"\x02\x00" and _is_vr(bytes(data[8:10])) or _plausible(data, 4)))


def _is_vr(two: bytes) -> bool:
    return len(two) == 2 and two.isalpha() and two.isupper()


def _read_meta(parsed: Parsed, pos: int) -> None:
    """PS3.10 7.1: group 0002, always explicit VR little endian. The group length is compared with
    where the group really ends, since a short one can hide the transfer syntax from a reader."""
    data, size = parsed.data, len(parsed.data)
    declared_end: int | None = None
    while pos + 8 <= size:
        group, elem = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = bytes(data[pos + 4:pos + 6]).decode("latin-1")
        if not _is_vr(vr.encode("latin-1")):
            parsed.problems.append(Problem("structure.meta-bad-vr", Level.LOW, "file meta element without a valid VR",
                                           pos, (group << 16) | elem))
            break
        if vr in LONG_VRS:
            if pos + 12 > size:
                break
            (length,) = struct.unpack_from("<I", data, pos + 8)
            header = 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            header = 8
        if length == UNDEFINED or pos + header + length > size:
            parsed.problems.append(Problem("structure.meta-length", Level.HIGH,
                                           f"file meta element claims {length} bytes beyond the file", pos,
                                           (group << 16) | elem))
            parsed.meta_end = size
            return
        tag = (group << 16) | elem
        element = Element(tag, vr, pos, pos + header, length, 0, meta=True)
        if tag in parsed.meta:
            _meta_repeated(parsed, parsed.meta[tag], element)
        else:
            parsed.meta[tag] = element
        if tag == 0x00020000 and length == 4:
            declared_end = pos + header + 4 + struct.unpack_from("<I", data, pos + header)[0]
        pos += header + length
    parsed.meta_end = pos
    ts = parsed.meta.get(0x00020010)
    if ts is not None:
        parsed.transfer_syntax = bytes(data[ts.value_offset:ts.value_offset + ts.length]).decode(
            "latin-1").strip("\x00 ")
    if declared_end is not None and declared_end != pos:
        hides = ts is not None and declared_end <= ts.offset
        parsed.problems.append(Problem(
            "structure.meta-group-length", Level.HIGH if hides else Level.LOW,
            f"(0002,0000) says the meta group ends at {declared_end}, it ends at {pos}"
            + ("; a reader trusting it never sees the transfer syntax" if hides else ""),
            parsed.meta[0x00020000].offset, 0x00020000))


def _meta_repeated(parsed: Parsed, first: Element, again: Element) -> None:
    """A file meta element given twice (PS3.10 7.1, PS3.5 7.1: a tag occurs once). dcmtk, and
    Orthanc on it, keep the first ("found twice, ignoring second entry"), so the first is the one
    read here; a second Transfer Syntax UID that says otherwise makes readers that keep the last
    (pydicom) decode another data set than the one judged: crafted, high."""
    data = parsed.data
    differs = bytes(data[first.value_offset:first.value_offset + first.length]).strip(b"\x00 ") != \
        bytes(data[again.value_offset:again.value_offset + again.length]).strip(b"\x00 ")
    confusing = first.tag == 0x00020010 and differs
    parsed.problems.append(Problem(
        "structure.meta-repeated", Level.HIGH if confusing else Level.LOW,
        f"{tag_label(first.tag)} occurs twice in the file meta information"
        + ("; with another transfer syntax: readers keeping the first (dcmtk) and the last (pydicom) "
           "decode different data sets; the first is judged" if confusing else ""),
        again.offset, first.tag))


def _choose_encoding(parsed: Parsed, start: int) -> None:
    """The transfer syntax's encoding, corrected from the first element as readers do (pydicom,
    dcmtk): a file whose first element is not in the encoding its meta names is malformed, not hostile."""
    ts = parsed.transfer_syntax
    parsed.little = ts != TS_EXPLICIT_BE if ts is not None else parsed.little
    if ts in TS_DEFLATED:
        return
    explicit_seen = _is_vr(bytes(parsed.data[start + 4:start + 6]))
    if ts is None:
        parsed.explicit = explicit_seen
        return
    parsed.explicit = ts != TS_IMPLICIT_LE
    if len(parsed.data) >= start + 8 and explicit_seen != parsed.explicit:
        parsed.problems.append(Problem("structure.vr-encoding", Level.LOW,
                                       f"the data set is {'explicit' if explicit_seen else 'implicit'} VR, "
                                       f"the transfer syntax says otherwise", start))
        parsed.explicit = explicit_seen


def _plausible(data: bytes, start: int, order: str = "<") -> bool:
    """Does a file without a Part-10 header start like a data set (PS3.5 7.1: a group 0010 or lower,
    even, with a VR or a length that fits)? Text and other files are then reported as not DICOM.
    Group 0000 is DIMSE's command group, never in a data set (PS3.5 7.1.1, PS3.7 E.1): a file of
    zeros reads as (0000,0000) of length 0 over and over, and is no data set."""
    if len(data) < start + 8:
        return False
    group, elem, length = struct.unpack_from(order + "HHI", data, start)
    if group == 0x0000 or group == 0xFFFE:
        return False
    if group > 0x0010 or group & 1:
        return _plausible_later(data, start, order)
    return _is_vr(bytes(data[start + 4:start + 6])) or length <= len(data) - start - 8


def _plausible_later(data: bytes, start: int, order: str) -> bool:
    """A data set whose first element is in a higher or a private group (PS3.5 7.1: any group may
    come first; dcmtk reads such a file whole): accepted on more evidence than a low group, since
    other formats' first bytes read as some tag: an explicit VR header of a known VR (PS3.5 7.1.2)
    followed by another that fits. Executables, archives and scripts stay what they are."""
    if signatures.identify(data) is not None:
        return False
    if bytes(data[start + 4:start + 6]) in _VR_BYTES:
        return _readable(data, start, True, order == "<", len(data))
    return order == "<" and _implicit_run(data, start)


#: Implicit VR elements (PS3.5 7.1.3) that make a file with no VR to show a data set: more than any
#: other format's first bytes read as by chance (each needs a length that fits and ascending tags).
IMPLICIT_EVIDENCE = 3


def _implicit_run(data: bytes, start: int) -> bool:
    """Does ``data`` read from ``start`` as implicit VR little endian elements (PS3.5 7.1.3, A.1: the
    default transfer syntax, which dcmtk tries on a file without a header): tags ascending, no group
    0000 or FFFE, even lengths (7.1.1) that fit, to the end of the file or for IMPLICIT_EVIDENCE
    elements? A text or another binary format gives a length past its end within a step or two."""
    pos, last, count, size = start, -1, 0, len(data)
    while count < IMPLICIT_EVIDENCE and pos < size:
        if pos + 8 > size:
            return False
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        tag = group << 16 | elem
        if group in (0x0000, 0xFFFE) or tag <= last or length == UNDEFINED or length & 1 or pos + 8 + length > size:
            return False
        pos, last, count = pos + 8 + length, tag, count + 1
    return count >= 2


#: Compressed bytes fed at a time when a corrupt stream is inflated again for what precedes the
#: damage: deflate expands at most ~1032x, so one step overshoots max_inflated by 16 MiB at most.
_SALVAGE_STEP = 16 * 1024


@dataclass(frozen=True, slots=True)
class _Inflated:
    """One inflation attempt: the bytes, the compressed bytes it used, whether it passed the cap
    and the zlib error that stopped it (None: the stream is sound)."""

    body: bytes
    consumed: int
    over: bool
    error: str | None


def _inflate(parsed: Parsed, start: int, limits: Limits) -> None:
    """PS3.5 A.5: the data set after the meta group is a raw deflate stream (RFC 1951). Inflation is
    capped, so a bomb costs at most ``max_inflated`` bytes of memory; the compressed bytes are read
    in place (a memoryview), never copied."""
    compressed = memoryview(parsed.data)[start:]
    done = _inflate_stream(compressed, -zlib.MAX_WBITS, limits.max_inflated)
    if done.error is not None and not done.body and _zlib_header(compressed):
        # A zlib-wrapped stream (RFC 1950), the wrong wrapping: dcmtk reads it when asked
        # (dcmZlibExpectRFC1950Encoding), so what it holds is judged like any data set.
        wrapped = _inflate_stream(compressed, zlib.MAX_WBITS, limits.max_inflated)
        if wrapped.body:
            parsed.problems.append(Problem("structure.deflate-corrupt", Level.LOW,
                                           "deflated data set has a zlib header (RFC 1950); PS3.5 A.5 wants raw "
                                           "deflate (RFC 1951)", start))
            done = wrapped
    if done.error is not None:
        salvaged = f" after {len(done.body):,} bytes" if done.body else ""
        parsed.problems.append(Problem("structure.deflate-corrupt", Level.LOW,
                                       f"deflated data set is corrupt{salvaged}: {done.error}", start))
    parsed.inflated = True
    parsed.dataset_start = 0
    parsed.compressed_end = start + done.consumed
    parsed.body = done.body[:limits.max_inflated] if done.over else done.body
    if done.over:
        parsed.problems.append(Problem("structure.deflate-bomb", Level.HIGH,
                                       f"deflated data set inflates past {limits.max_inflated:,} bytes", start))
        return
    ratio = len(done.body) / max(1, done.consumed)
    if len(done.body) > 16 * 1024 * 1024 and ratio > limits.max_inflate_ratio:
        parsed.problems.append(Problem("structure.deflate-bomb", Level.HIGH,
                                       f"deflated data set inflates {ratio:,.0f}x to {len(done.body):,} bytes", start))


def _zlib_header(stream: memoryview) -> bool:
    """RFC 1950 2.2: CM 8 (deflate), a window of at most 32 KiB, and CMF*256+FLG a multiple of 31."""
    return len(stream) >= 2 and stream[0] & 0x0F == 8 and stream[0] >> 4 <= 7 and (stream[0] << 8 | stream[1]) % 31 == 0


def _inflate_stream(compressed: memoryview, wbits: int, cap: int) -> _Inflated:
    """Inflate in one call (the common, sound case); a corrupt stream is inflated again in steps to
    keep what precedes the damage, which a streaming reader (dcmtk) would also have read."""
    inflater = zlib.decompressobj(wbits)
    try:
        body = inflater.decompress(compressed, cap + 1)
    except zlib.error as exc:
        # unconsumed_tail says nothing after an error: the stream is corrupt, not over the cap.
        body, over = _salvage(compressed, wbits, cap)
        return _Inflated(body, len(compressed), over, str(exc))
    over = len(body) > cap or bool(inflater.unconsumed_tail)
    return _Inflated(body, len(compressed) - len(inflater.unused_data), over, None)


def _salvage(compressed: memoryview, wbits: int, cap: int) -> tuple[bytes, bool]:
    """What a corrupt stream inflates to before its damage, and whether that passes ``cap``."""
    inflater = zlib.decompressobj(wbits)
    parts: list[bytes] = []
    size = 0
    for at in range(0, len(compressed), _SALVAGE_STEP):
        try:
            part = inflater.decompress(compressed[at:at + _SALVAGE_STEP])
        except zlib.error:
            break
        parts.append(part)
        size += len(part)
        if size > cap or inflater.eof:
            break
    return b"".join(parts), size > cap


@dataclass(slots=True)
class _Frame:
    """An open container during the walk: a sequence or an item, ending at ``end`` or at its
    delimiter (``end`` None); ``explicit`` because a UN sequence's items are implicit VR (PS3.5 6.2.2)."""

    kind: str  # "seq" or "item"
    end: int | None
    explicit: bool
    tag: int
    #: Sequences open around and including this frame, and the nearest defined end of any frame:
    #: kept here so that each element costs no walk over the stack.
    depth: int = 0
    limit: int | None = None
    #: The byte order inside: a UN sequence's items are implicit VR little endian whatever the
    #: transfer syntax (PS3.5 6.2.2, CP-246), so in a big endian file it differs from the file's.
    little: bool = True
    #: (u16, u32, tag) struct formats of ``little``: looked up once per frame, not per element.
    formats: tuple[str, str, str] = ("<H", "<I", "<HH")


def _frame(stack: list[_Frame], kind: str, end: int | None, explicit: bool, tag: int,
           little: bool | None = None) -> _Frame:
    outer = stack[-1] if stack else None
    depth = (outer.depth if outer else 0) + (kind == "seq")
    limit = end if end is not None else (outer.limit if outer else None)
    order = little if little is not None else (outer.little if outer else True)
    return _Frame(kind, end, explicit, tag, depth, limit, order, _FORMATS[order])


#: The VRs as the two bytes of an explicit header, for the common case without decoding.
_VR_BYTES = {vr.encode("ascii"): vr for vr in VRS}


#: (u16, u32, tag) struct formats of each byte order, little endian first.
_FORMATS = {True: ("<H", "<I", "<HH"), False: (">H", ">I", ">HH")}


def _walk(parsed: Parsed, limits: Limits, *, dcmtk_vr: bool = False) -> None:
    """Walk the data set's elements. ``dcmtk_vr``: read an explicit VR of bytes that are no letters
    as dcmtk does (an unknown VR with a 2-byte length) instead of stopping there."""
    body = parsed.body
    size = len(body)
    file_formats = _FORMATS[parsed.little]
    pos = parsed.dataset_start
    stack: list[_Frame] = []
    elements = parsed.elements
    problems = parsed.problems
    last_tag = -1
    noted = 0
    truncated_by_cap = any(p.rule == "structure.deflate-bomb" for p in problems)

    def stop(rule: str, level: Level, why: str, at: int, tag: int | None = None) -> None:
        if not (truncated_by_cap and level < Level.HIGH):
            problems.append(Problem(rule, level, why, at, tag))
        parsed.stopped = True

    while True:
        while stack and stack[-1].limit is not None and pos >= stack[-1].limit:
            frame = stack.pop()
            if frame.end is None:
                _closed_by_end(parsed, frame, pos)
                continue
            if pos > frame.end:
                stop("structure.length-overrun", Level.LOW, "an element runs past the end of its item or sequence",
                     pos, frame.tag)
                parsed.end = pos
                return
        if pos >= size:
            break
        explicit = stack[-1].explicit if stack else parsed.explicit
        u16, u32, tag_fmt = stack[-1].formats if stack else file_formats
        if pos + 8 > size:
            stop("structure.truncated", Level.LOW, f"{size - pos} stray bytes where an element header should be", pos)
            break
        group, elem = struct.unpack_from(tag_fmt, body, pos)
        tag = (group << 16) | elem
        depth = stack[-1].depth if stack else 0
        if group == 0xFFFE:
            (length,) = struct.unpack_from(u32, body, pos + 4)
            if not _delimiter(parsed, stack, tag, length, pos, size, limits):
                break
            pos += 8
            continue
        if not stack:
            if tag <= last_tag:
                # PS3.5 7.1: top-level elements ascend and occur once. A repeated or out-of-order
                # element that reads as one is malformed, not hostile: dcmtk keeps reading ("found
                # twice, ignoring second entry"), so the walk goes on and every rule judges what
                # follows. Bytes that go back and read as no element (a run of zeros: (0000,0000)
                # again and again) are not this data set's: the walk stops there.
                if not _readable(body, pos, explicit, parsed.little, size):
                    stop("structure.not-elements", Level.LOW, f"{tag_label(tag)} after {tag_label(last_tag)}: "
                         "bytes that go back in tag order and read as no element", pos, tag)
                    break
                if noted < MAX_ORDER_NOTES:
                    noted += 1
                    _disorder(parsed, tag, last_tag, pos)
            else:
                last_tag = tag
        if stack and stack[-1].kind == "seq":
            stop("structure.bad-item", Level.LOW, "a sequence holds an element where an item should be", pos, tag)
            break
        if len(elements) >= limits.max_elements:
            stop("structure.too-many-elements", Level.HIGH,
                 f"more than {limits.max_elements:,} elements: built to exhaust a reader", pos, tag)
            break
        if explicit:
            vr_bytes = body[pos + 4:pos + 6]
            known = _VR_BYTES.get(vr_bytes)
            if known is None and not _is_vr(vr_bytes):
                if not dcmtk_vr:
                    stop("structure.bad-vr", Level.LOW, f"element {tag_label(tag)} has no valid VR ({vr_bytes!r})",
                         pos, tag)
                    break
                vr = ""  # dcmtk's EVR_UNKNOWN2B: a 2-byte length, the value read as bytes
            else:
                vr = known or vr_bytes.decode("ascii")
            if not vr:
                (length,) = struct.unpack_from(u16, body, pos + 6)
                header, vr = 8, "UN"
            elif vr in LONG_VRS or vr not in VRS:
                if pos + 12 > size:
                    stop("structure.truncated", Level.LOW, "the file ends inside an element header", pos, tag)
                    break
                (length,) = struct.unpack_from(u32, body, pos + 8)
                header = 12
            else:
                (length,) = struct.unpack_from(u16, body, pos + 6)
                header = 8
        else:
            (length,) = struct.unpack_from(u32, body, pos + 4)
            header = 8
            vr = dictionary_vr(tag) if not group & 1 else "UN"
            if length == UNDEFINED and vr != "SQ" and tag != PIXEL_DATA:
                vr = "SQ"  # implicit VR: only a sequence may have an undefined length (PS3.5 7.5.1)
        value_at = pos + header
        if length == UNDEFINED:
            little = u32 == "<I"
            if vr != "SQ" and (tag == PIXEL_DATA or vr in ("OB", "OW") and _item_at(body, value_at, little)):
                # PS3.5 A.4: encapsulated pixel data, at the top level or in an item (an icon, PS3.3
                # C.7.6.1), and any OB or OW of undefined length holding items (pydicom reads it so).
                element, pos_after = _fragments(parsed, tag, vr, pos, value_at, limits, depth, little)
                elements.append(element)
                if pos_after < 0:
                    break
                pos = pos_after
                continue
            if vr not in ("SQ", "UN"):
                stop("structure.undefined-length", Level.LOW, f"{vr} element {tag_label(tag)} with undefined length",
                     pos, tag)
                break
            elements.append(Element(tag, "SQ", pos, value_at, -1, depth))
            # A UN sequence's items are implicit VR little endian (PS3.5 6.2.2, CP-246).
            frame = _frame(stack, "seq", None, explicit and vr == "SQ", tag, little if vr == "SQ" else True)
            if not _push(parsed, stack, frame, pos, limits):
                break
            pos = value_at
            continue
        container_end = stack[-1].limit if stack and stack[-1].limit is not None else size
        if value_at + length > container_end:
            _overrun(parsed, tag, length, pos, value_at, size, container_end)
            break
        if vr == "SQ" or vr == "UN" and _un_items(body, value_at, length):
            un_items = vr == "UN"
            # A UN of defined length whose value is items is a sequence too (PS3.5 6.2.2): readers
            # knowing the attribute read it so (pydicom, dcmtk), in implicit VR little endian.
            elements.append(Element(tag, "SQ", pos, value_at, -1, depth))
            frame = _frame(stack, "seq", value_at + length, explicit and not un_items, tag,
                           True if un_items else u32 == "<I")
            if not _push(parsed, stack, frame, pos, limits):
                break
            pos = value_at
            continue
        elements.append(Element(tag, vr, pos, value_at, length, depth))
        pos = value_at + length
    parsed.end = min(pos, size)
    open_frames = [f for f in stack if f.end is None]
    if open_frames and not parsed.stopped:
        # The file ended on an element boundary with a delimiter still owed: a reader waiting for it
        # loops or reads past the end (crafted; a merely cut file ends mid-element instead).
        problems.append(Problem("structure.unterminated", Level.HIGH,
                                f"{len(open_frames)} undefined-length sequences or items never close",
                                None, open_frames[-1].tag))


def _closed_by_end(parsed: Parsed, frame: _Frame, pos: int) -> None:
    """An undefined-length item or sequence (PS3.5 7.5.2) still open where an enclosing one of
    defined length ends: its delimiter is missing. dcmtk and pydicom end it there and read on, so
    the walk does too (malformed, low), and every rule judges what follows."""
    parsed.problems.append(Problem("structure.missing-delimiter", Level.LOW,
                                   f"an undefined-length {'item' if frame.kind == 'item' else 'sequence'} ends "
                                   "with the sequence or item of defined length around it, without its delimiter",
                                   pos, frame.tag))


def _item_at(body: bytes, at: int, little: bool) -> bool:
    """Does an item tag (FFFE,E000) start at ``at`` (PS3.5 7.5)?"""
    return body[at:at + 4] == (b"\xfe\xff\x00\xe0" if little else b"\xff\xfe\xe0\x00")


def _un_items(body: bytes, at: int, length: int) -> bool:
    """Is a UN value of defined ``length`` at ``at`` a sequence's items (PS3.5 6.2.2: implicit VR
    little endian)? It starts with an item tag and reads as headers to its last byte. A value
    that only starts like one is bytes, as readers then keep it (pydicom leaves it UN, dcmtk reads
    on after it): walking it as items would stop the walk there and hide what follows."""
    return length >= 8 and _item_at(body, at, True) and _headers_fill(body, at, at + length)


def _headers_fill(body: bytes, start: int, end: int) -> bool:
    """Do the bytes [start, end) read as implicit VR little endian items and elements (PS3.5 7.5)
    to their last byte, every length fitting? Read flat: an item, a delimiter, an element of
    undefined length or one whose value starts with an item is entered, any other skipped."""
    pos = start
    while pos < end:
        if pos + 8 > end:
            return False
        group, elem, length = struct.unpack_from("<HHI", body, pos)
        if group == 0xFFFE:
            if elem not in (0xE000, 0xE00D, 0xE0DD):
                return False
            pos += 8
        elif group == 0x0000:
            return False
        elif length == UNDEFINED or (length >= 8 and _item_at(body, pos + 8, True)):
            pos += 8
        elif pos + 8 + length > end:
            return False
        else:
            pos += 8 + length
    return pos == end


def tag_label(tag: int) -> str:
    """A tag as PS3.5 7.1 writes it: (gggg,eeee)."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


#: Repeated or out-of-order top-level tags noted per file: one says the file is malformed, a
#: flood of them (every element written twice) says nothing more.
MAX_ORDER_NOTES = 8


def _disorder(parsed: Parsed, tag: int, last_tag: int, pos: int) -> None:
    """Note a top-level element that repeats an earlier tag or comes after a higher one (PS3.5 7.1)."""
    if any(e.tag == tag for e in parsed.elements if e.depth == 0):
        parsed.problems.append(Problem("structure.repeated-tag", Level.LOW,
                                       f"{tag_label(tag)} occurs twice in the data set", pos, tag))
    else:
        parsed.problems.append(Problem("structure.tag-order", Level.LOW,
                                       f"{tag_label(tag)} after {tag_label(last_tag)}: not in tag order", pos, tag))


def _readable(body: bytes, pos: int, explicit: bool, little: bool, end: int) -> bool:
    """Does ``body[pos:]`` read as an element, and what follows it as the header of another (or the
    end)? Asked of a top-level tag out of order (PS3.5 7.1), to tell a malformed data set from
    bytes that are none (zeros, an appended file): two headers in a row that fit are an element's."""
    after = _element_end(body, pos, explicit, little, end)
    if after is None:
        return False
    return after >= end or _element_end(body, after, explicit, little, end, header_only=True) is not None


def _element_end(body: bytes, pos: int, explicit: bool, little: bool, end: int,
                 header_only: bool = False) -> int | None:
    """Where the element at ``pos`` ends (its value's end; for an undefined length, where its value
    starts), or None when it reads as no element: group 0000 (DIMSE's, never in a data set, PS3.5
    7.1.1), no VR where one belongs, a length past ``end``. ``header_only``: an item or delimiter
    (PS3.5 7.5) is a header too."""
    if pos + 8 > end:
        return None
    group, elem = struct.unpack_from("<HH" if little else ">HH", body, pos)
    if group == 0x0000:
        return None
    u32 = "<I" if little else ">I"
    if group == 0xFFFE:
        return pos + 8 if header_only and elem in (0xE000, 0xE00D, 0xE0DD) else None
    if explicit:
        vr = bytes(body[pos + 4:pos + 6])
        if not _is_vr(vr):
            return None
        if vr.decode("ascii") in LONG_VRS or vr.decode("ascii") not in VRS:
            if pos + 12 > end:
                return None
            (length,) = struct.unpack_from(u32, body, pos + 8)
            header = 12
        else:
            (length,) = struct.unpack_from("<H" if little else ">H", body, pos + 6)
            header = 8
    else:
        (length,) = struct.unpack_from(u32, body, pos + 4)
        header = 8
    if length == UNDEFINED:
        return pos + header
    return pos + header + length if pos + header + length <= end else None


def _push(parsed: Parsed, stack: list[_Frame], frame: _Frame, pos: int, limits: Limits) -> bool:
    if frame.kind == "seq" and frame.depth > limits.max_depth:
        parsed.problems.append(Problem("structure.nesting-depth", Level.HIGH,
                                       f"sequences nested deeper than {limits.max_depth}: built to exhaust a reader",
                                       pos, frame.tag))
        parsed.stopped = True
        parsed.end = pos
        return False
    stack.append(frame)
    return True


def _delimiter(parsed: Parsed, stack: list[_Frame], tag: int, length: int, pos: int, size: int,
               limits: Limits) -> bool:
    """An item or delimiter (PS3.5 7.5): opens or closes a frame; False stops the walk."""
    top = stack[-1] if stack else None
    if tag == ITEM and top is not None and top.kind == "seq":
        end = None if length == UNDEFINED else pos + 8 + length
        bound = top.limit if top.limit is not None else size
        if end is not None and end > bound and not _item_past_sequence(parsed, stack, end, pos, size):
            _overrun(parsed, tag, length, pos, pos + 8, size, bound)
            return False
        stack.append(_frame(stack, "item", end, top.explicit, tag, top.little))
        return True
    if tag == ITEM_END and top is not None and top.kind == "item" and top.end is None:
        stack.pop()
        return True
    if tag == SEQ_END and top is not None and top.kind == "seq" and top.end is None:
        stack.pop()
        return True
    if tag == SEQ_END and top is not None and top.kind == "item" and top.end is None and len(stack) >= 2:
        stack.pop()  # an item closed by its sequence's delimiter: lenient readers accept it
        stack.pop()
        return True
    parsed.problems.append(Problem("structure.stray-delimiter", Level.LOW, f"{tag_label(tag)} out of place", pos, tag))
    parsed.stopped = True
    parsed.end = pos
    return False


def _item_past_sequence(parsed: Parsed, stack: list[_Frame], end: int, pos: int, size: int) -> bool:
    """An item of defined length that ends past its sequence's defined length (PS3.5 7.5.1), but
    within what encloses the sequence: dcmtk reads the item whole and goes on after it, so the
    walk does too, the sequence taken to end with the item (malformed, low). False: the item runs
    past the enclosing item or the file as well."""
    seq = stack[-1]
    outer = stack[-2].limit if len(stack) >= 2 and stack[-2].limit is not None else size
    if seq.end is None or end > outer:
        return False
    parsed.problems.append(Problem("structure.item-past-sequence", Level.LOW,
                                   f"an item runs {end - seq.end:,} bytes past the end of its sequence "
                                   f"{tag_label(seq.tag)}; read whole, as dcmtk reads it", pos, seq.tag))
    seq.end = seq.limit = end
    return True


def _overrun(parsed: Parsed, tag: int, length: int, pos: int, value_at: int, size: int, container_end: int) -> None:
    """A length past its container: a cut file is malformed (low); a length far beyond the whole
    file is built to make a reader allocate it (high)."""
    parsed.stopped = True
    parsed.end = pos
    if length >= 1 << 20 and length > 4 * size:
        parsed.problems.append(Problem("structure.lying-length", Level.HIGH,
                                       f"{tag_label(tag)} claims {length:,} bytes in a {size:,}-byte file", pos, tag))
    elif value_at + length > size:
        parsed.problems.append(Problem("structure.truncated", Level.LOW,
                                       f"{tag_label(tag)} claims {length:,} bytes, {size - value_at:,} remain",
                                       pos, tag))
    else:
        parsed.problems.append(Problem("structure.length-overrun", Level.LOW,
                                       f"{tag_label(tag)} runs {value_at + length - container_end:,} bytes "
                                       "past its item", pos, tag))


def _fragments(parsed: Parsed, tag: int, vr: str, pos: int, value_at: int,
               limits: Limits, depth: int = 0, little: bool = True) -> tuple[Element, int]:
    """PS3.5 A.4: the basic offset table and fragments of encapsulated pixel data, up to the
    sequence delimiter. Returns the element and where the walk goes on (-1: it stops)."""
    body, size = parsed.body, len(parsed.body)
    fmt = "<HHI" if little else ">HHI"
    frags: list[tuple[int, int]] = []
    at = value_at
    while True:
        if at + 8 > size:
            parsed.problems.append(Problem("structure.unterminated", Level.LOW,
                                           "encapsulated pixel data ends without its sequence delimiter", at, tag))
            parsed.stopped = True
            parsed.end = size
            return Element(tag, vr, pos, value_at, -1, depth, fragments=tuple(frags)), -1
        group, elem, length = struct.unpack_from(fmt, body, at)
        item = (group << 16) | elem
        if item == SEQ_END:
            return Element(tag, vr, pos, value_at, -1, depth, fragments=tuple(frags)), at + 8
        if item != ITEM or length == UNDEFINED:
            parsed.problems.append(Problem("structure.bad-fragment", Level.MEDIUM,
                                           f"{tag_label(item)} inside encapsulated pixel data", at, tag))
            parsed.stopped = True
            parsed.end = at
            return Element(tag, vr, pos, value_at, -1, depth, fragments=tuple(frags)), -1
        if at + 8 + length > size:
            level = Level.HIGH if length >= 1 << 20 and length > 4 * size else Level.LOW
            parsed.problems.append(Problem("structure.fragment-length", level,
                                           f"a pixel data fragment claims {length:,} bytes, {size - at - 8:,} remain",
                                           at, tag))
            parsed.stopped = True
            parsed.end = at
            return Element(tag, vr, pos, value_at, -1, depth, fragments=tuple(frags)), -1
        if len(frags) >= limits.max_fragments:
            parsed.problems.append(Problem("structure.too-many-fragments", Level.HIGH,
                                           f"more than {limits.max_fragments:,} pixel data fragments", at, tag))
            parsed.stopped = True
            parsed.end = at
            return Element(tag, vr, pos, value_at, -1, depth, fragments=tuple(frags)), -1
        frags.append((at + 8, length))
        at += 8 + length
