"""Round 10, area J: object streams known from the cross-reference streams (pacsguard.scan.pdf,
pacsguard.scan.xref).

A viewer reads an object stream (ISO 32000-1 7.5.7) because a cross-reference stream's type-2
entry (7.5.8.3) says the object it wants is stored there, whatever the stream's dictionary says.
The scanner knew object streams by their dictionary, or by a header test that cannot accept a
single pair of numbers without misreading dark or 16-bit images. So these hid a script that
Ghostscript reads:

- (a) one object at a non-zero offset, the dictionary padded past 4 KiB and saying /Subtype /Image;
- (b) /Type /ObjStm before a string holding ">>stream" (the scanner took it for the keyword and
  read the rest of the dictionary as an image's), or the type given as an indirect object
  (``/Type 99 0 R``), likewise behind such a string.

The cross-reference streams are now read, along /Prev and a hybrid file's /XRefStm, and every
object stream they name is searched. A classic table (7.5.4) holds no type-2 entry: Ghostscript
does not find an object inside an object stream from one, shown below.
"""

from __future__ import annotations

import random
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest
from pdf_samples import FONT, PAGE, PAGES, content_stream
from test_r9w_pdf_bounds import GS, RAW_NAMES, active_in_both, gs_text, shown
from test_r10D_pdf_past_the_bound import both

from pacsguard.scan.scanner import Scanner

#: The catalog that runs a script on opening, the action written inline: one object is all.
CATALOG_INLINE = b"<< /Type /Catalog /Pages 2 0 R /OpenAction << /S /JavaScript /JS (app.alert\\(1\\)) >> >>"
BENIGN_CATALOG = b"<< /Type /Catalog /Pages 2 0 R >>"
#: The page tree, the page, its text and its font, outside the object stream.
OUTSIDE = {2: PAGES, 4: PAGE, 5: content_stream(), 6: FONT}
#: Three spaces between the header and the object: its offset is 3, not 0.
GAP = 3


def single(catalog: bytes) -> tuple[bytes, int]:
    """The decoded bytes of object stream 7 holding only object 1 at offset GAP (7.5.7), and /First."""
    header = b"1 %d\n" % GAP
    return header + b" " * GAP + catalog + b"\n", len(header)


#: Object stream 7's dictionary entries (/First given as {first}): how each hides the stream.
DICTIONARIES = {
    "a-padded-image": b"/Type /ObjStm /N 1 /First {first} /Pad (" + b"x" * 5000
                      + b") /Subtype /Image /Filter /FlateDecode",
    "b-fake-keyword": b"/Type /ObjStm /N 1 /First {first} /Pad (>>stream\n) /Subtype /Image /Filter /FlateDecode",
    "b-indirect-type": b"/N 1 /First {first} /Pad (>>stream\n) /Type 99 0 R /Subtype /Image /Filter /FlateDecode",
}


def xref_stream(number: int, rows: list[tuple[int, int, int]], index: list[int], trailer: bytes,
                predicted: bool) -> bytes:
    """Cross-reference stream ``number`` (7.5.8): /W [1 4 2], its rows, /Index, deflated (PNG Up
    predicted, Columns 7, as writers do, when ``predicted``)."""
    table = b"".join(struct.pack(">BIH", *row) for row in rows)
    parameters = b""
    if predicted:
        above, out = bytes(7), bytearray()
        for at in range(0, len(table), 7):
            line = table[at:at + 7]
            out += b"\x02" + bytes((v - a) & 0xFF for v, a in zip(line, above, strict=True))
            above = line
        table, parameters = bytes(out), b" /DecodeParms << /Predictor 12 /Columns 7 >>"
    data = zlib.compress(table)
    return (b"%d 0 obj\n<< /Type /XRef /W [1 4 2] /Index [%s] /Filter /FlateDecode%s %s /Length %d >>\nstream\r\n"
            % (number, b" ".join(b"%d" % n for n in index), parameters, trailer, len(data))
            + data + b"\nendstream\nendobj\n")


