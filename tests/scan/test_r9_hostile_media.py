"""Outside round 9, hostile media: what a PDF viewer or a Linux import station reads that the
scanner did not.

- A PDF's object stream (ISO 32000-1 7.5.7) holding the catalog's /OpenAction and the
  JavaScript action, written with a PNG or TIFF predictor after FlateDecode (7.4.4.4), with
  LZWDecode (7.4.4.2) or with RunLengthDecode (7.4.5): Ghostscript reads each (its -dPDFDEBUG
  log shows it take the catalog, /OpenAction and all, out of the stream), but pacsguard left
  predictors undone and LZW undecoded, so the script was only a low `documents.pdf-unscanned`
  note and the file passed the default `--fail-on medium`; a run-length stream whose runs split
  the names hid them the same way.
- A Rock Ridge symbolic link on a disc image (RRIP 4.1.3, SL: `IM1 -> /etc/shadow`,
  `../../root/.ssh/authorized_keys`), which Linux shows as a link when the CD is mounted: it was
  a 0-byte file ("empty") or not listed at all, where a tar's or a zip's link out of the archive
  is `archive.link-traversal` (high)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from pdf_samples import (
    CATALOG,
    FONT,
    PAGE,
    PAGES,
    Framing,
    assert_viewer_reads_hidden_catalog,
    content_stream,
    encapsulated,
    hostile,
    pdf,
)
from scan_samples import ct
from typer.testing import CliRunner

from pacsguard.cli import main
from pacsguard.scan.model import FileReport, Level
from pacsguard.scan.scanner import Scanner
from pacsguard.scan.walk import ArchiveLimits, walk

GS = shutil.which("gs")
assert GS is not None, "Ghostscript (Debian ghostscript) reads the test PDFs as a viewer does"
GENISOIMAGE = shutil.which("genisoimage")
assert GENISOIMAGE is not None, "genisoimage (Debian genisoimage) builds the test images"
#: Names a viewer acts on, none of which may be readable in the raw bytes of a hiding PDF.
RAW_NAMES = (b"/JavaScript", b"/OpenAction", b"/JS")


def lzw(data: bytes, early: int = 1) -> bytes:
    """LZW as ISO 32000-1 7.4.4.2 writes it: a clear-table code first, codes of 9 to 12 bits,
    most significant bit first, the width growing ``early`` codes ahead (/EarlyChange), the
    table cleared when full, 257 at the end."""
    table = {bytes([n]): n for n in range(256)}
    codes: list[tuple[int, int]] = [(256, 9)]
    bits, following, word = 9, 258, b""
    for value in data:
        char = bytes([value])
        if word + char in table:
            word += char
            continue
        codes.append((table[word], bits))
        table[word + char] = following
        following += 1
        if following + early > (1 << bits) and bits < 12:
            bits += 1
        if following >= 4093:
            codes.append((256, bits))
            table = {bytes([n]): n for n in range(256)}
            bits, following = 9, 258
        word = char
    if word:
        codes.append((table[word], bits))
    codes.append((257, bits))
    held, count, out = 0, 0, bytearray()
    for code, width in codes:
        held, count = held << width | code, count + width
        while count >= 8:
            count -= 8
            out.append(held >> count & 0xFF)
        held &= (1 << count) - 1
    if count:
        out.append(held << (8 - count) & 0xFF)
    return bytes(out)


def run_length(data: bytes, run: int) -> bytes:
    """RunLengthDecode's literal runs of ``run`` bytes (7.4.5), 128 at the end: with a short run
    every name is split by a length byte."""
    out = bytearray()
    for at in range(0, len(data), run):
        chunk = data[at:at + run]
        out += bytes([len(chunk) - 1]) + chunk
    return bytes(out + b"\x80")


def png(data: bytes, kind: int, columns: int, step: int = 1) -> bytes:
    """Rows of ``columns`` bytes, each filtered with PNG filter type ``kind`` (RFC 2083 6:
    1 Sub, 2 Up, 3 Average, 4 Paeth; ``step`` bytes per pixel) and prefixed by it."""
    rows = [data[at:at + columns].ljust(columns, b" ") for at in range(0, len(data), columns)]
    out, above = bytearray(), bytes(columns)
    for row in rows:
        out.append(kind)
        for n, value in enumerate(row):
            left = row[n - step] if n >= step else 0
            corner = above[n - step] if n >= step else 0
            guess = left + above[n] - corner
            paeth = min((abs(guess - left), 0, left), (abs(guess - above[n]), 1, above[n]),
                        (abs(guess - corner), 2, corner))[2]
            base = {1: left, 2: above[n], 3: (left + above[n]) // 2, 4: paeth}[kind]
            out.append((value - base) & 0xFF)
        above = row
    return bytes(out)


def tiff(data: bytes, columns: int, colors: int) -> bytes:
    """TIFF predictor 2 on 8-bit components: each byte less the same component of the pixel
    before it in its row."""
    row = columns * colors
    padded = data.ljust(-(-len(data) // row) * row, b" ")
    return bytes((padded[n] - (padded[n - colors] if n % row >= colors else 0)) & 0xFF for n in range(len(padded)))


FLATE_PNG = b"/Filter /FlateDecode /DecodeParms << /Predictor %d /Columns %d /Colors %d >>"
HIDINGS: dict[str, Framing] = {
    "png-sub": Framing(filter=FLATE_PNG % (11, 7, 1), encode=lambda d: zlib.compress(png(d, 1, 7))),
    "png-up": Framing(filter=FLATE_PNG % (12, 8, 1), encode=lambda d: zlib.compress(png(d, 2, 8))),
    "png-average": Framing(filter=FLATE_PNG % (13, 9, 1), encode=lambda d: zlib.compress(png(d, 3, 9))),
    "png-paeth-rgb": Framing(filter=FLATE_PNG % (14, 5, 3), encode=lambda d: zlib.compress(png(d, 4, 15, 3))),
    "tiff-two-colors": Framing(filter=b"/Filter /Fl /DecodeParms << /Predictor 2 /Colors 2 /Columns 9 >>",
                               encode=lambda d: zlib.compress(tiff(d, 9, 2))),
    "lzw": Framing(filter=b"/Filter /LZWDecode", encode=lzw),
    "lzw-early-0": Framing(filter=b"/Filter /LZW /DecodeParms << /EarlyChange 0 >>", encode=lambda d: lzw(d, 0)),
    "lzw-png-up": Framing(filter=b"/Filter /LZWDecode /DecodeParms << /Predictor 12 /Columns 8 >>",
                          encode=lambda d: lzw(png(d, 2, 8))),
    "run-length": Framing(filter=b"/Filter /RunLengthDecode", encode=lambda d: run_length(d, 2)),
    "ascii85-lzw": Framing(filter=b"/Filter [/A85 /LZW]",
                           encode=lambda d: __import__("base64").a85encode(lzw(d), adobe=True)[2:]),
}


def gs_text(document: bytes, folder: Path) -> str:
    """The text Ghostscript's txtwrite device finds on the document's pages: the catalog and the
    page tree it reaches live in the object stream, so the report's text proves it was read."""
    path = folder / "doc.pdf"
    path.write_bytes(document)
    done = subprocess.run([GS, "-q", "-dSAFER", "-dBATCH", "-dNOPAUSE", "-sDEVICE=txtwrite", "-o", "-", str(path)],
                          capture_output=True, text=True, timeout=20, check=False)
    return done.stdout + done.stderr


