"""Round 10, area D: the streams of a PDF past its 64 MiB bound (pacsguard.scan.pdf.Bounds.max_total).

Images and fonts are decoded last, for their size only, and what the document's bound left of
them was passed over in silence: an object stream (ISO 32000-1 7.5.7) whose dictionary says
/Subtype /Image (its /Type /ObjStm padded out of sight), put after 80 MiB of real images, was
never read, and the script Ghostscript runs from it passed with no finding at all. As ClamAV says
a file it stopped reading at MaxScanSize (Heuristics.Limits.Exceeded), the scanner now names what
it left: the first image stream not read and the bound, a low note; an "image" whose first bytes
are an object stream's header, the bound run out before a stream that can hold names (medium,
failing the default --fail-on medium); and `scan.limits.max_pdf_inflated` raises the bound, past
which the script is found. A clean report of large images stays at low."""

from __future__ import annotations

import warnings
from functools import cache
from pathlib import Path

from pdf_samples import assert_viewer_reads_hidden_catalog, encapsulated
from test_r9w_pdf_bounds import BENIGN, DISGUISE, FLATE, HOSTILE, PLAIN, RAW_NAMES, build, gs_text, image, shown

from pacsguard.scan.config import ScanSettings
from pacsguard.scan.model import FileReport, Level
from pacsguard.scan.pdf import Bounds
from pacsguard.scan.scanner import Scanner
from pacsguard.scan.xref import MAX_DICTIONARY

MiB = 1 << 20
BOUND = Bounds().max_total
#: A padding string longer than the dictionary the scanner reads whole (xref.MAX_DICTIONARY): the
#: object stream a cross-reference stream names is then judged by its bytes, as by the probes
#: these tests are about (test_r10J_pdf_xref_object_streams.py finds shorter ones by name).
DEEP_DISGUISE = DISGUISE + b"x" * MAX_DICTIONARY
#: The object stream's dictionary, as test_r9w_pdf_bounds disguises it: its /Type /ObjStm and
#: /First more than 1 MiB before `stream`, behind a padding string, and /Subtype /Image after.
AS_AN_IMAGE = b"/Pad (" + DEEP_DISGUISE + b") /Subtype /Image /Filter /FlateDecode"


@cache
def big_image() -> bytes:
    """A 20 MiB grey image XObject (8.9.5), deflated: four of them spend the 64 MiB bound."""
    return image(20 * MiB)


def hostile() -> bytes:
    """Four real images (objects 11-14), then object stream 7, disguised as an image, holding the
    catalog that runs a script on opening."""
    return build({**PLAIN, **dict.fromkeys(range(11, 15), big_image())}, [(7, AS_AN_IMAGE, FLATE, HOSTILE)])


def clean() -> bytes:
    """A clean report of five such images (100 MiB decoded) and a plain object stream 7."""
    return build({**PLAIN, **dict.fromkeys(range(11, 16), big_image())}, [(7, b"/Filter /FlateDecode", FLATE, BENIGN)])


def both(document: bytes, scanner: Scanner) -> list[FileReport]:
    """``document`` scanned as a file and as an Encapsulated PDF in DICOM."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dicom = encapsulated(document)
    return [scanner.scan_bytes(document, "report.pdf"), scanner.scan_bytes(dicom, "pdf.dcm")]


def data_of(document: bytes, number: int) -> int:
    """Where the data of object ``number``'s stream starts in ``document`` (after its keyword)."""
    keyword = document.index(b"stream\r\n", document.index(b"\n%d 0 obj\n" % number))
    return keyword + len(b"stream\r\n")


def unscanned(report: FileReport) -> list[tuple[Level, str]]:
    return [(f.level, f.explanation) for f in report.findings if f.rule == "documents.pdf-unscanned"]


def test_an_object_stream_disguised_as_an_image_past_the_bound_fails_the_scan(scanner: Scanner,
                                                                               tmp_path: Path) -> None:
    document = hostile()
    assert [name for name in RAW_NAMES if name in document] == []
    assert_object_stream_7_noted(document, scanner, tmp_path)


def assert_object_stream_7_noted(document: bytes, scanner: Scanner, tmp_path: Path) -> None:
    """The viewer (Ghostscript) reads the catalog in stream 7, and the scanner, as a file and in
    DICOM, notes that object stream, left past the bound, as medium: the scan fails."""
    assert_viewer_reads_hidden_catalog(document, tmp_path)
    at = data_of(document, 7)
    for report in both(document, scanner):
        notes = unscanned(report)
        assert [level for level, _ in notes] == [Level.MEDIUM], shown(report)
        why = notes[0][1]
        assert f"the object stream, /FlateDecode at offset {at:,} (its dictionary says image or font; its bytes " \
               "start as an object stream's)" in why, why
        assert f"past {BOUND:,} inflated bytes (scan.limits.max_pdf_inflated)" in why, why
        assert report.fails(Level.MEDIUM)


def test_raising_the_bound_reads_the_disguised_object_stream(scanner: Scanner) -> None:
    """scan.limits.max_pdf_inflated, as pacsguard.yaml sets it: at 128 MiB the object stream is
    decoded (known by its header) and its script found, high."""
    settings = ScanSettings.model_validate({"limits": {"max_pdf_inflated": 128 * MiB}, "rules": {"yara": False}})
    raised = Scanner.from_settings(settings)
    for report in both(hostile(), raised):
        active = [f for f in report.findings if f.rule == "documents.pdf-active"]
        assert [f.level for f in active] == [Level.HIGH], shown(report)
        assert "/JavaScript" in active[0].explanation, shown(report)
        assert f"at offset {data_of(hostile(), 7):,} of the PDF" in active[0].explanation, shown(report)
        # Its dictionary is padded past what the scanner reads (xref.MAX_DICTIONARY): said, medium.
        assert [why for _, why in unscanned(report) if "stream dictionaries past" not in why] == [], shown(report)


def test_a_clean_report_past_the_bound_is_a_low_note_naming_the_first_image_left(scanner: Scanner,
                                                                                 tmp_path: Path) -> None:
    """Five 20 MiB images: the fifth is not read. Said (low, as ClamAV's exceeds-max heuristic is an
    alert that implies no infection), with its object, its offset and the bound; the scan passes."""
    document = clean()
    assert "Radiology report" in gs_text(document, tmp_path)
    fifth = data_of(document, 15)
    for report in both(document, scanner):
        assert [f for f in shown(report) if f[1] not in ("info", "low")] == []
        assert not report.fails(Level.MEDIUM)
        notes = unscanned(report)
        assert [level for level, _ in notes] == [Level.LOW], shown(report)
        why = notes[0][1]
        assert "image, font or cross-reference stream 15 0, /FlateDecode" in why, why
        assert f"past {BOUND:,} inflated bytes (scan.limits.max_pdf_inflated)" in why, why
        assert f"at offset {fifth:,}, past" in why, why
