"""Round 10, area G: the first bytes of a PDF stream that says it is an image (pacsguard.scan.pdf).

An object stream (ISO 32000-1 7.5.7) whose dictionary says /Subtype /Image, its /Type /ObjStm
padded out of the scanner's sight, is known by its decoded header (round 9, and D of round 10
past the document's bound). Two ways past that, both read by Ghostscript:

- a PNG or TIFF predictor (7.4.4.4, /DecodeParms << /Predictor 12 >>): an image's predictor was
  never undone, so its header was looked for in predicted bytes, where it never is (and under
  a hex or ASCII85 layer, a probe of an image's first bytes stopped at the layer);
- white space or a comment (7.2.2, 7.2.3) before the header: Ghostscript reads the header past
  any amount of them; an LZW or run-length "image" was judged by its first 64 decoded bytes, a
  deflated one by a header test that knew no comments, and past the bound by 64 bytes too.

Ghostscript's -dPDFDEBUG log (pdf_samples.viewer_reads) proves the viewer took the catalog, with
its /OpenAction, out of such a stream. A real predicted image with a black border (rows of zeros,
which are PDF white space) stays clean.
"""

from __future__ import annotations

import random
import re
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from pdf_samples import CATALOG_FROM, a85, assert_viewer_reads_hidden_catalog, viewer_reads
from test_r9_hostile_media import lzw, png, tiff
from test_r9w_pdf_bounds import (
    BENIGN,
    FLATE,
    HOSTILE,
    PLAIN,
    RAW_NAMES,
    active_in_both,
    build,
    gs_text,
    run_length,
    shown,
)
from test_r10D_pdf_past_the_bound import DEEP_DISGUISE, assert_object_stream_7_noted, big_image, both, unscanned

from pacsguard.scan.model import Level
from pacsguard.scan.scanner import Scanner

#: The start of an object stream's dictionary that hides its /Type /ObjStm and /First from the
#: scanner (more than 1 MiB back: past the dictionary it reads whole) and says image.
PADDED_IMAGE = b"/Pad (" + DEEP_DISGUISE + b") /Subtype /Image "

#: Predicted object streams disguised as images: /Filter and /DecodeParms, and the encoder.
PREDICTED: dict[str, tuple[bytes, Callable[[bytes], bytes]]] = {
    "flate-png-up": (b"/Filter /FlateDecode /DecodeParms << /Predictor 12 /Columns 8 >>",
                     lambda d: zlib.compress(png(d, 2, 8))),
    "flate-png-paeth-rgb": (b"/Filter /FlateDecode /DecodeParms << /Predictor 15 /Colors 3 /Columns 5 >>",
                            lambda d: zlib.compress(png(d, 4, 15, 3))),
    "flate-png-sub-wide": (b"/Filter /FlateDecode /DecodeParms << /Predictor 11 /Columns 4096 >>",
                           lambda d: zlib.compress(png(d, 1, 4096))),
    "flate-tiff": (b"/Filter /FlateDecode /DecodeParms << /Predictor 2 /Colors 2 /Columns 9 >>",
                   lambda d: zlib.compress(tiff(d, 9, 2))),
    "lzw-png-up": (b"/Filter /LZWDecode /DecodeParms << /Predictor 12 /Columns 8 >>", lambda d: lzw(png(d, 2, 8))),
    # a hex or ASCII85 layer over the deflated data: the probe decodes it as far as inflating needs
    "hex-flate-png-up": (b"/Filter [/AHx /Fl] /DecodeParms [null << /Predictor 12 /Columns 8 >>]",
                         lambda d: zlib.compress(png(d, 2, 8)).hex().encode() + b">"),
    "ascii85-flate-png-up": (b"/Filter [/A85 /Fl] /DecodeParms [null << /Predictor 12 /Columns 8 >>]",
                             lambda d: a85(zlib.compress(png(d, 2, 8)))),
}


@pytest.mark.parametrize("kind", sorted(PREDICTED))
def test_an_object_stream_disguised_as_a_predicted_image_is_searched(kind: str, scanner: Scanner,
                                                                     tmp_path: Path) -> None:
    entries, encode = PREDICTED[kind]
    document = build(PLAIN, [(7, PADDED_IMAGE + entries, encode, HOSTILE)])
    assert [name for name in RAW_NAMES if name in document] == []
    assert_viewer_reads_hidden_catalog(document, tmp_path)  # Ghostscript reads the catalog in 7
    for _, explanation in active_in_both(document, scanner):
        assert "/JavaScript" in explanation and "object stream, /" in explanation, explanation