def quiet_encapsulated(document: bytes) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return encapsulated(document)


def levels(report: FileReport, rule: str) -> list[Level]:
    return [f.level for f in report.findings if f.rule == rule]


@pytest.mark.parametrize("hiding", sorted(HIDINGS))
def test_a_script_in_a_predicted_lzw_or_run_length_object_stream_fails(hiding: str, scanner: Scanner,
                                                                      tmp_path: Path) -> None:
    document, _ = hostile(HIDINGS[hiding])
    assert [name for name in RAW_NAMES if name in document] == []
    assert_viewer_reads_hidden_catalog(document, tmp_path)  # a viewer reads the object stream
    for name, data in (("report.pdf", document), ("pdf.dcm", quiet_encapsulated(document))):
        report = scanner.scan_bytes(data, name)
        active = [f for f in report.findings if f.rule == "documents.pdf-active"]
        assert active and active[0].level == Level.HIGH, (name, [(f.rule, f.explanation) for f in report.findings])
        assert "/JavaScript" in active[0].explanation and "object stream 7 0" in active[0].explanation
        assert report.fails(Level.MEDIUM)


@pytest.mark.parametrize("hiding", sorted(HIDINGS))
def test_the_same_framing_of_a_benign_report_passes_read_whole(hiding: str, scanner: Scanner,
                                                              tmp_path: Path) -> None:
    """Decoded, not merely excused: no note that part of it was not looked into."""
    document = pdf({1: CATALOG, 2: PAGES}, {4: PAGE, 5: content_stream(), 6: FONT}, HIDINGS[hiding])[0]
    assert "Radiology report" in gs_text(document, tmp_path)
    report = scanner.scan_bytes(quiet_encapsulated(document), "benign.dcm")
    assert [f"{f.rule}: {f.explanation}" for f in report.findings if f.level > Level.INFO] == []


