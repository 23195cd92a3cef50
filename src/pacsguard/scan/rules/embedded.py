"""Executables, archives and scripts hidden in element values (PS3.5 6.2: OB, OW, UN, UT, LT and
private elements carry arbitrary bytes; pixel data too, its fragments searched where they join
as a codec reads them, PS3.5 A.4; the file meta group's OB values as well, PS3.10 7.1), values
flooded with a signature's magic number to blind scanners, and a MIME Type of Encapsulated
Document (0042,0012) that contradicts what the document is (PS3.3 C.24.2)."""

from __future__ import annotations

from pacsguard.scan import signatures
from pacsguard.scan.model import Finding, Level
from pacsguard.scan.part10 import PIXEL_DATA, Element, Parsed

REF = "PS3.5 6.2; PS3.3 C.24.2"
BINARY_VRS = frozenset({"OB", "OW", "UN", "OD", "OF", "OL", "OV"})
TEXT_VRS = frozenset({"UT", "LT", "ST", "UC"})
DOCUMENT, MIME_TYPE = 0x00420011, 0x00420012
#: What the first bytes of an encapsulated document must be for each MIME type (PS3.3 C.24.2.1).
MIME_MAGIC = {"application/pdf": (b"%PDF-",), "text/xml": (b"<",), "application/xml": (b"<",),
              "model/stl": (b"solid", b""), "model/obj": (b"",), "model/mtl": (b"",)}
#: Script searches stop at this size: scripts hide in small values; pixel data gets binary needles only.
SCRIPT_SCAN_MAX = 1 << 20
#: Bytes before a fragment boundary where a signature may start and still read past it while
#: verified: a zip's local header and file name (APPNOTE 4.3.7: 30 bytes, a name up to 1024 here)
#: are the longest; and the bytes joined after a candidate to verify it.
SEAM_BACK, SEAM_AHEAD = 30 + 1024, 4096
_KIND_OF = {needle: kind for kind, needle in signatures.NEEDLES}


def candidates(parsed: Parsed) -> list[Element]:
    """Elements whose value may carry a payload: binary and long-text VRs, private elements, pixel
    data, and the file meta group's binary values ((0002,0102) Private Information is OB)."""
    meta = [e for e in parsed.meta.values() if e.length >= 8 and (e.vr in BINARY_VRS or e.vr in TEXT_VRS)]
    return meta + [e for e in parsed.elements
                   if (e.length >= 8 or e.fragments) and (e.vr in BINARY_VRS or e.vr in TEXT_VRS or e.private
                                                         or e.tag == PIXEL_DATA)]


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
    elements = [e for e in candidates(parsed) if e.tag != DOCUMENT]
    # One script search over every small value first: nearly no file has any.
    small = [_source(parsed, el)[s:e] for el in elements if el.tag != PIXEL_DATA for s, e in _spans(el)
             if e - s <= SCRIPT_SCAN_MAX]
    any_script = bool(signatures.scripts(b"\0".join(small), limit=1))
    budget = signatures.Budget()
    flooded = _flooded(parsed.needles)
    spent = False  # the file's budget of failed verifications ran out: said once, not per value
    for element in elements:
        floods: set[str] = set()
        for start, end in _spans(element):
            for hit in _hits(parsed, element, start, end, flooded, budget):
                if hit.kind == "flood":
                    if hit.of not in floods and not spent:
                        floods.add(hit.of)
                        spent = budget.misses <= 0
                        findings.append(_flood(parsed, element, hit, spent))
                    continue
                if hit.offset < start and hit.target is not None:
                    # its MZ is outside this value (the preamble's, CVE-2019-11687): the header is here
                    hit = signatures.Hit("pe-header", hit.target)
                if hit.kind != "pdf":  # a PDF outside (0042,0011): the documents family looks into it
                    findings.append(_payload(parsed, element, hit, f"at +{hit.offset - element.value_offset}"))
            if any_script and end - start <= SCRIPT_SCAN_MAX and element.tag != PIXEL_DATA:
                findings.extend(_scripts(parsed, element, start, end))
        if len(element.fragments) > 1:
            findings.extend(_across_fragments(parsed, element))
    findings.extend(_mime(parsed))
    return findings


