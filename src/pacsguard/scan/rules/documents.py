"""Encapsulated documents (PS3.3 A.45, C.24: Encapsulated PDF, CDA, STL, OBJ/MTL): the document
in (0042,0011) is opened by other programs, so its own active content is judged: PDF actions and
scripts (ISO 32000 12.6, 12.5.6.18, 7.11.4), XML external entities and processing instructions
(XML 1.0 4.2.2, 2.6), scripts in CDA narrative, Office macros (MS-OVBA), 3D models that lie about
their size."""

from __future__ import annotations

import re
import struct

from pacsguard.scan import signatures
from pacsguard.scan.model import Finding, Level
from pacsguard.scan.part10 import Element, Parsed

DOCUMENT = 0x00420011
#: PDF names that run or launch something (ISO 32000 12.6.3, 12.6.4.5, 7.11.4, Adobe RichMedia).
PDF_ACTIVE = ("JavaScript", "JS", "OpenAction", "Launch", "AA", "EmbeddedFile", "EmbeddedFiles", "RichMedia",
              "XFA", "SubmitForm", "ImportData")
#: A name: a solidus, then regular characters, any but white space and delimiters (ISO 32000-1
#: 7.3.5, 7.2.2); up to 127 bytes (Annex C.2), each written as #xx at worst: 381 characters.
PDF_NAME = re.compile(rb"/([^\x00\t\n\x0c\r ()<>\[\]{}/%]{2,381})")
HEX_ESCAPE = re.compile(rb"#([0-9A-Fa-f]{2})")
XML_ENTITY = re.compile(rb"<!ENTITY\s+%?\s*[\w.-]+\s+(?:SYSTEM|PUBLIC)", re.IGNORECASE)
XML_STYLESHEET = re.compile(rb"<\?xml-stylesheet", re.IGNORECASE)
OFFICE_MACRO = (b"vbaProject.bin", b"_VBA_PROJECT", b"V\x00B\x00A\x00", b"Macros")


def documents(parsed: Parsed) -> list[tuple[Element, bytes]]:
    """Every Encapsulated Document value (also inside sequences) with its bytes."""
    return [(e, parsed.value(e)) for e in parsed.elements if e.tag == DOCUMENT and e.length > 0]


def check(parsed: Parsed) -> list[Finding]:
    findings: list[Finding] = []
    for element, doc in documents(parsed):
        kind = signatures.identify(doc)
        stripped = doc[:256].lstrip(b"\xef\xbb\xbf \t\r\n")
        if kind == "pdf" or b"%PDF-" in doc[:1024]:
            findings.extend(_pdf(parsed, element, doc))
        elif stripped.startswith(b"<"):
            findings.extend(_xml(parsed, element, doc))
        elif kind in ("ole", "zip"):
            findings.extend(_office(parsed, element, doc))
        elif stripped[:5].lower() != b"solid" and len(doc) >= 84:
            findings.extend(_stl(parsed, element, doc))
    return findings


def _finding(parsed: Parsed, element: Element, rule: str, why: str, at: int, ref: str,
             level: Level = Level.HIGH) -> Finding:
    # No remedy: the document is the object (PS3.3 A.45, Type 1); dropping it leaves no valid object.
    return Finding(rule, level, why, element.value_offset + at, ref, element.label, parsed.inflated)


def _pdf(parsed: Parsed, element: Element, doc: bytes) -> list[Finding]:
    """PDF names are matched after #xx escapes are decoded (ISO 32000 7.3.5), the usual way to hide
    /JavaScript from a naive search; escaped, /EmbeddedFiles is 39 characters."""
    seen: dict[str, int] = {}
    for match in PDF_NAME.finditer(doc):
        name = HEX_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), match.group(1)).decode("latin-1")
        if name in PDF_ACTIVE and name not in seen:
            seen[name] = match.start()
    if not seen:
        return []
    names = ", ".join(f"/{n}" for n in seen)
    return [_finding(parsed, element, "documents.pdf-active", f"the encapsulated PDF has active content: {names}",
                     min(seen.values()), "ISO 32000-1 12.6, 7.11.4; PS3.3 A.45")]


def _xml(parsed: Parsed, element: Element, doc: bytes) -> list[Finding]:
    out: list[Finding] = []
    if (m := XML_ENTITY.search(doc)) is not None:
        out.append(_finding(parsed, element, "documents.xml-external-entity",
                            "the encapsulated XML declares an external entity (XXE)", m.start(), "XML 1.0 4.2.2"))
    if (m := XML_STYLESHEET.search(doc)) is not None:
        out.append(_finding(parsed, element, "documents.xml-stylesheet",
                            "the encapsulated XML names a stylesheet a viewer would fetch and run", m.start(),
                            "XML 1.0 2.6; HL7 CDA R2", Level.MEDIUM))
    scripts = signatures.scripts(doc, limit=1)
    if scripts:
        out.append(_finding(parsed, element, "documents.xml-script", "the encapsulated XML holds script",
                            scripts[0].offset, "HL7 CDA R2 (narrative block has no script)"))
    return out


def _office(parsed: Parsed, element: Element, doc: bytes) -> list[Finding]:
    for marker in OFFICE_MACRO:
        at = doc.find(marker)
        if at >= 0:
            return [_finding(parsed, element, "documents.office-macro",
                             "the encapsulated document is an Office file with macros", at, "MS-OVBA 2.2")]
    return [_finding(parsed, element, "documents.archive", "the encapsulated document is an archive or Office file",
                     0, "PS3.3 C.24.2", Level.MEDIUM)]


def _stl(parsed: Parsed, element: Element, doc: bytes) -> list[Finding]:
    """Binary STL: an 80-byte header, a triangle count, 50 bytes per triangle; a count the bytes
    cannot hold makes a viewer read or allocate past the document."""
    mime = (parsed.text(0x00420012) or "").lower()
    if mime != "model/stl":
        return []
    (count,) = struct.unpack_from("<I", doc, 80)
    if 84 + 50 * count == len(doc):
        return []
    return [_finding(parsed, element, "documents.stl-size", f"binary STL claims {count:,} triangles in "
                     f"{len(doc):,} bytes", 80, "PS3.3 A.85 (Encapsulated STL)")]
