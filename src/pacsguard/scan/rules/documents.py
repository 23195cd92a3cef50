"""Encapsulated documents (PS3.3 A.45, C.24: Encapsulated PDF, CDA, STL, OBJ/MTL): the document
in (0042,0011) is opened by other programs, so its own active content is judged: PDF actions and
scripts (ISO 32000 12.6, 12.5.6.18, 7.11.4), in its raw bytes and in its compressed streams (ISO
32000-1 7.3.8, 7.5.7; pacsguard.scan.pdf), XML external entities and processing instructions
(XML 1.0 4.2.2, 2.6), XInclude and XSLT reading other resources (XInclude 1.0 4.1, XSLT 1.0 2.6,
12.1), scripts in CDA narrative, Office macros (MS-OVBA), 3D models that lie about
their size. A PDF that is a file of its own (a report beside the images on a CD, a member of an
archive) is opened by the same viewers, and judged the same way."""

from __future__ import annotations

import html
import re
import struct
from collections.abc import Callable, Iterator

from pacsguard.scan import pdf, signatures
from pacsguard.scan.model import Finding, Level
from pacsguard.scan.part10 import Element, Parsed

DOCUMENT = 0x00420011
PDF_REF = "ISO 32000-1 12.6, 7.11.4; PS3.3 A.45"
STREAM_REF = "ISO 32000-1 12.6, 7.3.8, 7.4.4, 7.5.7; PS3.3 A.45"
#: Compressed streams with active names reported one by one; the rest are counted in the last.
PDF_STREAMS_REPORTED = 4
#: XML 1.0 2.3 Name in bytes: any run of bytes that are not white space (S) or the delimiters
#: around a name, so "a:b" and UTF-8 letters ("x\xc3\xa9") count, as expat and libxml2 read them.
XML_NAME = rb"""[^\s<>"'%]+"""
#: An external entity (XML 1.0 4.2.2: ExternalID, general or parameter) or an external DTD subset
#: (2.8 doctypedecl: itself an external parameter entity): a parser fetches either (XXE).
#: pacsguard_xml_external_entity in yara/dicom.yar is the same pattern.
#: An HTML or XHTML page's DOCTYPE (HTML 4.01, XHTML 1.0: PUBLIC with the W3C's DTD URL) names an
#: external DTD that browsers never fetch: a patient CD's index.htm has one. Not XXE.
#: Only the W3C's PUBLIC identifiers, followed by no system identifier or by the W3C's own, are
#: exempt: "<!DOCTYPE html SYSTEM url>", or a W3C public identifier followed by a system identifier
#: of the writer's choosing (XML 1.0 4.2.2: a parser fetches the system identifier, the public one
#: only names it), is a DTD that XML tooling (Java's default DocumentBuilder) fetches and expands.
W3C_DOCTYPE = (rb"html\s+PUBLIC\s+[\"']-//W3C//DTD\s[^\"'>]*[\"']"
               rb"(?:\s+[\"']https?://www\.w3\.org/[^\"'>]*[\"'])?\s*[\[>]")
XML_EXTERNAL = re.compile(rb"<!(?:ENTITY\s+(?:%\s*)?|DOCTYPE\s+(?!" + W3C_DOCTYPE + rb"))" + XML_NAME
                          + rb"\s+(?:SYSTEM|PUBLIC)", re.IGNORECASE)