def document(dictionary: bytes, catalog: bytes = CATALOG_INLINE, layout: str = "one",
             extra: dict[int, bytes] | None = None) -> bytes:
    """A PDF 1.5 file: OUTSIDE (and ``extra``) as plain objects, object stream 7 with ``dictionary``
    holding the catalog 1 0, object 99 the name /ObjStm, and its cross-reference: one stream
    ("one"), an update whose stream's /Prev leads to the first ("prev"), or a classic table whose
    trailer's /XRefStm points to a stream of the compressed object's entry ("hybrid"); "table" is a
    classic table alone, which cannot say where object 1 is."""
    decoded, first = single(catalog)
    data = zlib.compress(decoded)
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    where: dict[int, int] = {}
    for number, body in sorted({**OUTSIDE, 99: b"/ObjStm", **(extra or {})}.items()):
        where[number] = len(out)
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    where[7] = len(out)
    out += (b"7 0 obj\n<< " + dictionary.replace(b"{first}", b"%d" % first) + b" /Length %d >>\nstream\r\n" % len(data)
            + data + b"\nendstream\nendobj\n")
    size = max(where) + 2
    xref = size - 1

    def row(number: int) -> tuple[int, int, int]:
        return (2, 7, 0) if number == 1 else (1, where[number], 0) if number in where else (0, 0, 0)

    if layout in ("one", "prev"):
        where[xref] = len(out)
        rows = [row(n) for n in range(size)]
        out += xref_stream(xref, rows, [0, size], b"/Size %d /Root 1 0 R" % size, layout == "one")
        start = where[xref]
        if layout == "prev":  # an update: a new /Info, and a stream of its entry and its own
            info = len(out)
            out += b"%d 0 obj\n<< /Producer (update) >>\nendobj\n" % size
            start = len(out)
            out += xref_stream(size + 1, [(1, info, 0), (1, start, 0)], [size, 2],
                               b"/Size %d /Root 1 0 R /Info %d 0 R /Prev %d" % (size + 2, size, where[xref]), True)
        return bytes(out + b"startxref\n%d\n%%%%EOF\n" % start)
    stream_at = len(out)
    if layout == "hybrid":
        out += xref_stream(xref, [(2, 7, 0)], [1, 1], b"/Size %d" % size, False)
    table_at = len(out)
    # Object 1 left out of the table (7.5.8.4: a hybrid file's compressed objects are in its stream).
    lines = [b"%010d 00000 n\r\n" % where[n] if n in where else b"0000000000 00000 f\r\n" for n in range(2, size)]
    link = b" /XRefStm %d" % stream_at if layout == "hybrid" else b""
    out += (b"xref\n0 1\n0000000000 65535 f\r\n2 %d\n" % (size - 2) + b"".join(lines)
            + b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (size, link, table_at))
    return bytes(out)


def gs_reads(pdf: bytes, folder: Path) -> str:
    """What Ghostscript's PDF interpreter says it reads (-dPDFDEBUG): each object it takes from an
    object stream, and the objects' values, while it writes the pages' text."""
    path = folder / "doc.pdf"
    path.write_bytes(pdf)
    assert GS is not None
    done = subprocess.run([GS, "-q", "-dSAFER", "-dBATCH", "-dNOPAUSE", "-dPDFDEBUG", "-sDEVICE=txtwrite", "-o",
                           str(folder / "doc.txt"), str(path)], capture_output=True, timeout=20, check=False)
    return (done.stdout + done.stderr).decode("latin-1")


#: What Ghostscript says when it takes the catalog out of object stream 7 and reads its script.
CATALOG_READ = "Reading compressed object (1 0 obj) from ObjStm with object number 7"
SCRIPT_READ = "/S /JavaScript /JS (app.alert(1))"


@pytest.mark.parametrize("layout", ["one", "prev", "hybrid"])
@pytest.mark.parametrize("kind", sorted(DICTIONARIES))
def test_an_object_stream_named_by_the_cross_reference_streams_is_searched(kind: str, layout: str,
                                                                           scanner: Scanner, tmp_path: Path) -> None:
    pdf = document(DICTIONARIES[kind], layout=layout)
    assert [name for name in RAW_NAMES if name in pdf] == []
    said = gs_reads(pdf, tmp_path)
    assert CATALOG_READ in said and SCRIPT_READ in said, said[-3000:]
    assert "Radiology report" in (tmp_path / "doc.txt").read_text()
    for _, explanation in active_in_both(pdf, scanner):
        assert "/JavaScript" in explanation and "object stream 7 0" in explanation, explanation


@pytest.mark.parametrize("layout,named", [("one", {7}), ("prev", {7}), ("hybrid", {7}), ("table", set())])
def test_the_cross_reference_streams_name_the_object_stream(layout: str, named: set[int]) -> None:
    """Found from ``startxref``, along an update's /Prev and a hybrid file's /XRefStm, their PNG Up
    predictor undone: the type-2 entry of object 1 names object stream 7 (a table names none)."""
    from pacsguard.scan import pdf

    holders = pdf._holders(document(DICTIONARIES["b-indirect-type"], layout=layout), pdf.Bounds())
    assert holders.numbers == named and holders.cut == ""
    assert [held.obj for _, held in holders.streams] == ["7 0"]