def _scripts(parsed: Parsed, element: Element, start: int, end: int) -> list[Finding]:
    return [Finding("embedded.script", Level.HIGH, f"script or markup inside {element.label} ({element.vr})",
                    start + hit.offset, REF, element.label, _inflated(parsed, element), remedy=_remedy(element))
            for hit in signatures.scripts(_source(parsed, element)[start:end], limit=1)]


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


def _hits(parsed: Parsed, element: Element, start: int, end: int, flooded: frozenset[int],
          budget: signatures.Budget) -> list[signatures.Hit]:
    """Verified signatures in [start, end) of the element's buffer: from YARA's needles where they
    cover it, by bytes.find where they do not (no YARA, the meta group of a deflated file, a
    needle YARA gave up on)."""
    src = _source(parsed, element)
    if parsed.needles is None or (element.meta and parsed.inflated):
        return signatures.find(src, start, end, limit=2, budget=budget)
    hits = signatures.verify_all(src, parsed.needles, start, end, limit=2, skip=flooded, budget=budget)
    if flooded:
        kinds = frozenset(signatures.NEEDLES[i][0] for i in flooded)
        hits += signatures.find(src, start, end, limit=2, kinds=kinds, budget=budget)
    return hits


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


def _seam(body: bytes, frags: tuple[tuple[int, int], ...], index: int, back: int,
          ahead: int) -> tuple[bytes, list[tuple[int, int, int]], int]:
    """The codec stream around the start of fragment ``index`` (PS3.5 A.4: a frame's fragments
    concatenated): ``back`` bytes before it and ``ahead`` from it, over as many fragments as that
    takes; with (start in the window, offset in ``body``, length) of each piece joined, and where
    fragment ``index`` starts in the window."""
    before: list[tuple[int, int]] = []
    j, need_back = index - 1, back
    while need_back > 0 and j >= 0:
        at, n = frags[j]
        take = min(n, need_back)
        before.append((at + n - take, take))
        need_back, j = need_back - take, j - 1
    after: list[tuple[int, int]] = []
    j, need = index, ahead
    while need > 0 and j < len(frags):
        at, n = frags[j]
        take = min(n, need)
        after.append((at, take))
        need, j = need - take, j + 1
    pieces, placed, pos = before[::-1] + after, [], 0
    for at, n in pieces:
        placed.append((pos, at, n))
        pos += n
    return b"".join(body[at:at + n] for at, n in pieces), placed, back - need_back


def _offset_in_body(placed: list[tuple[int, int, int]], pos: int) -> int:
    return next(at + pos - start for start, at, n in placed if start <= pos < start + n)


def _across_fragments(parsed: Parsed, element: Element) -> list[Finding]:
    """Signatures split by a fragment boundary, or whose verified fields run past it, which no
    search of one fragment sees: only SEAM_BACK bytes before each boundary and the needle's
    length after it are joined (memory stays bounded), then SEAM_AHEAD bytes from a candidate's
    first byte to verify it. One found inside a fragment too is the same finding (same offset)."""
    body, frags = parsed.body, element.fragments
    out: list[Finding] = []
    for index in range(1, len(frags)):
        window, _, boundary = _seam(body, frags, index, SEAM_BACK, signatures.LONGEST_NEEDLE - 1)
        match = signatures.NEEDLE_RE.search(window)
        while match is not None and match.start() < boundary:
            hit = _verify_seam(body, frags, index, boundary - match.start(), _KIND_OF[match.group()])
            if hit is not None:
                out.append(_payload(parsed, element, hit, f"across fragments {index} and {index + 1} "
                                    "(item 1 is the Basic Offset Table)"))
                if len(out) >= 4:
                    return out
            match = signatures.NEEDLE_RE.search(window, match.start() + 1)
    return out


def _verify_seam(body: bytes, frags: tuple[tuple[int, int], ...], index: int, back: int,
                 kind: str) -> signatures.Hit | None:
    """The verified hit that starts ``back`` bytes before fragment ``index``, at its body offset."""
    window, placed, _ = _seam(body, frags, index, back, SEAM_AHEAD)
    hit = signatures.verify(kind, window, 0)
    if hit is None or hit.kind == "pdf":
        return None
    return signatures.Hit(hit.kind, _offset_in_body(placed, 0))


def _mime(parsed: Parsed) -> list[Finding]:
    document = parsed.top(DOCUMENT)
    if document is None or document.length <= 0:
        return []
    declared = (parsed.text(MIME_TYPE) or "").lower()
    head = parsed.value(document)[:64].lstrip()
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
