"""Active content hidden in a PDF's compressed streams (ISO 32000-1 7.3.8, 7.4, 7.5.7): the
names the documents family looks for, written only inside a deflated object stream, are in no
raw byte of the file. Each sample is built here (pdf_samples.py, around pydicom's CT test file);
the hostile ones were missed before pacsguard.scan.pdf decoded streams."""

from __future__ import annotations

import time
import tracemalloc
import warnings
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pdf_samples import (
    CATALOG,
    FONT,
    FRAMINGS,
    PAGE,
    PAGES,
    SCRIPT,
    Framing,
    benign,
    content_stream,
    encapsulated,
    hostile,
    pdf,
)

from pacsguard.scan.model import FileReport, Finding, Level
from pacsguard.scan.scanner import Scanner

#: Names a raw search would find: none may be in the hostile samples' bytes.
RAW_NAMES = (b"JavaScript", b"/JS", b"OpenAction", b"/AA", b"Launch", b"EmbeddedFile", b"RichMedia")


def quiet_encapsulated(document: bytes) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return encapsulated(document)


def found(report: FileReport, rule: str) -> list[Finding]:
    return [f for f in report.findings if f.rule == rule]


def above_low(report: FileReport) -> list[str]:
    return [f"{f.rule}={f.level.label}" for f in report.findings if f.level > Level.LOW]


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
@pytest.mark.parametrize("where", ["encapsulated", "file"])
def test_a_script_hidden_in_a_compressed_object_stream_is_found(framing: str, where: str, scanner: Scanner) -> None:
    document, encoded = hostile(FRAMINGS[framing])
    assert [name for name in RAW_NAMES if name in document] == []  # nothing readable in the raw bytes
    data = quiet_encapsulated(document) if where == "encapsulated" else document
    report = scanner.scan_bytes(data, f"{framing}.{'dcm' if where == 'encapsulated' else 'pdf'}")
    active = found(report, "documents.pdf-active")
    assert active, f"not found; got {[f.rule for f in report.findings]}"
    finding = active[0]
    assert finding.level == Level.HIGH
    assert "compressed stream" in finding.explanation and "object stream 7 0" in finding.explanation
    for name in ("/OpenAction", "/JavaScript", "/JS"):
        assert name in finding.explanation
    # the offset is where the object stream's data starts, in the scanned file
    assert finding.offset is not None and data[finding.offset:].startswith(encoded[:16])
    assert finding.tag == ("(0042,0011)" if where == "encapsulated" else None)
    assert f"at offset {document.find(encoded):,} of the PDF" in finding.explanation


def test_a_benign_report_with_compressed_content_gives_nothing_above_low(scanner: Scanner) -> None:
    """Deflated page content (text operators, names of fonts) and a clean object stream."""
    document = benign()
    assert b"/ObjStm" in document and b"/FlateDecode" in document
    for data in (quiet_encapsulated(document), document):
        report = scanner.scan_bytes(data, "report")
        assert above_low(report) == []
        assert [f.rule for f in report.findings if f.rule.startswith("documents.")] == []


def bomb(inflated: int, image: bool) -> bytes:
    """A page whose content stream (or an image XObject's data) is ``inflated`` zero bytes deflated."""
    packed = zlib.compress(bytes(inflated), 9)
    kind = b"/Type /XObject /Subtype /Image /Width 8192 /Height 8192 /ColorSpace /DeviceGray " \
        b"/BitsPerComponent 8 " if image else b""
    stream = b"<< " + kind + b"/Filter /FlateDecode /Length %d >>\nstream\r\n" % len(packed) + packed + b"\r\nendstream"
    return pdf({1: CATALOG, 2: PAGES}, {4: PAGE, 5: content_stream(), 6: FONT, 11: stream})[0]


@pytest.mark.parametrize("image", [False, True], ids=["content", "image"])
def test_a_deflate_bomb_in_a_pdf_stream_is_high_and_bounded(image: bool) -> None:
    data = quiet_encapsulated(bomb(64 << 20, image))
    tracemalloc.start()
    try:
        started = time.perf_counter()
        report = Scanner().scan_bytes(data, "bomb")
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    bombs = found(report, "documents.pdf-bomb")
    assert bombs and bombs[0].level == Level.HIGH and bombs[0].tag == "(0042,0011)"
    assert "16,777,216" in bombs[0].explanation
    assert seconds < 5, f"{seconds:.1f} s"
    assert peak < 48 << 20, f"{peak:,} bytes allocated to judge a 64 MiB bomb"


