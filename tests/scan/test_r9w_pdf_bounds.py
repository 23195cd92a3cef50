"""Outside round 9, wave 2: what the PDF stream bounds (pacsguard.scan.pdf.Bounds) let through.

- Security: a bound that runs out before a stream that can hold names (ISO 32000-1 7.3.8) was
  only a low `documents.pdf-unscanned` note. The writer of the document chooses the padding
  that spends the bound (2 MiB of ASCII85, 1 MiB of run-length input or predicted bytes, 64 MiB
  inflated per document or 16 MiB per stream at an ordinary ratio), so a script in an object
  stream (7.5.7) after that padding passed the default `--fail-on medium` although Ghostscript
  reads it. It is medium now; a clean report whose bound runs out on big images (inflated for
  their size only) still passes.
- An object stream's `/Filter` or `/DecodeParms` given as an object that lives inside another
  object stream (7.3.10, 7.5.7) was not looked for: the stream was skipped with a note (filter)
  or searched still predicted with no note at all (parameters). Ghostscript resolves both.
- Security: an object stream whose dictionary hid its /Type /ObjStm from the scanner (an "obj"
  in a string or a comment of its own dictionary, padding past 4 KiB) and said /Subtype /Image
  or used RunLengthDecode was never searched, not even noted: the script Ghostscript runs passed
  with no finding at all. It is known by /Type /ObjStm further back, or by its decoded header.
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from pdf_samples import (
    CATALOG,
    CATALOG_JS,
    FONT,
    PAGE,
    PAGES,
    SCRIPT,
    a85,
    assert_viewer_reads_hidden_catalog,
    content_stream,
    encapsulated,
)

from pacsguard.scan.model import FileReport, Level
from pacsguard.scan.scanner import Scanner

GS = shutil.which("gs")
assert GS is not None, "Ghostscript (Debian ghostscript) reads the test PDFs as a viewer does"
#: Names a viewer acts on, none of which may be readable in the raw bytes of a hiding PDF.
RAW_NAMES = (b"/JavaScript", b"/OpenAction", b"/JS")
#: (object number, /Filter and /DecodeParms entries, encoder, [(object number, body)...]).
Packed = tuple[int, bytes, Callable[[bytes], bytes], list[tuple[int, bytes]]]


def build(plain: dict[int, bytes], packed: list[Packed]) -> bytes:
    """A PDF 1.5 file: the ``plain`` objects (whole bodies, streams included) first, then each
    object stream of ``packed`` in that order (7.5.7: /N pairs of number and offset, then the
    objects), then a cross-reference stream (7.5.8) that finds every object; the catalog is 1 0."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    where: dict[int, int] = {}
    inside: dict[int, tuple[int, int]] = {}
    for number, body in sorted(plain.items()):
        where[number] = len(out)
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    for number, entries, encode, objects in packed:
        offsets, at = [], 0
        for index, (inner, body) in enumerate(objects):
            offsets.append(b"%d %d" % (inner, at))
            inside[inner] = (number, index)
            at += len(body) + 1
        header = b" ".join(offsets) + b"\n"
        data = encode(header + b"\n".join(body for _, body in objects) + b"\n")
        where[number] = len(out)
        out += (b"%d 0 obj\n<< /Type /ObjStm /N %d /First %d " % (number, len(objects), len(header)) + entries
                + b" /Length %d >>\nstream\r\n" % len(data) + data + b"\nendstream\nendobj\n")
    xref = max([*where, *inside]) + 1
    where[xref] = len(out)
    rows = [struct.pack(">BII", 0, 0, 65535)]
    for number in range(1, xref + 1):
        if number in where:
            rows.append(struct.pack(">BII", 1, where[number], 0))
        elif number in inside:
            rows.append(struct.pack(">BII", 2, *inside[number]))
        else:
            rows.append(struct.pack(">BII", 0, 0, 0))
    table = b"".join(rows)
    out += (b"%d 0 obj\n<< /Type /XRef /Size %d /W [1 4 4] /Root 1 0 R /Length %d >>\nstream\r\n"
            % (xref, xref + 1, len(table)) + table + b"\nendstream\nendobj\nstartxref\n%d\n%%%%EOF\n" % where[xref])
    return bytes(out)


def run_length(data: bytes, run: int = 128) -> bytes:
    """RunLengthDecode (7.4.5) in literal runs of ``run`` bytes, 128 at the end: with a short
    run every name is split by a length byte."""
    return b"".join(bytes([len(data[at:at + run]) - 1]) + data[at:at + run]
                    for at in range(0, len(data), run)) + b"\x80"