XML_STYLESHEET = re.compile(rb"<\?xml-stylesheet", re.IGNORECASE)
#: The longest tag, attribute value or instruction searched for what it names: bounded, so that a
#: document of unclosed openings costs a linear search, not a quadratic one; none holds a "<" (XML 1.0
#: 3.1 AttValue), so the search of one ends where the next opening starts.
MAX_TAG = 4096  # also written out in NS_DECLARATION
#: An xml-stylesheet processing instruction (Associating Style Sheets with XML documents 1.0, 2)
#: with its pseudo-attributes.
XML_STYLESHEET_PI = re.compile(rb"<\?xml-stylesheet(?=\s)([^<]{0,%d}?)\?>" % MAX_TAG, re.IGNORECASE)
#: Namespaces whose elements make an XML processor read another resource into the document:
#: XInclude 1.0 (W3C 2006, 4.1: xi:include, href; libxml2 also reads the 2003 draft's namespace)
#: and XSLT (1.0 2.6: xsl:include, xsl:import).
XINCLUDE_NS = frozenset({"http://www.w3.org/2001/XInclude", "http://www.w3.org/2003/XInclude"})
XSLT_NS = frozenset({"http://www.w3.org/1999/XSL/Transform"})
#: A namespace declaration (Namespaces in XML 1.0, 3): xmlns (the default, no prefix) or xmlns:PREFIX.
#: Also as a DTD's default for an attribute (XML 1.0 3.3.2: <!ATTLIST doc xmlns:xi CDATA #FIXED "...">),
#: which binds the prefix in every element without a declaration in the start tag.
NS_DECLARATION = re.compile(rb"""\sxmlns(?::([^\s<>"'%:=/]{1,256}))?(?:\s*=|\s+CDATA\s+(?:#FIXED\s+)?)\s*"""
                            rb"""(?:"([^"]{0,4096})"|'([^']{0,4096})')""")
HREF = re.compile(rb"""\shref\s*=\s*(["'])(.*?)\1""", re.DOTALL)  # searched in one tag, bounded
#: An attribute value (XML 1.0 3.1), where XSLT writes its XPath expressions.
ATTRIBUTE_VALUE = re.compile(rb"""=\s*(?:"([^"<]*)"|'([^'<]*)')""")
#: XPath and XSLT functions that read a document or a file by URI (XSLT 1.0 12.1 document();
#: XPath Functions 3.1 14.6 doc(), 14.8 unparsed-text(), 17.5 json-doc(), 14.6 collection()), and
#: their literal argument when there is one; with a prefix too (XPath 2.0's fn:doc).
READ_FUNCTION = re.compile(r"""(?<![\w.-])(document|doc|unparsed-text(?:-lines)?|json-doc|collection)\s*\("""
                           r"""\s*(?:(["'])(.{0,%d}?)\2)?""" % MAX_TAG, re.DOTALL)
#: An absolute URI (RFC 3986 4.3: a scheme, "file:", "http:"; a Windows drive "C:" reads as one),
#: a network-path or absolute-path reference (4.2: "//host", "/etc"), or a UNC path.
ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:|[/\\]")
OFFICE_MACRO = (b"vbaProject.bin", b"_VBA_PROJECT", b"V\x00B\x00A\x00", b"Macros")
#: VBA in an OLE compound file of its own (MS-CFB 2.6: a directory entry's name is UTF-16LE,
#: zero-padded to 64 bytes): the "VBA" storage and its "_VBA_PROJECT" stream (MS-OVBA 2.2.1,
#: 2.3.4.1), and Word 97's "Macros" storage. With their padding's NUL after them: a name, not text.
OLE_MACRO = tuple(name.encode("utf-16-le") + b"\x00\x00" for name in ("VBA", "_VBA_PROJECT", "Macros"))


def documents(parsed: Parsed) -> list[tuple[Element, bytes]]:
    """Every Encapsulated Document value (also inside sequences) with its bytes."""
    return [(e, parsed.value(e)) for e in parsed.elements if e.tag == DOCUMENT and e.length > 0]


def check(parsed: Parsed) -> list[Finding]:
    findings: list[Finding] = []
    if _whole_file_pdf(parsed):
        findings.extend(_pdf(parsed.data, 0, None, False, "the PDF", _bounds(parsed)))
    if not parsed.dicom and signatures.identify(parsed.data) == "ole":
        findings.extend(_office_file(parsed.data))
    for element, doc in documents(parsed):
        kind = signatures.identify(doc)
        # XML in UTF-16, UTF-32 or EBCDIC (a byte order mark, XML 1.0 4.3.3, or without one the
        # first bytes, Appendix F.1, as parsers detect it) is read as its UTF-8 text: the patterns
        # are ASCII; its findings then point at the document's start.
        text = signatures.xml_text(doc)
        text = doc if text == doc else text
        stripped = text[:256].lstrip(b"\xef\xbb\xbf \t\r\n")
        if kind == "pdf" or b"%PDF-" in doc[:1024]:
            findings.extend(_pdf(doc, element.value_offset, element.label, parsed.inflated, "the encapsulated PDF",
                                 _bounds(parsed)))
        elif stripped.startswith(b"<"):
            findings.extend(_xml(parsed, element, text, exact=text is doc))
        elif kind in ("ole", "zip"):
            findings.extend(_office(parsed, element, doc))
        elif len(doc) >= 84:
            findings.extend(_stl(parsed, element, doc))
    return findings


