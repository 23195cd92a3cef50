"""Round 11, area I: a PDF object stream whose dictionary is padded past 1 MiB (ISO 32000-1 7.3.7,
7.5.7).

The scanner read a dictionary whole to 1 MiB only. An object stream whose /Filter (ASCIIHexDecode,
ASCII85Decode) or /DecodeParms (a PNG predictor) stands before 1.1 MiB of padding (white space,
dummy keys, a comment) was not decoded, or decoded without its predictor, while Ghostscript reads
the dictionary whole and runs the catalog's /OpenAction script: a PDF, bare or in an Encapsulated
PDF object, passed with no finding. Now a dictionary is read to 4 MiB (past its first MiB from a
per-document reach), and one longer still is said, medium, as ClamAV says what it stopped reading
(Heuristics.Limits.Exceeded). A report whose font has a 1.5 MiB /Widths array and whose page has
a 1.5 MiB /Annots array stays clean. (A dictionary in the raw bytes, padded or not, was always
searched whole: its names are found with no dictionary read at all.)"""

from __future__ import annotations

import shutil
import subprocess
import warnings
import zlib
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
from pdf_samples import (
    CATALOG,
    CONTENT,
    FONT,
    PAGE,
    PAGES,
    Framing,
    a85,
    assert_viewer_reads_hidden_catalog,
    benign,
    content_stream,
    encapsulated,
    hostile,
    pdf,
)

from pacsguard.scan.model import FileReport, Level
from pacsguard.scan.scanner import Scanner

MiB = 1 << 20
PACSGUARD = shutil.which("pacsguard", path=str(Path(__file__).parents[2] / ".venv" / "bin"))


def ascii_hex(data: bytes) -> bytes:
    return data.hex().encode() + b">"


def png_up(data: bytes, columns: int = 8) -> bytes:
    """``data`` in rows of ``columns`` bytes, each PNG Up-predicted (7.4.4.4, type 2), deflated: the
    names are differences from the row above, unreadable until the predictor is undone."""
    out, above = bytearray(), bytes(columns)
    for at in range(0, len(data), columns):
        row = data[at:at + columns].ljust(columns, b" ")
        out += b"\x02" + bytes((a - b) & 0xFF for a, b in zip(row, above, strict=True))
        above = row
    return zlib.compress(bytes(out))


#: The object stream's filter (and predictor), then padding that puts it more than 1 MiB before the
#: dictionary's end: none of it in the 4 KiB before `stream`.
PADDED: dict[str, tuple[bytes, Callable[[bytes], bytes]]] = {
    "ascii-hex-white-space": (b"/Filter /ASCIIHexDecode " + b" " * (MiB + 4096), ascii_hex),
    "ascii85-dummy-keys": (b"/Filter /ASCII85Decode " + b"".join(b"/K%d %d " % (n, n) for n in range(90_000)), a85),
    "predictor-comment": (b"/Filter /FlateDecode /DecodeParms << /Predictor 12 /Columns 8 >> % "
                          + b"c" * (MiB + 4096) + b"\n", png_up),
}


@cache
def padded(kind: str, length: int = 0) -> bytes:
    """The catalog that runs a script on opening, only in object stream 7, its dictionary padded as
    ``kind`` says (``length``: white space of that length instead)."""
    head, encode = PADDED[kind]
    if length:
        head = head.split(b" ", 2)[0] + b" " + head.split(b" ", 2)[1] + b" " * length
    return hostile(Framing(filter=head, encode=encode))[0]


def both(document: bytes, scanner: Scanner) -> list[FileReport]:
    """``document`` scanned as a file and as an Encapsulated PDF in DICOM (PS3.3 A.45)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dicom = encapsulated(document)
    return [scanner.scan_bytes(document, "report.pdf"), scanner.scan_bytes(dicom, "pdf.dcm")]


def shown(report: FileReport) -> list[tuple[str, str, str]]:
    return [(f.rule, f.level.label, f.explanation[:300]) for f in report.findings]


@pytest.mark.parametrize("kind", list(PADDED))
def test_an_object_stream_whose_filter_is_padded_past_a_mebibyte_is_read(kind: str, scanner: Scanner,
                                                                         tmp_path: Path) -> None:
    document = padded(kind)
    assert b"/OpenAction" not in document and b"JavaScript" not in document
    assert_viewer_reads_hidden_catalog(document, tmp_path)
    for report in both(document, scanner):
        active = [f for f in report.findings if f.rule == "documents.pdf-active"]
        assert [f.level for f in active] == [Level.HIGH], shown(report)
        assert "(object stream 7 0," in active[0].explanation, shown(report)
        assert "/OpenAction, /JavaScript, /JS" in active[0].explanation, shown(report)


def test_a_dictionary_past_what_is_read_is_medium_in_the_real_cli(tmp_path: Path) -> None:
    """5 MiB of white space: Ghostscript still reads the catalog; the scanner does not read that
    far, and says so (medium): `pacsguard scan` exits 1 on the bare file and on the DICOM one."""
    document = padded("ascii-hex-white-space", 5 * MiB)
    assert_viewer_reads_hidden_catalog(document, tmp_path)
    assert PACSGUARD is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (tmp_path / "pdf.dcm").write_bytes(encapsulated(document))
    (tmp_path / "report.pdf").write_bytes(document)
    done = subprocess.run([PACSGUARD, "scan", "--format", "json", str(tmp_path / "report.pdf"),
                           str(tmp_path / "pdf.dcm")], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, (done.stdout[-2000:], done.stderr[-2000:])
    said = done.stdout.count("stream dictionaries past 4,194,304 bytes in one dictionary")
    assert said == 2, done.stdout[-3000:]
    assert done.stdout.count('"documents.pdf-unscanned"') == 2, done.stdout[-3000:]
    assert '"medium"' in done.stdout and "Traceback" not in done.stderr


def test_a_report_with_large_arrays_in_its_dictionaries_stays_clean(scanner: Scanner) -> None:
    """A font's /Widths and a page's /Annots of 1.5 MiB, an object stream whose dictionary carries a
    1.5 MiB string (read whole now): no finding at medium or above, bare or in DICOM."""
    widths = b"[" + b"500 " * (400 * 1024) + b"]"
    annots = b"[" + b"9 0 R " * (260 * 1024) + b"]"
    font = FONT[:-2] + b"/FirstChar 0 /LastChar 409599 /Widths " + widths + b" >>"
    page = PAGE[:-2] + b" /Annots " + annots + b" >>"
    link = b"<< /Type /Annot /Subtype /Link /Rect [0 0 1 1] /Border [0 0 0] >>"
    head = b"/Filter /FlateDecode /Pad (" + b"0" * (3 * MiB // 2) + b")"
    document = pdf({1: CATALOG, 2: PAGES}, {4: page, 5: content_stream(CONTENT), 6: font, 9: link},
                   Framing(filter=head))[0]
    assert len(document) > 4 * MiB
    for report in [*both(document, scanner), scanner.scan_bytes(benign(), "small.pdf")]:
        assert [f for f in shown(report) if f[1] not in ("info", "low")] == [], shown(report)