def png_up(data: bytes, columns: int) -> bytes:
    """PNG predictor rows of filter type 2 (Up, RFC 2083 6.3), ``columns`` bytes each."""
    rows = [data[at:at + columns].ljust(columns, b" ") for at in range(0, len(data), columns)]
    above, out = bytes(columns), bytearray()
    for row in rows:
        out += b"\x02" + bytes((v - a) & 0xFF for v, a in zip(row, above, strict=True))
        above = row
    return bytes(out)


def repeated(size: int) -> bytes:
    """``size`` bytes of a 16 KiB random block over and over: deflate finds each repeat in its
    32 KiB window, so it packs about 90x, well under the 500x of a bomb."""
    block = random.Random(19).randbytes(16 * 1024)
    return (block * (size // len(block) + 1))[:size]


def text_object(size: int) -> bytes:
    """An object whose value is a string of ``size`` hex digits (a writer's /Producer, say)."""
    return b"<< /Producer (" + repeated(size // 2).hex().encode() + b") >>"


#: The page, its text and its font, outside any object stream.
PLAIN = {4: PAGE, 5: content_stream(), 6: FONT}
#: The catalog that runs a script on opening, the pages and the script: only in object stream 7.
HOSTILE = [(1, CATALOG_JS), (2, PAGES), (3, SCRIPT)]
BENIGN = [(1, CATALOG), (2, PAGES)]
FLATE: Callable[[bytes], bytes] = zlib.compress


def gs_text(document: bytes, folder: Path) -> str:
    """The text Ghostscript's txtwrite device finds on the pages: the catalog and the page tree
    live in the object stream, so the report's text proves the viewer read it."""
    path = folder / "doc.pdf"
    path.write_bytes(document)
    assert GS is not None
    done = subprocess.run([GS, "-q", "-dSAFER", "-dBATCH", "-dNOPAUSE", "-sDEVICE=txtwrite", "-o", "-", str(path)],
                          capture_output=True, text=True, timeout=20, check=False)
    return str(done.stdout + done.stderr)


def quiet_encapsulated(document: bytes) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return encapsulated(document)


def active_in_both(document: bytes, scanner: Scanner) -> list[tuple[FileReport, str]]:
    """The reports of ``document`` scanned as a file and encapsulated in DICOM, each with the
    explanation of its one pdf-active finding, which must be high."""
    found = []
    for name, data in (("report.pdf", document), ("pdf.dcm", quiet_encapsulated(document))):
        report = scanner.scan_bytes(data, name)
        active = [f for f in report.findings if f.rule == "documents.pdf-active"]
        assert [f.level for f in active] == [Level.HIGH], shown(report)
        found.append((report, active[0].explanation))
    return found


def shown(report: FileReport) -> list[tuple[str, str, str]]:
    return [(f.rule, f.level.label, f.explanation[:300]) for f in report.findings]


def padded(kind: str) -> bytes:
    """The hostile object stream 7 behind padding (object 11 and on) that spends one bound."""
    if kind == "ascii85":  # 2.2 million ASCII85 characters of page content, then the script
        return build({**PLAIN, 11: b"<< /Filter /ASCII85Decode >>\nstream\r\n" + a85(repeated(1_700_000))
                      + b"~>\nendstream"},
                     [(7, b"/Filter [/A85 /Fl]", lambda d: a85(zlib.compress(d)), HOSTILE)])
    if kind == "run-length":  # 1.1 MB of run-length input in a benign object stream
        padding = [(20, text_object(1_100_000))]
        return build(PLAIN, [(11, b"/Filter /RunLengthDecode", run_length, padding),
                             (7, b"/Filter /RunLengthDecode", lambda d: run_length(d, 2), HOSTILE)])
    if kind == "predictor":  # 1.1 MB of predicted bytes in a benign object stream
        parameters = b"/Filter /FlateDecode /DecodeParms << /Predictor 12 /Columns 8 >>"
        padding = [(20, text_object(1_100_000))]
        return build(PLAIN, [(11, parameters, lambda d: zlib.compress(png_up(d, 8)), padding),
                             (7, parameters, lambda d: zlib.compress(png_up(d, 8)), HOSTILE)])
    if kind == "inflate-document":  # five streams of 15 MiB of page content: 75 MiB
        packed = zlib.compress(repeated(15 << 20))
        content = b"<< /Filter /FlateDecode /Length %d >>\nstream\r\n" % len(packed) + packed + b"\r\nendstream"
        return build({**PLAIN, **dict.fromkeys(range(11, 16), content)}, [(7, b"/Filter /FlateDecode", FLATE, HOSTILE)])
    assert kind == "inflate-stream"  # 17 MiB of one object's text ahead of the script in its stream
    return build(PLAIN, [(7, b"/Filter /FlateDecode", FLATE, [(20, text_object(17 << 20)), *HOSTILE])])


@pytest.mark.parametrize("kind", ["ascii85", "run-length", "predictor", "inflate-document", "inflate-stream"])
def test_padding_that_spends_a_bound_before_a_script_fails_the_scan(kind: str, scanner: Scanner,
                                                                      tmp_path: Path) -> None:
    document = padded(kind)
    assert [name for name in RAW_NAMES if name in document] == []
    assert_viewer_reads_hidden_catalog(document, tmp_path)  # a viewer reads past the padding
    for name, data in (("report.pdf", document), ("pdf.dcm", quiet_encapsulated(document))):
        report = scanner.scan_bytes(data, name)
        notes = [f for f in report.findings if f.rule == "documents.pdf-unscanned"]
        assert notes, shown(report)
        assert notes[0].level == Level.MEDIUM, shown(report)
        assert report.fails(Level.MEDIUM)
        assert [f.rule for f in report.findings if f.rule.endswith(".error")] == []


def image(size: int) -> bytes:
    """A grey image XObject (8.9.5) of ``size`` deflated bytes: a scanned page or a key image."""
    packed = zlib.compress(repeated(size))
    return (b"<< /Type /XObject /Subtype /Image /Width 4096 /Height %d /ColorSpace /DeviceGray "
            b"/BitsPerComponent 8 /Filter /FlateDecode /Length %d >>\nstream\r\n" % (size // 4096, len(packed))
            + packed + b"\r\nendstream")


def test_a_clean_report_whose_images_pass_the_bounds_still_passes(scanner: Scanner) -> None:
    """Images are inflated for their size only: that their bytes were not all read hides no
    name, so 80 MiB of them (one past the 16 MiB of a stream) are no finding above low."""
    big = image(20 << 20)
    document = build({**PLAIN, **dict.fromkeys(range(11, 15), big)}, [(7, b"/Filter /FlateDecode", FLATE, BENIGN)])
    for name, data in (("report.pdf", document), ("pdf.dcm", quiet_encapsulated(document))):
        report = scanner.scan_bytes(data, name)
        assert [f for f in shown(report) if f[1] not in ("info", "low")] == []
        assert not report.fails(Level.MEDIUM)


@pytest.mark.parametrize("entry,data,why", [
    (b"/Filter /LZWDecode", b"\x80\x00\xff\xff\xff\xff" * 50, "/LZWDecode is not decoded past byte"),
    (b"/Filter /FlateDecode /DecodeParms << /Predictor 12 /Columns 4 >>", zlib.compress(b"\x07abcd" * 40),
     "a row of PNG filter type 7"),
], ids=["lzw-bad-code", "png-bad-row"])
def test_damage_a_viewer_stops_at_too_stays_a_low_note(entry: bytes, data: bytes, why: str,
                                                        scanner: Scanner) -> None:
    """Not a bound: the data itself ends there for every reader."""
    document = build(PLAIN, [(7, entry, lambda _: data, BENIGN)])
    report = scanner.scan_bytes(quiet_encapsulated(document), "damaged.dcm")
    notes = [f for f in report.findings if f.rule == "documents.pdf-unscanned"]
    assert notes and notes[0].level == Level.LOW and why in notes[0].explanation, shown(report)


#: Object stream 11: a benign, directly deflated object stream holding object 12 (7.5.7), which
#: object stream 7 names as its /Filter or /DecodeParms.
RESOLVED: dict[str, tuple[bytes, bytes, Callable[[bytes], bytes]]] = {
    "filter": (b"/Filter 12 0 R", b"/RunLengthDecode", lambda d: run_length(d, 2)),
    "filter-array": (b"/Filter 12 0 R", b"[/ASCIIHexDecode /RunLengthDecode]",
                     lambda d: run_length(d, 2).hex().encode() + b">"),
    "parameters": (b"/Filter /FlateDecode /DecodeParms 12 0 R", b"<< /Predictor 12 /Columns 8 >>",
                   lambda d: zlib.compress(png_up(d, 8))),
    "parameters-array": (b"/Filter [/FlateDecode] /DecodeParms [12 0 R]", b"<< /Columns 8 /Predictor 12 >>",
                         lambda d: zlib.compress(png_up(d, 8))),
}


@pytest.mark.parametrize("first", [False, True], ids=["after", "before"])
@pytest.mark.parametrize("kind", sorted(RESOLVED))
def test_a_filter_or_parameters_inside_another_object_stream_are_resolved(kind: str, first: bool, scanner: Scanner,
                                                                          tmp_path: Path) -> None:
    """Ghostscript finds object 12 in object stream 11 through the cross-reference stream and
    decodes object stream 7 with it; pacsguard skipped 7 (filter) or searched it still predicted
    (parameters), and the script passed."""
    entries, value, encode = RESOLVED[kind]
    holder: Packed = (11, b"/Filter /FlateDecode", FLATE, [(12, value), (13, b"<< /Producer (writer) >>")])
    hiding: Packed = (7, entries, encode, HOSTILE)
    document = build(PLAIN, [hiding, holder] if first else [holder, hiding])
    assert [name for name in RAW_NAMES if name in document] == []
    assert_viewer_reads_hidden_catalog(document, tmp_path)
    for report, explanation in active_in_both(document, scanner):
        assert "object stream 7 0" in explanation and "/JavaScript" in explanation
        assert [f.rule for f in report.findings if f.rule == "documents.pdf-unscanned"] == []


def test_the_same_benign_report_passes_read_whole(scanner: Scanner, tmp_path: Path) -> None:
    entries, value, encode = RESOLVED["parameters"]
    document = build(PLAIN, [(11, b"/Filter /FlateDecode", FLATE, [(12, value)]), (7, entries, encode, BENIGN)])
    assert "Radiology report" in gs_text(document, tmp_path)
    report = scanner.scan_bytes(quiet_encapsulated(document), "benign.dcm")
    assert [f for f in shown(report) if f[1] != "info"] == []


def test_parameters_found_nowhere_are_a_note(scanner: Scanner) -> None:
    """/DecodeParms 98 0 R naming no object at all: the stream is searched without them, and
    that is said (it was not, before)."""
    document = build(PLAIN, [(7, b"/Filter /FlateDecode /DecodeParms 98 0 R", lambda d: zlib.compress(png_up(d, 8)),
                              BENIGN)])
    report = scanner.scan_bytes(quiet_encapsulated(document), "pdf.dcm")
    notes = [f for f in report.findings if f.rule == "documents.pdf-unscanned"]
    assert notes and notes[0].level == Level.LOW, shown(report)
    assert "object stream 7 0" in notes[0].explanation and "/DecodeParms 98 0 R names no object found" \
        in notes[0].explanation


def test_a_filter_past_a_long_object_stream_header_is_medium(scanner: Scanner, tmp_path: Path) -> None:
    """Object 12 after 100,000 others in object stream 11: its header (7.5.7) is read to 1 MiB
    only, so 7's filter is not found; the document's writer chose that length."""
    many = [(n, b"null") for n in range(1000, 101_000)]
    document = build(PLAIN, [(11, b"/Filter /FlateDecode", FLATE, [*many, (12, b"/RunLengthDecode")]),
                             (7, b"/Filter 12 0 R", lambda d: run_length(d, 2), HOSTILE)])
    assert_viewer_reads_hidden_catalog(document, tmp_path)
    report = scanner.scan_bytes(quiet_encapsulated(document), "pdf.dcm")
    notes = [f for f in report.findings if f.rule == "documents.pdf-unscanned"]
    assert notes and notes[0].level == Level.MEDIUM, shown(report)
    assert "headers past 1,048,576 bytes" in notes[0].explanation
    assert report.fails(Level.MEDIUM)


#: An object stream's dictionary written so that the bytes read as its dictionary (from the last
#: "obj" before ``stream``, at most 4 KiB back) lose its /Type /ObjStm and /First: an "obj" in a
#: string or a comment of its own, or padding past 4 KiB; an image's /Subtype added, or a
#: run-length filter (decoded in object streams only). Ghostscript reads each through the
#: cross-reference stream; the scanner skipped the stream or inflated it "for its size only".
DISGUISE = b"x" * 5000
DISGUISES: dict[str, tuple[bytes, Callable[[bytes], bytes]]] = {
    "comment-image": (b"/Filter /FlateDecode % 1 0 obj <<\n/Subtype /Image", FLATE),
    "comment-run-length": (b"% 1 0 obj <<\n/Filter /RunLengthDecode", lambda d: run_length(d, 2)),
    "string-run-length": (b"/Pad (1 0 obj) /Filter /RunLengthDecode", lambda d: run_length(d, 2)),
    "string-image": (b"/Pad (1 0 obj <<) /Subtype /Image /Filter /FlateDecode", FLATE),
    "padded-image": (b"/Pad (" + DISGUISE + b") /Subtype /Image /Filter /FlateDecode", FLATE),
    "padded-run-length": (b"/Pad (" + DISGUISE + b") /Filter /RunLengthDecode", lambda d: run_length(d, 2)),
    "padded-string-image": (b"/Pad (" + DISGUISE + b" 1 0 obj) /Subtype /Image /Filter /FlateDecode", FLATE),
    "padded-image-run-length": (b"/Pad (" + DISGUISE + b") /Subtype /Image /Filter /RunLengthDecode",
                                lambda d: run_length(d, 2)),
    "padded-string-image-run-length": (b"/Pad (" + DISGUISE + b" 1 0 obj) /Subtype /Image /Filter /RunLengthDecode",
                                       lambda d: run_length(d, 2)),
}


@pytest.mark.parametrize("kind", sorted(DISGUISES))
def test_an_object_stream_whose_dictionary_is_disguised_is_still_searched(kind: str, scanner: Scanner,
                                                                          tmp_path: Path) -> None:
    entries, encode = DISGUISES[kind]
    document = build(PLAIN, [(7, entries, encode, HOSTILE)])
    assert [name for name in RAW_NAMES if name in document] == []
    assert_viewer_reads_hidden_catalog(document, tmp_path)
    for _, explanation in active_in_both(document, scanner):
        assert "/JavaScript" in explanation


def test_old_run_length_page_content_past_the_allowance_is_a_low_note(scanner: Scanner) -> None:
    """Run-length page content (decoded now, to know an object stream by its bytes) that passes
    the 1 MiB allowance is an old writer's, not an object stream: a note, as before."""
    text = b"BT /F1 11 Tf 72 690 Td (Findings: no acute abnormality.) Tj ET\n" * 20_000
    content = b"<< /Filter /RunLengthDecode >>\nstream\r\n" + run_length(text) + b"\nendstream"
    document = build({**PLAIN, 5: content}, [(7, b"/Filter /FlateDecode", FLATE, BENIGN)])
    report = scanner.scan_bytes(quiet_encapsulated(document), "old.dcm")
    assert [f for f in shown(report) if f[1] not in ("info", "low")] == []
    notes = [f for f in report.findings if f.rule == "documents.pdf-unscanned"]
    assert notes and notes[0].level == Level.LOW and "past the allowance" in notes[0].explanation, shown(report)


def test_a_chain_of_object_streams_is_resolved_in_any_order(scanner: Scanner, tmp_path: Path) -> None:
    """7's /DecodeParms is object 12, in object stream 11, whose /Filter is object 13, in object
    stream 10: written in that order, 11 is not decoded yet when 7 is met."""
    document = build(PLAIN, [
        (7, b"/Filter /FlateDecode /DecodeParms 12 0 R", lambda d: zlib.compress(png_up(d, 8)), HOSTILE),
        (11, b"/Filter 13 0 R", lambda d: run_length(d, 2), [(12, b"<< /Predictor 12 /Columns 8 >>")]),
        (10, b"/Filter /FlateDecode", FLATE, [(13, b"/RunLengthDecode")]),
    ])
    assert [name for name in RAW_NAMES if name in document] == []
    assert_viewer_reads_hidden_catalog(document, tmp_path)
    report = scanner.scan_bytes(quiet_encapsulated(document), "pdf.dcm")
    active = [f for f in report.findings if f.rule == "documents.pdf-active"]
    assert [f.level for f in active] == [Level.HIGH], shown(report)
    assert "object stream 7 0" in active[0].explanation


def test_streams_waiting_for_objects_cost_little(scanner: Scanner) -> None:
    """9,000 object streams, each naming its /DecodeParms in itself (no viewer can read that):
    each waits a few rounds at most, then is said."""
    streams = b"".join(b"%d 0 obj\n<< /Type /ObjStm /N 1 /First 5 /Filter /FlateDecode /DecodeParms %d 0 R >>\n"
                       b"stream\r\n" % (n + 400_000, n) + zlib.compress(b"%d 0 /X\n" % n) + b"\r\nendstream\nendobj\n"
                       for n in range(100, 9_100))
    document = build(PLAIN, [(7, b"/Filter /FlateDecode", FLATE, BENIGN)])
    document = document.replace(b"%PDF-1.7\n", b"%PDF-1.7\n" + streams, 1)
    began = time.perf_counter()
    report = scanner.scan_bytes(document, "many.pdf")
    seconds = time.perf_counter() - began
    assert seconds < 8, f"{seconds:.1f} s"
    notes = [f for f in report.findings if f.rule == "documents.pdf-unscanned"]
    assert notes and "names no object found" in notes[0].explanation, shown(report)
    assert [f.rule for f in report.findings if f.rule.endswith(".error")] == []