def _whole_file_pdf(parsed: Parsed) -> bool:
    """Is the file itself a PDF to a viewer: a PDF header in its first KiB (ISO 32000-1 7.5.2: the
    header may follow up to 1 KiB of other bytes, as viewers allow)? A DICOM file too: a preamble
    (PS3.10 7.1) or an early value starting "%PDF-" makes a DICOM/PDF polyglot, whose objects a
    viewer finds anywhere in the file (a private element). Not when that header is the start of
    an Encapsulated Document the loop below judges already."""
    at = bytes(parsed.data[:1024]).find(b"%PDF-")
    if at < 0:
        return False
    if not parsed.dicom or parsed.inflated:  # an inflated data set's documents are not in the file's bytes
        return True
    return not any(e.tag == DOCUMENT and e.value_offset <= at < e.value_offset + e.length for e in parsed.elements)


def _finding(parsed: Parsed, element: Element, rule: str, why: str, at: int, ref: str,
             level: Level = Level.HIGH) -> Finding:
    # No remedy: the document is the object (PS3.3 A.45, Type 1); dropping it leaves no valid object.
    return Finding(rule, level, why, element.value_offset + at, ref, element.label, parsed.inflated)


def _bounds(parsed: Parsed) -> pdf.Bounds:
    """The PDF stream bounds, with the document's total as configured (scan.limits.max_pdf_inflated)."""
    return pdf.Bounds(max_total=parsed.limits.max_pdf_inflated)


def _pdf(doc: bytes, base: int, tag: str | None, inflated: bool, what: str, bounds: pdf.Bounds) -> list[Finding]:
    """Active names in the raw bytes, then in the decoded streams (pacsguard.scan.pdf) within
    ``bounds``. PDF names are matched after #xx escapes are decoded (ISO 32000 7.3.5), the usual
    way to hide /JavaScript from a naive search; escaped, /EmbeddedFiles is 39 characters. ``base``
    is where the PDF starts in the scanned bytes, ``tag`` the element holding it (None: the file
    is the PDF)."""
    out: list[Finding] = []

    def finding(rule: str, why: str, at: int, ref: str, level: Level = Level.HIGH) -> Finding:
        # No remedy: the document is the object (PS3.3 A.45, Type 1), or the file itself.
        return Finding(rule, level, why, base + at, ref, tag, inflated)

    seen = pdf.active_names(doc)
    found = pdf.look(doc, bounds)
    active = found.active
    if not _acts(seen, *(names for _, names in active)):
        # Only /OpenAction or /AA: what to do on opening, but no action that runs, launches,
        # submits or embeds anything (each of those has its own name). A report writer's "open at
        # page 1" is that; quarantining it would keep a clinical report from the archive.
        weak = dict(seen)
        for stream, names in active:
            weak.update({n: stream.offset for n in names if n not in weak})
        if weak:
            out.append(finding("documents.pdf-open-action", f"{what} names what to do on opening "
                               f"({_names(weak)}), with no script, launch, form submission or embedded file",
                               min(weak.values()), PDF_REF, Level.LOW))
        active = []
    elif seen:
        out.append(finding("documents.pdf-active", f"{what} has active content: {_names(seen)}", min(seen.values()),
                           PDF_REF))
    shown = active[:PDF_STREAMS_REPORTED]
    for index, (stream, names) in enumerate(shown):
        more = len(active) - len(shown) if index == len(shown) - 1 else 0
        rest = f"; {more} more compressed streams have active names too" if more else ""
        out.append(finding("documents.pdf-active", f"{what} has active content in a compressed stream "
                           f"({stream.describe()}) at offset {stream.offset:,} of the PDF: {_names(names)}{rest}",
                           stream.offset, STREAM_REF))
    if found.bomb is not None:
        stream, why = found.bomb
        out.append(finding("documents.pdf-bomb", f"a compressed stream of {what} ({stream.describe()}) at offset "
                           f"{stream.offset:,} {why}: a decompression bomb for the viewer", stream.offset,
                           "ISO 32000-1 7.3.8, 7.4.4"))
    if found.unread:
        listed = "; ".join(found.unread[:3]) + (f"; and {len(found.unread) - 3} more" if len(found.unread) > 3 else "")
        # More streams than any report has is suspicious (a flood that hides what follows, as
        # embedded.flood), and so is a bound run out before a stream that can hold names: the
        # writer of the document chose the padding that spent it. A filter or an encryption
        # pacsguard does not undo, or damage a viewer stops at too, is a note.
        out.append(finding("documents.pdf-unscanned", f"part of {what} was not looked into for active names: "
                           f"{listed}", 0, "ISO 32000-1 7.3.8, 7.4",
                           Level.MEDIUM if found.flood or found.bound else Level.LOW))
    return out