def leading(entries: bytes, encode: Callable[[bytes], bytes], lead: bytes, objects: list[tuple[int, bytes]],
            plain: dict[int, bytes] | None = None, grown: int = 0) -> bytes:
    """Object stream 7 with ``lead`` before its header in its decoded bytes, its /First moved
    past it (and ``grown`` bytes more, for a header ``encode`` lengthens); the padding string
    after /First gives up the digits /First gains, so every offset of the cross-reference
    stream stays right."""
    spare = b"0123456789"
    document = build(PLAIN if plain is None else plain, [(7, entries + b" /Spare (" + spare + b")",
                                                          lambda d: encode(lead + d), objects)])
    found = re.search(rb"/First (\d+) (.*?)/Spare \(" + spare + rb"\)", document, re.DOTALL)
    assert found is not None
    first = b"/First %d " % (int(found.group(1)) + len(lead) + grown)
    digits = len(first) - len(b"/First %s " % found.group(1))
    dictionary = first + found.group(2) + b"/Spare (" + spare[digits:] + b")"
    assert len(dictionary) == len(found.group())
    return document[:found.start()] + dictionary + document[found.end():]


#: White space or comments before an object stream's header, and its filter: each hides the header
#: from a test of the first 64 decoded bytes, or of digits first.
LEADS: dict[str, tuple[bytes, bytes, Callable[[bytes], bytes]]] = {
    "spaces-run-length": (b" " * 100, b"/Filter /RunLengthDecode", lambda d: run_length(d, 2)),
    "nul-run-length": (b"\x00" * 100, b"/Filter /RunLengthDecode", lambda d: run_length(d, 2)),
    "newlines-lzw": (b"\n" * 5000, b"/Filter /LZWDecode", lzw),
    "comment-flate": (b"% generated\r\n", b"/Filter /FlateDecode", FLATE),
    "long-comment-run-length": (b"%" + b"c" * 200 + b"\n", b"/Filter /RunLengthDecode", lambda d: run_length(d, 2)),
    "white-png-up": (b"\r\n" * 3000, b"/Filter /FlateDecode /DecodeParms << /Predictor 12 /Columns 8 >>",
                     lambda d: zlib.compress(png(d, 2, 8))),
}


@pytest.mark.parametrize("kind", sorted(LEADS))
def test_white_space_before_a_disguised_object_streams_header_hides_nothing(kind: str, scanner: Scanner,
                                                                           tmp_path: Path) -> None:
    lead, entries, encode = LEADS[kind]
    document = leading(PADDED_IMAGE + entries, encode, lead, HOSTILE)
    assert [name for name in RAW_NAMES if name in document] == []
    assert_viewer_reads_hidden_catalog(document, tmp_path)
    for _, explanation in active_in_both(document, scanner):
        assert "/JavaScript" in explanation, explanation


def test_bytes_other_than_white_space_before_the_header_are_no_object_stream(tmp_path: Path) -> None:
    """The reader's side of the line drawn: Ghostscript does not read the header past a word,
    nor past a comment between its numbers (so the scanner does not skip those either)."""
    word = leading(b"/Filter /FlateDecode", FLATE, b"xx ", HOSTILE)
    assert "Radiology report" not in gs_text(word, tmp_path)
    assert_viewer_misses_the_catalog(word, tmp_path)
    inside = leading(b"/Filter /FlateDecode", lambda d: FLATE(d.replace(b" ", b" %c\n", 1)), b"", HOSTILE, grown=4)
    assert "Radiology report" not in gs_text(inside, tmp_path)
    assert_viewer_misses_the_catalog(inside, tmp_path)
    before = leading(b"/Filter /FlateDecode", FLATE, b"%c\n", HOSTILE)  # the same comment, before it
    assert "Radiology report" in gs_text(before, tmp_path)
    assert_viewer_reads_hidden_catalog(before, tmp_path)


def assert_viewer_misses_the_catalog(document: bytes, folder: Path) -> None:
    """Ghostscript tries object stream 7 for the catalog and gets no catalog out of it (nor,
    repairing, anywhere else: no /OpenAction in all it read)."""
    read = viewer_reads(document, folder)
    assert CATALOG_FROM.format(stream=7) in read.log, read.steps()
    assert "/Type /Catalog" not in read.catalog and "/OpenAction" not in read.log, (read.catalog, read.steps())


def test_a_predicted_image_with_a_black_border_is_clean_and_cheap(scanner: Scanner, tmp_path: Path) -> None:
    """A 2048-wide grey image whose first 600 rows are black (zeros: PDF white space), PNG Up
    predicted as PNG writers do: its predictor is undone row by row, rows of zeros whole at once,
    until the border ends; nothing above info, in little time."""
    width, black, grey = 2048, 600, 400
    pixels = bytes(width * black) + random.Random(10).randbytes(width * grey)
    data = zlib.compress(png(pixels[:width * black], 2, width) + png(pixels[width * black:], 1, width))
    picture = (b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray "
               b"/BitsPerComponent 8 /Filter /FlateDecode /DecodeParms << /Predictor 15 /Columns %d >> "
               b"/Length %d >>\nstream\r\n" % (width, black + grey, width, len(data)) + data + b"\r\nendstream")
    document = build({**PLAIN, 11: picture}, [(7, b"/Filter /FlateDecode", FLATE, BENIGN)])
    assert "Radiology report" in gs_text(document, tmp_path)
    began = time.perf_counter()
    for report in both(document, scanner):
        assert [f for f in shown(report) if f[1] != "info"] == []
    assert time.perf_counter() - began < 4


