"""Looking into a PDF for the names that make it active, in its raw bytes and in its streams
(ISO 32000-1 7.3.8). A name inside a compressed stream is in no raw byte of the file: above all
in an object stream (7.5.7, PDF 1.5), where whole dictionaries such as
``<< /S /JavaScript /JS (...) >>`` live deflated. Streams are decoded as a viewer decodes them:
FlateDecode (7.4.4), LZWDecode (7.4.4), ASCIIHexDecode (7.4.2), ASCII85Decode (7.4.3) and
RunLengthDecode (7.4.5), alone or chained, a PNG or TIFF predictor undone (7.4.4.4), with the
broken forms viewers still read (no end-of-line, or more white space, after ``stream``; a wrong
/Length, which is never trusted; data cut short: what inflates is kept). What that may cost is
bounded per stream and per document (inflated bytes, the ratio, the number of streams, the
ASCII85, LZW and run-length input, the predicted bytes); a stream that inflates past its bound at
a bomb's ratio is itself reported, and a bound run out before a stream that can hold names is
said as such (the document's writer chose the padding that spends it).
Object streams are known as a viewer knows them: named by a cross-reference stream's type-2
entries (7.5.8.3, read by pacsguard.scan.xref), or typed /ObjStm in their whole dictionary (what
a viewer rebuilding a broken cross-reference reads), whatever else the dictionary says.
Nothing here raises for a document's content."""

from __future__ import annotations

import base64
import binascii
import bisect
import itertools
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from pacsguard.scan import xref

#: PDF names that run or launch something (ISO 32000-1 12.6.3, 12.6.4.5, 7.11.4, Adobe RichMedia).
ACTIVE = frozenset({"JavaScript", "JS", "OpenAction", "Launch", "AA", "EmbeddedFile", "EmbeddedFiles",
                    "RichMedia", "XFA", "SubmitForm", "ImportData"})
#: Of those, the names that say when an action runs (ISO 32000-1 12.6.3 on opening, 12.6.3 Table 197
#: on events), not what it does: alone, a destination to open at, as report writers set.
TRIGGERS = frozenset({"OpenAction", "AA"})
#: A name: a solidus, then regular characters, any but white space and delimiters (ISO 32000-1
#: 7.3.5, 7.2.2); up to 127 bytes (Annex C.2), each written as #xx at worst: 381 characters.
NAME = re.compile(rb"/([^\x00\t\n\x0c\r ()<>\[\]{}/%]{2,381})")
HEX_ESCAPE = re.compile(rb"#([0-9A-Fa-f]{2})")
#: White-space characters (7.2.2, Table 1).
WHITE = b"\x00\t\n\x0c\r "

FLATE, AHX, A85 = "FlateDecode", "ASCIIHexDecode", "ASCII85Decode"
LZW, RL = "LZWDecode", "RunLengthDecode"
#: Filter names and the abbreviations of Table 94, which viewers accept on streams too (7.4.1).
FILTERS = {"FlateDecode": FLATE, "Fl": FLATE, "ASCIIHexDecode": AHX, "AHx": AHX, "ASCII85Decode": A85,
           "A85": A85, "LZWDecode": LZW, "LZW": LZW, "RunLengthDecode": RL, "RL": RL}

#: The keyword that opens a stream's data, after its dictionary (7.3.8.1), white space or
#: comments between (7.2.3: a comment is white space). Starting with ">>", the search is fast.
KEYWORD = re.compile(rb">>(?:[\x00\t\n\x0c\r ]|%[^\r\n]*[\r\n])*stream")
#: KEYWORD, or a comment's text up to the last ">>" before its next "%" or its end-of-line: a
#: ">>" inside a comment starts a KEYWORD match of its own, looked at apart (_keywords), so that
#: the white space and comments after it are not read again for each of them.
CANDIDATE = re.compile(KEYWORD.pattern + rb"|%[^\r\n%]*>>")
#: White space and comments, as KEYWORD steps over them (7.2.2, 7.2.3).
RUN = re.compile(rb"(?:[\x00\t\n\x0c\r ]|%[^\r\n]*[\r\n])*")
#: White space other than an end-of-line.
LINE_WHITE = re.compile(rb"[\x00\t\x0c ]*")
#: How far before ``stream`` its dictionary is looked for: stream dictionaries are short; one
#: padded past this still has its data inflated when the data has a zlib header.
DICT_BACK = 4096
OBJECT = re.compile(rb"(\d{1,10})[\x00\t\n\x0c\r ]+(\d{1,5})[\x00\t\n\x0c\r ]+obj")
FILTER = re.compile(rb"/Filter[\x00\t\n\x0c\r ]*(\[[^\]]*\]|/[^\x00\t\n\x0c\r ()<>\[\]{}/%]+)")
FILTER_NAME = re.compile(rb"/([^\x00\t\n\x0c\r ()<>\[\]{}/%]+)")
PREDICTOR = re.compile(rb"/Predictor[\x00\t\n\x0c\r ]+([0-9]+)")
#: The other decode parameters of FlateDecode and LZWDecode (7.4.4.4, Table 8), each a number.
PARAMETER = {key: re.compile(rb"/" + key.encode() + rb"[\x00\t\n\x0c\r ]+([0-9]+)")
             for key in ("Colors", "BitsPerComponent", "Columns", "EarlyChange")}
#: A stream's /Filter or /DecodeParms given as an indirect object, alone or in an array (7.3.10: any
#: value may be a reference; viewers resolve it here too).
INDIRECT = re.compile(rb"/(Filter|DecodeParms)[\x00\t\n\x0c\r ]*(\[[^\]]{0,512}\]|\d{1,10}[\x00\t\n\x0c\r ]+"
                      rb"\d{1,5}[\x00\t\n\x0c\r ]+R)")
#: The same over a whole document, whose names are not unescaped first: /Filter, /DecodeParms
#: or a name with a #xx escape (7.3.5: /F#69lter), its value a reference or an array.
ANY_INDIRECT = re.compile(rb"/(Filter|DecodeParms|[^\x00\t\n\x0c\r ()<>\[\]{}/%#]{0,380}"
                          rb"#[^\x00\t\n\x0c\r ()<>\[\]{}/%]{2,380})[\x00\t\n\x0c\r ]*"
                          rb"(\[[^\]]{0,512}\]|\d{1,10}[\x00\t\n\x0c\r ]+\d{1,5}[\x00\t\n\x0c\r ]+R)")
REFERENCE = re.compile(rb"(\d{1,10})[\x00\t\n\x0c\r ]+(\d{1,5})[\x00\t\n\x0c\r ]+R")
#: An indirect object's value read at most this far (a filter's name or its parameters are short),
#: and the indirect filters and parameters resolved per document.
MAX_VALUE, MAX_REFERENCES = 1024, 10_000
#: Object streams by type, or by the /First and /N a viewer reads them with (7.5.7, Table 16).
OBJECT_STREAM = re.compile(rb"/Type[\x00\t\n\x0c\r ]*/ObjStm\b|/First[\x00\t\n\x0c\r ]+[0-9]")
#: An object stream's type (7.5.7, Table 16), which no other object has: looked for in all the bytes
#: before ``stream`` (to DICT_BACK), since an "obj" inside the dictionary's own string or comment
#: (``/Pad (1 0 obj)``, ``% 1 0 obj``) would start its dictionary after the type.
OBJECT_STREAM_TYPE = re.compile(rb"/Type[\x00\t\n\x0c\r ]*/ObjStm\b")
#: What a decoded object stream starts with (7.5.7): its header's pairs of object number and
#: offset. An image's, a font's or page content's bytes do not: a stream whose dictionary was
#: not read whole (padded past DICT_BACK) is known by it.
OBJECT_STREAM_HEAD = re.compile(rb"[\x00\t\n\x0c\r ]*[0-9]{1,10}[\x00\t\n\x0c\r ]+[0-9]{1,10}[\x00\t\n\x0c\r ]+"
                                rb"[0-9]{1,10}[\x00\t\n\x0c\r ]+[0-9]{1,10}[\x00\t\n\x0c\r ]|"
                                rb"[\x00\t\n\x0c\r ]*[0-9]{1,10}[\x00\t\n\x0c\r ]+0[\x00\t\n\x0c\r ]*[<\[/(]")