def _acts(*found: dict[str, int]) -> bool:
    """Whether any of ``found`` holds a name that acts (pdf.ACTIVE but pdf.TRIGGERS)."""
    return any(name not in pdf.TRIGGERS for names in found for name in names)


def _names(seen: dict[str, int]) -> str:
    return ", ".join(f"/{n}" for n in seen)


def _xml(parsed: Parsed, element: Element, doc: bytes, *, exact: bool = True) -> list[Finding]:
    """``exact``: ``doc`` is the value's own bytes, so offsets in it are offsets in the file; else
    it is the value decoded, and findings point at the value's start."""
    out: list[Finding] = []
    at: Callable[[int], int] = (lambda offset: offset) if exact else (lambda offset: 0)
    if (m := XML_EXTERNAL.search(doc)) is not None:
        dtd = m.group()[2:3] in b"Dd"
        what = "names an external DTD" if dtd else "declares an external entity"
        out.append(_finding(parsed, element, "documents.xml-external-entity",
                            f"the encapsulated XML {what}, which a parser fetches (XXE): "
                            f"{m.group()[:120].decode('utf-8', 'replace')!r}", at(m.start()),
                            "XML 1.0 2.8" if dtd else "XML 1.0 4.2.2"))
    external = next((m for m in XML_STYLESHEET_PI.finditer(doc) if _external(_href(m.group(1)))), None)
    if external is not None:
        # Fetched from elsewhere: an external reference as an external entity is (below, high).
        out.append(_finding(parsed, element, "documents.xml-external-reference",
                            f"the encapsulated XML names a stylesheet at an external URI{_of(_href(external.group(1)))}"
                            ", which a viewer fetches and runs", at(external.start()),
                            "XML-stylesheet 1.0 2; XSLT 1.0 2.6"))
    elif (m := XML_STYLESHEET.search(doc)) is not None:
        out.append(_finding(parsed, element, "documents.xml-stylesheet",
                            "the encapsulated XML names a stylesheet a viewer would fetch and run", at(m.start()),
                            "XML 1.0 2.6; HL7 CDA R2", Level.MEDIUM))
    out.extend(_references(parsed, element, doc, at))
    scripts = signatures.scripts(doc, limit=1)
    if scripts:
        out.append(_finding(parsed, element, "documents.xml-script", "the encapsulated XML holds script",
                            at(scripts[0].offset), "HL7 CDA R2 (narrative block has no script)"))
    elif signatures.url_scheme(doc):
        # The parser undoes character references in an attribute value (XML 1.0 4.1, 3.3.3), and a
        # viewer's stylesheet (CDA.xsl) writes a linkHtml href out as a link: &#106;avascript: or
        # java&#x09;script: is the script-running link that "javascript:" written out would be.
        out.append(_finding(parsed, element, "documents.xml-script", "the encapsulated XML holds a javascript:, "
                            "vbscript: or data:text/html URL once its character references are undone, as its "
                            "parser undoes them; a viewer's stylesheet makes it a link", at(0),
                            "XML 1.0 4.1; HL7 CDA R2 (narrative block has no script)"))
    return out


