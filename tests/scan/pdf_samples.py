"""PDFs the scanner tests build themselves (ISO 32000-1): a PDF 1.5 file with an object stream
(7.5.7) and a cross-reference stream (7.5.8), whose object stream's filters and stream framing
each test chooses; and an Encapsulated PDF object around one, made from pydicom's CT test file."""

from __future__ import annotations

import base64
import random
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import UID
from scan_samples import PDF_SOP_CLASS, base, encode

#: The hostile dictionaries: a catalog that runs a script when the file is opened (12.6.4.16).
CATALOG_JS = b"<< /Type /Catalog /Pages 2 0 R /OpenAction 3 0 R >>"
SCRIPT = b"<< /S /JavaScript /JS (app.alert\\(document.URL\\)) >>"
CATALOG = b"<< /Type /Catalog /Pages 2 0 R >>"
PAGES = b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>"
PAGE = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 5 0 R /Resources << /Font << /F1 6 0 R >> >> >>"
FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
#: A page of report text: text objects, a font, positions and strings (9.4).
CONTENT = (b"BT /F1 18 Tf 72 720 Td (Radiology report) Tj ET\n"
           b"BT /F1 11 Tf 72 690 Td 14 TL (Findings: no acute abnormality.) Tj "
           b"(Impression: normal study. Signed /s/ reading radiologist.) ' ET\n"
           b"0.5 w 72 680 m 540 680 l S\n")


@dataclass(frozen=True)
class Framing:
    """How the object stream is written: its /Filter entry, how its bytes are encoded, what
    comes between its dictionary and ``stream`` and between ``stream`` and the data, its /Length
    (None: the true one) and how many bytes of the encoded data are cut off its end."""

    filter: bytes = b"/Filter /FlateDecode"
    encode: Callable[[bytes], bytes] = zlib.compress
    before_keyword: bytes = b"\n"
    after_keyword: bytes = b"\r\n"
    length: int | None = None
    cut: int = 0


def a85(data: bytes) -> bytes:
    """ASCII85 as a PDF writes it (7.4.3): no "<~", "~>" at the end."""
    return base64.a85encode(data, adobe=True, wrapcol=72)[2:]


def raw_deflate(data: bytes) -> bytes:
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return deflater.compress(data) + deflater.flush()


FRAMINGS: dict[str, Framing] = {
    "flate": Framing(),
    "escaped-filter": Framing(filter=b"/F#69lter /Fl#61teDecode"),
    "abbreviated": Framing(filter=b"/Filter /Fl"),
    "indirect-filter": Framing(filter=b"/Filter 9 0 R"),
    "ascii85-flate": Framing(filter=b"/Filter [/ASCII85Decode /FlateDecode]", encode=lambda d: a85(zlib.compress(d))),
    "hex-flate": Framing(filter=b"/Filter [/AHx /Fl]", encode=lambda d: zlib.compress(d).hex().encode() + b">"),
    "flate-hex": Framing(filter=b"/Filter [/FlateDecode /ASCIIHexDecode]",
                         encode=lambda d: zlib.compress(d.hex(" ", 16).encode() + b">")),
    "no-eol": Framing(after_keyword=b""),
    "extra-white": Framing(after_keyword=b"  \r\n\r\n "),
    "cr-only": Framing(after_keyword=b"\r"),
    "comment": Framing(before_keyword=b" % the objects\r\n "),
    "wrong-length": Framing(length=12),
    "raw-deflate": Framing(encode=raw_deflate),
    "truncated": Framing(cut=3000),
}