#: Times a stream waits for an object stream that holds its /Filter or /DecodeParms, itself
#: waiting for another: a chain of object streams as deep as that is read in any order.
MAX_WAITS = 4
#: Bytes of an image's or a font's decoded data, after its leading white space, read to tell an
#: object stream's header.
PROBE = 64
#: The end of a comment (7.2.3).
NEWLINE = re.compile(rb"[\r\n]")
#: What may come before an object stream's header in its decoded bytes: white space and comments
#: (7.2.2, 7.2.3), any amount of them, as Ghostscript reads the header past them (not past a
#: comment between its numbers, nor past any other byte).
LEAD = re.compile(rb"(?:[\x00\t\n\x0c\r ]+|%[^\r\n]*[\r\n])*+")
#: Slow bytes (Bounds.max_slow) each image's or font's probe spends free of the allowance: its
#: first round, as much as a real image's first bytes cost, so that a report of many predicted or
#: LZW images does not spend the allowance (10,000 streams at most: about a second at worst).
FREE = 2 * PROBE
#: What a row of predicted bytes costs the slow allowance in a probe (_unpredict_lead) besides its
#: bytes undone one at a time: as much as some 16 bytes, so that narrow rows cost their time too.
ROW_COST = 16
#: How much more of an image's or font's decoded data each round of a probe reads while all of it
#: is LEAD: a black border is skipped in a few rounds, each from the stream's start.
PROBE_GROWTH = 64
#: Where the administrator raises the document's bound (docs/scan.md), said with what it left.
SETTING = " (scan.limits.max_pdf_inflated)"
#: An object stream's /First: where its first object starts in its decoded bytes (7.5.7, Table 16).
FIRST = re.compile(rb"/First[\x00\t\n\x0c\r ]+([0-9]{1,10})")
#: How much of an object stream's header (7.5.7: pairs of object number and offset) is read for
#: an object looked for: some 80,000 objects, where writers put a few hundred per stream.
MAX_HEADER = 1024 * 1024
#: Streams whose bytes are no PDF syntax: images (8.9.5), font programs (9.9), cross-reference
#: streams (7.5.8). Inflated for their size only: a name matched in their bytes means nothing.
BINARY = re.compile(rb"/Subtype[\x00\t\n\x0c\r ]*/(?:Image|Type1C|CIDFontType0C|OpenType)\b|/Length[123]\b"
                    rb"|/Type[\x00\t\n\x0c\r ]*/XRef\b")
HEX_DIGITS = re.compile(rb"[0-9A-Fa-f]*")
A85_TEXT = re.compile(rb"(?:<~)?[!-uz]*")

#: Compressed bytes fed to zlib at a time, and inflated bytes taken from it at a time: memory
#: stays at the stream's bound plus one step, whatever the ratio.
IN_STEP, OUT_STEP = 16 * 1024, 1024 * 1024


@dataclass(frozen=True, slots=True)
class Bounds:
    """What looking into one PDF's streams may cost (issue #19: bounded time and memory per file)."""

    #: Inflated bytes of one stream: a page's content or an object stream is far smaller.
    max_stream: int = 16 * 1024 * 1024
    #: Inflated bytes of all the streams of one document together.
    max_total: int = 64 * 1024 * 1024
    #: A stream (or a document) past its bound at more than this ratio is a decompression bomb:
    #: zlib reaches ~1,030x on zeros; page content, fonts and real images stay well under 100x.
    max_ratio: int = 500
    #: Streams looked at per document (decoded or not): a 2,000-page report has about this many.
    max_streams: int = 10_000
    #: ASCII85 characters decoded per document: Python's decoder reads ~7 MB a second.
    max_ascii85: int = 2 * 1024 * 1024
    #: LZW and RunLengthDecode input bytes, and bytes whose predictor is undone, per document:
    #: each is decoded a code, a run or a byte at a time in Python (~1 MB a second at worst); an
    #: object stream is far smaller.
    max_slow: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Stream:
    """A stream as found: where its data starts in the PDF, the object it is (when the bytes
    before it say), its filters (names decoded, abbreviations spelled out), and what its
    dictionary says it holds."""

    offset: int
    obj: str
    filters: tuple[str, ...]
    object_stream: bool
    binary: bool
    #: /Predictor, /Colors, /BitsPerComponent, /Columns (7.4.4.4, Table 8), when it predicts (>= 2).
    predictor: tuple[int, int, int, int] | None
    #: LZWDecode's /EarlyChange (Table 8): 1 unless it says 0.
    early: int = 1
    #: An object stream's /First (7.5.7), 0 when it has none.
    first: int = 0
    #: The indirect /Filter and /DecodeParms its dictionary names that no object was found for
    #: ("/DecodeParms 12 0 R"): it is decoded without them.
    unresolved: str = ""

    def describe(self) -> str:
        kind = "object stream" if self.object_stream else "stream"
        number = f" {self.obj}" if self.obj else ""
        return f"{kind}{number}, {' '.join('/' + f for f in self.filters)}"


class _Place(NamedTuple):
    """Where a stream's dictionary (``window``) and the bytes naming its object (``head``) lie in
    the document, and where its keyword ends: what is needed to read the stream again once the
    objects its dictionary names indirectly may be known."""

    window: tuple[int, int]
    head: tuple[int, int]
    after: int
    #: How far back the bytes before the keyword are read (DICT_BACK, or the previous keyword).
    low: int


def _dictionary(doc: bytes, place: _Place) -> bytes:
    """The stream's dictionary as read (names unescaped); said to be an object stream's when the
    bytes before it, back to ``place.low``, have the type only an object stream has."""
    window = unescape(doc[place.window[0]:place.window[1]])
    if place.window[0] > place.low and not OBJECT_STREAM_TYPE.search(window) \
            and OBJECT_STREAM_TYPE.search(unescape(doc[place.low:place.window[0]])):
        return b"/Type /ObjStm " + window
    return window


@dataclass(slots=True)
class Found:
    """What the streams of one PDF hold: the active names of each stream that has any (name ->
    offset in its decoded bytes), a bomb, and what could not be looked into."""

    active: list[tuple[Stream, dict[str, int]]] = field(default_factory=list)
    #: (the stream where the bound was passed, why it is a bomb)
    bomb: tuple[Stream, str] | None = None
    unread: list[str] = field(default_factory=list)
    #: More streams than Bounds.max_streams: the rest were not looked at.
    flood: bool = False
    #: A bound of Bounds ran out before a stream that can hold names (not an image, a font or a
    #: cross-reference stream) was read to its end: padding the document is all it takes.
    bound: bool = False
    #: Bytes decoded from all the streams together.
    inflated: int = 0
    #: Images or fonts whose first decoded bytes were white space or comments as far as their
    #: probe read (_probe): an object stream's header may follow. One note says them all.
    white: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Step:
    """One filter applied: its output, the input bytes it used, whether it stopped at the cap on
    its output (``over``) or at a bound on its input before the data's end (``cut``)."""

    data: bytes | bytearray
    consumed: int
    over: bool
    cut: bool = False
    #: Stopped by a bound (an allowance of Bounds), not by damage in the data.
    bound: bool = False


def unescape(raw: bytes) -> bytes:
    """A name's #xx escapes decoded (7.3.5): /J#61vaScript is /JavaScript."""
    return HEX_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw) if b"#" in raw else raw


def active_names(text: bytes | bytearray) -> dict[str, int]:
    """The active names in ``text`` (raw PDF bytes, or a stream's decoded bytes), each with the
    offset of its first occurrence, in the order first met."""
    seen: dict[str, int] = {}
    for match in NAME.finditer(text):
        name = unescape(match.group(1)).decode("latin-1")
        if name in ACTIVE and name not in seen:
            seen[name] = match.start()
    return seen


