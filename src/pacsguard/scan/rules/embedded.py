"""Executables, archives and scripts hidden in element values (PS3.5 6.2: OB, OW, UN, UT, LT and
private elements carry arbitrary bytes, and a value of any other VR holds whatever its writer put
there, a VR no reader knows included, PS3.5 7.1.2; pixel data too, its fragments searched where
they join as a codec reads them, PS3.5 A.4; the file meta group's values as well, PS3.10 7.1),
values flooded with a signature's magic number to blind scanners, and a MIME Type of Encapsulated
Document (0042,0012) that contradicts what the document is (PS3.3 C.24.2)."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from itertools import accumulate

from pacsguard.dicom.vr import VRS
from pacsguard.scan import signatures
from pacsguard.scan.model import Finding, Level
from pacsguard.scan.part10 import PIXEL_DATA, Element, Parsed
from pacsguard.scan.rules import guarded

REF = "PS3.5 6.2; PS3.3 C.24.2"
BINARY_VRS = frozenset({"OB", "OW", "UN", "OD", "OF", "OL", "OV"})
TEXT_VRS = frozenset({"UT", "LT", "ST", "UC"})
DOCUMENT, MIME_TYPE = 0x00420011, 0x00420012
#: What the first bytes of an encapsulated document must be for each MIME type (PS3.3 C.24.2.1).
MIME_MAGIC = {"application/pdf": (b"%PDF-",), "text/xml": (b"<",), "application/xml": (b"<",),
              "model/stl": (b"solid", b""), "model/obj": (b"",), "model/mtl": (b"",)}
#: Values up to this size are searched whole for scripts, in one pass over them all; pixel data
#: gets binary needles only. A larger text value (UT, LT, ST, UC: what a viewer shows) is searched
#: whole, in windows of this size; a larger binary one (waveforms, float pixel data, a vendor's raw
#: data: hundreds of MiB, searched at ~60 MB/s) in its first and last window only.
SCRIPT_SCAN_MAX = 1 << 20
#: Bytes each script window shares with the next: more than the longest opening SCRIPT matches
#: (an on* attribute 256 bytes into its tag, a PHP short echo tag of 512), so none is cut in two.
SCRIPT_OVERLAP = 2048
#: Values up to this size without YARA's needles are searched by one regular expression for every
#: needle (one call instead of one per needle: most are a few bytes); larger ones by bytes.find.
QUICK_MAX = 4096
#: The longest header verify() reads past a needle: a zip's local header and file name (APPNOTE
#: 4.3.7: 30 bytes, a name up to 1024 here). A signature starting this far before a fragment
#: boundary may still read past it while verified; as many bytes after a candidate verify it.
SEAM_BACK = SEAM_AHEAD = 30 + 1024
_KIND_OF = {needle: kind for kind, needle in signatures.NEEDLES}


def candidates(parsed: Parsed) -> list[Element]:
    """Elements whose value is made to carry arbitrary bytes: binary and long-text VRs, private
    elements, pixel data, and the file meta group's binary values ((0002,0102) Private Information
    is OB). YARA's per-value pass takes these (the whole file is matched anyway)."""
    meta = [e for e in parsed.meta.values() if e.length >= 8 and (e.vr in BINARY_VRS or e.vr in TEXT_VRS)]
    return meta + [e for e in parsed.elements
                   if (e.length >= 8 or e.fragments) and (e.vr in BINARY_VRS or e.vr in TEXT_VRS or e.private
                                                         or e.tag == PIXEL_DATA)]


def searched(parsed: Parsed) -> list[Element]:
    """Elements searched for signatures: every value long enough to hold one (SMALLEST_HEADER), of
    any VR (PS3.5 6.2): a UR, LO or PN holds whatever bytes its writer put there, and a VR no reader
    knows is read as bytes with a 4-byte length (PS3.5 7.1.2), as dcmtk does; the meta group's
    values and pixel data's fragments too. Most standard values (dates, codes, short UIDs) are
    shorter; the others cost a bisection in YARA's needles, or one regular expression without them."""
    least = signatures.SMALLEST_HEADER
    meta = [e for e in parsed.meta.values() if e.length >= least]
    return meta + [e for e in parsed.elements if e.length >= least or e.fragments]


def _scripted(parsed: Parsed, element: Element) -> bool:
    """Values searched for scripts as well: binary and long-text VRs, private elements and VRs no
    reader knows (bytes no viewer shows as text), a repeated Pixel Data but not the image's own.
    Short texts a viewer shows (PN, LO, UR...) are the structure family's (structure.markup)."""
    return (element.vr in BINARY_VRS or element.vr in TEXT_VRS or element.private or element.vr not in VRS) \
        and not parsed.is_pixel_data(element)