def test_a_long_white_lead_in_an_image_is_medium(scanner: Scanner, tmp_path: Path) -> None:
    """1.5 MB of run-length white space written as literal runs (as many bytes of input): past the
    1 MiB allowance of slow bytes the header is not reached; said, medium, not passed."""
    lead = b" " * 1_500_000

    def encode(data: bytes) -> bytes:  # the lead in long runs, the objects in runs of 2 (no name readable)
        return run_length(data[:len(lead)], 128)[:-1] + run_length(data[len(lead):], 2)

    document = leading(PADDED_IMAGE + b"/Filter /RunLengthDecode", encode, lead, HOSTILE)
    assert_viewer_reads_hidden_catalog(document, tmp_path)
    for report in both(document, scanner):
        notes = unscanned(report)
        assert [level for level, _ in notes] == [Level.MEDIUM], shown(report)
        assert "white space or comments" in notes[0][1]
        assert report.fails(Level.MEDIUM)


#: Past the document's bound (four 20 MiB images first): a predicted disguised object stream, and
#: one whose header follows 200 bytes of white space.
PAST: dict[str, tuple[bytes, Callable[[bytes], bytes], bytes]] = {
    "predicted": (b"/Filter /FlateDecode /DecodeParms << /Predictor 12 /Columns 8 >>",
                  lambda d: zlib.compress(png(d, 2, 8)), b""),
    "white": (b"/Filter /FlateDecode", FLATE, b"\n" * 200),
}


@pytest.mark.parametrize("kind", sorted(PAST))
def test_a_disguised_object_stream_past_the_bound_is_still_known(kind: str, scanner: Scanner,
                                                                 tmp_path: Path) -> None:
    entries, encode, lead = PAST[kind]
    images = {**PLAIN, **dict.fromkeys(range(11, 15), big_image())}
    document = leading(PADDED_IMAGE + entries, encode, lead, HOSTILE, images)
    assert_object_stream_7_noted(document, scanner, tmp_path)


def picture(number: int, width: int, rows: bytes, predictor: int = 15, colors: int = 1) -> bytes:
    """An image XObject (8.9.5) of already predicted ``rows``, deflated, as object ``number``'s body."""
    data = zlib.compress(rows)
    return (b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB /BitsPerComponent 8 "
            b"/Filter /FlateDecode /DecodeParms << /Predictor %d /Colors %d /Columns %d >> /Length %d >>\n"
            b"stream\r\n" % (width, len(rows) // (width * colors + 1), predictor, colors, width, len(data))
            + data + b"\r\nendstream")


def test_many_key_images_with_black_left_edges_stay_clean(scanner: Scanner) -> None:
    """300 colour key images, 1024 pixels wide, each row black for its first 200 pixels (zeros,
    PDF white space), PNG Sub predicted: the zeros a row starts with come out zeros whatever its
    filter, so each probe costs a few bytes and the slow allowance is not spent (nothing above
    info)."""
    width = 1024
    row = bytes(200 * 3) + random.Random(11).randbytes((width - 200) * 3)
    rows = png(row * 4, 1, width * 3, 3)
    images = {n: picture(n, width, rows, 15, 3) for n in range(11, 311)}
    document = build({**PLAIN, **images}, [(7, b"/Filter /FlateDecode", FLATE, BENIGN)])
    began = time.perf_counter()
    for report in both(document, scanner):
        assert [f for f in shown(report) if f[1] != "info"] == []
    assert time.perf_counter() - began < 8


def test_a_flood_of_white_images_costs_little_and_is_one_note(scanner: Scanner) -> None:
    """2,000 images of 2 MB of zeros each, PNG predicted in rows of one byte (a row costs as much
    as 16 bytes undone): the probes spend the slow allowance on the first, then read one round
    each. One medium note names the first and counts the others."""
    rows = zlib.compress(bytes(2_000_000))
    body = (b"<< /Subtype /Image /Filter /FlateDecode /DecodeParms << /Predictor 12 /Columns 1 >> /Length %d >>\n"
            b"stream\r\n" % len(rows) + rows + b"\r\nendstream")
    document = build({**PLAIN, **dict.fromkeys(range(11, 2011), body)}, [(7, b"/Filter /FlateDecode", FLATE, BENIGN)])
    began = time.perf_counter()
    report = scanner.scan_bytes(document, "white.pdf")
    seconds = time.perf_counter() - began
    assert seconds < 8, f"{seconds:.1f} s"
    notes = unscanned(report)
    assert [level for level, _ in notes] == [Level.MEDIUM], shown(report)
    assert "stream 11 0" in notes[0][1] and "and 1,999 more such" in notes[0][1], notes[0][1]