def look(doc: bytes, bounds: Bounds = Bounds()) -> Found:
    """Decode the streams of ``doc`` within ``bounds`` and find active names in them."""
    found = Found()
    objects = _Objects(doc)
    listed, deferred, found.flood = _streams(doc, bounds.max_streams, objects)
    if found.flood:
        found.unread.append(f"streams past the first {bounds.max_streams:,}")
    # The object streams the cross-reference streams name (7.5.8.3), whatever their dictionaries say.
    holders = _holders(doc, bounds)
    if holders.cut:
        found.unread.append(holders.cut)
        found.bound = True
    listed = _with_holders(listed, holders)
    # Streams a viewer parses as PDF syntax first, images and fonts last: the budget goes to
    # where a name means something, and the rest is inflated for its size only. Those whose
    # dictionary names an object found in no byte of the document come after the others: the
    # object may be inside an object stream (7.5.7), known once that stream is decoded.
    listed.sort(key=lambda s: s.binary)
    binary = next((index for index, s in enumerate(listed) if s.binary), len(listed))
    queue: list[Stream | _Place] = [*listed[:binary], *deferred, *listed[binary:]]
    images = len(listed) - binary  # the binary streams at the queue's end
    left, consumed, ascii85, slow = bounds.max_total, 0, bounds.max_ascii85, bounds.max_slow
    unfound = False
    # A stream whose object is in an object stream that is itself waiting (a chain, in any
    # order) waits again, behind the others, while object streams decoded teach something new.
    waited: dict[_Place, tuple[int, int]] = {}  # times waited, objects known when it last did
    index, chained = 0, False
    while index < len(queue):
        item = queue[index]
        index += 1
        if left <= 0:
            rest = queue[index - 1:]
            if any(not isinstance(s, Stream) or not s.binary for s in rest):
                found.unread.append(f"streams past {bounds.max_total:,} inflated bytes{SETTING}")
                found.bound = True
            _past_the_bound(doc, [s for s in rest if isinstance(s, Stream) and s.binary], bounds, found)
            break
        stream = item if isinstance(item, Stream) else _held(_stream_at(doc, item, objects), holders.numbers)
        if isinstance(item, _Place) and stream is not None and stream.unresolved and objects.wanting:
            times, known = waited.get(item, (0, -1))
            if len(objects.inner) != known and times < MAX_WAITS:
                waited[item] = (times + 1, len(objects.inner))
                queue.insert(len(queue) - images, item)
                continue
            if times >= MAX_WAITS and not chained:
                found.unread.append(f"object streams chained deeper than {MAX_WAITS}")
                found.bound = chained = True
        if stream is None:
            continue
        if stream.binary and (stream.filters[0] in (LZW, RL) or stream.predictor is not None):
            # An image's or a font's LZW or run-length data is not decoded, nor its predictor
            # undone, but for its first bytes: the header of an object stream disguised as one
            # (7.5.7) is searched for there, past the white space and comments a viewer skips.
            # Once the allowance is spent (the document is medium already), one round each.
            probe = _probe(doc, stream, min(bounds.max_stream, left, PROBE if slow <= 0 else left),
                           max(0, slow) + FREE, max(0, ascii85))
            slow, ascii85 = slow - max(0, probe.cost - FREE), ascii85 - probe.ascii85
            if probe.header:
                stream = replace(stream, binary=False, object_stream=True)
            elif probe.undecided or stream.filters[0] in (LZW, RL):
                left -= probe.read  # decoded, if only to be passed over: the document's bound
                if probe.undecided:
                    found.white.append(_undecided(stream, probe.read))
                continue
        cap = min(bounds.max_stream, left)
        step, why, ascii85, slow = _decode(doc, stream, cap, ascii85, slow)
        found.inflated += len(step.data)
        left -= len(step.data)
        consumed += step.consumed
        # An object stream its dictionary does not say is one (padded past DICT_BACK, an "obj" in
        # it, an image's /Subtype added) is known by its header: searched as one. A predicted
        # image's was looked for above, its predictor undone.
        start = None if stream.object_stream or (stream.binary and stream.predictor is not None) \
            else _starts(step.data, None, 0, step.over)
        looks = start is not None and start.header
        if stream.binary and start is not None and start.undecided:
            if cap < bounds.max_stream:  # the document's bound fell in its white space: probed past it
                queue.insert(index, stream)
            else:
                found.white.append(_undecided(stream, len(step.data)))
        searched = not stream.binary or looks
        if step.over:
            whole = cap == bounds.max_stream
            ratio = len(step.data) / max(1, step.consumed) if whole else found.inflated / max(1, consumed)
            if ratio > bounds.max_ratio:
                what = (f"inflates past {bounds.max_stream:,} bytes" if whole else
                        f"brings the document's streams past {bounds.max_total:,} inflated bytes")
                found.bomb = (stream, f"{what} at {ratio:,.0f}x")
                break
            if searched:
                found.unread.append(f"the {stream.describe()} past {len(step.data):,} inflated bytes")
                found.bound = True
        if stream.object_stream and not why and not step.data:
            why = "does not decode (encrypted, or corrupt)"
        if why and searched and (stream.object_stream or step.cut):
            found.unread.append(f"the {stream.describe()} at offset {stream.offset:,}: {why}")
            # LZW and run-length streams no dictionary calls object streams are decoded only to
            # be known by their bytes: an old writer's page content cut at a bound is a note.
            found.bound |= step.bound and (stream.object_stream or looks or stream.filters[0] not in (LZW, RL))
        elif stream.unresolved and stream.object_stream:
            found.unread.append(f"the {stream.describe()} at offset {stream.offset:,}: its {stream.unresolved} "
                                "names no object found")
        unfound = unfound or bool(stream.unresolved and stream.object_stream)
        if stream.object_stream and objects.wanting:
            objects.learn(step.data, stream.first)
        if searched:
            names = active_names(step.data)
            if names:
                found.active.append((stream, names))
    if unfound and objects.cut:
        # What an object stream names may be past the header of another, read to MAX_HEADER only.
        found.unread.append(f"object stream headers past {MAX_HEADER:,} bytes")
        found.bound = True
    if found.white:
        # Said once, naming the first: the probes' bound is spent by whoever writes the document.
        more = f", and {len(found.white) - 1:,} more such" if len(found.white) > 1 else ""
        found.unread.append(found.white[0] + more)
        found.bound = True
    return found


#: A /Type given as an indirect object (7.3.10), which a viewer resolves.
TYPE_REFERENCE = re.compile(rb"/Type[\x00\t\n\x0c\r ]+([0-9]{1,10})[\x00\t\n\x0c\r ]+([0-9]{1,5})[\x00\t\n\x0c\r ]+R")
#: Decoded bytes of all a document's cross-reference streams read for their entries (7.5.8): a
#: million objects at 20 bytes an entry, far more than any report has.
MAX_XREF = 32 * 1024 * 1024


class _Holders(NamedTuple):
    """The object streams a document's cross-reference streams name (7.5.8.3)."""

    #: Object numbers that type-2 entries name as the object stream holding an object.
    numbers: set[int]
    #: Those found at an offset a type-1 entry gives, read from their whole dictionary (which a
    #: string holding ">>stream" or padding past DICT_BACK hides from _streams), each with where
    #: its object starts: a keyword between that and its data is inside its dictionary, no stream.
    streams: list[tuple[int, Stream]]
    #: Why not every cross-reference stream was read ("" when all were): said, medium.
    cut: str


def _holders(doc: bytes, bounds: Bounds) -> _Holders:
    """Every cross-reference stream of ``doc`` (xref.sections) decoded, its predictor undone,
    and its type-2 entries read for the object streams they name, as a viewer finds an object
    stored compressed (7.5.8.3); then each of those object streams at its type-1 offset. Bounded
    by xref.Budget, MAX_XREF decoded bytes and the document's slow and ASCII85 allowances again."""
    budget = xref.Budget(sections=bounds.max_streams)
    decoded: list[tuple[bytes | bytearray, bytes]] = []
    left, slow, ascii85, cut = MAX_XREF, bounds.max_slow, bounds.max_ascii85, ""
    for section in xref.sections(doc, budget):
        stream = _stream(doc, unescape(section.dictionary), section.head, section.after)
        if stream is None:
            continue
        # As an image: its predictor is undone here (_rows), fast for the PNG Up writers use.
        step, why, ascii85, slow = _decode(doc, replace(stream, binary=True), min(left, bounds.max_stream),
                                           ascii85, slow)
        data, slow = _rows(step.data, stream.predictor, slow)
        left -= len(step.data)
        decoded.append((data, unescape(section.dictionary)))
        if step.over or step.bound or left <= 0 or slow < 0:
            cut = f"cross-reference streams past {MAX_XREF:,} decoded bytes or the allowances"
            break
    numbers = {number for data, dictionary in decoded for number, _ in xref.entries(data, dictionary, budget)}
    places = {place for data, dictionary in decoded for place in xref.entries(data, dictionary, budget, numbers)} \
        if numbers else set()
    streams = list({held[1].offset: held for offset, number in sorted(places)
                    if (held := _held_at(doc, offset, number, budget))}.values())
    unplaced = numbers.difference(int(held.obj.split()[0]) for _, held in streams)
    if unplaced:
        # No type-1 entry of a stream found it (a hybrid file's table gives it, or a damaged
        # offset): wherever "N 0 obj" starts a stream, as a viewer rebuilding the table finds it.
        streams += [held for start, number, generation, _ in xref.heads(doc) if generation == 0 and number in unplaced
                    and (held := _held_at(doc, start, number, budget))]
        streams.sort(key=lambda pair: pair[0])
    if budget.spent and not cut:
        cut = f"cross-reference sections {budget.said()}"
    # A viewer that finds the cross-reference broken (an object it wants absent from a classic
    # table, which cannot name an object stream) rebuilds it from every "N G obj", reading as
    # an object stream each stream whose /Type is /ObjStm, given directly or as a reference.
    repair = xref.Budget(sections=len(doc), tokens=2 * xref.Budget().tokens)
    seen = {held.offset for _, held in streams}  # the same stream, its object found either way
    streams += [pair for pair in _typed(doc, repair) if pair[1].offset not in seen]
    streams.sort(key=lambda pair: pair[0])
    if repair.spent and not cut:
        cut = f"stream dictionaries {repair.said()}"
    return _Holders(numbers, streams, cut)