def _references(parsed: Parsed, element: Element, doc: bytes, at: Callable[[int], int]) -> list[Finding]:
    """What makes an XML processor read another resource into the document, judged like an external
    entity (XML 1.0 4.2.2): an XInclude include (any href: parse="text" reads any file), a stylesheet
    included or imported from an external URI (xsl:include, xsl:import), and XSLT/XPath functions
    that read a document by URI. One finding of each kind, at its first place."""
    out: list[Finding] = []
    include = next(_elements(doc, XINCLUDE_NS, (b"include",)), None)
    if include is not None:
        target = _href(include.group())
        out.append(_finding(parsed, element, "documents.xml-external-reference",
                            f"the encapsulated XML has an XInclude include{_of(target)}, which an XInclude "
                            "processor (libxml2, Xerces, .NET) reads into the document", at(include.start()),
                            "XInclude 1.0 4.1; XML 1.0 4.2.2"))
    imported = next((m for m in _elements(doc, XSLT_NS, (b"include", b"import")) if _external(_href(m.group()))),
                    None)
    if imported is not None:
        target = _of(_href(imported.group()))
        out.append(_finding(parsed, element, "documents.xml-external-reference",
                            f"the encapsulated XSLT includes a stylesheet at an external URI{target}",
                            at(imported.start()), "XSLT 1.0 2.6.1, 2.6.2"))
    read = _read_call(doc) if _prefixes(doc, XSLT_NS) else None
    if read is not None:
        offset, call = read
        out.append(_finding(parsed, element, "documents.xml-external-reference",
                            f"the encapsulated XSLT reads a document by URI: {call[:120]!r}", at(offset),
                            "XSLT 1.0 12.1; XPath Functions 3.1 14.6, 14.8"))
    return out


def _prefixes(doc: bytes, namespaces: frozenset[str]) -> set[bytes]:
    """The prefixes (b"" for the default namespace) bound anywhere in ``doc`` to one of
    ``namespaces``, the value read as a parser reads it (character references undone)."""
    return {m.group(1) or b"" for m in NS_DECLARATION.finditer(doc)
            if html.unescape((m.group(2) or m.group(3) or b"").decode("utf-8", "replace")).strip() in namespaces}


def _elements(doc: bytes, namespaces: frozenset[str], names: tuple[bytes, ...]) -> Iterator[re.Match[bytes]]:
    """Start tags of ``names`` in one of ``namespaces``, by the prefixes bound to it (the default
    namespace: unprefixed), each up to its closing ">"."""
    for prefix in sorted(_prefixes(doc, namespaces)):
        qualified = b"|".join(re.escape(prefix + b":" + name if prefix else name) for name in names)
        yield from re.finditer(rb"<(?:" + qualified + rb")(?=[\s/>])[^<>]{0,%d}" % MAX_TAG, doc)


def _href(tag: bytes) -> str:
    """The href attribute (or pseudo-attribute) of a start tag, as a parser reads it; "" when none."""
    m = HREF.search(tag)
    return html.unescape(m.group(2).decode("utf-8", "replace")).strip() if m else ""


def _of(target: str) -> str:
    return f" of {target[:120]!r}" if target else ""


def _external(uri: str) -> bool:
    """A URI that leaves the document's own folder: absolute (ABSOLUTE_URI) or climbing ("..")."""
    return bool(uri) and (ABSOLUTE_URI.match(uri) is not None or ".." in re.split(r"[/\\]", uri))