def pdf(compressed: dict[int, bytes], plain: dict[int, bytes], framing: Framing = Framing(),
        padding: int = 0) -> tuple[bytes, bytes]:
    """A PDF whose objects ``compressed`` live in object stream 7 0 (written as ``framing``
    says), ``plain`` (whole object bodies, streams included) outside it, the catalog 1 0, and a
    cross-reference stream 8 0 that finds them all; with the encoded data of the object stream.
    ``padding`` bytes of incompressible text follow the objects in the object stream (so that a
    cut in its encoded data falls there)."""
    objects = sorted(compressed)
    bodies = [compressed[n] for n in objects]
    if padding:
        objects.append(10)
        text = random.Random(padding).randbytes(padding // 2).hex().encode()
        bodies.append(b"<< /Producer (" + text + b") >>")
    offsets, at = [], 0
    for body in bodies:
        offsets.append(at)
        at += len(body) + 1
    header = b" ".join(b"%d %d" % pair for pair in zip(objects, offsets, strict=True)) + b"\n"
    encoded = framing.encode(header + b"\n".join(bodies) + b"\n")
    if framing.cut:
        encoded = encoded[:-framing.cut]
    length = len(encoded) if framing.length is None else framing.length
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    where: dict[int, int] = {}
    for number, body in sorted(plain.items()):
        where[number] = len(out)
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    where[7] = len(out)
    out += (b"7 0 obj\n<< /Type /ObjStm /N %d /First %d " % (len(objects), len(header)) + framing.filter
            + b" /Length %d >>" % length + framing.before_keyword + b"stream" + framing.after_keyword + encoded
            + b"\nendstream\nendobj\n")
    if b"9 0 R" in framing.filter:
        where[9] = len(out)
        out += b"9 0 obj\n/FlateDecode\nendobj\n"
    where[8] = len(out)
    size = max([*where, *objects]) + 1
    rows = [struct.pack(">BIH", 0, 0, 65535)]
    for number in range(1, size):
        if number in where:
            rows.append(struct.pack(">BIH", 1, where[number], 0))
        elif number in objects:
            rows.append(struct.pack(">BIH", 2, 7, objects.index(number)))
        else:
            rows.append(struct.pack(">BIH", 0, 0, 0))
    table = b"".join(rows)
    out += (b"8 0 obj\n<< /Type /XRef /Size %d /W [1 4 2] /Root 1 0 R /Length %d >>\nstream\r\n"
            % (size, len(table)) + table + b"\nendstream\nendobj\nstartxref\n%d\n%%%%EOF\n" % where[8])
    return bytes(out), encoded


def content_stream(data: bytes = CONTENT) -> bytes:
    packed = zlib.compress(data)
    return b"<< /Filter /FlateDecode /Length %d >>\nstream\r\n" % len(packed) + packed + b"\r\nendstream"


def hostile(framing: Framing = Framing()) -> tuple[bytes, bytes]:
    """The catalog with /OpenAction and the JavaScript action only inside the object stream."""
    return pdf({1: CATALOG_JS, 2: PAGES, 3: SCRIPT}, {4: PAGE, 5: content_stream(), 6: FONT}, framing,
               padding=8000 if framing.cut else 0)


def benign() -> bytes:
    """A one-page report: catalog and pages in an object stream, the page's text deflated."""
    return pdf({1: CATALOG, 2: PAGES}, {4: PAGE, 5: content_stream(), 6: FONT})[0]


def encapsulated(document: bytes) -> bytes:
    """pydicom's CT_small.dcm made an Encapsulated PDF object (PS3.3 A.45): its patient and study,
    the document in (0042,0011), no pixel data."""
    ds = base()
    del ds.PixelData
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(PDF_SOP_CLASS)
    ds.Modality = "DOC"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = document + (b"\x00" if len(document) % 2 else b"")
    return encode(ds)


GS = shutil.which("gs")
#: Ghostscript's words (-dPDFDEBUG) as it takes the catalog, object 1, out of an object stream.
CATALOG_FROM = "% Reading compressed object (1 0 obj) from ObjStm with object number {stream}"


@dataclass(frozen=True)
class ViewerRead:
    """What Ghostscript's PDF interpreter read of a PDF (-dPDFDEBUG). ``catalog``: what it printed
    from taking object 1 out of the object stream asked about (that stream's dictionary, its
    decoded header, then the catalog's value; see catalog_steps); empty if it never took the
    catalog from there. ``log``: all it said."""

    catalog: str
    log: str

    def steps(self) -> str:
        """Its steps ("% Reading ...") and errors only, for an assertion's message: the whole
        log holds the fonts it loads."""
        return "\n".join(line for line in self.log.splitlines() if line.startswith(("%", "   ****")))


def viewer_reads(document: bytes, folder: Path, stream: int = 7) -> ViewerRead:
    """Ghostscript on ``document`` (-dSAFER, no output, 20 s at most): what it read of the catalog
    in object stream ``stream``. The page's text proves less: the same page shows whether or not
    the catalog that leads to it has an /OpenAction, and the page tree may live elsewhere."""
    assert GS is not None, "Ghostscript (Debian ghostscript) reads the test PDFs as a viewer does"
    path = folder / "viewer.pdf"
    path.write_bytes(document)
    try:
        done = subprocess.run([GS, "-q", "-dSAFER", "-dBATCH", "-dNOPAUSE", "-dPDFDEBUG", "-sDEVICE=nullpage",
                               str(path)], capture_output=True, timeout=20, check=False)
        said = done.stdout + done.stderr
    except subprocess.TimeoutExpired as late:  # what it read in time is all it read
        said = (late.stdout or b"") + (late.stderr or b"") + b"\n% (stopped after 20 s)\n"
    log = said.decode("latin-1")
    return ViewerRead(catalog_steps(log, CATALOG_FROM.format(stream=stream)), log)


def catalog_steps(log: str, marker: str) -> str:
    """What Ghostscript printed from each ``marker`` line of its -dPDFDEBUG ``log`` to its next
    step ("% Reading Info dictionary", or "% Error ..." if it failed and repairs, after which it
    may try again): the objects it took out of other object streams meanwhile (a /Filter or
    /DecodeParms that lives there) are part of reading the catalog."""
    taken: list[str] = []
    reading = False
    for line in log.splitlines():
        if line == marker:
            reading = True
        elif line.startswith("%") and not line.startswith("% Reading compressed object"):
            reading = False
        elif reading:
            taken.append(line)
    return "\n".join(taken)


def assert_viewer_reads_hidden_catalog(document: bytes, folder: Path, stream: int = 7) -> None:
    """A viewer reads the hidden catalog: Ghostscript takes the catalog, with its /OpenAction,
    out of object stream ``stream``. No /OpenAction is readable in the raw file (the tests say
    so), so only the decoded object stream can have given it."""
    read = viewer_reads(document, folder, stream)
    assert "/Type /Catalog" in read.catalog and "/OpenAction" in read.catalog, (read.catalog[-1500:], read.steps())