def _typed(doc: bytes, budget: xref.Budget) -> list[tuple[int, Stream]]:
    """The streams whose whole dictionary (xref.read_dictionary: strings, comments and nested
    dictionaries read as a parser reads them) says /Type /ObjStm (7.5.7), or names as its /Type an
    object whose value is /ObjStm (7.3.10), each as an object stream, with where its object starts."""
    typed: list[tuple[int, bytes, bytes, int]] = []
    pending: dict[tuple[int, int], list[tuple[int, bytes, bytes, int]]] = {}
    for start in _stream_heads(doc):
        found = xref.stream_at(doc, start, budget) if budget.take("sections") else None
        if budget.spent:
            break
        if found is None:
            continue
        head, dictionary, after = found
        window = unescape(dictionary.clean)
        if INDIRECT.search(window):
            continue  # read by _streams, its filter resolved there
        given = TYPE_REFERENCE.search(window)
        if OBJECT_STREAM_TYPE.search(window) is not None:
            typed.append((start, window, head, after))
        elif given is not None and (len(pending) < MAX_REFERENCES or (int(given[1]), int(given[2])) in pending):
            pending.setdefault((int(given[1]), int(given[2])), []).append((start, window, head, after))
    if pending:
        # One more pass for the objects named: the last definition wins (7.5.6, an update's).
        values: dict[tuple[int, int], int] = {}
        for _, number, generation, end in xref.heads(doc):
            if (number, generation) in pending:
                values[number, generation] = end
        for key, at in values.items():
            end = doc.find(b"endobj", at, at + MAX_VALUE)
            if unescape(doc[at:end if end >= 0 else at + MAX_VALUE]).strip(WHITE) == b"/ObjStm":
                typed += pending[key]
    out: list[tuple[int, Stream]] = []
    for start, window, head, after in typed:
        stream = _stream(doc, window, head, after)
        if stream is not None:
            out.append((start, replace(stream, object_stream=True, binary=False)))
    return out


def _stream_heads(doc: bytes) -> Iterator[int]:
    """Where each ``N G obj`` starts that has the word ``stream`` before the next one: the only
    objects whose dictionary is worth reading for an object stream's type. One forward search
    for the word, whatever the number of objects."""
    keyword, previous = -1, None
    for current in itertools.chain(xref.heads(doc), [(len(doc), 0, 0, len(doc))]):
        if previous is not None:
            if keyword < previous[3]:
                keyword = doc.find(b"stream", previous[3])
                keyword = len(doc) if keyword < 0 else keyword
            if keyword < current[0]:
                yield previous[0]
        previous = current


def _held_at(doc: bytes, offset: int, number: int, budget: xref.Budget) -> tuple[int, Stream] | None:
    """Object stream ``number`` at ``offset`` (a type-1 entry's), read from its whole dictionary
    (7.5.7) as an object stream; None when no such object is there, or when its dictionary names
    its /Filter or /DecodeParms indirectly (then _streams reads it, known by its number)."""
    found = xref.stream_at(doc, offset, budget)
    if found is None:
        return None
    head, dictionary, after = found
    numbers = OBJECT.findall(head)
    window = unescape(dictionary.clean)
    if not numbers or numbers[-1] != (str(number).encode(), b"0") or INDIRECT.search(window):
        return None
    stream = _stream(doc, window, head, after)
    return (offset, replace(stream, object_stream=True, binary=False)) if stream is not None else None


def _held(stream: Stream | None, numbers: set[int]) -> Stream | None:
    """``stream`` as an object stream when a cross-reference stream names it one (7.5.8.3: an
    object stream's generation is 0)."""
    if stream is None or not numbers:
        return stream
    words = stream.obj.split()
    if len(words) == 2 and words[1] == "0" and int(words[0]) in numbers and not stream.object_stream:
        return replace(stream, object_stream=True, binary=False)
    return stream


def _with_holders(listed: list[Stream], holders: _Holders) -> list[Stream]:
    """``listed`` with the object streams the cross-reference streams name marked as such, and
    those read from their whole dictionary in place of what _streams made of them: a stream
    keyword inside such a dictionary (a string holding ">>stream") is dropped, as a parser skips it."""
    spans = [(start, held.offset + 16) for start, held in holders.streams]
    starts = [start for start, _ in spans]
    kept: list[Stream] = []
    for stream in listed:
        inside = bisect.bisect_left(starts, stream.offset) - 1
        if inside >= 0 and spans[inside][0] < stream.offset <= spans[inside][1]:
            continue
        marked = _held(stream, holders.numbers)
        if marked is not None:
            kept.append(marked)
    return kept + [held for _, held in holders.streams]