def _spans(element: Element) -> list[tuple[int, int]]:
    if element.fragments:
        return [(at, at + n) for at, n in element.fragments]
    return [(element.value_offset, element.value_offset + element.length)]


def _source(parsed: Parsed, element: Element) -> bytes:
    """The buffer an element's offsets are in: the file for the meta group, else the body (the
    inflated stream of a deflated data set)."""
    return parsed.data if element.meta else parsed.body


def check(parsed: Parsed) -> list[Finding]:
    findings: list[Finding] = []
    # the documents family judges encapsulated documents as documents
    elements = [e for e in searched(parsed) if e.tag != DOCUMENT]
    # One script search over every small value first: nearly no file has any.
    small = [_source(parsed, el)[s:e] for el in elements if _scripted(parsed, el) for s, e in _spans(el)
             if e - s <= SCRIPT_SCAN_MAX]
    joined = b"\0".join(small)
    # ISO 2022 escapes (PS3.5 6.1.2.5) are dropped by readers: "<scr ESC ( B ipt>" is a <script>.
    any_script = bool(signatures.scripts(joined, limit=1)
                      or b"\x1b" in joined and signatures.scripts(signatures.unescaped(joined), limit=1))
    search = _Search(parsed)
    for element in elements:
        floods: set[str] = set()
        for start, end in _spans(element):
            for hit in search.hits(element, start, end):
                if hit.kind == "flood":
                    findings.extend(search.flood(element, hit, floods))
                    continue
                if hit.offset < start and hit.target is not None:
                    # its MZ is outside this value (the preamble's, CVE-2019-11687): the header is here
                    hit = signatures.Hit("pe-header", hit.target)
                if hit.kind != "pdf":  # a PDF outside (0042,0011): the documents family looks into it
                    findings.append(_payload(parsed, element, hit, f"at +{hit.offset - element.value_offset}"))
            if _scripted(parsed, element):
                large = end - start > SCRIPT_SCAN_MAX  # not in the joined search above
                # Small values without any opening among them all still hold an encoded URL in text.
                if large or any_script or element.vr in TEXT_VRS:
                    findings.extend(_scripts(parsed, element, start, end, openings=any_script or large))
        if len(element.fragments) > 1:
            findings.extend(_across_fragments(search, element, floods))
    findings.extend(guarded("embedded", _mime, parsed))  # on its own: a failure leaves the search's findings
    return findings


def _scripts(parsed: Parsed, element: Element, start: int, end: int, *, openings: bool = True) -> list[Finding]:
    """The first script in the value [start, end), searched window by window (_script_windows);
    ``openings`` False: the value is known to hold no SCRIPT opening, only encoded URLs are left."""
    src = _source(parsed, element)
    for low, high in _script_windows(element, start, end):
        at = _script_at(element, bytes(src[low:high]), openings)
        if at is not None:
            return [Finding("embedded.script", Level.HIGH, f"script or markup inside {element.label} ({element.vr})",
                            low + at, REF, element.label, _inflated(parsed, element), remedy=_remedy(element))]
    return []


def _script_windows(element: Element, start: int, end: int) -> list[tuple[int, int]]:
    """The spans of a value searched for scripts: all of a small one; all of a large text value,
    in windows that overlap (SCRIPT_OVERLAP); the first and the last window of a large binary one."""
    if end - start <= SCRIPT_SCAN_MAX:
        return [(start, end)]
    if element.vr in TEXT_VRS:
        return [(at, min(end, at + SCRIPT_SCAN_MAX + SCRIPT_OVERLAP)) for at in range(start, end, SCRIPT_SCAN_MAX)]
    return [(start, start + SCRIPT_SCAN_MAX), (end - SCRIPT_SCAN_MAX, end)]


def _script_at(element: Element, value: bytes, openings: bool) -> int | None:
    """Where ``value`` holds a script opening; in a text VR also in the text a reader decodes,
    without its ISO 2022 escape sequences (PS3.5 6.1.2.5), and a script-running URL once character
    references are undone as a browser does in a link (signatures.url_scheme: a viewer shows a
    long text as HTML, "jav&#x61;script:" is "javascript:" there); such a URL is reported at the
    value's start. None: nothing."""
    if openings:
        hits = signatures.scripts(value, limit=1)
        if hits:
            return hits[0].offset
    if element.vr not in TEXT_VRS:
        return None
    text = signatures.unescaped(value)
    if openings and b"\x1b" in value and (hits := signatures.scripts(text, limit=1)):
        return hits[0].offset
    return 0 if signatures.url_scheme(text) else None


