"""Executables, archives and scripts hidden in element values (PS3.5 6.2: OB, OW, UN, UT, LT and
private elements carry arbitrary bytes; pixel data too), and a MIME Type of Encapsulated Document
(0042,0012) that contradicts what the document is (PS3.3 C.24.2)."""

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


def candidates(parsed: Parsed) -> list[Element]:
    """Elements whose value may carry a payload: binary and long-text VRs, private elements, pixel data."""
    return [e for e in parsed.elements
            if (e.length >= 8 or e.fragments) and (e.vr in BINARY_VRS or e.vr in TEXT_VRS or e.private
                                                  or e.tag == PIXEL_DATA)]


def _spans(element: Element) -> list[tuple[int, int]]:
    if element.fragments:
        return [(at, at + n) for at, n in element.fragments]
    return [(element.value_offset, element.value_offset + element.length)]


def check(parsed: Parsed) -> list[Finding]:
    body = parsed.body
    findings: list[Finding] = []
    # the documents family judges encapsulated documents as documents
    elements = [e for e in candidates(parsed) if e.tag != DOCUMENT]
    # One script search over every small value first: nearly no file has any.
    small = [body[s:e] for el in elements if el.tag != PIXEL_DATA for s, e in _spans(el) if e - s <= SCRIPT_SCAN_MAX]
    any_script = bool(signatures.scripts(b"\0".join(small), limit=1))
    for element in elements:
        for start, end in _spans(element):
            if parsed.needles is None:
                hits = signatures.find(body, start, end, limit=2)
            else:
                hits = signatures.verify_all(body, parsed.needles, start, end, limit=2) if parsed.needles else []
            for hit in hits:
                if hit.offset < start and hit.target is not None:
                    # its MZ is outside this value (the preamble's, CVE-2019-11687): the header is here
                    hit = signatures.Hit("pe-header", hit.target)
                if hit.kind == "pdf":
                    continue  # a PDF outside (0042,0011): the documents family looks into it
                findings.append(Finding(
                    f"embedded.{hit.kind}", Level.HIGH,
                    f"{hit.description} inside {element.label} ({element.vr}) at +{hit.offset - element.value_offset}",
                    hit.offset, REF, element.label, parsed.inflated, remedy="" if element.tag == PIXEL_DATA
                    else "element"))
            if any_script and end - start <= SCRIPT_SCAN_MAX and element.tag != PIXEL_DATA:
                for hit in signatures.scripts(body[start:end], limit=1):
                    findings.append(Finding("embedded.script", Level.HIGH,
                                            f"script or markup inside {element.label} ({element.vr})",
                                            start + hit.offset, REF, element.label, parsed.inflated,
                                            remedy="element"))
    findings.extend(_mime(parsed))
    return findings


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