@pytest.mark.parametrize("entry,data,why", [
    (b"/Filter /LZWDecode", b"\x80\x00\xff\xff\xff\xff" * 50, "/LZWDecode is not decoded past byte"),
    (b"/Filter /FlateDecode /DecodeParms << /Predictor 12 /Columns 4 >>", zlib.compress(b"\x07abcd" * 40),
     "a row of PNG filter type 7"),
    (b"/Filter /FlateDecode /DecodeParms << /Predictor 12 /Columns 0 >>", zlib.compress(b"\x00abcd" * 40),
     "/Columns 0"),
], ids=["lzw-bad-code", "png-bad-row", "no-columns"])
def test_an_object_stream_that_does_not_decode_says_where(entry: bytes, data: bytes, why: str,
                                                          scanner: Scanner) -> None:
    """Damage no viewer reads past stays a note naming it, never a failure of the rule."""
    document = pdf({1: CATALOG, 2: PAGES}, {4: PAGE, 5: content_stream(), 6: FONT},
                   Framing(filter=entry, encode=lambda _: data))[0]
    report = scanner.scan_bytes(quiet_encapsulated(document), "damaged.dcm")
    notes = [f for f in report.findings if f.rule == "documents.pdf-unscanned"]
    assert notes and notes[0].level == Level.LOW and why in notes[0].explanation, notes
    assert levels(report, "documents.error") == []


NOISE = random.Random(9).randbytes(1_200_000)


@pytest.mark.parametrize("encode,entry", [
    (lambda: bytes([0, 0x41]) * (8 << 20), b"/Filter /RunLengthDecode"),
    (lambda: lzw(NOISE), b"/Filter /LZWDecode"),
    (lambda: zlib.compress((b"\x04" + NOISE[:1000]) * 12000),
     b"/Filter /FlateDecode /DecodeParms << /Predictor 15 /Columns 1000 >>"),
], ids=["run-length-16mib", "lzw-1.6mb", "paeth-12mb"])
def test_slow_decoding_is_bounded(encode: Callable[[], bytes], entry: bytes, scanner: Scanner) -> None:
    """One-byte runs, LZW codes and predicted rows are decoded a turn of a Python loop each:
    at most a MiB of them per document, so a 16 MiB stream of one-byte runs, 1.6 MB of LZW codes
    or 12 MB of Paeth rows costs about a second, and what was left is said."""
    encoded = encode()
    document = pdf({1: CATALOG, 2: PAGES}, {4: PAGE, 5: content_stream(), 6: FONT},
                   Framing(filter=entry, encode=lambda _: encoded))[0]
    began = time.perf_counter()
    report = scanner.scan_bytes(document, "slow.pdf")
    seconds = time.perf_counter() - began
    assert seconds < 6, f"{seconds:.1f} s"
    assert levels(report, "documents.error") == []
    notes = [f for f in report.findings if f.rule == "documents.pdf-unscanned"]
    # An object stream cut at a bound its writer spent: medium (test_r9w_pdf_bounds.py).
    assert notes and notes[0].level == Level.MEDIUM, notes
    assert "past the allowance" in notes[0].explanation


def make_iso(folder: Path, files: dict[str, bytes], links: dict[str, str]) -> Path:
    """A Rock Ridge image (genisoimage -R -J) of ``files`` and of symbolic ``links`` (name ->
    target), written as Linux shows them when the CD is mounted."""
    src = folder / "src"
    for name, content in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(content)
    for name, target in links.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, src / name)
    out = folder / "cd.iso"
    subprocess.run([GENISOIMAGE, "-quiet", "-R", "-J", "-o", str(out), str(src)], check=True, timeout=60)
    shutil.rmtree(src)
    return out


@pytest.fixture(scope="module")
def clean() -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ct()


def disc_findings(image: Path) -> list[tuple[str, str, str]]:
    from pacsguard.scan.run import scan_all

    return [(report.path, f.rule, f.explanation) for report in scan_all(walk([image], ArchiveLimits()), Scanner())
            for f in report.findings if f.level >= Level.HIGH]