def _inflated(parsed: Parsed, element: Element) -> bool:
    return parsed.inflated and not element.meta


def _remedy(element: Element) -> str:
    # Pixel data is the image, and the meta group is rewritten by no cleaning: neither is dropped.
    return "" if element.tag == PIXEL_DATA or element.meta else "element"


def _flooded(needles: list[tuple[int, int]] | None) -> frozenset[int]:
    """Needle indices YARA stopped recording (marked (index, -1), sorted first): every needle of
    their kinds is searched again here, in bounded steps."""
    kinds = set()
    for index, at in needles or ():
        if at >= 0:
            break
        kinds.add(signatures.NEEDLES[index][0])
    return frozenset(i for i, (kind, _) in enumerate(signatures.NEEDLES) if kind in kinds)


class _Search:
    """The signature search of one file: YARA's needles (their offsets, for a bisection per value),
    the needles YARA gave up on, and the file's budget of failed verifications."""

    def __init__(self, parsed: Parsed) -> None:
        self.parsed = parsed
        self.budget = signatures.Budget()
        self.flooded = _flooded(parsed.needles)
        self.offsets = [at for _, at in parsed.needles or () if at >= 0]
        self.spent = False  # the budget ran out: said once, not per value

    def hits(self, element: Element, start: int, end: int) -> list[signatures.Hit]:
        """Verified signatures in [start, end) of the element's buffer: from YARA's needles where
        they cover it, by bytes.find where they do not (no YARA, the meta group of a deflated file,
        a needle YARA gave up on)."""
        parsed, budget = self.parsed, self.budget
        src = _source(parsed, element)
        if parsed.needles is None or (element.meta and parsed.inflated):
            if end - start <= QUICK_MAX and signatures.NEEDLE_RE.search(src, start, end) is None:
                return []
            return signatures.find(src, start, end, limit=2, budget=budget)
        i = bisect_left(self.offsets, start)
        hits = [] if i == len(self.offsets) or self.offsets[i] >= end else \
            signatures.verify_all(src, parsed.needles, start, end, limit=2, skip=self.flooded, budget=budget)
        if self.flooded:
            kinds = frozenset(signatures.NEEDLES[i][0] for i in self.flooded)
            hits += signatures.find(src, start, end, limit=2, kinds=kinds, budget=budget)
        return hits

    def flood(self, element: Element, hit: signatures.Hit, floods: set[str]) -> list[Finding]:
        """The flood finding of ``hit`` once per kind and element (``floods``), none once the
        file's budget is spent and said so."""
        if hit.of in floods or self.spent:
            return []
        floods.add(hit.of)
        self.spent = self.budget.misses <= 0
        return [_flood(self.parsed, element, hit, self.spent)]


def _payload(parsed: Parsed, element: Element, hit: signatures.Hit, where: str) -> Finding:
    return Finding(f"embedded.{hit.kind}", Level.HIGH,
                   f"{hit.description} inside {element.label} ({element.vr}) {where}", hit.offset, REF,
                   element.label, _inflated(parsed, element), remedy=_remedy(element))


def _flood(parsed: Parsed, element: Element, hit: signatures.Hit, spent: bool) -> Finding:
    what = signatures.DESCRIPTIONS.get(hit.of, hit.of)
    rest = ("the file's budget of verifications is spent: later values are not searched through"
            if spent else "the rest of the value is not searched for that kind")
    return Finding("embedded.flood", Level.MEDIUM,
                   f"{element.label} ({element.vr}) is flooded with the magic number of {what}, thousands of "
                   "copies that start nothing: scanners stop counting (YARA keeps 1,000,000 matches a string) "
                   f"and miss what follows; {rest}",
                   hit.offset, REF, element.label, _inflated(parsed, element), remedy=_remedy(element))