def _read_call(doc: bytes) -> tuple[int, str] | None:
    """The first call in an attribute value (where XSLT writes XPath) of a function that reads a
    document by URI, other than document('') (XSLT 1.0 12.1: the stylesheet itself): a literal URI
    that leaves the document's folder, or one computed at run time from the data (any URI)."""
    for value in ATTRIBUTE_VALUE.finditer(doc):
        raw = value.group(1) if value.group(1) is not None else value.group(2)
        text = html.unescape(raw.decode("utf-8", "replace"))
        for call in READ_FUNCTION.finditer(text):
            literal = call.group(3)
            if literal is None or (literal.strip() and _external(literal.strip())):
                return value.start(), text[call.start():call.end() + 40].strip()
    return None


def _office(parsed: Parsed, element: Element, doc: bytes) -> list[Finding]:
    for marker in OFFICE_MACRO:
        at = doc.find(marker)
        if at >= 0:
            return [_finding(parsed, element, "documents.office-macro",
                             "the encapsulated document is an Office file with macros", at, "MS-OVBA 2.2")]
    return [_finding(parsed, element, "documents.archive", "the encapsulated document is an archive or Office file",
                     0, "PS3.3 C.24.2", Level.MEDIUM)]


def _office_file(data: bytes) -> list[Finding]:
    """An Office file of its own (a .doc or .xls beside the images on a CD; the vbaProject.bin
    member of an .docm, which the walk opens as a zip) is opened by the same programs as an
    encapsulated one, and its macros run the same way: judged as the encapsulated document is."""
    for marker in OLE_MACRO:
        at = bytes(data).find(marker)
        if at >= 0:
            return [Finding("documents.office-macro", Level.HIGH, "an Office file with macros (VBA): they run "
                            "when it is opened and macros are allowed", at, "MS-OVBA 2.2; MS-CFB 2.6")]
    return []


def _stl(parsed: Parsed, element: Element, doc: bytes) -> list[Finding]:
    """Binary STL (3D Systems' StereoLithography Interface Specification, 1989; Library of Congress
    format description fdd000505): an 80-byte header, a triangle count, 50 bytes per triangle; a
    count the bytes cannot hold makes a viewer read or allocate past the document. ASCII STL
    (fdd000506) starts with "solid", but so do the headers of binary files some CAD programs write
    (SolidWorks: "solid NAME"), so "solid" alone decides nothing: readers (Assimp, VTK, numpy-stl)
    take a file as binary when its size fits the count, or when it is not ASCII text; only ASCII
    text has no count to judge."""
    mime = (parsed.text(0x00420012) or "").lower()
    if mime != "model/stl":
        return []
    (count,) = struct.unpack_from("<I", doc, 80)
    if 84 + 50 * count == len(doc) or _ascii_stl(doc):
        return []
    return [_finding(parsed, element, "documents.stl-size", f"binary STL claims {count:,} triangles in "
                     f"{len(doc):,} bytes", 80, "PS3.3 A.85 (Encapsulated STL)")]


#: Bytes no ASCII STL holds: the controls but white space (a binary STL's floats and count have them).
_NOT_TEXT = re.compile(rb"[\x00-\x08\x0e-\x1f\x7f]")
_STL_SOLID = re.compile(rb"[ \t\r\n]*solid", re.IGNORECASE)
_STL_WORDS = re.compile(rb"facet|endsolid", re.IGNORECASE)


def _ascii_stl(doc: bytes) -> bool:
    """ASCII STL ("solid NAME", "facet normal ...", "endsolid NAME"): "solid" first, text throughout
    (UTF-8 names allowed: no control bytes), and a facet or the closing "endsolid" after the
    opening word. A binary file with a "solid" header fails on its count or triangles, whose
    bytes are not text; a reader that tries ASCII first falls back to binary there, count and all."""
    opening = _STL_SOLID.match(doc)
    if opening is None:
        return False
    # An odd-length document is padded with a zero byte in its OB value (PS3.5 6.2, 7.1.1): not content.
    end = len(doc) - 1 if doc.endswith(b"\x00") else len(doc)
    return _NOT_TEXT.search(doc, 0, end) is None and _STL_WORDS.search(doc, opening.end(), end) is not None