def test_streams_that_together_pass_the_document_bound_are_a_bomb() -> None:
    """Eight streams of 12 MiB each: every one under the stream bound, 96 MiB together."""
    packed = zlib.compress(bytes(12 << 20), 9)
    streams = {20 + i: b"<< /Filter /FlateDecode /Length %d >>\nstream\r\n" % len(packed) + packed + b"\r\nendstream"
               for i in range(8)}
    report = Scanner().scan_bytes(pdf({1: CATALOG, 2: PAGES}, {4: PAGE, 5: content_stream(), 6: FONT, **streams})[0],
                                  "bombs.pdf")
    bombs = found(report, "documents.pdf-bomb")
    assert bombs and bombs[0].level == Level.HIGH and "67,108,864" in bombs[0].explanation


@pytest.mark.parametrize("entry,why", [(b"/Filter /LZWDecode", "/LZWDecode is not decoded"),
                                       (b"/Filter /FlateDecode /DecodeParms << /Predictor 12 /Columns 4 >>",
                                        "its /Predictor is not undone")], ids=["lzw", "predictor"])
def test_an_object_stream_that_cannot_be_read_is_a_low_note(entry: bytes, why: str, scanner: Scanner) -> None:
    """An object stream in a filter pacsguard does not decode, or predicted (7.4.4.4): said,
    not failed on (the benign report's, so no name is found either)."""
    document = pdf({1: CATALOG, 2: PAGES}, {4: PAGE, 5: content_stream(), 6: FONT}, Framing(filter=entry))[0]
    report = scanner.scan_bytes(quiet_encapsulated(document), "unread")
    notes = found(report, "documents.pdf-unscanned")
    assert notes and notes[0].level == Level.LOW and why in notes[0].explanation
    assert above_low(report) == []


def test_a_flood_of_streams_before_the_object_stream_is_medium(scanner: Scanner) -> None:
    """More stream keywords than pacsguard looks at (10,000) ahead of the hostile object stream."""
    document, _ = hostile()
    at = document.index(b"7 0 obj")
    flooded = document[:at] + b"% filler\n" + b"<<>>stream\nendstream\n" * 10_001 + document[at:]
    report = scanner.scan_bytes(quiet_encapsulated(flooded), "flood")
    notes = found(report, "documents.pdf-unscanned")
    assert notes and notes[0].level == Level.MEDIUM and "streams past the first 10,000" in notes[0].explanation
    assert report.fails(Level.MEDIUM)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_pdfs_never_break_the_rule(data: st.DataObject) -> None:
    """Flipped and cut bytes anywhere in a hostile PDF: the documents rules never fail
    (``documents.error``) and stay fast."""
    name = data.draw(st.sampled_from(sorted(FRAMINGS)))
    buf = bytearray(hostile(FRAMINGS[name])[0])
    for _ in range(data.draw(st.integers(0, 8))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    buf = buf[:data.draw(st.integers(1, len(buf)))]
    started = time.perf_counter()
    report = Scanner().scan_bytes(bytes(buf), name)
    assert time.perf_counter() - started < 2
    assert not [f.rule for f in report.findings if f.rule.endswith(".error")]


@pytest.mark.parametrize("where", ["object-stream", "raw"])
def test_a_report_that_only_opens_at_a_page_is_a_low_note(scanner: Scanner, where: str) -> None:
    """/OpenAction [page /Fit] is a destination, not an action (ISO 32000-1 12.3.2, 12.6.3): pdfTeX
    and report writers set it. High, it quarantined clinical reports on a scanning route; it is a
    low note unless a script, launch, form or embedded file is there too."""
    catalog = b"<< /Type /Catalog /Pages 2 0 R /OpenAction [4 0 R /Fit] >>"
    page = PAGE.replace(b">> >>", b">> >> /AA << /O << /S /GoTo /D [4 0 R /Fit] >> >>")
    compressed, plain = ({1: catalog, 2: PAGES}, {4: page}) if where == "object-stream" else \
        ({2: PAGES}, {1: catalog, 4: page})
    document = pdf(compressed, {**plain, 5: content_stream(), 6: FONT})[0]
    for data in (quiet_encapsulated(document), document):
        report = scanner.scan_bytes(data, "report")
        assert above_low(report) == []
        notes = [f for f in report.findings if f.rule == "documents.pdf-open-action"]
        assert len(notes) == 1 and "/OpenAction" in notes[0].explanation, report.findings
    # The same catalog with a script beside it is high, naming both.
    hostile_doc = pdf({1: catalog, 2: PAGES, 3: SCRIPT}, {4: page, 5: content_stream(), 6: FONT})[0]
    active = [f for f in scanner.scan_bytes(hostile_doc, "report").findings if f.rule == "documents.pdf-active"]
    assert active and all(f.level == Level.HIGH for f in active)
    named = " ".join(f.explanation for f in active)
    assert "/JavaScript" in named and "/OpenAction" in named