def _rows(data: bytes | bytearray, predict: tuple[int, int, int, int] | None, allowance: int,
          ) -> tuple[bytes | bytearray, int]:
    """A cross-reference stream's predictor undone (7.4.4.4), with what is left of ``allowance``
    (negative: it ran out there). PNG None and Up rows are done a row at a time, Up as one sum of
    big integers whose bytes carry into no neighbour (each byte's low 7 bits added, its top bit
    set by exclusive or): what writers use, fast whatever the size. Other rows, and TIFF, a byte
    at a time, each byte spending the allowance."""
    if predict is None or _predictor_error(predict):
        return data, allowance
    predictor, colors, bits, columns = predict
    if predictor == 2:
        if len(data) > allowance:
            return data, -1
        done, _, _ = _unpredict(data, predict, allowance)
        return done, allowance - len(data)
    row = (colors * bits * columns + 7) // 8
    step = max(1, colors * bits // 8)
    low = int.from_bytes(b"\x7f" * row, "big")
    top = low << 1 & ~low  # 0x80 in every byte
    out, above = bytearray(), bytes(row)
    for at in range(0, len(data), row + 1):
        kind, line = data[at], bytes(data[at + 1:at + 1 + row]).ljust(row, b"\x00")
        if kind == 2:
            ours, theirs = int.from_bytes(line, "big"), int.from_bytes(above, "big")
            line = (((ours & low) + (theirs & low)) ^ ((ours ^ theirs) & top)).to_bytes(row, "big")
        elif kind != 0:
            allowance -= row
            if kind > 4 or allowance < 0:
                return out, allowance
            undone = bytearray(line)
            _undo_row(predictor, kind, undone, above, step, 0, row)
            line = bytes(undone)
        out += line
        above = line
    return out, allowance


def _past_the_bound(doc: bytes, streams: list[Stream], bounds: Bounds, found: Found) -> None:
    """The image, font and cross-reference streams (BINARY) the document's bound left unread, made
    visible rather than passed over in silence, as a scanner that stops at its scan size says so
    (ClamAV's Heuristics.Limits.Exceeded). Their names mean nothing, but a writer who pads a PDF
    with real images can put an object stream (7.5.7) after them whose dictionary says /Subtype
    /Image: each one's first bytes are decoded (_probe: PROBE bytes past its leading white space
    and comments, its predictor undone, so a thousand of them cost little), and one that starts as
    an object stream does, or whose white space outlasts what the probes may read, is a bound run
    out before a stream that can hold names. The others are one note, naming the first."""
    skipped: list[Stream] = []
    # What the probes may read past the bound: as much again as the bound, and the slow allowance
    # once more. A benign image's first bytes are read in one round; a black border in a few.
    lead, slow, ascii85 = bounds.max_total, bounds.max_slow, bounds.max_ascii85
    for stream in streams:
        room = lead > 0 and slow > 0  # else one round each: the document is medium already
        probe = _probe(doc, stream, min(bounds.max_stream, max(0, lead) if room else PROBE), max(0, slow) + FREE,
                       max(0, ascii85))
        lead, slow, ascii85 = lead - probe.read, slow - max(0, probe.cost - FREE), ascii85 - probe.ascii85
        if probe.undecided:
            found.white.append(_undecided(stream, probe.read) + f", past {bounds.max_total:,} inflated bytes{SETTING}")
            continue
        if not probe.header:
            skipped.append(stream)
            continue
        known = replace(stream, object_stream=True, binary=False)  # by its header, as look() knows one
        found.unread.append(f"the {known.describe()} at offset {stream.offset:,} (its dictionary says image or "
                            f"font; its bytes start as an object stream's), past {bounds.max_total:,} inflated "
                            f"bytes{SETTING}")
        found.bound = True
    if skipped:
        first = skipped[0]
        more = f", and {len(skipped) - 1:,} more" if len(skipped) > 1 else ""
        found.unread.append(f"the image, font or cross-reference {first.describe()} at offset {first.offset:,}"
                            f"{more}, past {bounds.max_total:,} inflated bytes{SETTING}")


class _Probe(NamedTuple):
    """What the first decoded bytes of an image's or a font's stream say of it (7.5.7)."""

    #: They start as an object stream's header does, past white space and comments.
    header: bool
    #: Nothing but white space and comments (or a comment not ended) was decoded before a bound:
    #: the header of an object stream may follow, as a viewer reads it past any amount of them.
    undecided: bool
    #: Slow bytes spent (Bounds.max_slow): LZW and run-length input, bytes predicted one at a time.
    cost: int
    #: Decoded bytes read.
    read: int
    #: ASCII85 characters read (Bounds.max_ascii85).
    ascii85: int = 0


def _undecided(stream: Stream, read: int) -> str:
    """The note for an image or font stream whose first ``read`` decoded bytes are all LEAD."""
    return (f"the image, font or cross-reference {stream.describe()} at offset {stream.offset:,} (its first "
            f"{read:,} decoded bytes are white space or comments, which a viewer reads past to an object "
            "stream's header)")


def _probe(doc: bytes, stream: Stream, limit: int, allowance: int, ascii85: int) -> _Probe:
    """The first bytes of an image's or a font's stream decoded, to tell an object stream disguised
    as one (7.5.7) by its header: PROBE bytes past the white space and comments a viewer skips
    before it (LEAD), its predictor undone (7.4.4.4) as far as that. PROBE bytes first, then
    PROBE_GROWTH times more a round while all are LEAD, to ``limit`` decoded bytes, ``allowance``
    slow bytes and ``ascii85`` ASCII85 characters. A filter before the last (a hex or ASCII85
    layer over deflated data) decodes PROBE_GROWTH times what the last one may give."""
    cap = min(PROBE, limit)
    while True:
        step, _, characters, slow = _decode(doc, stream, cap, ascii85, allowance, min(limit, cap * PROBE_GROWTH))
        # The data goes on past what was decoded: the cap on its output, or a bound on its input
        # (damage ends it, for the viewer too).
        probe = _starts(step.data, stream.predictor, slow, step.over or (step.cut and step.bound))
        probe = probe._replace(cost=probe.cost + allowance - slow, ascii85=ascii85 - characters)
        if not probe.undecided or cap >= limit or probe.cost >= allowance:
            return probe
        cap = min(limit, cap * PROBE_GROWTH)


def _starts(data: bytes | bytearray, predict: tuple[int, int, int, int] | None, allowance: int,
            more: bool) -> _Probe:
    """Whether ``data`` (a stream's first decoded bytes; ``more``: the stream goes on) starts as an
    object stream's header (7.5.7) past its LEAD, once its predictor is undone (_unpredict_lead)."""
    cost = 0
    if predict is not None:
        data, cost, why = _unpredict_lead(data, predict, allowance)
        if why == "invalid":  # a viewer does not decode it either
            return _Probe(False, False, cost, len(data))
        more = more or why == "spent"
    lead = _lead(data, 0)
    header = OBJECT_STREAM_HEAD.match(data, lead) is not None
    # Too few bytes past the lead to tell, or a comment not ended: more data may be a header.
    short = len(data) - lead < PROBE or data[lead:lead + 1] == b"%"
    return _Probe(header, not header and more and short, cost, len(data))


def _streams(doc: bytes, limit: int, objects: _Objects) -> tuple[list[Stream], list[_Place], bool]:
    """The streams that can be decoded, with what the bytes before each say of it, among the first
    ``limit`` stream keywords; where those are whose dictionary names an object (/Filter 12 0 R)
    found in no byte of the document; and whether there are more keywords than ``limit``."""
    out: list[Stream] = []
    deferred: list[_Place] = []
    previous = 0
    for count, (start, end) in enumerate(_keywords(doc)):
        if count >= limit:
            return out, deferred, True
        at = start + 2  # the dictionary ends with this ">>"
        # The dictionary is what lies between this object's "obj" and the keyword, never further
        # back than the previous keyword: the bytes read for all dictionaries stay under the file's.
        low = max(previous, at - DICT_BACK)
        previous = end
        opened = doc.rfind(b"obj", low, at)
        place = _Place((opened if opened >= 0 else low, at), (max(low, opened - 24), opened + 3) if opened >= 0
                       else (0, 0), end, low)
        window, missing = _resolved(_dictionary(doc, place), objects)
        if missing:
            deferred.append(place)
            continue
        stream = _stream(doc, window, doc[place.head[0]:place.head[1]], place.after)
        if stream is not None:
            out.append(stream)
    return out, deferred, False


def _keywords(doc: bytes) -> Iterator[tuple[int, int]]:
    """Where each match of KEYWORD (a dictionary's ">>", white space and comments, ``stream``:
    7.3.8.1) starts and ends, as KEYWORD.finditer gives them, in time linear in the document.
    KEYWORD tried at each ">>" reads the white space and comments after it, and a ">>" inside a
    comment is tried too: lines of ``%>>`` read the rest of the document once each (a 64 KB
    file took seconds, a megabyte hours). CANDIDATE steps over a comment's text to its last
    ">>"; each ">>" in it is tried here (_Run), its line's end and the run after it found once for
    them all (``%>>`` repeated on one long line read the rest of the line once each, too)."""
    run = _Run(doc)
    pos = 0
    while (found := CANDIDATE.search(doc, pos)) is not None:
        pos = found.end()
        if doc.startswith(b">>", found.start()):
            yield found.span()
            continue
        at = doc.find(b">>", found.start(), found.end())
        while at >= 0:
            end = run.keyword_end(at)
            if end >= 0:
                yield at, end
                pos = max(pos, end)
            at = doc.find(b">>", end if end >= 0 else at + 1, found.end())


class _Run:
    """KEYWORD tried at a ">>" inside a comment (_keywords): the white space and comments after the
    comment's line are read once for every ">>" whose match reaches them."""

    def __init__(self, doc: bytes) -> None:
        self.doc = doc
        #: The last run of white space and comments read: from an item's start to its end.
        self.start, self.end = -1, -1
        #: The last end-of-line looked for: from where, and where it is (the document's length: none).
        self.line_from, self.line_at = -1, -1

    def keyword_end(self, at: int) -> int:
        """Where KEYWORD's match at the ">>" at ``at`` ends, -1 if it does not match there."""
        doc = self.doc
        stop = _found_end(LINE_WHITE.match(doc, at + 2), at + 2)
        if doc[stop:stop + 1] in (b"%", b"\r", b"\n"):
            # The line goes on as white space and a comment to its end-of-line, after which the
            # run is the same whichever ">>" of the line it started from.
            line = self._line_at(stop)
            if line < len(doc):
                stop = self._after(line + 1)
        return stop + 6 if doc.startswith(b"stream", stop) else -1

    def _line_at(self, at: int) -> int:
        """Where the first end-of-line from ``at`` is (the document's length for none): the one
        found last serves every ``at`` before it, so a long line of ``%>>`` is searched once."""
        if not self.line_from <= at <= self.line_at:
            line = NEWLINE.search(self.doc, at)
            self.line_from, self.line_at = at, line.start() if line is not None else len(self.doc)
        return self.line_at

    def _after(self, at: int) -> int:
        """Where the white space and comments from ``at``, an item's start, end."""
        if not self.start <= at <= self.end:
            self.start, self.end = at, _found_end(RUN.match(self.doc, at), at)
        return self.end


def _found_end(found: re.Match[bytes] | None, at: int) -> int:
    """Where a pattern that matches the empty string at least, matched at ``at``, ends."""
    return found.end() if found is not None else at


def _stream_at(doc: bytes, place: _Place, objects: _Objects) -> Stream | None:
    """The stream at ``place``, its indirect /Filter and /DecodeParms resolved with what
    ``objects`` knows now; those still not found are named in it."""
    window, missing = _resolved(_dictionary(doc, place), objects)
    stream = _stream(doc, window, doc[place.head[0]:place.head[1]], place.after)
    unresolved = " ".join(f"/{key.decode()} {ref}" for key, ref in missing)
    return replace(stream, unresolved=unresolved) if stream is not None and missing else stream


class _Objects:
    """The objects (``N G obj``) that a /Filter or /DecodeParms anywhere in the document names
    indirectly, found on the first such reference met: one pass over the document for the
    references (at most MAX_REFERENCES), one for the objects, only those named kept, so memory
    stays with the references whatever the number of objects. A later definition wins, as an
    incremental update's does (7.5.6). Those in no byte of the document are looked for in the
    object streams as they are decoded (``learn``): a viewer finds them there (7.5.7)."""

    def __init__(self, doc: bytes) -> None:
        self.doc = doc
        self.where: dict[tuple[int, int], int] | None = None
        #: Objects named and not in the document's bytes: looked for in object streams (7.5.7).
        self.missing: set[tuple[int, int]] = set()
        #: Their values, as found in the object streams decoded so far.
        self.inner: dict[tuple[int, int], bytes] = {}
        #: An object stream's header was longer than MAX_HEADER: an object past it is not found.
        self.cut = False

    @property
    def wanting(self) -> bool:
        """Whether an object named is still looked for in the object streams."""
        return bool(self.missing)

    def learn(self, data: bytes | bytearray, first: int) -> None:
        """Keep the objects looked for that the decoded object stream ``data`` holds (7.5.7: its
        first ``first`` bytes are pairs of object number and offset from ``first``; each object
        ends where the next begins; every object there has generation 0). At most MAX_HEADER
        bytes of the header are read; past them, ``cut`` says so."""
        header = bytes(data[:min(first, MAX_HEADER)])
        words = header.split()
        if first > MAX_HEADER:
            self.cut = True
            words = words[:-1]  # the last may be cut in two
        digits = len(list(itertools.takewhile(bytes.isdigit, words))) // 2 * 2  # pairs, to any damage
        values = list(map(int, words[:digits]))
        numbers, offsets = values[0::2], values[1::2]
        starts = sorted(first + offset for offset in offsets)  # where those kept end
        found = self.missing.intersection(zip(numbers, itertools.repeat(0)))
        kept = [((number, 0), first + offset) for number, offset in zip(numbers, offsets, strict=True)
                if (number, 0) in found and first + offset < len(data)] if found else []
        for key, start in kept:
            after = bisect.bisect_right(starts, start)
            end = min(starts[after] if after < len(starts) else len(data), start + MAX_VALUE)
            self.inner[key] = unescape(bytes(data[start:end])).strip(WHITE)
            self.missing.discard(key)

    def value(self, number: int, generation: int) -> bytes:
        """The object's value (up to ``endobj``, at most MAX_VALUE bytes); else its value in an
        object stream decoded so far (``learn``); b"" when neither holds it."""
        if self.where is None:
            wanted: set[tuple[int, int]] = set()
            for count, match in enumerate(ANY_INDIRECT.finditer(self.doc)):
                if count >= 10 * MAX_REFERENCES or len(wanted) >= MAX_REFERENCES:
                    break  # a flood of escaped names: the references after it are not resolved
                if unescape(match.group(1)) in (b"Filter", b"DecodeParms"):
                    wanted.update((int(r.group(1)), int(r.group(2))) for r in REFERENCE.finditer(match.group(2)))
            self.where = {}
            for match in OBJECT.finditer(self.doc):
                key = (int(match.group(1)), int(match.group(2)))
                if key in wanted:
                    self.where[key] = match.end()
            self.missing = {key for key in wanted if key not in self.where and key[1] == 0}
        at = self.where.get((number, generation))
        if at is None:
            return self.inner.get((number, generation), b"")
        end = self.doc.find(b"endobj", at, at + MAX_VALUE)
        return unescape(self.doc[at:end if end >= 0 else at + MAX_VALUE]).strip(WHITE)


def _resolved(window: bytes, objects: _Objects) -> tuple[bytes, list[tuple[bytes, str]]]:
    """``window`` (a stream's dictionary) with each indirect /Filter or /DecodeParms it names
    (``/DecodeParms 12 0 R``, ``[null 12 0 R]``) written after it as a direct one, so that the
    filter and its predictor are read as a viewer reads them; and the key and reference of each
    whose object was not found. Nothing to do in nearly every PDF."""
    extra: list[bytes] = []
    missing: list[tuple[bytes, str]] = []
    for match in INDIRECT.finditer(window):
        key, value = match.group(1), match.group(2)
        if key == b"Filter" and value.startswith(b"["):
            continue  # an array of names, as writers write it; a reference inside one is not read
        for ref in REFERENCE.finditer(value):
            body = objects.value(int(ref.group(1)), int(ref.group(2)))
            if body:
                extra.append(b" /" + key + b" " + body)
            else:
                missing.append((key, " ".join(ref.group().decode("latin-1").split())))
    return (window + b"".join(extra) if extra else window), missing


def _stream(doc: bytes, window: bytes, head: bytes, after: int) -> Stream | None:
    """The stream whose keyword ends at ``after``, its dictionary in ``window``; None when it is
    no stream that can be decoded (no filter this module decodes, no zlib header)."""
    pos = after
    while pos < len(doc) and doc[pos] in b" \t\x00\x0c":
        pos += 1  # white space a broken writer left before the end-of-line
    if doc.startswith(b"\r\n", pos):
        pos += 2
    elif pos < len(doc) and doc[pos] in b"\r\n":
        pos += 1
    declared = FILTER.findall(window)
    filters = tuple(unescape(n).decode("latin-1") for n in FILTER_NAME.findall(declared[-1])) if declared else ()
    if not filters:
        unresolved = next((m for m in INDIRECT.finditer(window) if m.group(1) == b"Filter"), None) \
            if OBJECT_STREAM.search(window) else None
        if unresolved is not None and not _zlib_header(doc, pos):
            # An object stream whose /Filter is an object not in the document's bytes (inside
            # another object stream): not decoded, but said, as a filter not decoded is.
            filters = (f"Filter {' '.join(unresolved.group(2).decode('latin-1').split())} (not found)",)
        elif not _zlib_header(doc, pos):
            return None
        else:
            # No filter that can be read (an indirect /Filter, a dictionary padded past
            # DICT_BACK): zlib's own header says the data is deflated.
            filters = (FLATE,)
    filters = tuple(FILTERS.get(f, f) for f in filters)
    if filters[0] not in (FLATE, AHX, A85, LZW, RL) and not OBJECT_STREAM.search(window):
        # An image's DCT, JBIG2...: no names there, and not decoded. LZW and run-length data is:
        # an object stream whose dictionary was not read whole (padded past DICT_BACK, an "obj"
        # in it) is known by its decoded bytes, also when it says image.
        return None
    if filters[0] == FLATE and not _zlib_header(doc, pos):
        # more white space after the end-of-line: the zlib header (7.4.4) is after it
        skip = pos
        while skip < min(len(doc), pos + 16) and doc[skip] in WHITE:
            skip += 1
        if _zlib_header(doc, skip):
            pos = skip
    number = OBJECT.findall(head)
    predictor = PREDICTOR.search(window)
    found = {key: pattern.search(window) for key, pattern in PARAMETER.items()}
    given = {key: int(match.group(1)) for key, match in found.items() if match is not None}
    predict = (int(predictor.group(1)), given.get("Colors", 1), given.get("BitsPerComponent", 8),
               given.get("Columns", 1)) if predictor is not None and int(predictor.group(1)) >= 2 else None
    first = FIRST.search(window)
    return Stream(pos, f"{number[-1][0].decode()} {number[-1][1].decode()}" if number else "", filters,
                  OBJECT_STREAM.search(window) is not None,
                  BINARY.search(window) is not None and OBJECT_STREAM.search(window) is None,
                  predict, 0 if given.get("EarlyChange") == 0 else 1, int(first.group(1)) if first else 0)


def _zlib_header(buf: bytes | bytearray, at: int) -> bool:
    """RFC 1950 2.2: CM 8 (deflate), a window of at most 32 KiB, and CMF*256+FLG a multiple of 31."""
    if at + 2 > len(buf):
        return False
    cmf, flg = buf[at], buf[at + 1]
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0


def _decode(doc: bytes, stream: Stream, cap: int, ascii85: int, slow: int,
            room: int | None = None) -> tuple[_Step, str, int, int]:
    """The stream's filters applied in order (7.4: the first filter decodes the raw data), up to
    ``cap`` bytes, the predictor undone after the first FlateDecode or LZWDecode (7.4.4.4: its
    /DecodeParms are that filter's); with why it was not decoded to its end ("": it was, or
    stopped at ``cap``) and what is left of the document's ASCII85 and slow allowances. With
    ``room``, the filters before the last decode up to that many bytes, and the last one what
    they gave: the first ``cap`` bytes of a chain, as a probe reads them."""
    data: bytes | bytearray = doc
    start, consumed = stream.offset, 0
    short = False  # a filter before the last stopped at ``room``: the data goes on
    # An image's or a cross-reference stream's predictor is not undone: their bytes are inflated
    # for their size only, and undoing it would spend the allowance meant for object streams.
    predict = None if stream.binary else stream.predictor
    for index, name in enumerate(stream.filters):
        last = index == len(stream.filters) - 1
        size = cap if last or room is None else room
        if name == FLATE:
            step = _inflate(data, start, size)
        elif name == LZW:
            step, broken = _lzw(data, start, size, stream.early, slow)
            slow -= step.consumed
            if broken:
                return _Step(step.data, step.consumed if index == 0 else consumed, False, True), \
                    f"/{name} is not decoded past {broken}", ascii85, slow
        elif name == AHX:
            step = _ascii_hex(data, start, size)
        elif name == A85:
            step = _ascii85(data, start, size, ascii85)
            ascii85 -= step.consumed
        elif name == RL:
            step = _run_length(data, start, size, slow)
            slow -= step.consumed
        else:
            return _Step(b"" if index == 0 else data, consumed, False), f"/{name} is not decoded", ascii85, slow
        if index == 0:
            consumed = step.consumed
        data, start = step.data, 0
        if predict is not None and name in (FLATE, LZW) and not step.over:
            data, why, bounded = _unpredict(data, predict, slow)
            slow -= len(data)
            predict = None
            if why:
                return _Step(data, consumed, False, True, bounded), f"its /Predictor is not undone ({why})", \
                    ascii85, slow
        if step.cut:
            return _Step(data, consumed, False, True, True), f"/{name} past the allowance is not decoded", ascii85, slow
        if step.over and (last or room is None):
            return _Step(data, consumed, True), "", ascii85, slow
        short = short or step.over
    return _Step(data, consumed, short), "", ascii85, slow


def _inflate(buf: bytes | bytearray, start: int, cap: int) -> _Step:
    """7.4.4: a zlib stream (RFC 1950), or raw deflate (RFC 1951) as broken writers leave it,
    inflated until it ends, breaks or passes ``cap``. The end is zlib's, not /Length's; a stream
    cut short or damaged keeps what inflates before the damage (a viewer shows that much too)."""
    view = memoryview(buf)
    inflater = zlib.decompressobj(zlib.MAX_WBITS if _zlib_header(buf, start) else -zlib.MAX_WBITS)
    out = bytearray()
    at = start
    while at < len(buf) and not inflater.eof and len(out) <= cap:
        piece = view[at:at + IN_STEP]
        mark, before = len(out), inflater.copy()
        try:
            pending: bytes | memoryview = piece
            # At the stream's end zlib keeps the rest in unconsumed_tail too: eof ends the loop.
            while pending and len(out) <= cap and not inflater.eof:
                out += inflater.decompress(pending, min(OUT_STEP, cap + 1 - len(out)))
                pending = inflater.unconsumed_tail
        except zlib.error:
            # This piece again, a byte at a time, from before it: everything up to the damage.
            del out[mark:]
            at += _salvage(before, piece, out, cap)
            break
        if inflater.eof:
            at += len(piece) - len(inflater.unused_data)
            break
        if pending:  # stopped at the cap inside this piece
            at += len(piece) - len(pending)
            break
        at += len(piece)
    over = len(out) > cap
    if over:
        del out[cap:]
    return _Step(out, at - start, over)


def _salvage(inflater: zlib._Decompress, piece: memoryview, out: bytearray, cap: int) -> int:
    """Feed ``piece`` a byte at a time until zlib fails; appends to ``out``; the bytes used."""
    for used in range(len(piece)):
        try:
            out += inflater.decompress(piece[used:used + 1], cap + 1 - len(out))
        except zlib.error:
            return used
        if inflater.unconsumed_tail or len(out) > cap or inflater.eof:
            return used + 1
    return len(piece)


def _lzw(buf: bytes | bytearray, start: int, cap: int, early: int, allowance: int) -> tuple[_Step, str]:
    """7.4.4.2: codes of 9 to 12 bits, most significant bit first; 256 clears the table, 257 ends
    the data; each code after the first adds the previous string and its own first byte; the code
    width grows ``early`` (/EarlyChange) codes before the table needs it. At most ``allowance``
    input bytes are read. A code naming no entry yet ends the data (what precedes is kept), said:
    the second value is where and why ("" when the data was read to its end or to a bound)."""
    stop = min(len(buf), start + max(0, allowance))
    table: list[bytes] = [bytes([n]) for n in range(256)] + [b"", b""]
    out = bytearray()
    bits, held, count, at = 9, 0, 0, start
    previous: bytes | None = None
    ended = False
    while at < stop and len(out) <= cap:
        held = (held << 8 | buf[at]) & 0xFFFFFF
        count += 8
        at += 1
        if count < bits:
            continue
        count -= bits
        code = held >> count & ((1 << bits) - 1)
        if code == 256:
            del table[258:]
            bits, previous = 9, None
            continue
        if code == 257:
            ended = True
            break
        if code < len(table):
            entry = table[code]
        elif code == len(table) and previous is not None:
            entry = previous + previous[:1]
        else:  # damaged: no viewer reads past it either
            return _Step(out[:cap], at - start, False), f"byte {at - start:,} (code {code} names no entry)"
        out += entry
        if previous is not None and len(table) < 4096:
            table.append(previous + entry[:1])
        previous = entry
        if len(table) + early >= 1 << bits and bits < 12:
            bits += 1
    cut = not ended and at >= stop < len(buf) and len(out) <= cap
    return _Step(out[:cap], at - start, len(out) > cap, cut), ""


def _run_length(buf: bytes | bytearray, start: int, cap: int, allowance: int) -> _Step:
    """7.4.5: a length byte L, then L + 1 bytes as they are (L < 128) or one byte repeated 257 - L
    times (L > 128); 128 ends the data. At most ``allowance`` input bytes are read (runs of one
    byte cost a loop turn each)."""
    out = bytearray()
    at = start
    stop = min(len(buf), start + max(0, allowance))
    ended = False
    while at < stop and len(out) <= cap:
        length = buf[at]
        if length == 128:
            at, ended = at + 1, True
            break
        if length < 128:
            out += buf[at + 1:at + 2 + length]
            at += 2 + length
        else:
            out += buf[at + 1:at + 2] * (257 - length)
            at += 2
    cut = not ended and at >= stop < len(buf) and len(out) <= cap
    return _Step(out[:cap], min(at, len(buf)) - start, len(out) > cap, cut)


def _predictor_error(predict: tuple[int, int, int, int]) -> str:
    """Why a viewer does not undo the predictor ``predict`` (7.4.4.4, Table 8), "" when it does."""
    predictor, colors, bits, columns = predict
    if not (1 <= colors <= 32 and bits in (1, 2, 4, 8, 16) and 1 <= columns <= 1 << 20):
        return f"/Colors {colors}, /BitsPerComponent {bits}, /Columns {columns}"
    if predictor == 2 and bits != 8:
        return f"TIFF predictor with /BitsPerComponent {bits}"
    if 2 < predictor < 10:
        return f"/Predictor {predictor}"
    return ""


def _unpredict(data: bytes | bytearray, predict: tuple[int, int, int, int], allowance: int,
               ) -> tuple[bytes | bytearray, str, bool]:
    """7.4.4.4: a predictor undone, as a viewer undoes it before parsing the stream. TIFF
    predictor 2 (8-bit components: each byte the difference from the pixel's before it) or PNG
    (10-15: each row a filter type byte 0-4, then the row as RFC 2083 6 filters it: None, Sub, Up,
    Average, Paeth). With why it could not be (a row type no PNG has, parameters out of range,
    more bytes than ``allowance``: the one a bound, the third value)."""
    predictor, colors, bits, columns = predict
    wrong = _predictor_error(predict)
    if wrong:
        return data, wrong, False
    if len(data) > allowance:
        return data, f"{len(data):,} bytes, past the allowance of bytes predicted per document", True
    row = (colors * bits * columns + 7) // 8
    step = max(1, colors * bits // 8)
    png = predictor >= 10
    out = bytearray()
    above = bytes(row)
    for at in range(0, len(data), row + 1 if png else row):
        kind, line = (data[at], bytearray(data[at + 1:at + 1 + row])) if png else (0, bytearray(data[at:at + row]))
        if kind > 4:
            return out, f"a row of PNG filter type {kind} at byte {at:,}", False
        _undo_row(predictor, kind, line, above, step, 0, len(line))
        out += line
        above = bytes(line) + bytes(row - len(line))
    return out, "", False


def _undo_row(predictor: int, kind: int, line: bytearray, above: bytes, step: int, start: int,
              stop: int) -> tuple[int, int]:
    """One row of predicted bytes undone in place from ``start`` to ``stop``, ``line[:start]``
    undone already and ``above`` the row before, undone: TIFF predictor 2 (TIFF 6.0 section 14)
    or PNG row filter ``kind`` (RFC 2083 6). A row that comes out as it is (PNG None, or zeros
    under zeros) or as the row above (Up or Paeth adding zeros) is done whole at once, and the
    zeros a row starts with over zeros come out zeros whatever the filter: a black border costs
    its rows, not its bytes. The bytes undone one at a time, and how far it is undone."""
    if start == 0:
        if _whole_row(predictor, kind, line, above):
            return 0, len(line)
        start = _zeros(line) if predictor == 2 else min(_zeros(line), _zeros(above[:len(line)]))
        stop = max(stop, start)
    for n in range(start, stop):
        left = line[n - step] if n >= step else 0
        if predictor == 2 or kind == 1:
            line[n] = (line[n] + left) & 0xFF
        elif kind == 2:
            line[n] = (line[n] + above[n]) & 0xFF
        elif kind == 3:
            line[n] = (line[n] + (left + above[n]) // 2) & 0xFF
        elif kind == 4:
            corner = above[n - step] if n >= step else 0
            guess = left + above[n] - corner
            near = min((abs(guess - left), 0, left), (abs(guess - above[n]), 1, above[n]),
                       (abs(guess - corner), 2, corner))
            line[n] = (line[n] + near[2]) & 0xFF
    return stop - start, stop


def _zeros(data: bytes | bytearray) -> int:
    """How many zero bytes ``data`` starts with."""
    return len(data) - len(data.lstrip(b"\x00"))


def _whole_row(predictor: int, kind: int, line: bytearray, above: bytes) -> bool:
    """A row undone whole without a pass per byte, where that is possible (_undo_row)."""
    if predictor >= 10 and kind == 0:
        return True
    if line.count(0) != len(line):
        return False
    if predictor >= 10 and kind in (2, 4):  # Paeth over zeros picks the byte above (RFC 2083 6.6)
        line[:] = above[:len(line)]
        return True
    return predictor == 2 or kind == 1 or above.count(0) == len(above)


def _unpredict_lead(data: bytes | bytearray, predict: tuple[int, int, int, int], allowance: int,
                    ) -> tuple[bytearray, int, str]:
    """``data``'s predictor undone (7.4.4.4) only as far as PROBE bytes past the white space and
    comments that lead it (LEAD), or its end: a row a few bytes at a time, on only while all of
    it leads. With the cost (ROW_COST a row, and the bytes undone one at a time: a black
    border is cheap) and why it stopped: "", "spent" (the cost passed ``allowance``), "invalid" (a
    parameter or a row type no viewer accepts)."""
    if _predictor_error(predict):
        return bytearray(), 0, "invalid"
    predictor, colors, bits, columns = predict
    row = (colors * bits * columns + 7) // 8
    step = max(1, colors * bits // 8)
    png = predictor >= 10
    out, above, cost, lead, seen, settled = bytearray(), bytes(row), 0, 0, 0, False
    for at in range(0, len(data), row + 1 if png else row):
        kind, line = (data[at], bytearray(data[at + 1:at + 1 + row])) if png else (0, bytearray(data[at:at + row]))
        if kind > 4:
            return out, cost, "invalid"
        begin, done = len(out), 0
        while done < len(line):
            # A few bytes at a time while all of it leads; once the lead ends, PROBE past it.
            want = lead + PROBE - begin if settled else done + 2 * PROBE
            stop = min(len(line), want, done + max(0, allowance - cost))
            if stop <= done:
                break
            spent, done = _undo_row(predictor, kind, line, above, step, done, stop)
            cost += spent
            out += line[len(out) - begin:done]
            if not settled and (out[lead:lead + 1] != b"%" or NEWLINE.search(out, max(lead, seen)) is not None):
                lead = _lead(out, lead)  # a comment goes on until its end-of-line
            seen = len(out)
            settled = lead < len(out) and out[lead:lead + 1] != b"%"
        if settled and len(out) - lead >= PROBE:
            return out, cost, ""
        cost += ROW_COST
        if cost > allowance or done < len(line):
            return out, cost, "spent"
        above = bytes(line) + bytes(row - len(line))
    return out, cost, ""


def _lead(data: bytes | bytearray, at: int) -> int:
    """Where the white space and comments (LEAD) from ``at`` in ``data`` end."""
    match = LEAD.match(data, at)
    return match.end() if match is not None else at


def _ascii_hex(buf: bytes | bytearray, start: int, cap: int) -> _Step:
    """7.4.2: hex digits up to ">", white space ignored, an odd last digit followed by 0; what
    precedes a character that is no digit is kept."""
    bound = start + 2 * cap + DICT_BACK  # room for white space between the digits
    end = buf.find(b">", start, bound)
    stop = end if end >= 0 else min(len(buf), bound)
    text = bytes(buf[start:stop]).translate(None, WHITE)
    digits = HEX_DIGITS.match(text)
    hexa = digits.group() if digits else b""
    out = binascii.unhexlify(hexa + b"0" if len(hexa) % 2 else hexa)
    return _Step(out[:cap], (end + 1 if end >= 0 else stop) - start, len(out) > cap)


def _ascii85(buf: bytes | bytearray, start: int, cap: int, allowance: int) -> _Step:
    """7.4.3: base-85 groups up to "~>", white space ignored, "z" for four zero bytes; decoded by
    base64.a85decode (adobe=True also takes the "<~" some writers put first). Python decodes it
    slowly, so at most ``allowance`` characters are read."""
    bound = start + max(0, min(allowance, 5 * cap // 4 + DICT_BACK))
    end = buf.find(b"~>", start, bound)
    stop = end if end >= 0 else min(len(buf), bound)
    text = bytes(buf[start:stop]).translate(None, WHITE)
    valid = A85_TEXT.match(text)
    groups = valid.group() if valid else b""
    try:
        out = base64.a85decode(groups + b"~>", adobe=True)
    except ValueError:  # a "z" inside a group, a last group of one character: nothing to read
        out = b""
    cut = end < 0 and stop == bound < len(buf)
    return _Step(out[:cap], (end + 2 if end >= 0 else stop) - start, len(out) > cap, cut and len(out) <= cap)