class _Stream:
    """The codec stream of a frame's fragments (PS3.5 A.4: concatenated, zero-length ones adding
    nothing), read forward through a window of bounded size: ``read`` joins only bytes the window
    does not hold yet, ``trim`` drops those no later read needs. However many fragments there are,
    each byte is joined at most once, and a boundary costs a bisection, not a walk back."""

    def __init__(self, body: bytes, pieces: list[tuple[int, int]]) -> None:
        self.body = body
        self.pieces = pieces  # (offset in body, length) of each fragment that is not empty
        self.starts = list(accumulate((n for _, n in pieces), initial=0))  # where each starts, then the end
        self.window = bytearray()
        self.low = 0  # the stream position of window[0]

    def trim(self, at: int) -> None:
        """Forget the stream before ``at`` (reads start there or later from now on)."""
        drop = min(max(0, at - self.low), len(self.window))
        del self.window[:drop]  # cheap: CPython moves the start of a bytearray, not its bytes
        self.low = max(self.low + drop, at)

    def read(self, start: int, end: int) -> bytes:
        """Stream bytes [start, end), fewer at the end of the stream; ``start`` not before a trim."""
        end = min(end, self.starts[-1])
        held = self.low + len(self.window)
        while held < end:
            j = bisect_right(self.starts, held) - 1
            at, n = self.pieces[j]
            skip = held - self.starts[j]
            take = min(n - skip, end - held)
            self.window += self.body[at + skip:at + skip + take]
            held += take
        return bytes(self.window[start - self.low:end - self.low])

    def offset(self, pos: int) -> int:
        """Where stream position ``pos`` is in the body."""
        j = bisect_right(self.starts, pos) - 1
        return self.pieces[j][0] + pos - self.starts[j]


def _across_fragments(search: _Search, element: Element, floods: set[str]) -> list[Finding]:
    """Signatures split by a fragment boundary, or whose verified fields run past it, which no
    search of one fragment sees. The stream is searched around each boundary between fragments
    that are not empty (an empty one joins nothing): from SEAM_BACK bytes before it, or where the
    last boundary's search ended, to the needle's length after it, so each candidate is verified
    once, over SEAM_AHEAD bytes joined from its first byte. Memory and time stay linear in the
    fragments; failed verifications count against the file's budget, and a kind failing FLOOD
    times is a flood. One found inside a fragment too is the same finding (same offset)."""
    parsed = search.parsed
    kept = [(index, at, n) for index, (at, n) in enumerate(element.fragments) if n > 0]
    stream = _Stream(parsed.body, [(at, n) for _, at, n in kept])
    out: list[Finding] = []
    misses: dict[str, int] = {}
    done = 0  # needles starting before this stream position have been looked at
    for k in range(1, len(kept)):
        boundary = stream.starts[k]
        first = max(done, boundary - SEAM_BACK)
        stream.trim(first)
        window = stream.read(first, boundary + signatures.LONGEST_NEEDLE - 1)
        done = boundary
        match = signatures.NEEDLE_RE.search(window)
        while match is not None and first + match.start() < boundary:
            pos, kind = first + match.start(), _KIND_OF[match.group()]
            match = signatures.NEEDLE_RE.search(window, match.start() + 1)
            if misses.get(kind, 0) >= signatures.FLOOD or search.spent:
                continue
            hit = signatures.verify(kind, stream.read(pos, pos + SEAM_AHEAD), 0)
            if hit is None:
                misses[kind] = misses.get(kind, 0) + 1
                search.budget.misses -= 1
                if misses[kind] == signatures.FLOOD or search.budget.misses <= 0:
                    out += search.flood(element, signatures.Hit("flood", stream.offset(pos), of=kind), floods)
                    search.spent = search.budget.misses <= 0
                continue
            if hit.kind == "pdf":
                continue
            where = f"across fragments {kept[k - 1][0] + 1} and {kept[k][0] + 1} (item 1 is the Basic Offset Table)"
            out.append(_payload(parsed, element, signatures.Hit(hit.kind, stream.offset(pos)), where))
            if len(out) >= 4:
                return out
    return out


def _mime(parsed: Parsed) -> list[Finding]:
    document = parsed.top(DOCUMENT)
    if document is None or document.length <= 0:
        return []
    declared = (parsed.text(MIME_TYPE) or "").lower()
    # XML (a CDA) may start with a byte order mark, and be UTF-16 or UTF-32 with or without one
    # (XML 1.0 4.3.3, F.1): its "<" is looked for in the text the first bytes stand for.
    start = document.value_offset
    head = signatures.xml_text(parsed.body[start:start + min(document.length, 256)]).lstrip()
    actual = signatures.identify(parsed.body[document.value_offset:document.value_offset + document.length])
    expected = MIME_MAGIC.get(declared)
    wrong = actual is not None and actual != "pdf" or (expected is not None and not any(head.startswith(m)
                                                                                         for m in expected))
    if declared == "application/pdf" and actual == "pdf":
        wrong = False
    if not wrong:
        return []
    what = signatures.DESCRIPTIONS.get(actual, "something else") if actual else "something else"
    return [Finding("embedded.mime-mismatch", Level.HIGH,
                    f"(0042,0012) says {declared or 'nothing'}, the document is {what}", document.value_offset,
                    REF, "(0042,0011)", parsed.inflated)]