@pytest.mark.parametrize("target", ["/etc/shadow", "../../../root/.ssh/authorized_keys", "DICOM/../../x"])
def test_a_rock_ridge_link_out_of_the_image_is_link_traversal(target: str, clean: bytes, tmp_path: Path) -> None:
    image = make_iso(tmp_path, {"DICOM/IM1": clean}, {"DICOM/IM2": target})
    found = disc_findings(image)
    assert [(rule, why) for _, rule, why in found] == [
        ("archive.link-traversal", f"DICOM/IM2 is a symbolic link on the image leading outside it ({target})")]


def test_a_link_inside_the_image_passes(clean: bytes, tmp_path: Path) -> None:
    """A link to a file of the image (a viewer's `latest -> DICOM/IM1`) leads nowhere else."""
    image = make_iso(tmp_path, {"DICOM/IM1": clean}, {"latest": "DICOM/IM1", "DICOM/same": "IM1"})
    assert disc_findings(image) == []


def test_the_cli_fails_an_image_with_a_link_out(clean: bytes, tmp_path: Path) -> None:
    image = make_iso(tmp_path, {"DICOM/IM1": clean}, {"DICOM/IM2": "/etc/passwd"})
    result = CliRunner().invoke(main.app, ["scan", str(image), "--format", "json"])
    assert result.exit_code == 1, result.output
    assert "archive.link-traversal" in result.output and "/etc/passwd" in result.output
    assert "Traceback" not in result.output


def udf_image(folder: Path, clean: bytes, links: dict[str, str]) -> Path:
    """A UDF 2.60 image (a DVD as Windows and Linux read it) written by pycdlib: one DICOM file
    and symbolic ``links`` (ECMA-167 4/14.16 path components: what Linux's udf driver shows as
    links)."""
    import io

    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, udf="2.60")
    iso.add_fp(io.BytesIO(clean), len(clean), "/IM1.;1", udf_path="/IM1")
    for name, target in links.items():
        iso.add_symlink(udf_symlink_path=name, udf_target=target)
    out = folder / "dvd.iso"
    iso.write(str(out))
    iso.close()
    return out


def test_a_udf_link_out_of_the_image_is_link_traversal(clean: bytes, tmp_path: Path) -> None:
    image = udf_image(tmp_path, clean, {"/LINK": "/etc/shadow", "/UP": "../../root/x", "/SAME": "IM1"})
    found = sorted(why for _, rule, why in disc_findings(image) if rule == "archive.link-traversal")
    assert found == ["LINK is a symbolic link on the image leading outside it (/etc/shadow)",
                     "UP is a symbolic link on the image leading outside it (../../root/x)"]
    assert len(disc_findings(image)) == 2


def test_a_udf_link_whose_components_cannot_be_read_may_lead_anywhere(clean: bytes, tmp_path: Path) -> None:
    """Its path component records cut (a type no component has): where it leads is unknown."""
    image = udf_image(tmp_path, clean, {"/LINK": "/etc/shadow"})
    data = bytearray(image.read_bytes())
    # The target's components as pycdlib wrote them: root (type 2), then "etc" and "shadow" (5).
    at = data.index(b"\x05\x04\x00\x00\x08etc")
    data[at] = 9
    image.write_bytes(bytes(data))
    found = [(rule, why) for _, rule, why in disc_findings(image)]
    assert found == [("archive.link-traversal", "LINK is a symbolic link on the image whose target cannot be read: "
                      "it may lead outside the image")]


CDA_LINK = (b'<?xml version="1.0"?>\n<ClinicalDocument xmlns="urn:hl7-org:v3"><component><structuredBody><component>'
            b'<section><title>Report</title><text><paragraph>See the <linkHtml href="%s">prior study</linkHtml>.'
            b'</paragraph></text></section></component></structuredBody></component></ClinicalDocument>\n')


@pytest.mark.parametrize("href,parsed", [
    (b"&#106;avascript:alert(document.cookie)", "javascript:alert(document.cookie)"),
    (b"java&#x09;script:alert(1)", "java\tscript:alert(1)"),
    (b"&#x76;bscript:msgbox(1)", "vbscript:msgbox(1)"),
    (b"data&#58;text/html;base64,PHNjcmlwdD4=", "data:text/html;base64,PHNjcmlwdD4="),
], ids=["javascript", "tab", "vbscript", "data"])
def test_a_cda_link_to_script_written_with_character_references_is_script(href: bytes, parsed: str,
                                                                           scanner: Scanner) -> None:
    """CDA.xsl writes a narrative linkHtml's href out as an HTML link; the XML parser has undone
    its character references first (expat here, as libxml2 in a viewer)."""
    import xml.etree.ElementTree as ET

    from scan_samples import pdf_document

    document = CDA_LINK % href
    link = ET.fromstring(document).find(".//{urn:hl7-org:v3}linkHtml")
    assert link is not None and link.get("href") == parsed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = scanner.scan_bytes(pdf_document(document, "text/xml"), "cda.dcm")
    assert levels(report, "documents.xml-script") == [Level.HIGH], [(f.rule, f.explanation) for f in report.findings]
    assert report.fails(Level.MEDIUM)