def test_a_classic_table_names_no_object_stream_but_a_viewer_repairs(scanner: Scanner, tmp_path: Path) -> None:
    """7.5.4: a table's entries are "n" (an offset) or "f" (free); none names an object stream.
    Object 1 only in object stream 7, and only a table: Ghostscript finds the table wrong and
    rebuilds it, reading as an object stream each stream whose /Type is /ObjStm (directly or
    through object 99): the catalog is read all the same, so the scanner reads those too."""
    for kind, dictionary in sorted(DICTIONARIES.items()):
        pdf = document(dictionary, layout="table")
        said = gs_reads(pdf, tmp_path)
        assert "attempting repair" in said and CATALOG_READ in said and SCRIPT_READ in said, (kind, said[-3000:])
        for _, explanation in active_in_both(pdf, scanner):
            assert "/JavaScript" in explanation and "object stream 7 0" in explanation, explanation


@pytest.mark.parametrize("layout", ["one", "prev", "hybrid"])
@pytest.mark.parametrize("kind", sorted(DICTIONARIES))
def test_the_same_benign_report_stays_clean(kind: str, layout: str, scanner: Scanner, tmp_path: Path) -> None:
    pdf = document(DICTIONARIES[kind], BENIGN_CATALOG, layout)
    assert "Radiology report" in gs_text(pdf, tmp_path)
    for report in both(pdf, scanner):
        assert [f for f in shown(report) if f[1] != "info"] == []


def key_image(seed: int) -> bytes:
    """A small grey key image XObject (8.9.5), PNG Up predicted and deflated, dark at the top."""
    width, height = 256, 64
    rows = bytearray()
    generator = random.Random(seed)
    for line in range(height):
        pixels = bytes(width) if line < 8 else generator.randbytes(width)
        rows += b"\x00" + pixels
    data = zlib.compress(bytes(rows))
    return (b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray /BitsPerComponent 8 "
            b"/Filter /FlateDecode /DecodeParms << /Predictor 15 /Columns %d >> /Length %d >>\nstream\r\n"
            % (width, height, width, len(data)) + data + b"\r\nendstream")


def test_a_report_of_many_images_with_cross_reference_streams_is_clean_and_cheap(scanner: Scanner) -> None:
    """400 key images (objects 100-499) beside an ordinary object stream, an update's /Prev:
    nothing above info, in little time."""
    images = {n: key_image(n) for n in range(100, 500)}
    plain = b"/Type /ObjStm /N 1 /First {first} /Filter /FlateDecode"
    pdf = document(plain, BENIGN_CATALOG, "prev", images)
    began = time.perf_counter()
    for report in both(pdf, scanner):
        assert [f for f in shown(report) if f[1] != "info"] == []
    seconds = time.perf_counter() - began
    assert seconds < 4, f"{seconds:.1f} s"


def test_thousands_of_cross_reference_streams_cost_little(scanner: Scanner) -> None:
    """5,000 updates, each a cross-reference stream whose /Prev leads to the one before: each is
    read once, within the budget, and nothing raises."""
    pdf = bytearray(document(b"/Type /ObjStm /N 1 /First {first} /Filter /FlateDecode", BENIGN_CATALOG))
    previous = int(bytes(pdf).rsplit(b"startxref\n", 1)[1].split()[0])
    for update in range(5000):
        at = len(pdf)
        pdf += xref_stream(1000 + update, [(1, at, 0)], [1000 + update, 1],
                           b"/Size %d /Root 1 0 R /Prev %d" % (1001 + update, previous), True)
        previous = at
    pdf += b"startxref\n%d\n%%%%EOF\n" % previous
    began = time.perf_counter()
    report = scanner.scan_bytes(bytes(pdf), "updates.pdf")
    seconds = time.perf_counter() - began
    assert seconds < 8, f"{seconds:.1f} s"
    assert [f.rule for f in report.findings if f.rule.endswith(".error")] == [], shown(report)


def test_a_flood_of_small_objects_costs_little(scanner: Scanner) -> None:
    """9,000 tiny stream objects (under the 10,000 streams read), each dictionary with a string
    and a nested dictionary, and 150,000 objects without a stream: every stream's dictionary is
    read for its /Type once, the others not at all; no error, little time, the report passes."""
    streams = b"".join(b"%d 0 obj\n<< /Pad (a (b) c) /D << /K 1 >> >>\nstream\r\nx\nendstream\nendobj\n" % n
                       for n in range(1000, 10_000))
    others = b"".join(b"%d 0 obj\n<< /Producer (x) /P << /Q [1 2] >> >>\nendobj\n" % n for n in range(10_000, 160_000))
    pdf = document(b"/Type /ObjStm /N 1 /First {first} /Filter /FlateDecode", BENIGN_CATALOG)
    pdf = pdf.replace(b"%PDF-1.7\n", b"%PDF-1.7\n" + streams + others, 1)  # offsets wrong: a viewer repairs
    began = time.perf_counter()
    report = scanner.scan_bytes(pdf, "flood.pdf")
    seconds = time.perf_counter() - began
    assert seconds < 8, f"{seconds:.1f} s"
    assert [f for f in shown(report) if f[1] not in ("info", "low")] == []