def test_a_cda_link_to_a_web_page_passes(scanner: Scanner) -> None:
    from scan_samples import pdf_document

    document = CDA_LINK % b"https://pacs.example.org/viewer?study=1.2.3&amp;series=4"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = scanner.scan_bytes(pdf_document(document, "text/xml"), "cda.dcm")
    assert [f.rule for f in report.findings if f.level > Level.INFO] == []


@pytest.mark.parametrize("entry,extra,encode", [
    (b"/Filter /FlateDecode /DecodeParms 12 0 R", b"<< /Predictor 12 /Columns 8 >>",
     lambda d: zlib.compress(png(d, 2, 8))),
    (b"/Filter [/FlateDecode] /Decode#50arms [12 0 R]", b"<< /Predictor 12 /Columns 8 >>",
     lambda d: zlib.compress(png(d, 2, 8))),
    (b"/Filter 12 0 R", b"/LZWDecode", lzw),
    (b"/F#69lter 12 0 R", b"/RunLengthDecode", lambda d: run_length(d, 2)),
], ids=["parameters", "escaped-parameters-array", "filter-lzw", "escaped-filter-run-length"])
def test_an_indirect_filter_or_predictor_is_resolved(entry: bytes, extra: bytes, encode: Callable[[bytes], bytes],
                                                     scanner: Scanner, tmp_path: Path) -> None:
    """/DecodeParms 12 0 R or /Filter 12 0 R (7.3.10: any value may be a reference): Ghostscript
    resolves it; the inflated bytes were searched still predicted, or the stream skipped, with no
    note at all."""
    from pdf_samples import CATALOG_JS, SCRIPT

    document = pdf({1: CATALOG_JS, 2: PAGES, 3: SCRIPT}, {4: PAGE, 5: content_stream(), 6: FONT, 12: extra},
                   Framing(filter=entry, encode=encode))[0]
    assert [name for name in RAW_NAMES if name in document] == []
    assert_viewer_reads_hidden_catalog(document, tmp_path)
    report = scanner.scan_bytes(quiet_encapsulated(document), "pdf.dcm")
    assert levels(report, "documents.pdf-active") == [Level.HIGH], [(f.rule, f.explanation) for f in report.findings]


def test_many_objects_and_references_cost_one_pass(scanner: Scanner) -> None:
    """300,000 objects and as many indirect /DecodeParms: the objects are indexed once, only those
    referenced kept."""
    objects = b"".join(b"%d 0 obj\n<< /Predictor 12 /Columns %d >>\nendobj\n" % (n, n % 7 + 1)
                       for n in range(100, 300_100))
    streams = b"".join(b"%d 0 obj\n<< /Filter /FlateDecode /DecodeParms %d 0 R /Length 9 >>\nstream\r\nxx\r\n"
                       b"endstream\nendobj\n" % (n + 400_000, n) for n in range(100, 9_000))
    document = pdf({1: CATALOG, 2: PAGES}, {4: PAGE, 5: content_stream(), 6: FONT})[0]
    document = document.replace(b"%PDF-1.7\n", b"%PDF-1.7\n" + objects + streams, 1)
    began = time.perf_counter()
    report = scanner.scan_bytes(document, "many.pdf")
    seconds = time.perf_counter() - began
    assert seconds < 10, f"{seconds:.1f} s"
    assert levels(report, "documents.error") == []


def test_an_object_stream_whose_indirect_filter_is_not_found_is_said(scanner: Scanner) -> None:
    """/Filter 99 0 R naming an object not in the document's bytes (one inside another object
    stream, which viewers resolve): the stream was skipped without a word; it is a note now."""
    document = pdf({1: CATALOG, 2: PAGES}, {4: PAGE, 5: content_stream(), 6: FONT},
                   Framing(filter=b"/Filter 99 0 R /DecodeParms 98 0 R", encode=lzw))[0]
    report = scanner.scan_bytes(quiet_encapsulated(document), "pdf.dcm")
    notes = [f for f in report.findings if f.rule == "documents.pdf-unscanned"]
    assert notes and notes[0].level == Level.LOW, [(f.rule, f.explanation) for f in report.findings]
    assert "/Filter 99 0 R (not found) is not decoded" in notes[0].explanation
